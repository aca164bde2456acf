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

import json

import numpy as np

# Purposes of the random streams.  Every stream is
# Generator(PCG64(SeedSequence(run.seed, spawn_key=(rank, purpose)))), so each rank's
# streams are independent of the others and of how many ranks there are.
STREAM_INIT = 0
STREAM_ORDER = 1
STREAM_DELAY = 2
STREAM_METHOD = 3


def make_stream(seed: int, rank: int, purpose: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(rank, purpose))))


def stream_state(rng: np.random.Generator) -> str:
    return json.dumps(rng.bit_generator.state)


def set_stream_state(rng: np.random.Generator, text: str) -> None:
    rng.bit_generator.state = json.loads(text)


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

    def _draw(self, mean: float) -> float:
        if mean <= 0.0:
            return 0.0
        rng, kind = self.rng, self.kind
        if kind == "fixed":
            return mean
        if kind == "exp":
            return rng.exponential(mean)
        if kind == "shifted_exp":
            base = min(self.shift, 1.0) * mean
            return base + rng.exponential(mean - base) if mean > base else base
        if kind == "gamma":
            return rng.gamma(self.shape, mean / self.shape)
        if kind == "normal":
            return abs(rng.normal(mean, self.cv * mean))
        if kind == "uniform":
            return rng.uniform(0.0, 2.0 * mean)
        if kind == "poisson":
            return float(rng.poisson(mean))
        raise AssertionError(kind)

    def duration(self, batch: int) -> float:
        """Seconds for one job of ``batch`` samples (0 for model 'none')."""
        if self.kind == "none":
            return 0.0
        comm = self._draw(self.comm_mean)
        if self.kind == "gamma" and self.compute_mean > 0.0:
            compute = self.rng.gamma(self.shape * batch, self.compute_mean / self.shape)
        else:
            compute = batch * self._draw(self.compute_mean)
        return self.offset + comm + compute
