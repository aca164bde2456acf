"""When waiting has gone on too long.

Every wait of the engine asks ``Watch.check`` now and then while nothing arrives:
- a stop request (signal or STOP file) noticed while waiting gives the job
  ``run.stop_timeout`` seconds to reach its checkpoint;
- a worker that owes a reply and has been silent for ``run.worker_timeout`` seconds,
  while the engine has waited as long, ends the job (exit status 4, naming worker and
  host);
- a wait for something no worker owes is an engine bug, reported, never a silent hang.
"""

from __future__ import annotations

import math
import time
from typing import Callable

from hpcsgd.errors import WorkerSilentError


class Watch:
    def __init__(self, stop, worker_timeout: float, stop_timeout: float, hosts: list[str], scheduler):
        self.stop = stop
        self.worker_timeout = worker_timeout
        self.stop_timeout = stop_timeout
        self.hosts = hosts
        self.scheduler = scheduler
        self.stop_deadline = math.inf
        self.next_epochs_check = 0.0

    def stop_requested(self) -> bool:
        """A stop was asked for (checked cheaply); the first time starts its deadline."""
        if self.stop.check():
            if self.stop_deadline == math.inf:
                self.stop_deadline = time.monotonic() + self.stop_timeout
            return True
        return False

    def check(self, started: float, what: str, owing: Callable[[], list[int]]) -> None:
        now = time.monotonic()
        self.stop_requested()
        waited = now - started
        if waited < 1.0 and now < self.stop_deadline:
            return
        owe = owing()
        if now >= self.stop_deadline:
            raise WorkerSilentError(owe, f"the stop request ({self.stop.reason}) waited "
                                         f"{self.stop_timeout:g} s (run.stop_timeout) for {what}")
        if self.worker_timeout and waited >= self.worker_timeout:
            silent = [j for j in owe if self.scheduler.quiet_for(j, now) >= self.worker_timeout]
            if silent:
                raise WorkerSilentError(silent, f"the master waited {waited:.0f} s "
                                                f"(run.worker_timeout) for {what}")
        if not owe:
            raise RuntimeError(f"the master waits for {what} but no worker owes it anything")

    def epochs_can_end(self, max_epochs: int) -> None:
        """run.epochs counts the slowest worker's passes: a run that stops on nothing else
        cannot end while a worker is silent, even if updates go on without it (no wait's
        watchdog fires then).  Looked at once a second."""
        now = time.monotonic()
        if not self.worker_timeout or now < self.next_epochs_check:
            return
        self.next_epochs_check = now + 1.0
        sched = self.scheduler
        silent = [j for j in sched.workers if sched.unanswered[j] and sched.quiet_for(j, now) >= self.worker_timeout]
        if silent:
            raise WorkerSilentError(silent, f"run.epochs = {max_epochs} is the only stopping rule and "
                                            f"needs every worker's passes (run.worker_timeout)")

    def describe(self, workers: list[int]) -> str:
        """'worker 3 (host n07, silent 12 s)' for each of ``workers``."""
        now = time.monotonic()
        return ", ".join(f"worker {j} (host {self.hosts[j]}, silent {self.scheduler.quiet_for(j, now):.0f} s)"
                         for j in workers)
