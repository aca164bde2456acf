"""Asynchronous SGD with worker assignment rules (ALGORITHMS.md section 3, AsGrad).

Every arriving gradient is applied at once, w -= lr * g, and exactly one new job at
the new model goes to the worker the rule picks:

- ``pure``: the worker that just finished;
- ``random``: a uniformly random worker, independently per update;
- ``shuffle``: sigma(t mod M) for a random permutation sigma of the workers, redrawn
  every M assignments (each block of M gives every worker exactly one job);
- ``shuffle_once``: the first permutation, forever.

At the start every worker gets one job at w_0, so M jobs exist at every moment; a job
for a busy worker waits in its FIFO queue (the engine's per-worker job list) and is
computed on that worker's own data.  Random choices come from the engine's method
stream, so they are checkpointed with it.
"""

from __future__ import annotations

import numpy as np

from hpcsgd.engine.interface import Assignment
from hpcsgd.methods.base import Method
from hpcsgd.methods.registry import MethodKey, MethodSpec, register
from hpcsgd.schema import Key

RULES = ("pure", "random", "shuffle", "shuffle_once")


class AsyncSGD(Method):
    def __init__(self, n_workers: int, batch: int, assign: str):
        assert assign in RULES, assign
        self.name = "async"
        self.n_workers = n_workers
        self.batch = batch
        self.assign = assign
        self.perm = np.zeros(0, dtype=np.int64)  # shuffle rules: the current block's order
        self.pos = 0                             # next index into perm

    def start(self, engine):
        return [Assignment(j, self.batch) for j in range(1, self.n_workers + 1)]

    def next_worker(self, finisher: int, rng: np.random.Generator) -> int:
        if self.assign == "pure":
            return finisher
        if self.assign == "random":
            return int(rng.integers(1, self.n_workers + 1))
        if self.pos == self.perm.size:
            if self.assign == "shuffle" or not self.perm.size:
                self.perm = rng.permutation(self.n_workers) + 1
            self.pos = 0
        self.pos += 1
        return int(self.perm[self.pos - 1])

    def on_result(self, engine, r):
        j = self.next_worker(r.worker, engine.rng)
        # jobs outstanding at the chosen worker once the new one is queued
        queue = engine.queued(j) + 1
        engine.apply(r.grad, contributors=[r.worker], staleness=engine.version - r.version,
                     batch=r.batch, extra={"assigned": j, "queue": queue})
        return [Assignment(j, self.batch)]

    def state_dict(self) -> dict:
        return {"perm": self.perm.copy(), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.perm = np.asarray(state["perm"], dtype=np.int64).copy()
        self.pos = int(state["pos"])


ASSIGN = MethodKey("assign", Key("pure", str, "async: who gets the job created at each update: the finisher "
                                 "(pure), a uniform worker (random), a permutation per M updates (shuffle) or one "
                                 "permutation forever (shuffle_once)", choices=RULES), shown=True)

register(MethodSpec(
    kind="async", does="applies every gradient as it arrives", rank=30, keys=(ASSIGN,),
    build=lambda cfg, shard_sizes, dim, L: AsyncSGD(len(shard_sizes), cfg["order"]["batch"], cfg["method"]["assign"]),
    extras={"assigned": np.int32, "queue": np.int32}, shards=("simulated", "wall")))
