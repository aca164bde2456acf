"""Fastest-k SGD (k = M is synchronous SGD).

Every iteration all M workers get (w, v, b); the master applies the mean of the first
k gradients computed at version v.  The other M-k jobs are cancelled at that moment:
their workers abandon them when the next job arrives, and whatever they computed is
counted as load but never applied, so every applied gradient has staleness 0.
"""

from __future__ import annotations

import numpy as np

from hpcsgd.engine.interface import Assignment
from hpcsgd.kernels.optim import add_into
from hpcsgd.methods.base import Method
from hpcsgd.methods.registry import MethodKey, MethodSpec, register
from hpcsgd.ordering import ORDERINGS
from hpcsgd.ordering.balance import CoordinatedSigns
from hpcsgd.schema import Key


class FastestK(Method):
    def __init__(self, k: int, n_workers: int, batch: int, name: str = "fastest_k",
                 coordinate: bool = False):
        self.name = name
        # CD-GraB: the master decides every worker's pair signs from all workers' pair
        # differences, pair index outer, worker rank inner (so it needs k = M).
        self.signs = CoordinatedSigns() if coordinate else None
        self.kept: list = [None] * n_workers  # this round's results, by worker, while their pairs wait
        self.k = k
        self.n_workers = n_workers
        self.batch = batch
        self.acc = None  # sum of this round's gradients, allocated once
        self.contributors: list[int] = []

    def _round(self):
        # Preemptible only when someone can be left behind; sync jobs always finish.
        preemptible = self.k < self.n_workers
        return [Assignment(j, self.batch, preemptible) for j in range(1, self.n_workers + 1)]

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
        if self.signs is not None and r.pairs.shape[0]:
            engine.keep(r)  # its pairs are read where they arrived, once the next round is out
            self.kept[r.worker - 1] = r
        if len(self.contributors) < self.k:
            return []
        engine.apply(total, contributors=self.contributors, staleness=engine.version - r.version,
                     batch=self.batch, scale=1.0 / self.k, extra=self.trace_extra())
        self.after_update(engine, total, 1.0 / self.k)
        engine.cancel_jobs_before(engine.version)
        if self.kept[0] is not None:
            # Workers need the signs only to finish the next epoch's order: compute them
            # while the workers run the next step, unless that step starts a new epoch.
            self.deferred_epoch = r.epoch
            if engine.at_epoch_end():
                self.flush(engine)
        self.contributors = []
        return self._round()

    deferred_epoch = -1

    def trace_extra(self) -> dict | None:
        """Extra trace columns for this update (subclasses add e.g. a stage)."""
        return None

    def after_update(self, engine, total: np.ndarray, scale: float) -> None:
        """Called with the applied gradient (scale * total) before its buffer is reused."""

    def flush(self, engine) -> None:
        """Finish work kept off the critical path: the last round's CD-GraB signs."""
        if self.deferred_epoch < 0:
            return
        # (results arrive in any order; the sign loop takes them by worker rank)
        eps = self.signs.signs(tuple(r.pairs for r in self.kept), self.deferred_epoch)
        for j in range(1, self.n_workers + 1):
            engine.send_signs(j, eps[j - 1])
            engine.recycle(self.kept[j - 1])
        self.kept = [None] * self.n_workers
        self.deferred_epoch = -1

    # An update always closes a round, and checkpoints happen between updates, so the
    # partial sum is empty whenever state is saved.
    def state_dict(self) -> dict:
        assert not self.contributors and self.deferred_epoch < 0
        state = {"k": self.k, "batch": self.batch}
        if self.signs is not None:
            state["signs"] = self.signs.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.k = int(state["k"])
        self.batch = int(state["batch"])
        if self.signs is not None:
            self.signs.load_state_dict(state["signs"])


def _build_sync(cfg: dict, shard_sizes: list[int], dim: int, L: float) -> FastestK:
    M = len(shard_sizes)
    return FastestK(M, M, cfg["order"]["batch"], name="sync", coordinate=ORDERINGS[cfg["order"]["kind"]].coordinated)


def _build_fastest_k(cfg: dict, shard_sizes: list[int], dim: int, L: float) -> FastestK:
    M = len(shard_sizes)
    return FastestK(cfg["method"]["k"] or M, M, cfg["order"]["batch"], name="fastest_k")


K = MethodKey("k", Key(0, int, "replies waited for by fastest_k (0 = all workers)", minimum=0, at_most="M"),
              shown=True)

register(MethodSpec(kind="sync", does="waits for every worker", rank=10, synchronous=True, coordinates=True,
                    build=_build_sync, shards=("simulated", "wall")))
register(MethodSpec(kind="fastest_k", does="waits for the first method.k replies", rank=20, synchronous=True,
                    keys=(K,), build=_build_fastest_k, shards=("simulated", "wall")))
