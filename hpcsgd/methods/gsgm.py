"""GSGM: gradient scheduling with partly averaged gradients and global momentum, for
asynchronous training on non-IID data (ALGORITHMS.md section 5).

A RECONSTRUCTION from the paper's abstract (its exact formulas could not be
obtained); each of its three parts can be switched off:

- (S) white-list rounds (``method.schedule``): a round starts with every worker on the
  white list; a gradient from a listed worker is admitted and the worker leaves the
  list; a gradient from an unlisted worker (one that is ahead in this round) is
  deferred into its buffer; when the list is empty the next round starts.  So each
  worker makes exactly one update per round.
- (A) partial averaging (``method.average``): an admitted gradient is averaged with
  that worker's deferred ones, g_hat = mean(g, deferred...), and the buffer is
  cleared.  Without (A), deferred gradients are dropped and g_hat = g.
- (M) global momentum (``method.momentum`` = beta): the engine's master-side heavy
  ball, m = beta m + g_hat, w -= lr m.

Every worker gets the current model back at once, admitted or not (pure asynchronous
assignment), so no worker ever blocks.  With all three parts off this is ``async``
with ``assign = "pure"``, update for update.
"""

from __future__ import annotations

import math

import numpy as np

from hpcsgd.kernels.optim import add_into
from hpcsgd.engine.interface import Assignment
from hpcsgd.methods.base import Method
from hpcsgd.methods.registry import MethodKey, MethodSpec, Summary, column, register
from hpcsgd.schema import Key, only


class GSGM(Method):
    name = "gsgm"
    per_parameter = ("deferred_sum",)

    def __init__(self, n_workers: int, batch: int, dim: int, *, schedule: bool = True, average: bool = True):
        self.n_workers = n_workers
        self.batch = batch
        self.schedule = schedule
        self.average = average
        self.listed = np.ones(n_workers + 1, dtype=bool)   # index = worker rank; [0] unused
        self.listed[0] = False
        self.round = 0
        self.deferred_sum = np.zeros((n_workers + 1, dim if average else 0))
        self.deferred_count = np.zeros(n_workers + 1, dtype=np.int64)
        self.deferrals = 0           # gradients deferred since the last update

    def start(self, engine):
        return [Assignment(j, self.batch) for j in range(1, self.n_workers + 1)]

    def on_result(self, engine, r):
        k = r.worker
        if self.schedule and not self.listed[k]:
            if self.average:
                add_into(self.deferred_sum[k], r.grad)
            self.deferred_count[k] += 1
            self.deferrals += 1
            return [Assignment(k, self.batch)]
        averaged = 1
        grad, scale = r.grad, 1.0
        if self.average and self.deferred_count[k]:
            grad = self.deferred_sum[k]
            add_into(grad, r.grad)
            averaged += int(self.deferred_count[k])
            scale = 1.0 / averaged
        engine.apply(grad, contributors=[k], staleness=engine.version - r.version, batch=r.batch,
                     scale=scale, extra={"round": self.round, "averaged": averaged, "deferred": self.deferrals})
        if averaged > 1:
            grad[:] = 0.0
        self.deferred_count[k] = 0
        self.deferrals = 0
        if self.schedule:
            self.listed[k] = False
            if not self.listed.any():
                self.listed[1:] = True
                self.round += 1
        return [Assignment(k, self.batch)]

    def state_dict(self) -> dict:
        return {"listed": self.listed.copy(), "round": self.round, "deferred_sum": self.deferred_sum.copy(),
                "deferred_count": self.deferred_count.copy(), "deferrals": self.deferrals}

    def load_state_dict(self, state: dict) -> None:
        self.listed[:] = np.asarray(state["listed"], dtype=bool)
        self.round = int(state["round"])
        self.deferred_sum[:] = np.asarray(state["deferred_sum"]).reshape(self.deferred_sum.shape)
        self.deferred_count[:] = state["deferred_count"]
        self.deferrals = int(state["deferrals"])


def _summary(config: dict, trace: dict) -> dict | None:
    """Rounds, deferrals and how many gradients the admitted ones averaged."""
    rnd, avg, dfr = column(trace, "round"), column(trace, "averaged"), column(trace, "deferred")
    if rnd is None:
        return None
    m = config["method"]
    return {"schedule": m.get("schedule"), "average": m.get("average"), "momentum": m.get("momentum"),
            "rounds_completed": int(rnd[-1]) if rnd.size else 0,
            "deferred_total": int(dfr.sum(dtype=np.int64)), "averaged_mean": float(avg.mean()) if avg.size else math.nan}


def _summary_lines(g: dict, fmt) -> list[tuple[str, str]]:
    return [("gsgm", f"(reconstruction from the paper's abstract) schedule {g['schedule']}, average "
                     f"{g['average']}, momentum {fmt(g['momentum'])}: {g['rounds_completed']} rounds completed, "
                     f"{g['deferred_total']} gradients deferred, {fmt(g['averaged_mean'], 3)} gradients "
                     f"per admitted update")]


SCHEDULE = MethodKey("schedule", Key(True, bool, "gsgm: white-list rounds, one admitted update per worker per round "
                                     "(a worker's early gradients are deferred)"), shown=True)
AVERAGE = MethodKey("average", Key(True, bool, "gsgm with schedule: average a worker's deferred gradients into its "
                                   "admitted one (false: deferred gradients are dropped)"), shown=True,
                    when=only("method.schedule", True, why="defers no gradient"))

register(MethodSpec(
    kind="gsgm", does="admits gradients in white-list rounds", rank=40, keys=(SCHEDULE, AVERAGE),
    build=lambda cfg, shard_sizes, dim, L: GSGM(len(shard_sizes), cfg["order"]["batch"], dim,
                                                schedule=cfg["method"]["schedule"], average=cfg["method"]["average"]),
    extras={"round": np.int32, "averaged": np.int32, "deferred": np.int32},
    summaries=(Summary("gsgm", _summary, _summary_lines),), shards=("simulated", "wall")))
