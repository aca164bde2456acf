"""Adaptive k-sync (the baseline of ALGORITHMS.md section 2): fastest-k SGD whose k
grows in stages k0, k0 + step, ..., M at a fixed per-worker batch.

Within a stage, after ``burn_in`` updates, the Pflug-type statistic
S += <g_t, g_{t-1}> of consecutive applied (aggregated) gradients is accumulated; once
S < 0 the iterates are bouncing around a noise floor, so the next stage waits for more
workers (a smaller floor a(k, b) ~ 1/(k b)).  S and the burn-in restart every stage.
"""

from __future__ import annotations

import numpy as np

from hpcsgd.methods.fastest_k import FastestK


class AdaptiveK(FastestK):
    def __init__(self, k0: int, step: int, burn_in: int, n_workers: int, batch: int):
        super().__init__(min(k0, n_workers), n_workers, batch, name="adaptive_k")
        self.step = step
        self.burn_in = burn_in
        self.stage = 0
        self.in_stage = 0  # updates applied in the current stage
        self.S = 0.0
        self.prev = None   # previous applied gradient (None at a stage's start)

    def trace_extra(self) -> dict:
        return {"stage": self.stage}

    def after_update(self, total: np.ndarray, scale: float) -> None:
        self.in_stage += 1
        if self.in_stage > self.burn_in and self.prev is not None:
            self.S += scale * float(np.dot(total, self.prev))
        if self.prev is None:
            self.prev = np.empty_like(total)
        np.multiply(total, scale, out=self.prev)
        if self.S < 0.0 and self.k < self.n_workers:
            self.k = min(self.k + self.step, self.n_workers)
            self.stage += 1
            self.in_stage, self.S = 0, 0.0

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update(stage=self.stage, in_stage=self.in_stage, S=self.S)
        if self.prev is not None:
            state["prev"] = self.prev.copy()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.stage, self.in_stage, self.S = int(state["stage"]), int(state["in_stage"]), float(state["S"])
        self.prev = np.asarray(state["prev"], dtype=np.float64).copy() if "prev" in state else None
