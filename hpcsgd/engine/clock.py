"""The two clocks (SPEC section 2): what time it is, when a job is done, and what an
obsolete job cost.  Both also keep the training wall clock, which leaves out the time
spent evaluating and checkpointing, and never runs backwards.

- ``WallClock``: real time; events are taken in the order results arrive; an obsolete
  job's load is counted when its reply comes.
- ``SimulatedClock``: workers report drawn durations instead of sleeping; a job created
  at simulated time t for worker j starts at max(t, end of j's previous job) and ends a
  duration later, so the order of events never depends on which MPI message arrives
  first (the scheduler takes an event only once nothing still running could end earlier).
"""

from __future__ import annotations

import math
import time

import numpy as np

from hpcsgd.stragglers import samples_done


class Clock:
    simulated = False
    # Policies that only real time allows: drop a cancelled job that was never sent,
    # collect evaluations while training goes on, postpone a checkpoint for a lagging
    # worker, let the method watch reply times.  In simulated time each would make the
    # trajectory depend on timing.
    withdraws_unsent = False
    collects_in_background = False

    def __init__(self, n_workers: int):
        self.offset = 0.0          # training seconds before this job (a resumed run)
        self.t0 = time.perf_counter()
        self.paused = 0.0
        self.floor = 0.0
        self.sim_now = 0.0
        self.worker_end = np.zeros(n_workers + 1)  # simulated: when each worker is free
        self.arrivals = 0                          # wall: results taken so far

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def wall(self) -> float:
        """Training wall seconds: evaluations and checkpoints left out, never backwards."""
        t = self.offset + time.perf_counter() - self.t0 - self.paused
        if t > self.floor:
            self.floor = t
        return self.floor

    def pause(self, seconds: float) -> None:
        self.paused += seconds

    def state_dict(self) -> dict:
        return {"sim_now": self.sim_now, "wall_time": self.wall(), "worker_end": self.worker_end.copy(),
                "arrivals": self.arrivals}

    def load_state_dict(self, state: dict) -> None:
        self.sim_now = float(state["sim_now"])
        self.offset = float(state["wall_time"])
        self.worker_end[:] = state["worker_end"]
        self.arrivals = int(state["arrivals"])


class WallClock(Clock):
    withdraws_unsent = True
    collects_in_background = True

    def now(self) -> float:
        return self.wall()

    def sim_time(self) -> float:
        return math.nan

    def arrived(self, job, result) -> tuple[tuple | None, int, int]:
        """(event key or None for an obsolete job, samples and messages it cost)."""
        job.t_done = self.wall()
        if job.cancelled:
            return None, result.samples, int(result.carries_gradient)
        key = (self.arrivals, job.seq, job.worker)
        self.arrivals += 1
        return key, 0, 0

    def cancelled(self, job, t: float) -> tuple[int, int] | None:
        """Load of a job cancelled at ``t`` to count now, or None: counted on arrival."""
        r = job.result
        return None if r is None else (r.samples, int(r.carries_gradient))

    def earliest_end(self, job) -> float:
        return -math.inf

    def took(self, job) -> None:
        pass

    def stored_key(self, value: float):
        return int(value)


class SimulatedClock(Clock):
    simulated = True

    def now(self) -> float:
        return self.sim_now

    def sim_time(self) -> float:
        return self.sim_now

    def arrived(self, job, result) -> tuple[tuple | None, int, int]:
        w = job.worker
        job.start = max(job.t_assign, self.worker_end[w])
        end = job.start + result.duration
        if job.cancelled:
            end = max(job.start, min(end, job.cancel_time))
        job.t_done = end
        self.worker_end[w] = end
        # an obsolete job's load was counted when it was cancelled
        return (None if job.cancelled else (job.t_done, job.seq, w)), 0, 0

    def cancelled(self, job, t: float) -> tuple[int, int] | None:
        """A job cancelled at t ran from its start until t (or not at all), which is
        known now whether or not its reply has arrived, so its load goes into the trace
        row deterministically.  One whose reply has not come had not started before t:
        the scheduler takes an event only once every job that could end earlier has
        reported (only the final stop cancels jobs still running, and that is not traced)."""
        r = job.result
        if r is None:
            return None
        end = max(job.start, min(job.t_done, t))
        if self.worker_end[job.worker] == job.t_done:
            self.worker_end[job.worker] = end
        return samples_done(job.batch, r.duration - r.delay_comm, t - job.start), 0

    def earliest_end(self, job) -> float:
        """A job still running ends no earlier than it can start."""
        return max(job.t_assign, self.worker_end[job.worker])

    def took(self, job) -> None:
        self.sim_now = job.t_done

    def stored_key(self, value: float):
        return value


def make_clock(kind: str, n_workers: int) -> Clock:
    return (SimulatedClock if kind == "simulated" else WallClock)(n_workers)
