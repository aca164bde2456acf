"""Expected iteration time of fastest-k SGD (ALGORITHMS.md section 2).

Worker j answers a job of b samples after T_j = C_j + P_j(b).  An iteration that waits
for the first k of M answers takes the k-th order statistic of (T_1..T_M), and

    mu(k, b) = E[ T_(k) ].

For i.i.d. exponential responses with mean m, mu = m * (H_M - H_{M-k}) exactly (H the
harmonic numbers); otherwise mu is estimated by Monte Carlo: from the configured delay
model (drawing with the same ``DelayModel`` the workers use, from streams of its own),
or in the wall clock from the response times measured so far.
"""

from __future__ import annotations

import math

import numpy as np

from hpcsgd import streams
from hpcsgd.stragglers import DelayModel



def harmonic(n: int) -> float:
    return float(sum(1.0 / i for i in range(1, n + 1)))


def exponential_kth_mean(M: int, k: int, mean: float) -> float:
    """E[k-th smallest of M i.i.d. Exp(mean)] = mean * (H_M - H_{M-k})."""
    if not 1 <= k <= M:
        raise ValueError(f"k must be in 1..{M}, got {k}")
    return mean * (harmonic(M) - harmonic(M - k))


class _KthOrderTimes:
    """What both estimators share: mu(k, b) from sorted draws of the M response times
    (cached per batch size), and the choice of (k, b) for a target batch."""

    def __init__(self, n_workers: int, seed: int, samples: int):
        self.M = n_workers
        self.seed = seed
        self.samples = samples
        self.sorted_times: dict[int, np.ndarray] = {}

    def _rng(self, b: int, *more: int) -> np.random.Generator:
        # A sub-stream per batch size: estimates do not depend on the order of queries,
        # so a resumed run recomputes exactly the values the first run saw.
        return np.random.Generator(np.random.PCG64(
            np.random.SeedSequence(self.seed, spawn_key=(0, streams.TIMING, b, *more))))

    def _draws(self, b: int) -> np.ndarray:
        """[samples, M] response times for jobs of b samples."""
        raise NotImplementedError

    def mu(self, k: int, b: int) -> float:
        if not 1 <= k <= self.M:
            raise ValueError(f"k must be in 1..{self.M}, got {k}")
        if b not in self.sorted_times:
            self.sorted_times[b] = np.sort(self._draws(b), axis=1)
        return float(self.sorted_times[b][:, k - 1].mean())

    def best_kb(self, target: int, max_batch: int | None = None) -> tuple[int, int]:
        """(k, b) with k*b >= target that minimises mu(k, b), b = ceil(target / k) and
        at most ``max_batch``; ties go to the smaller k."""
        ks = [k for k in range(1, self.M + 1)
              if max_batch is None or math.ceil(target / k) <= max_batch]
        if not ks:
            raise ValueError(f"target batch {target} needs more than {self.M} x {max_batch} samples")
        _, k = min((self.mu(k, math.ceil(target / k)), k) for k in ks)
        return k, math.ceil(target / k)


class IterationTimeModel(_KthOrderTimes):
    """mu(k, b) for the configured stragglers: exact where the responses are i.i.d.
    exponential, Monte Carlo (``samples`` draws of all M workers) otherwise."""

    def __init__(self, stragglers: dict, n_workers: int, seed: int, samples: int = 4000):
        super().__init__(n_workers, seed, samples)
        self.cfg = stragglers
        self.models = [DelayModel(stragglers, j, None) for j in range(1, n_workers + 1)]

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
        mean = self.exponential_mean(b)
        if mean is not None:
            return exponential_kth_mean(self.M, k, mean)
        return super().mu(k, b)

    def _draws(self, b: int) -> np.ndarray:
        rng = self._rng(b)
        return np.stack([sum(m.draw(b, rng, self.samples)) for m in self.models], axis=1)


class MeasuredTimeModel(_KthOrderTimes):
    """mu(k, b) from measured response times (wall clock), refreshed as the run goes.

    Each worker keeps its last ``window`` jobs as (communication seconds, compute seconds
    per sample); a Monte Carlo draw of worker j's time for b samples picks one of its
    pairs at random and takes c + b * p.  ``refresh(overdue)`` starts a new generation of
    estimates from whatever has been measured since; ``overdue[j - 1]`` is how long
    worker j's oldest unanswered job has been out, a lower bound on its response time
    that every draw of it respects (a worker that stopped answering is not fast).
    """

    def __init__(self, n_workers: int, seed: int, samples: int = 4000, window: int = 64):
        super().__init__(n_workers, seed, samples)
        self.window = window
        self.comm = np.zeros((n_workers, window))
        self.per_sample = np.zeros((n_workers, window))
        self.count = np.zeros(n_workers, dtype=np.int64)  # jobs seen per worker
        self.overdue = np.zeros(n_workers)
        self.generation = 0

    def observe(self, worker: int, comm: float, per_sample: float) -> None:
        i = worker - 1
        slot = self.count[i] % self.window
        self.comm[i, slot], self.per_sample[i, slot] = comm, per_sample
        self.count[i] += 1

    def seen(self) -> int:
        """Jobs measured on the least-measured worker."""
        return int(self.count.min())

    def refresh(self, overdue=None) -> None:
        self.generation += 1
        self.overdue[:] = 0.0 if overdue is None else overdue
        self.sorted_times.clear()

    def _draws(self, b: int) -> np.ndarray:
        rng = self._rng(b, self.generation)
        out = np.empty((self.samples, self.M))
        for i in range(self.M):
            n = int(min(self.count[i], self.window))
            if n == 0:
                out[:, i] = np.inf  # never measured: assume the worst
                continue
            pick = rng.integers(0, n, size=self.samples)
            out[:, i] = np.maximum(self.comm[i, pick] + b * self.per_sample[i, pick], self.overdue[i])
        return out

    def state_dict(self) -> dict:
        return {"comm": self.comm.copy(), "per_sample": self.per_sample.copy(),
                "count": self.count.copy(), "overdue": self.overdue.copy(), "generation": self.generation}

    def load_state_dict(self, state: dict) -> None:
        self.comm[:] = state["comm"]
        self.per_sample[:] = state["per_sample"]
        self.count[:] = state["count"]
        self.overdue[:] = state.get("overdue", 0.0)
        self.generation = int(state["generation"])
        self.sorted_times.clear()
