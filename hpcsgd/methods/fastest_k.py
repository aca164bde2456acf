"""Fastest-k SGD (k = M is synchronous SGD).

Every iteration all M workers get (w, v, b); the master applies the mean of the first
k gradients computed at version v.  The other M-k jobs are cancelled at that moment:
their workers abandon them when the next job arrives, and whatever they computed is
counted as load but never applied, so every applied gradient has staleness 0.
"""

from __future__ import annotations

import numpy as np

from hpcsgd.comm import FLAG_PREEMPTIBLE
from hpcsgd.kernels.optim import add_into


class FastestK:
    def __init__(self, k: int, n_workers: int, batch: int, name: str = "fastest_k"):
        self.name = name
        self.k = k
        self.n_workers = n_workers
        self.batch = batch
        self.acc = None  # sum of this round's gradients, allocated once
        self.contributors: list[int] = []

    def _round(self):
        # Preemptible only when someone can be left behind; sync jobs always finish.
        flags = FLAG_PREEMPTIBLE if self.k < self.n_workers else 0
        return [(j, self.batch, flags) for j in range(1, self.n_workers + 1)]

    def start(self, engine):
        return self._round()

    def on_result(self, engine, r):
        if self.k == 1:
            total = r.grad
        else:
            if self.acc is None:
                self.acc = np.empty_like(r.grad)
            if not self.contributors:
                np.copyto(self.acc, r.grad)
            else:
                add_into(self.acc, r.grad)
            total = self.acc
        self.contributors.append(r.worker)
        if len(self.contributors) < self.k:
            return []
        engine.apply(total, contributors=self.contributors, staleness=engine.version - r.version,
                     batch=self.batch, scale=1.0 / self.k)
        engine.cancel_jobs_before(engine.version)
        self.contributors = []
        return self._round()

    # An update always closes a round, and checkpoints happen between updates, so the
    # partial sum is empty whenever state is saved.
    def state_dict(self) -> dict:
        assert not self.contributors
        return {"k": self.k, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        self.k = int(state["k"])
        self.batch = int(state["batch"])
