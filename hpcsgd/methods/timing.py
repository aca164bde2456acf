"""Expected iteration time of fastest-k SGD (ALGORITHMS.md section 2).

Worker j answers a job of b samples after T_j = C_j + P_j(b).  An iteration that waits
for the first k of M answers takes the k-th order statistic of (T_1..T_M), and

    mu(k, b) = E[ T_(k) ].

For i.i.d. exponential responses with mean m, mu = m * (H_M - H_{M-k}) exactly (H the
harmonic numbers); otherwise mu is estimated by Monte Carlo from the configured delay
model, drawing with the same ``DelayModel`` the workers use, from a stream of its own.
"""

from __future__ import annotations

import math

import numpy as np

from hpcsgd.stragglers import DelayModel, make_stream

STREAM_TIMING = 4  # the master's stream for Monte Carlo estimates of mu


def harmonic(n: int) -> float:
    return float(sum(1.0 / i for i in range(1, n + 1)))


def exponential_kth_mean(M: int, k: int, mean: float) -> float:
    """E[k-th smallest of M i.i.d. Exp(mean)] = mean * (H_M - H_{M-k})."""
    if not 1 <= k <= M:
        raise ValueError(f"k must be in 1..{M}, got {k}")
    return mean * (harmonic(M) - harmonic(M - k))


class IterationTimeModel:
    """mu(k, b) for the configured stragglers, exact where the responses are i.i.d.
    exponential and Monte Carlo (``samples`` draws per batch size, cached) otherwise."""

    def __init__(self, stragglers: dict, n_workers: int, seed: int, samples: int = 4000):
        self.cfg = stragglers
        self.M = n_workers
        self.samples = samples
        rng = make_stream(seed, 0, STREAM_TIMING)
        self.models = [DelayModel(stragglers, j, rng) for j in range(1, n_workers + 1)]
        self.sorted_times: dict[int, np.ndarray] = {}

    def exponential_mean(self, b: int) -> float | None:
        """The common mean when every response is Exp(mean), else None."""
        s = self.cfg
        if s["model"] != "exp" or s["offset"] or s["slow_workers"] or s["speeds"] != "equal":
            return None
        comm, compute = s["comm_mean"], s["compute_mean"]
        if comm > 0 and compute > 0:
            return None  # a sum of two exponentials is not exponential
        return comm if comm > 0 else b * compute

    def mu(self, k: int, b: int) -> float:
        if not 1 <= k <= self.M:
            raise ValueError(f"k must be in 1..{self.M}, got {k}")
        mean = self.exponential_mean(b)
        if mean is not None:
            return exponential_kth_mean(self.M, k, mean)
        return float(self._sorted(b)[:, k - 1].mean())

    def _sorted(self, b: int) -> np.ndarray:
        if b not in self.sorted_times:
            draws = np.array([[m.duration(b) for m in self.models] for _ in range(self.samples)])
            self.sorted_times[b] = np.sort(draws, axis=1)
        return self.sorted_times[b]

    def best_kb(self, target: int) -> tuple[int, int]:
        """(k, b) with k*b >= target that minimises mu(k, b), b = ceil(target / k)."""
        candidates = [(self.mu(k, math.ceil(target / k)), k) for k in range(1, self.M + 1)]
        _, k = min(candidates)
        return k, math.ceil(target / k)
