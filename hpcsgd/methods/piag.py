"""Proximal incremental aggregated gradient, PIAG (ALGORITHMS.md section 4), with the
delay-adaptive step sizes of ``hpcsgd.methods.stepsize``.

Worker i owns f_i (its shard; full local gradients by default).  The master keeps every
worker's latest gradient g_i, the version s_i it was computed at, and the aggregate
G = sum_i w_i g_i with w_i = n_i / n, so G is the full objective's gradient made of
stale pieces; an arrival costs O(d): G += w_i (g_new - g_i).  An update

    x_{k+1} = prox_{gamma_k R}(x_k - gamma_k G),   tau_k = k - min_i s_i,

absorbs ``absorb`` arrivals (the first one waits until every worker has reported once)
and sends x_{k+1} to the workers that reported.
"""

from __future__ import annotations

import numpy as np

from hpcsgd.engine.interface import Assignment
from hpcsgd.methods.base import Method
from hpcsgd.methods.registry import MethodKey, MethodSpec, register
from hpcsgd.methods.stepsize import (STEP_IGNORES, STEP_KEYS, STEP_SUMMARY, StepPolicy, check_step_policy, needs_L,
                                     step_policy)
from hpcsgd.schema import Key


class PIAG(Method):
    per_parameter = ("table", "total")
    def __init__(self, n_workers: int, batch: int, policy: StepPolicy, weights: np.ndarray, dim: int,
                 absorb: int = 1):
        self.name = "piag"
        self.n_workers = n_workers
        self.batch = batch
        self.policy = policy
        self.weights = np.asarray(weights, dtype=np.float64)
        self.absorb = absorb
        self.table = np.zeros((n_workers, dim))  # latest gradient of every worker
        self.total = np.zeros(dim)  # G
        self.change = np.empty(dim)  # scratch for G's update
        self.versions = np.full(n_workers, -1, dtype=np.int64)  # s_i (-1: not reported yet)
        self.reported: list[int] = []  # workers absorbed since the last update

    def start(self, engine):
        return [Assignment(j, self.batch) for j in range(1, self.n_workers + 1)]

    def on_result(self, engine, r):
        i = r.worker - 1
        np.subtract(r.grad, self.table[i], out=self.change)
        self.change *= self.weights[i]
        self.total += self.change
        self.table[i] = r.grad
        self.versions[i] = r.version
        self.reported.append(r.worker)
        if len(self.reported) < self.absorb or self.versions.min() < 0:
            return []
        tau = engine.version - int(self.versions.min())
        gamma = self.policy.step(tau)
        engine.apply(self.total, contributors=self.reported, staleness=tau, batch=r.batch, step_size=gamma)
        jobs = [Assignment(j, self.batch) for j in self.reported]
        self.reported = []
        return jobs

    # Checkpoints happen right after an update, when no arrival is waiting to be absorbed.
    def state_dict(self) -> dict:
        assert not self.reported
        return {"versions": self.versions.copy(), "policy": self.policy.state_dict(),
                "table": self.table.copy(), "total": self.total.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.versions[:] = state["versions"]
        self.policy.load_state_dict(state["policy"])
        self.table[:] = np.asarray(state["table"]).reshape(self.table.shape)
        self.total[:] = state["total"]


def _build(cfg: dict, shard_sizes: list[int], dim: int, L: float) -> PIAG:
    weights = np.asarray(shard_sizes, dtype=np.float64) / sum(shard_sizes)
    return PIAG(len(shard_sizes), cfg["order"]["batch"], step_policy(cfg, L), weights, dim,
                absorb=cfg["method"]["absorb"])


ABSORB = MethodKey("absorb", Key(1, int, "piag: arrivals absorbed per update", minimum=1, at_most="M"), shown=True)

register(MethodSpec(
    kind="piag", does="takes delay-adaptive prox steps on aggregated gradients", rank=50, build=_build,
    keys=(*STEP_KEYS, ABSORB), ignores=STEP_IGNORES, check=check_step_policy, needs_L=needs_L,
    summaries=(STEP_SUMMARY,), shards=("simulated", "wall")))
