"""Staged fastest-k SGD (ALGORITHMS.md section 2): adaptive k-sync and adaptive (k, b).

Both run through stages of target effective batch K_1 < K_2 < ... (the noise floor
a ~ 1/(k b) falls stage by stage) and differ in how a stage's (k, b) is chosen:

- ``adaptive_k`` (the baseline): a fixed per-worker batch b and k = K_s / b, so the
  stages are k = k0, k0 + step, ..., M;
- ``adaptive_kb`` (seed 001's policy, reconstructed): (k_s, b_s) = argmin over k of
  mu(k, ceil(K_s / k)), the expected iteration time.  Where per-sample times add up,
  many workers with small batches beat a few with big ones: total computation (M b per
  iteration) drops, replies per update (k) rise.

The next stage starts when the switching rule fires (the Pflug-type test, or the
bound-optimal level of ``switching.BoundSwitch``).  mu comes from the configured delay
model in the simulated clock and from measured response times in the wall clock, where
the estimates (and adaptive_kb's (k, b)) are renewed every ``refresh_every`` updates;
until every worker has reported twice, adaptive_kb waits for all M workers so that all
get measured.
"""

from __future__ import annotations

import math

import numpy as np

from hpcsgd.methods.fastest_k import FastestK
from hpcsgd.methods.switching import BoundSwitch, PflugTest, noise_floor, switch_level
from hpcsgd.methods.timing import MeasuredTimeModel

MIN_MEASURED = 2  # jobs per worker before measured times are trusted


class StagedFastestK(FastestK):
    def __init__(self, name: str, targets: list[int], n_workers: int, times, *,
                 switch: PflugTest | BoundSwitch, fixed_batch: int = 0, max_batch: int | None = None,
                 bound: dict | None = None, refresh_every: int = 20):
        super().__init__(n_workers, n_workers, 1, name=name)
        self.targets = list(targets)
        self.times = times
        self.measured = isinstance(times, MeasuredTimeModel)
        self.informed = not self.measured  # measured times trusted yet?
        self.fixed_batch = fixed_batch
        self.max_batch = max_batch
        self.switch = switch
        self.bound = bound  # {"lr", "c", "L", "sigma2"} for the bound-optimal switch
        self.refresh_every = refresh_every
        self.since_refresh = 0
        self.stage = 0
        self.last_overhead = np.zeros(n_workers + 1)  # measured transfer time per worker
        self.k, self.batch = self._choose(0)
        self.switch.enter(*self._levels())

    def _choose(self, stage: int) -> tuple[int, int]:
        target = self.targets[stage]
        if self.fixed_batch:
            return min(math.ceil(target / self.fixed_batch), self.n_workers), self.fixed_batch
        if not self.informed:
            return self.n_workers, math.ceil(target / self.n_workers)
        return self.times.best_kb(target, self.max_batch)

    def _floor(self, k: int, b: int) -> float:
        p = self.bound
        return noise_floor(p["lr"], p["c"], p["L"], p["sigma2"], k * b)

    def _levels(self) -> tuple[float, ...]:
        """BoundSwitch: (floor of this stage, error level at which to leave it)."""
        if self.bound is None:
            return ()
        floor = self._floor(self.k, self.batch)
        if self.stage + 1 == len(self.targets) or not self.informed:
            return floor, -math.inf
        kn, bn = self._choose(self.stage + 1)
        return floor, switch_level(self.times.mu(self.k, self.batch), floor,
                                   self.times.mu(kn, bn), self._floor(kn, bn))

    def trace_extra(self) -> dict:
        return {"stage": self.stage}

    def observe(self, job, r) -> None:
        """Wall clock: record the job's communication time and compute time per sample.
        A worker's own times (real compute plus injected delays, in full even when the
        job was abandoned) make every job a sample, stragglers included."""
        if not self.measured or r.compute_seconds == 0.0:
            return  # skipped unseen (obsolete before it started): nothing was measured
        busy = r.compute_seconds + r.duration
        if not job.cancelled:
            self.last_overhead[r.worker] = max(0.0, job.t_done - job.t_assign - busy)
        per_sample = (r.compute_seconds + r.duration - r.delay_comm) / r.batch
        self.times.observe(r.worker, r.delay_comm + self.last_overhead[r.worker], per_sample)

    def after_update(self, engine, total: np.ndarray, scale: float) -> None:
        if self.switch.fires(total, scale) and self.stage + 1 < len(self.targets):
            self.stage += 1
            self.k, self.batch = self._choose(self.stage)
            self.switch.enter(*self._levels())
            return
        if not self.measured:
            return
        self.since_refresh += 1
        if self.informed:
            due = self.since_refresh >= self.refresh_every
        else:
            due = self.times.seen() >= MIN_MEASURED
        if due:
            self.informed = True
            self.since_refresh = 0
            # a job out for t seconds says its worker takes at least t: a frozen worker
            # is seen as slow at once, not only after it answers
            self.times.refresh(overdue=engine.overdue_seconds())
            self.k, self.batch = self._choose(self.stage)
            if self.bound is not None:
                self.switch.enter(*self._levels())

    def state_dict(self) -> dict:
        state = {**super().state_dict(), "stage": self.stage, "switch": self.switch.state_dict(),
                 "since_refresh": self.since_refresh, "informed": int(self.informed)}
        if self.measured:
            state["times"] = self.times.state_dict()
            state["last_overhead"] = self.last_overhead.copy()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.stage = int(state["stage"])
        self.since_refresh = int(state["since_refresh"])
        self.informed = bool(state["informed"])
        if self.measured:
            self.times.load_state_dict(state["times"])
            self.last_overhead[:] = state["last_overhead"]
        self.switch.load_state_dict(state["switch"])
        if self.bound is not None:
            self.switch.enter(*self._levels())
