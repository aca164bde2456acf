"""Who computes what, and which result is the next event.

The scheduler keeps every worker's queue of jobs (FIFO: a worker answers its jobs in
the order it got them), the master's copy of each worker's epoch cursor, the send
window, cancellation, and the choice of the next event:

- wall clock: the order results arrive;
- simulated clock: the earliest simulated completion, taken only once no job still
  running could end before it, so the order never depends on MPI timing.  Ties go to
  the job handed out first (the lower job number): with equal or zero durations the
  workers are served in the order their jobs were created, so every method progresses.

Sending: at most ``SEND_WINDOW`` jobs are on their way to, or waiting at, a worker;
later ones are held here until it answers.  MPICH moves a rank's outgoing messages
through one queue, so messages to a rank that does not receive (frozen, stopped) hold up
every later message to every other rank (measured: after 63 messages).  In the wall
clock a held job that gets cancelled is withdrawn unsent (its worker never sees it).
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from hpcsgd.engine.interface import Assignment, Result

SEND_WINDOW = 2   # jobs sent to a worker and not yet answered
# Wall clock: a worker lags (a due checkpoint is postponed rather than wait for it) when
# its next reply is this many times its usual turnaround late, and at least LAG_MIN s.
LAG_FACTOR = 10.0
LAG_MIN = 1.0


@dataclass(slots=True)
class Job:
    worker: int
    seq: int
    version: int
    batch: int
    preemptible: bool
    t_assign: float
    t_arrive: float = math.nan         # cost model: when the job message reaches its worker
    buf: np.ndarray | None = None      # the job message while it is held here, unsent
    undo: tuple[int, int] = (0, 0)     # the worker's epoch cursor before this job
    sent_at: float = math.nan          # monotonic time it was sent
    start: float = math.nan
    t_done: float = math.nan
    cancel_time: float = math.nan
    result: Result | None = None

    @property
    def cancelled(self) -> bool:
        return not math.isnan(self.cancel_time)

    @property
    def held(self) -> bool:
        return self.buf is not None


class EpochMirror:
    """The master's copy of each worker's epoch cursor (batches never cross epochs).
    Plain lists: the master takes one batch per job, and NumPy scalar indexing would
    cost more than the arithmetic."""

    def __init__(self, sizes: list[int]):
        self.sizes = [int(n) for n in sizes]
        self.pos = list(self.sizes)  # "at the end of epoch 0": the first take starts epoch 1
        self.started = [0] * len(sizes)
        self._epoch = 0.0
        self._slowest = -1  # the worker behind ``_epoch``: only its takes can raise the minimum
        self._stale = True

    def position(self, worker: int) -> tuple[int, int]:
        return self.pos[worker - 1], self.started[worker - 1]

    def restore(self, worker: int, position: tuple[int, int]) -> None:
        """Undo the worker's takes since ``position`` (a job withdrawn unsent)."""
        self.pos[worker - 1], self.started[worker - 1] = position
        self._stale = True

    def take(self, worker: int, batch: int) -> int:
        """The size of the worker's next batch: ``batch`` (0 = the whole shard), cut
        at the end of its epoch."""
        i = worker - 1
        size = self.sizes[i]
        if self.pos[i] >= size:
            self.pos[i] = 0
            self.started[i] += 1
        actual = min(batch or size, size - self.pos[i])
        self.pos[i] += actual
        if i == self._slowest:  # (another worker's progress leaves the minimum as it is)
            self._stale = True
        return actual

    def at_epoch_end(self) -> bool:
        """Every worker's next job starts a new epoch."""
        return all(p >= n for p, n in zip(self.pos, self.sizes))

    def epoch(self) -> float:
        """Passes completed by the slowest worker (fractional)."""
        if self._stale:
            passes = [s - 1 + p / n if s > 0 else 0.0 for s, p, n in zip(self.started, self.pos, self.sizes)]
            self._epoch = min(passes)
            self._slowest = passes.index(self._epoch)
            self._stale = False
        return self._epoch

    def state_dict(self) -> dict:
        return {"pos": np.array(self.pos, dtype=np.int64), "started": np.array(self.started, dtype=np.int64),
                "sizes": np.array(self.sizes, dtype=np.int64)}

    def load_state_dict(self, state: dict) -> None:
        self.pos = [int(p) for p in state["pos"]]
        self.started = [int(s) for s in state["started"]]
        self._stale = True


class Scheduler:
    """``message(params, version, batch, preemptible)`` makes a job's buffer and
    ``send_job(worker, buf)`` sends it (a non-blocking buffer send); ``load`` books the
    current trace row's load (its ``samples`` and ``messages``); ``recycle(result)``
    frees a result's buffer;
    ``observe(job, result)`` (wall clock) lets the method watch every reply;
    ``withdraws``: cancelled jobs not sent yet are dropped unsent (the wall clock's
    policy, except with parameter servers: every server must send the same jobs)."""

    def __init__(self, shard_sizes: list[int], clock, message: Callable, send_job: Callable, load,
                 recycle: Callable, observe: Callable | None = None, withdraws: bool = False):
        M = len(shard_sizes)
        self.workers = range(1, M + 1)
        self.clock = clock
        self.message, self.send_job, self.load, self.recycle, self.observe = message, send_job, load, recycle, observe
        self.withdraws = withdraws
        self.mirror = EpochMirror(shard_sizes)
        self.jobs: dict[int, deque[Job]] = {j: deque() for j in self.workers}
        self.seq = 0
        self.ready: list[tuple] = []        # (sim time or arrival number, seq, worker)
        # simulated clock: (earliest end, seq, worker) of each worker's first running job,
        # kept lazily (an entry is checked when it comes to the top), so that the next
        # event is known in O(log M) rather than by looking at every worker
        self.running: list[tuple] = []
        self.unanswered = [0] * (M + 1)     # jobs sent, reply not yet here
        self.held = [0] * (M + 1)           # jobs waiting here to be sent
        self.n_held = 0                     # their sum
        self.last_heard = [time.monotonic()] * (M + 1)
        self.turnaround = [0.0] * (M + 1)   # smoothed send-to-reply seconds

    # ---------------------------------------------------------------- creating jobs
    def create(self, assignments: list[Assignment], params: np.ndarray, version: int) -> None:
        """Jobs at (params, version), each queued behind its worker's others; sent now if
        its worker has room, else held.  The clock learns them as one batch: they leave
        the master together."""
        jobs = [self._create(a, params, version) for a in assignments]
        self.clock.sent(jobs)
        if self.clock.simulated:
            for job in jobs:
                if self._first_running(job.worker) is job:
                    self._track(job.worker)

    def _create(self, a: Assignment, params: np.ndarray, version: int) -> Job:
        worker = a.worker
        undo = self.mirror.position(worker)
        batch = self.mirror.take(worker, a.batch)
        buf = self.message(params, version, batch, a.preemptible)
        job = Job(worker, self.seq, version, batch, a.preemptible, t_assign=self.clock.now(), undo=undo)
        self.seq += 1
        self.jobs[worker].append(job)
        self.load.messages += 1
        if self.unanswered[worker] < SEND_WINDOW and not self.held[worker]:
            self.send_job(worker, buf)
            job.sent_at = time.monotonic()
            self.unanswered[worker] += 1
        else:
            job.buf = buf
            self.held[worker] += 1
            self.n_held += 1
        return job

    def _send_held(self, worker: int) -> None:
        """Send the worker's held jobs, oldest first, while it has room."""
        for job in self.jobs[worker]:
            if job.held:
                self.send_job(worker, job.buf)
                job.buf = None
                job.sent_at = time.monotonic()
                self.held[worker] -= 1
                self.n_held -= 1
                self.unanswered[worker] += 1
                if self.unanswered[worker] >= SEND_WINDOW or not self.held[worker]:
                    return

    def withdraw_held(self, version: int) -> None:
        """Held jobs older than ``version`` are obsolete: drop them unsent (newest first,
        so that each worker's cursor can be rewound to before each)."""
        for worker in self.workers:
            q = self.jobs[worker]
            while q and q[-1].held and q[-1].version < version:
                job = q.pop()
                self.mirror.restore(worker, job.undo)
                self.load.messages -= 1
                self.held[worker] -= 1
                self.n_held -= 1
                job.buf = None

    def held_buffers(self) -> list[np.ndarray] | tuple:
        if not self.n_held:
            return ()
        return [j.buf for q in self.jobs.values() for j in q if j.held]

    # ---------------------------------------------------------------- replies
    def replied(self, r: Result) -> Job:
        """A result arrived: put it on its job, then onto the event queue (or forget
        the job if it was cancelled), and send what the worker has room for."""
        worker = r.worker
        for job in self.jobs[worker]:  # its first job without a result (FIFO)
            if job.result is None:
                break
        assert job.version == r.version and job.batch == r.batch and not job.held, (
            f"worker {worker} answered (v{r.version}, b{r.batch}), expected (v{job.version}, b{job.batch})")
        now = time.monotonic()
        self.unanswered[worker] -= 1
        self.turnaround[worker] = 0.75 * self.turnaround[worker] + 0.25 * (now - job.sent_at)
        self.last_heard[worker] = now
        job.result = r
        # Workers drop a preemptible job only once the master has sent something newer,
        # which it does only after cancelling the job.
        assert job.cancelled or not (r.abandoned or r.samples == 0), (
            f"worker {worker} dropped job v{job.version} that is still live")
        key, samples, messages = self.clock.arrived(job, r)
        self._track(worker)
        if self.observe is not None:
            self.observe(job, r)
        if key is None:
            self.load.count(samples, messages)
            self._forget(job)
        else:
            heapq.heappush(self.ready, key)
        if self.held[worker] and self.unanswered[worker] < SEND_WINDOW:
            self._send_held(worker)
        return job

    def _forget(self, job: Job) -> None:
        self.jobs[job.worker].remove(job)
        if job.result is not None:
            self.recycle(job.result)

    def cancel_before(self, version: int) -> None:
        """Jobs computed at older versions are obsolete: stop waiting for them."""
        if not any(self.jobs.values()):
            return
        if self.withdraws:
            self.withdraw_held(version)
        t = self.clock.now()
        for worker in self.workers:
            changed = False
            for job in list(self.jobs[worker]):
                if job.version >= version or job.cancelled:
                    continue
                job.cancel_time = t
                changed = True
                load = self.clock.cancelled(job, t)
                if load is not None:
                    self.load.count(*load)
                    self._forget(job)
            if changed:
                self._track(worker)
        self.ready = [e for e in self.ready if self._find(e[2], e[1]) is not None]
        heapq.heapify(self.ready)

    def _find(self, worker: int, seq: int) -> Job | None:
        for job in self.jobs[worker]:
            if job.seq == seq:
                return job
        return None

    # ---------------------------------------------------------------- events
    def event_ready(self) -> bool:
        """A result can be taken as the next event: in the simulated clock, only once no
        job still running can end before it (later jobs of a worker end later still, so
        each worker's first running job is the one to look at)."""
        if not self.ready:
            return False
        if not self.clock.simulated:
            return True
        running = self.running
        while running:
            bound, seq, worker = running[0]
            job = self._first_running(worker)
            if job is None or job.seq != seq or self.clock.earliest_end(job) != bound:
                heapq.heappop(running)  # stale: that worker's entry was renewed when it changed
                continue
            return not (bound, seq) < self.ready[0][:2]
        return True

    def _first_running(self, worker: int) -> Job | None:
        return next((j for j in self.jobs[worker] if j.result is None and not j.cancelled), None)

    def _track(self, worker: int) -> None:
        """The worker's first running job, or when it may end, changed: enter it anew."""
        if self.clock.simulated:
            job = self._first_running(worker)
            if job is not None:
                heapq.heappush(self.running, (self.clock.earliest_end(job), job.seq, worker))
            if len(self.running) > 4 * len(self.workers) + 64:  # stale entries pile up below the top
                self.running = [(self.clock.earliest_end(j), j.seq, w) for w in self.workers
                                if (j := self._first_running(w)) is not None]
                heapq.heapify(self.running)

    def take(self) -> Job:
        """The next event's job, out of its queue."""
        _, seq, worker = heapq.heappop(self.ready)
        return self._taken(worker, seq)

    def has_result(self, worker: int, seq: int) -> bool:
        job = self._find(worker, seq)
        return job is not None and job.result is not None

    def take_job(self, worker: int, seq: int) -> Job:
        """A named job as the next event (a follower server takes the one rank 0 took)."""
        self.ready.remove(next(e for e in self.ready if e[1] == seq and e[2] == worker))
        heapq.heapify(self.ready)
        return self._taken(worker, seq)

    def _taken(self, worker: int, seq: int) -> Job:
        job = self._find(worker, seq)
        self.jobs[worker].remove(job)
        self.clock.took(job)
        return job

    def in_flight(self) -> bool:
        return any(j.result is None for q in self.jobs.values() for j in q)

    # ---------------------------------------------------------------- what a method asks
    def queued(self, worker: int) -> int:
        return len(self.jobs[worker])

    def at_epoch_end(self) -> bool:
        return self.mirror.at_epoch_end()

    def epoch(self) -> float:
        return self.mirror.epoch()

    # ---------------------------------------------------------------- silence
    def heard(self, worker: int, when: float) -> None:
        self.last_heard[worker] = max(self.last_heard[worker], when)

    def quiet_for(self, worker: int, now: float) -> float:
        """Seconds since the worker last answered or was last sent a job it owes."""
        oldest = next((j.sent_at for j in self.jobs[worker] if j.result is None and not j.held), -math.inf)
        return now - max(self.last_heard[worker], oldest)

    def overdue(self, now: float) -> list[float]:
        """Per worker (index rank - 1): how long its oldest unanswered job has been out."""
        return [next((now - j.sent_at for j in self.jobs[w] if j.result is None and not j.held), 0.0)
                for w in self.workers]

    def lagging(self, now: float) -> list[int]:
        """Workers whose next reply is far later than usual."""
        return [j for j in self.workers if self.unanswered[j] and
                self.quiet_for(j, now) > max(LAG_MIN, LAG_FACTOR * self.turnaround[j])]

    # ---------------------------------------------------------------- state
    def state_dict(self, result_row: Callable[[Result], np.ndarray], width: int) -> dict:
        """Live jobs after a drain, each with its timing, its place in the event queue
        and its result, so a resumed engine takes them exactly where this one would.
        (Their workers have moved past them: cursors and delay streams included.)"""
        key = {(w, seq): k0 for k0, seq, w in self.ready}
        live = sorted((j for q in self.jobs.values() for j in q), key=lambda j: j.seq)
        assert all((j.worker, j.seq) in key and not j.result.pairs.size for j in live)
        return {
            "seq": self.seq, "mirror": self.mirror.state_dict(),
            "jobs": np.array([[j.worker, j.seq, j.version, j.batch, int(j.preemptible)] for j in live],
                             dtype=np.int64).reshape(-1, 5),
            "times": np.array([[j.t_assign, j.start, j.t_done, key[j.worker, j.seq]] for j in live],
                              dtype=np.float64).reshape(-1, 4),
            "results": np.array([result_row(j.result) for j in live], dtype=np.float64).reshape(-1, width),
        }

    def load_state_dict(self, state: dict, result_from_row: Callable[[int, np.ndarray], Result]) -> None:
        self.seq = int(state["seq"])
        self.mirror.load_state_dict(state["mirror"])
        for (worker, seq, version, batch, preemptible), (t_assign, start, t_done, k0), row in zip(
                state["jobs"].tolist(), state["times"].tolist(), state["results"]):
            job = Job(worker, seq, version, batch, bool(preemptible), t_assign, start=start, t_done=t_done,
                      sent_at=time.monotonic(), result=result_from_row(worker, row))
            self.jobs[worker].append(job)
            self.ready.append((self.clock.stored_key(k0), seq, worker))
        heapq.heapify(self.ready)
