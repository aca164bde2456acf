"""Coordinated stop: a signal or a ``STOP`` file asks the job to checkpoint and exit 0.

SIGTERM, SIGUSR1 (SLURM's pre-timeout signal with ``--signal=B:USR1@margin``) and
SIGINT (Ctrl-C) on any rank, or on ``mpiexec``, which forwards them to every rank, or
a file named ``STOP`` in the run directory (for batch shells that cannot forward
signals), make the master stop at the next update boundary, write a checkpoint,
release the workers and exit 0.  The master decides the update, so every rank agrees
on it; a worker that got the signal passes the request on in its next reply
(``comm.R_STOP``).  A second signal to a rank aborts the whole job at once
(``MPI_Abort``): the newest checkpoint on disk is still intact (checkpoint writes are
atomic).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
STOP_FILE = "STOP"


class StopRequest:
    """Why this rank was asked to stop ("" while nobody asked).  A context manager
    that installs the signal handlers and restores the previous ones on exit."""

    def __init__(self, run_dir: Path | None = None, poll_seconds: float = 1.0):
        self.reason = ""
        self.stop_file = None if run_dir is None else Path(run_dir) / STOP_FILE
        self.poll_seconds = poll_seconds  # a stat on a network file system can take ms
        self.next_poll = 0.0
        self.previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        for sig in SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.reason:
            from mpi4py import MPI
            from hpcsgd.comm import abort
            abort(MPI.COMM_WORLD, f"hpcsgd: second signal ({name}): aborting the job without a new checkpoint",
                  128 + signum)
        self.reason = name

    def check(self) -> str:
        """The reason to stop, looking for the STOP file at most every poll_seconds."""
        if not self.reason and self.stop_file is not None:
            now = time.monotonic()
            if now >= self.next_poll:
                self.next_poll = now + self.poll_seconds
                if self.stop_file.exists():
                    self.reason = f"{STOP_FILE} file"
        return self.reason

    def consume_file(self) -> None:
        """After the stop's checkpoint: remove the STOP file, so a resume runs on."""
        if self.stop_file is not None:
            try:
                self.stop_file.unlink()
            except FileNotFoundError:
                pass
