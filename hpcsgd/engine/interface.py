"""What a method sees: the ``Engine`` protocol, the ``Assignment`` it returns and the
``Result`` of a job.  Methods (hpcsgd/methods) use nothing else of the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np


class Assignment(NamedTuple):
    """A job to create: ``batch`` examples of ``worker``'s order at the current model.
    A preemptible job is dropped by its worker as soon as anything newer arrives."""
    worker: int
    batch: int
    preemptible: bool = False


@dataclass(slots=True)
class Result:
    """A worker's reply to one job."""
    worker: int
    version: int          # the model version the gradient was computed at
    batch: int
    samples: int          # samples computed (fewer when the job was abandoned)
    duration: float       # injected delay drawn for the job (in full, even if abandoned)
    delay_comm: float     # its communication part
    compute_seconds: float
    loss_sum: float
    abandoned: bool
    epoch: int            # epochs the worker has started
    stop: bool            # the worker was asked to stop (a signal on its rank)
    grad: np.ndarray      # mean gradient [d]
    pairs: np.ndarray     # [Q, d] pair differences (Q = 0 unless the master balances)
    buf: np.ndarray = field(repr=False)  # the receive buffer behind grad and pairs
    kept: bool = field(default=False, repr=False)  # a method took it (Engine.keep) and recycles it itself

    @property
    def carries_gradient(self) -> bool:
        return self.samples > 0 and not self.abandoned


class JobTimes(Protocol):
    """A job as ``Method.observe`` sees it (wall clock)."""
    t_assign: float
    t_done: float

    @property
    def cancelled(self) -> bool: ...


class Engine(Protocol):
    """The engine as a method drives it."""
    version: int                 # updates applied so far
    rng: np.random.Generator     # the method's random stream (checkpointed with the run)

    def apply(self, grad: np.ndarray, *, contributors: list[int], staleness: int, batch: int,
              step_size: float | None = None, scale: float = 1.0, extra: dict | None = None,
              block: slice | None = None) -> None:
        """Step along ``scale * grad`` (only ``block``'s coordinates when given), trace it."""

    def cancel_jobs_before(self, version: int) -> None:
        """Jobs computed at older versions are obsolete: stop waiting for them."""

    def send_signs(self, worker: int, eps: np.ndarray) -> None:
        """CD-GraB signs for the worker's last pairs."""

    def keep(self, r: Result) -> None:
        """Hold ``r`` (its gradient and pairs, views into a receive buffer) past
        ``on_result``, e.g. to read its pairs off the critical path; ``recycle`` it then."""

    def recycle(self, r: Result) -> None:
        """Give a kept result's buffer back for the next message."""

    def queued(self, worker: int) -> int:
        """Jobs created for ``worker`` and not yet taken as events."""

    def at_epoch_end(self) -> bool:
        """Every worker's next job starts a new epoch."""

    def overdue_seconds(self) -> list[float]:
        """Per worker (index rank - 1): how long its oldest unanswered job has been out."""

    part: slice                  # the parameters this engine holds: all, or a server's slice
    n_params: int                # the whole model's

    def dot(self, a: np.ndarray, b: np.ndarray) -> float:
        """<a, b> over the whole model, for vectors of this engine's ``part`` (with
        parameter servers the servers' partial products are summed in server order)."""
