"""Asynchronous block-coordinate descent (ALGORITHMS.md section 4) with the
delay-adaptive step sizes of ``hpcsgd.methods.stepsize``.

The parameters are cut into ``blocks`` contiguous blocks.  Each job carries the model
at counter c_read and a block j drawn uniformly (from the engine's method stream, when
the job is created: the moment the worker reads x); the worker computes the gradient and
the master applies the block step

    x_j = prox_{gamma_k R_j}(x_j - gamma_k grad_j f(x_read)),   tau_k = k - c_read,

touching no other coordinate, then gives the finisher its next job.  (The worker
computes the whole gradient and the master uses the block: the kernels are full-vector
ones, and for linear models the margins X x cost as much as the gradient.)
"""

from __future__ import annotations

from collections import deque

import numpy as np

from hpcsgd.engine.interface import Assignment
from hpcsgd.errors import UserError
from hpcsgd.methods.base import Method
from hpcsgd.methods.registry import MethodKey, MethodSpec, register
from hpcsgd.methods.stepsize import (STEP_IGNORES, STEP_KEYS, STEP_SUMMARY, StepPolicy, check_step_policy, needs_L,
                                     step_policy)
from hpcsgd.schema import Key


def cut_blocks(d: int, blocks: int, part: slice) -> list[slice]:
    """``blocks`` contiguous blocks of d coordinates, each as its coordinates within
    ``part`` (indices relative to part.start; empty where a block lies outside it)."""
    edges = np.linspace(0, d, min(blocks, d) + 1).round().astype(int)
    clip = [min(max(int(e), part.start), part.stop) - part.start for e in edges]
    return [slice(a, b) for a, b in zip(clip[:-1], clip[1:])]


class AsyncBCD(Method):
    def __init__(self, n_workers: int, batch: int, policy: StepPolicy, dim: int, blocks: int):
        self.name = "async_bcd"
        self.n_workers = n_workers
        self.batch = batch
        self.policy = policy
        self.n_blocks = blocks
        self.blocks = cut_blocks(dim, blocks, slice(0, dim))  # the whole model's; a server cuts its own
        self.cut_for = (dim, slice(0, dim))
        # the blocks of each worker's jobs, oldest first (a worker answers in order)
        self.pending = {j: deque() for j in range(1, n_workers + 1)}

    def _blocks(self, engine) -> list[slice]:
        """The blocks within the engine's part of the model: all of it, or a parameter
        server's slice (where a block may lie partly or wholly outside)."""
        if (engine.n_params, engine.part) != self.cut_for:
            self.blocks = cut_blocks(engine.n_params, self.n_blocks, engine.part)
            self.cut_for = (engine.n_params, engine.part)
        return self.blocks

    def _job(self, worker: int, engine):
        self.pending[worker].append(int(engine.rng.integers(len(self._blocks(engine)))))
        return Assignment(worker, self.batch)

    def start(self, engine):
        return [self._job(j, engine) for j in range(1, self.n_workers + 1)]

    def on_result(self, engine, r):
        b = self.pending[r.worker].popleft()
        tau = engine.version - r.version
        gamma = self.policy.step(tau)
        block = self._blocks(engine)[b]
        engine.apply(r.grad[block], contributors=[r.worker], staleness=tau, batch=r.batch,
                     step_size=gamma, block=block, extra={"block": b})
        return [self._job(r.worker, engine)]

    def state_dict(self) -> dict:
        blocks = np.full((self.n_workers, max(map(len, self.pending.values()), default=0)), -1, dtype=np.int64)
        for j, q in self.pending.items():
            blocks[j - 1, :len(q)] = list(q)
        return {"policy": self.policy.state_dict(), "pending_blocks": blocks}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        blocks = np.asarray(state["pending_blocks"], dtype=np.int64)
        blocks = blocks.reshape(self.n_workers, -1) if blocks.size else np.zeros((self.n_workers, 0), np.int64)
        for j in range(1, self.n_workers + 1):
            self.pending[j] = deque(int(b) for b in blocks[j - 1] if b >= 0)


def _build(cfg: dict, shard_sizes: list[int], dim: int, L: float) -> AsyncBCD:
    return AsyncBCD(len(shard_sizes), cfg["order"]["batch"], step_policy(cfg, L), dim, cfg["method"]["blocks"])


def _check(cfg: dict) -> None:
    check_step_policy(cfg)
    if cfg["data"]["partition"] != "replicate":
        raise UserError(f"config: method.kind = 'async_bcd' steps along block gradients of the whole "
                        f"objective, so every worker needs every row: set data.partition = 'replicate' "
                        f"(got {cfg['data']['partition']!r})")


BLOCKS = MethodKey("blocks", Key(10, int, "async_bcd: coordinate blocks", minimum=1, at_most="d"), shown=True)

register(MethodSpec(
    kind="async_bcd", does="takes delay-adaptive block steps", rank=60, build=_build,
    keys=(*STEP_KEYS, BLOCKS), ignores=STEP_IGNORES, check=_check, needs_L=needs_L,
    extras={"block": np.int32}, summaries=(STEP_SUMMARY,), requires=("data.partition='replicate'",),
    shards=("simulated", "wall")))
