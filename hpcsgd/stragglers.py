"""Injected response times: T = C + P(b), drawn per job from a per-worker stream.

C is the communication part (one draw per job) and P(b) the computation of b samples.
For ``gamma`` the b per-sample times are summed (an Erlang/gamma total); every other
model scales one per-sample draw by b.  Worker means are the base means times the
worker's speed factor (``speeds = "linear"`` gives worker i the factor i, listed
``slow_workers`` are multiplied by ``slow_factor``).

In the wall clock the worker sleeps T on top of its real compute; in the simulated
clock T *is* the job's duration and nobody sleeps.
"""

from __future__ import annotations

import numpy as np


class DelayModel:
    """Draws job durations for one worker."""

    def __init__(self, cfg_stragglers: dict, worker: int, rng: np.random.Generator):
        s = cfg_stragglers
        self.kind = s["model"]
        factor = float(worker) if s["speeds"] == "linear" else 1.0
        if worker in s["slow_workers"]:
            factor *= s["slow_factor"]
        self.comm_mean = s["comm_mean"] * factor
        self.compute_mean = s["compute_mean"] * factor
        self.offset = s["offset"]
        self.shape = s["shape"]
        self.shift = s["shift"]
        self.cv = s["cv"]
        self.rng = rng

    def draw(self, batch: int, rng: np.random.Generator | None = None, size: int | None = None):
        """(communication, computation) seconds for one job of ``batch`` samples, from the
        worker's stream; or ``size`` independent pairs of arrays from ``rng`` (Monte
        Carlo).  The constant ``offset`` counts as communication."""
        rng = self.rng if rng is None else rng
        if self.kind == "none":
            return (0.0, 0.0) if size is None else (np.zeros(size), np.zeros(size))
        comm = self.offset + self._sample(self.comm_mean, rng, size)
        if self.kind == "gamma" and self.compute_mean > 0.0:
            compute = rng.gamma(self.shape * batch, self.compute_mean / self.shape, size)
        else:
            compute = batch * self._sample(self.compute_mean, rng, size)
        return comm, compute

    def _sample(self, mean: float, rng: np.random.Generator, size: int | None):
        """One draw (``size=None``) or ``size`` draws with the given mean."""
        kind = self.kind
        if mean <= 0.0 or kind == "fixed":
            return max(mean, 0.0) if size is None else np.full(size, max(mean, 0.0))
        if kind == "exp":
            return rng.exponential(mean, size)
        if kind == "shifted_exp":
            base = min(self.shift, 1.0) * mean
            if mean <= base:
                return base if size is None else np.full(size, base)
            return base + rng.exponential(mean - base, size)
        if kind == "gamma":
            return rng.gamma(self.shape, mean / self.shape, size)
        if kind == "normal":
            return np.abs(rng.normal(mean, self.cv * mean, size))
        if kind == "uniform":
            return rng.uniform(0.0, 2.0 * mean, size)
        if kind == "poisson":
            return 1.0 * rng.poisson(mean, size)
        raise AssertionError(kind)


def samples_done(batch: int, compute: float, elapsed: float) -> int:
    """Samples of a ``batch`` job finished ``elapsed`` seconds after it started, when its
    computation (``compute`` s, at a steady rate) comes before its communication (the
    reply): what a cancelled job cost.  A job cancelled before it started cost nothing;
    one cancelled while sending had done all its work."""
    if elapsed <= 0.0:
        return 0
    if elapsed >= compute:
        return batch
    return int(batch * elapsed / compute)
