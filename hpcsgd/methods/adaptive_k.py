"""Adaptive k-sync (the baseline of ALGORITHMS.md section 2): fastest-k SGD whose k
grows in stages k0, k0 + step, ..., M at a fixed per-worker batch, the next stage
starting when the Pflug-type test fires (``hpcsgd.methods.switching``).  A larger k
lowers the noise floor a(k, b) ~ 1/(k b) at the price of waiting for more workers.
"""

from __future__ import annotations

import numpy as np

from hpcsgd.methods.fastest_k import FastestK
from hpcsgd.methods.switching import PflugTest


class AdaptiveK(FastestK):
    def __init__(self, k0: int, step: int, burn_in: int, n_workers: int, batch: int):
        super().__init__(min(k0, n_workers), n_workers, batch, name="adaptive_k")
        self.step = step
        self.stage = 0
        self.switch = PflugTest(burn_in)

    def trace_extra(self) -> dict:
        return {"stage": self.stage}

    def after_update(self, total: np.ndarray, scale: float) -> None:
        if self.switch.fires(total, scale) and self.k < self.n_workers:
            self.k = min(self.k + self.step, self.n_workers)
            self.stage += 1
            self.switch.enter()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "stage": self.stage, "switch": self.switch.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.stage = int(state["stage"])
        self.switch.load_state_dict(state["switch"])
