"""Full train and test metrics at one update's model, summed over every worker's rows.

The exchange is non-blocking: the master sends the model, posts the replies' receives,
and completes the row when all have come.  In the simulated clock the engine waits for
it at once; in the wall clock training goes on meanwhile, so a frozen worker delays the
row, not the run.  The row keeps the update, epoch and times of the request; the
training clock is set back by the evaluation's own cost (the slowest worker's compute
and the reduction here)."""

from __future__ import annotations

import math
import time

import numpy as np
from mpi4py import MPI

from hpcsgd.errors import DivergenceError


class Evaluation:
    def __init__(self, link, model, l1: float, recorder, clock):
        self.link, self.model, self.l1, self.recorder, self.clock = link, model, l1, recorder, clock
        self.pending: dict | None = None  # the evaluation whose replies are awaited
        self.due = False                  # wall clock: one came due while that one was out

    def request(self, params: np.ndarray, version: int, epoch: float) -> None:
        self.due = False
        self.pending = {
            "row": dict(update=version, epoch=epoch, wall_time=self.clock.wall(), sim_time=self.clock.sim_time()),
            "params": params.copy(),
            "recvs": self.link.request_eval(params, version),
        }

    def owes(self, worker: int) -> bool:
        return self.pending is not None and not self.pending["recvs"][self.link.map.rank(worker) - 1].Test()

    def poll(self) -> bool:
        """Complete the evaluation if every reply is in; True if it completed."""
        if self.pending is None or not MPI.Request.Testall(self.pending["recvs"]):
            return False
        t = time.perf_counter()
        pending, self.pending = self.pending, None
        s = self.link.eval_sums()
        params = pending["params"]
        grad = s.grad_sum / s.train_n
        self.model.reg_grad_add(params, grad)
        reg = self.model.reg_value(params) + self.l1 * float(np.abs(params).sum())
        classify = self.model.kind != "least_squares"
        row = dict(pending["row"],
                   train_loss=s.train_loss / s.train_n + reg,
                   # no test rows: no test metrics (NaN), never a made-up 0
                   test_loss=s.test_loss / s.test_n if s.test_n else math.nan,
                   test_accuracy=s.test_correct / s.test_n if classify and s.test_n else math.nan,
                   grad_norm=float(np.linalg.norm(grad)))
        self.recorder.add_eval(row)
        self.clock.pause(s.seconds + time.perf_counter() - t)
        if not math.isfinite(row["train_loss"]):
            raise DivergenceError(f"non-finite training loss at update {row['update']}")
        return True
