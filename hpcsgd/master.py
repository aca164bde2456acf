"""The master (rank 0): holds the model, applies updates, decides who computes what.

Loop, in one sentence: take the next event (a worker's result), let the method decide
whether to update the model and which jobs to hand out, then trace, evaluate,
checkpoint and check the stopping rule between updates.

Events come in one of two orders (SPEC section 2):
- wall clock: the order results arrive;
- simulated clock: the order of their simulated completion times.  A job assigned at
  simulated time t to worker j starts at max(t, end of j's previous job) and ends a
  drawn duration later.  The master only takes the earliest known completion once no
  job still in flight could complete before it, so the order never depends on which
  MPI message happens to arrive first.  Ties in simulated time go to the job handed
  out first (the lower job number): when durations are equal (or all zero) workers are
  served in the order their jobs were created, so every method makes progress.

Waiting (``_wait``): every wait of the master -- for the next event, an evaluation, a
checkpoint's replies -- keeps receiving whatever arrives, notices a stop request, and
ends the job (``WorkerSilentError``, exit status 4) when a worker it needs has been
silent for ``run.worker_timeout`` seconds, or when a stop request could not gather the
replies for its checkpoint within ``run.stop_timeout``.

Sending: at most ``SEND_WINDOW`` jobs are on their way to, or waiting at, a worker;
later ones are held here until it answers.  MPICH moves a rank's outgoing messages
through one queue, so messages to a rank that does not receive (frozen, stopped) would
hold up every later message to every other rank (measured: after 63 messages), and a
fastest-k master would stop feeding the live workers.  In the wall clock a held job
that gets cancelled is withdrawn unsent (its worker never sees it); in the simulated
clock nothing is withdrawn, so the trajectory never depends on timing.
"""

from __future__ import annotations

import heapq
import math
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mpi4py import MPI

from hpcsgd import __version__, checkpoint
from hpcsgd import comm as C
from hpcsgd.config import to_json
from hpcsgd.engine.interface import Assignment, Result
from hpcsgd.errors import CheckpointWriteError, DivergenceError, WorkerSilentError
from hpcsgd.kernels.optim import heavy_ball_step, sgd_step
from hpcsgd.kernels.regularizers import prox_l1
from hpcsgd.ordering import ORDERINGS
from hpcsgd.stop import StopRequest
from hpcsgd import streams
from hpcsgd.streams import make_stream, set_stream_state, stream_state
from hpcsgd.stragglers import samples_done
from hpcsgd.trace import EVAL_COLUMNS, TRACE_COLUMNS, Table


SEND_WINDOW = 2      # jobs sent to a worker and not yet answered
SPARE_BUFFERS = 4    # job buffers of past versions kept for reuse
# Wall clock: a worker is lagging (a due checkpoint is postponed rather than wait for it)
# when its next reply is this many times its usual turnaround late, and at least LAG_MIN s.
LAG_FACTOR = 10.0
LAG_MIN = 1.0


@dataclass(slots=True)
class Job:
    worker: int
    seq: int
    version: int
    batch: int
    flags: int
    t_assign: float
    buf: np.ndarray | None = None      # the job message while it is held here, unsent
    undo: tuple[int, int] = (0, 0)     # the worker's epoch cursor before this job
    sent_at: float = math.nan          # monotonic time it was sent
    start: float = math.nan
    t_done: float = math.nan
    cancel_time: float = math.nan
    result: "Result | None" = None

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
        self._stale = True
        return actual

    def at_epoch_end(self) -> bool:
        """Every worker's next job starts a new epoch."""
        return all(p >= n for p, n in zip(self.pos, self.sizes))

    def epoch(self) -> float:
        """Passes completed by the slowest worker (fractional)."""
        if self._stale:
            self._epoch = min(s - 1 + p / n if s > 0 else 0.0
                              for s, p, n in zip(self.started, self.pos, self.sizes))
            self._stale = False
        return self._epoch

    def state(self) -> dict:
        return {"mirror_pos": np.array(self.pos, dtype=np.int64),
                "mirror_started": np.array(self.started, dtype=np.int64),
                "mirror_sizes": np.array(self.sizes, dtype=np.int64)}

    def load(self, engine_state: dict) -> None:
        self.pos = [int(p) for p in engine_state["mirror_pos"]]
        self.started = [int(s) for s in engine_state["mirror_started"]]
        self._stale = True


def worker_states(tree: dict, sizes: list[int]) -> dict[int, dict]:
    """Each worker's state (``Worker.load_state_dict``'s argument) out of a checkpoint
    tree, for workers with these shard sizes."""
    order = tree["order"]
    states = {}
    for j, n in enumerate(sizes, start=1):
        st = {"rng": tree["rng"][f"worker_{j}"], "ordering": tree["state"]["workers"][f"worker_{j}"],
              "order": {"perm": order["perm"][j - 1][order["perm"][j - 1] >= 0][:n].copy(),
                        "pos": int(order["pos"][j - 1]),
                        "epochs_started": int(order["epochs_started"][j - 1])}}
        if "history" in order:
            h = order["history"][:, j - 1, :n]
            st["order"]["history"] = h[(h >= 0).all(axis=1)].copy()
        states[j] = st
    return states


class Master:
    def __init__(self, comm: MPI.Comm, cfg: dict, model, shard_sizes: list[int], method,
                 run_dir: Path, stop: StopRequest, hosts: list[str] | None = None,
                 test_rows: int = -1, data_fingerprint: str = "", quiet: bool = False):
        self.comm = comm
        self.stop = stop
        self.cfg = cfg
        self.model = model
        self.method = method
        self.run_dir = run_dir
        self.quiet = quiet
        self.M = comm.Get_size() - 1
        self.workers = range(1, self.M + 1)
        self.hosts = list(hosts) if hosts else ["?"] * (self.M + 1)  # by rank
        self.test_rows = test_rows
        self.data_fingerprint = data_fingerprint  # the data set's content hash, kept in checkpoints
        self.simulated = cfg["run"]["clock"] == "simulated"
        self.lr = cfg["method"]["lr"]
        self.beta = cfg["method"]["momentum"]
        self.l1 = cfg["model"]["l1"]
        self.d = model.dim

        self.params = np.zeros(self.d)
        self.momentum = np.zeros(self.d)
        self.version = 0
        self.rng = make_stream(cfg["run"]["seed"], 0, streams.METHOD)
        self.mirror = EpochMirror(shard_sizes)
        self.contributions = [0] * (self.M + 1)  # applied gradients per worker
        self.trace = Table(TRACE_COLUMNS)
        self.evals = Table(EVAL_COLUMNS)

        # scheduling state
        self.seq = 0
        self.sim_now = 0.0
        self.worker_end = np.zeros(self.M + 1)
        self.jobs: dict[int, deque[Job]] = {j: deque() for j in self.workers}
        self.ready: list[tuple[float, int, int]] = []  # (sim time or arrival number, seq, worker)
        self.pending: list[Assignment] = []  # assignments not yet made

        # per-row counters, flushed into each trace row
        self.row_samples = 0
        self.row_messages = 0
        self.row_compute = 0.0
        self.busy_seconds = 0.0  # master time spent deciding and updating (not waiting)
        self.wait_seconds = 0.0  # master time spent waiting for results

        # wall clock: time spent in evaluation and checkpoints is not training time
        self.wall_offset = 0.0
        self.t0 = time.perf_counter()
        self.paused = 0.0
        self.wall_floor = 0.0  # the training clock never runs backwards
        self.stop_reason = ""
        self.last_checkpoint: Path | None = None

        # transport
        self.send_reqs: list[MPI.Request] = []  # sends not known complete, and their buffers
        self.send_bufs: list[np.ndarray] = []
        self.job_bufs: dict[tuple[int, int], np.ndarray] = {}  # (batch, flags) -> this version's job
        self.job_bufs_version = -1
        self.retired_bufs: list[np.ndarray] = []  # older versions' buffers, reusable once unused
        self.spare_job_bufs: list[np.ndarray] = []
        self.recv_size = C.result_length(self.d, ORDERINGS[cfg["order"]["kind"]].pair_differences(cfg["order"]["batch"]))
        self.free_bufs: list[np.ndarray] = []
        self.recv_bufs: dict[int, np.ndarray] = {}
        self.recvs = [self._post_recv(j) for j in self.workers]
        self.unanswered = [0] * (self.M + 1)            # jobs sent, reply not yet here
        self.held = [0] * (self.M + 1)                  # jobs waiting here to be sent
        self.last_heard = [time.monotonic()] * (self.M + 1)
        self.turnaround = [0.0] * (self.M + 1)          # smoothed send-to-reply seconds
        self.arrivals = 0
        self.updated = False
        self.backoff = C.Backoff()

        # waiting for evaluations and checkpoint state
        self.eval_pending: dict | None = None  # the evaluation whose replies are awaited
        self.eval_due = False                  # wall clock: one came due meanwhile
        self.eval_bufs = None
        self.trees: dict[int, dict] = {}
        self.trees_wanted: set[int] = set()
        self.postponed: dict[int, float] | None = None  # checkpoint waits for these to be heard
        self.worker_timeout = cfg["run"]["worker_timeout"]
        self.stop_timeout = cfg["run"]["stop_timeout"]
        self.stop_deadline = math.inf
        # wall clock, no other stopping rule: the epoch count needs every worker
        self.epochs_only = (not self.simulated and bool(cfg["run"]["epochs"])
                            and not cfg["run"]["max_updates"] and not cfg["run"]["max_seconds"])
        self.next_epochs_check = 0.0

        self.max_updates = cfg["run"]["max_updates"]
        self.max_epochs = cfg["run"]["epochs"]
        self.max_seconds = cfg["run"]["max_seconds"]
        self.eval_every = cfg["run"]["eval_every"]
        self.eval_seconds = cfg["run"]["eval_seconds"]
        self.next_eval_at = 0.0  # eval_seconds: the clock time that makes the next evaluation due
        self.ckpt_every = cfg["run"]["checkpoint_every"]
        self.progress_every = cfg["run"]["progress_every"]
        self.last_progress = time.perf_counter()
        self.progress_updates = 0

    # ------------------------------------------------------------------ clocks
    def wall_time(self) -> float:
        t = self.wall_offset + time.perf_counter() - self.t0 - self.paused
        if t > self.wall_floor:
            self.wall_floor = t
        return self.wall_floor

    def now(self) -> float:
        """The clock that orders events: simulated seconds, or wall seconds."""
        return self.sim_now if self.simulated else self.wall_time()

    # ------------------------------------------------------------------ messaging
    def _post_recv(self, worker: int) -> MPI.Request:
        buf = self.free_bufs.pop() if self.free_bufs else np.empty(self.recv_size)
        self.recv_bufs[worker] = buf
        return self.comm.Irecv(buf, source=worker, tag=C.TAG_RESULT)

    def _send(self, buf: np.ndarray, worker: int, tag: int) -> None:
        self.send_reqs.append(self.comm.Isend(buf, dest=worker, tag=tag))
        self.send_bufs.append(buf)
        if len(self.send_reqs) > 8 * self.M:  # a rank that does not receive: keep the list short
            self._reap_sends()

    def _reap_sends(self) -> None:
        """Forget completed sends; recycle old job buffers no send or held job uses."""
        reqs = self.send_reqs
        if reqs:
            done = MPI.Request.Testsome(reqs)
            if done and len(done) == len(reqs):
                reqs.clear()
                self.send_bufs.clear()
            elif done:
                gone = set(done)
                self.send_reqs = [r for i, r in enumerate(reqs) if i not in gone]
                self.send_bufs = [b for i, b in enumerate(self.send_bufs) if i not in gone]
        if not self.retired_bufs:
            return
        if self.send_reqs or any(self.held):
            busy = {id(b) for b in self.send_bufs}
            busy.update(id(j.buf) for q in self.jobs.values() for j in q if j.held)
        else:
            busy = ()  # the usual case: every send done, nothing held
        keep = []
        for buf in self.retired_bufs:
            if id(buf) in busy:
                keep.append(buf)
            elif len(self.spare_job_bufs) < SPARE_BUFFERS:
                self.spare_job_bufs.append(buf)
        self.retired_bufs = keep

    def assign(self, a: Assignment) -> None:
        """Create a job at the current model for ``a.worker``; it queues behind its others."""
        worker, batch, flags = a.worker, a.batch, C.FLAG_PREEMPTIBLE if a.preemptible else 0
        undo = self.mirror.position(worker)
        actual = self.mirror.take(worker, batch)
        buf = self._job_buffer(actual, flags)
        job = Job(worker, self.seq, self.version, actual, flags, t_assign=self.now(), undo=undo)
        self.seq += 1
        self.jobs[worker].append(job)
        self.row_messages += 1
        if self.unanswered[worker] < SEND_WINDOW and not self.held[worker]:
            self._send(buf, worker, C.TAG_JOB)
            job.sent_at = time.monotonic()
            self.unanswered[worker] += 1
        else:
            job.buf = buf
            self.held[worker] += 1

    def _job_buffer(self, batch: int, flags: int) -> np.ndarray:
        """The job message at the current version.  Isend needs a buffer nobody writes to
        until it completes, and the model changes at the next update: the parameters are
        copied once per version and the copy shared by every job of that version (old
        buffers are reused: a fresh d-sized allocation per update costs page faults)."""
        if self.job_bufs_version != self.version:
            self.retired_bufs.extend(self.job_bufs.values())
            self.job_bufs.clear()
            self.job_bufs_version = self.version
        buf = self.job_bufs.get((batch, flags))
        if buf is None:
            if not self.spare_job_bufs:
                self._reap_sends()  # refills the spares from retired buffers now unused
            buf = self.spare_job_bufs.pop() if self.spare_job_bufs else np.empty(C.JOB_HEADER + self.d)
            buf[C.J_VERSION], buf[C.J_BATCH], buf[C.J_FLAGS] = self.version, batch, flags
            buf[C.JOB_HEADER:] = self.params
            self.job_bufs[batch, flags] = buf
        return buf

    def _send_held(self, worker: int) -> None:
        """Send the worker's held jobs, oldest first, while fewer than SEND_WINDOW of its
        jobs are unanswered."""
        if self.unanswered[worker] >= SEND_WINDOW or not self.held[worker]:
            return
        for job in self.jobs[worker]:
            if job.held:
                self._send(job.buf, worker, C.TAG_JOB)
                job.buf = None
                job.sent_at = time.monotonic()
                self.held[worker] -= 1
                self.unanswered[worker] += 1
                if self.unanswered[worker] >= SEND_WINDOW or not self.held[worker]:
                    return

    def _withdraw_held(self, worker: int, version: int) -> None:
        """Wall clock: held jobs older than ``version`` are obsolete; drop them unsent
        (newest first, so that the epoch cursor can be rewound to before each)."""
        q = self.jobs[worker]
        while q and q[-1].held and q[-1].version < version:
            job = q.pop()
            self.mirror.restore(worker, job.undo)
            self.row_messages -= 1
            self.held[worker] -= 1
            job.buf = None

    def send_signs(self, worker: int, eps: np.ndarray) -> None:
        """CD-GraB signs for ``worker``'s last pairs; they reach it before its next job."""
        self._send(eps.astype(np.float64), worker, C.TAG_SIGNS)

    def _assign_pending(self) -> None:
        pending, self.pending = self.pending, []
        for a in pending:
            self.assign(a)

    def _receive_some(self) -> bool:
        """Move arrived results onto their jobs; True if anything arrived."""
        idx = MPI.Request.Testsome(self.recvs)
        if not idx:
            return False
        for i in sorted(idx):
            worker = i + 1
            buf = self.recv_bufs[worker]
            self.recvs[i] = self._post_recv(worker)
            self._on_arrival(worker, buf)
        return True

    def _parse(self, worker: int, buf: np.ndarray) -> Result:
        h = buf[:C.RESULT_HEADER].tolist()  # one conversion, not one NumPy scalar per field
        return Result(worker=worker, version=int(h[C.R_VERSION]),
                   batch=int(h[C.R_BATCH]), samples=int(h[C.R_SAMPLES]),
                   duration=float(h[C.R_DURATION]), delay_comm=float(h[C.R_DELAY_COMM]),
                   compute_seconds=float(h[C.R_COMPUTE_S]),
                   loss_sum=float(h[C.R_LOSS_SUM]), abandoned=bool(h[C.R_ABANDONED]),
                   epoch=int(h[C.R_EPOCH]), stop=bool(h[C.R_STOP]),
                   grad=buf[C.RESULT_HEADER:C.RESULT_HEADER + self.d],
                   pairs=buf[C.RESULT_HEADER + self.d:
                             C.RESULT_HEADER + self.d * (1 + int(h[C.R_PAIRS]))].reshape(-1, self.d),
                   buf=buf)

    def _on_arrival(self, worker: int, buf: np.ndarray) -> None:
        r = self._parse(worker, buf)
        if r.stop and not self.stop.reason:
            self.stop.reason = f"a signal on worker {worker}"
        # A worker answers its jobs in the order it got them.
        job = next(j for j in self.jobs[worker] if j.result is None)
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
        if self.simulated:
            job.start = max(job.t_assign, self.worker_end[worker])
            end = job.start + r.duration
            if job.cancelled:
                end = max(job.start, min(end, job.cancel_time))
            job.t_done = end
            self.worker_end[worker] = end
            if job.cancelled:
                self._forget(job)  # its load was counted when it was cancelled
            else:
                heapq.heappush(self.ready, (job.t_done, job.seq, worker))
        else:
            job.t_done = self.wall_time()
            self.method.observe(job, r)
            if job.cancelled:
                self._count_dropped(r.samples, sent_gradient=r.carries_gradient)
                self._forget(job)
            else:
                heapq.heappush(self.ready, (self.arrivals, job.seq, worker))
                self.arrivals += 1
        if self.held[worker]:
            self._send_held(worker)

    def _count_dropped(self, samples: int, sent_gradient: bool = False) -> None:
        """A dropped job's work (the samples it got through) counts as load in the
        current trace row, and its reply as a message if it carried a gradient: messages
        count parameter vectors sent and gradients received, not bare acknowledgements
        (a worker answers an abandoned job with a header only)."""
        if sent_gradient:
            self.row_messages += 1
        self.row_samples += samples

    def _forget(self, job: Job) -> None:
        self.jobs[job.worker].remove(job)
        if job.result is not None:
            self.free_bufs.append(job.result.buf)

    def cancel_jobs_before(self, version: int) -> None:
        """Jobs computed at older versions are obsolete: stop waiting for them.

        In the simulated clock a job cancelled at time t ran from its start until t (or
        not at all), which is known now whether or not its reply has arrived, so its load
        goes into the trace row deterministically.
        """
        if not any(self.jobs.values()):
            return
        t = self.now()
        for worker in self.workers:
            if not self.simulated:
                self._withdraw_held(worker, version)
            for job in list(self.jobs[worker]):
                if job.version >= version or job.cancelled:
                    continue
                job.cancel_time = t
                if not self.simulated:
                    if job.result is not None:
                        self._count_dropped(job.result.samples, sent_gradient=job.result.carries_gradient)
                        self._forget(job)
                    continue  # counted and forgotten when its reply arrives
                if job.result is None:
                    # Not started before t: the master takes an event only once every
                    # job that could end earlier has reported (only the final stop
                    # cancels jobs still running, and that work is not traced).
                    continue
                end = max(job.start, min(job.t_done, t))
                if self.worker_end[worker] == job.t_done:
                    self.worker_end[worker] = end
                r = job.result
                self._count_dropped(samples_done(job.batch, r.duration - r.delay_comm, t - job.start))
                self._forget(job)
        self.ready = [e for e in self.ready if self._job(e[2], e[1]) is not None]
        heapq.heapify(self.ready)

    def _job(self, worker: int, seq: int) -> Job | None:
        return next((j for j in self.jobs[worker] if j.seq == seq), None)

    def _can_take(self, key: tuple[float, int, int]) -> bool:
        """Simulated clock: no job still running can finish before ``key``."""
        for worker in self.workers:
            for job in self.jobs[worker]:
                if job.result is None and not job.cancelled:
                    if (max(job.t_assign, self.worker_end[worker]), job.seq) < key[:2]:
                        return False
                    break  # later jobs of this worker end later still
        return True

    def _event_ready(self) -> bool:
        return bool(self.ready) and (not self.simulated or self._can_take(self.ready[0]))

    def next_event(self) -> Job:
        self._wait(self._event_ready, "a result", self.backoff)
        _, seq, worker = heapq.heappop(self.ready)
        job = self._job(worker, seq)
        self.jobs[worker].remove(job)
        if self.simulated:
            self.sim_now = job.t_done
        self.row_messages += 1
        self.row_samples += job.batch
        self.row_compute = max(self.row_compute, job.result.compute_seconds)
        return job

    def _in_flight(self) -> bool:
        return any(j.result is None for q in self.jobs.values() for j in q)

    def drain(self, give_up=None) -> list[int]:
        """Wait for every job in flight (cancelled ones are dropped on arrival); with
        ``give_up``, stop early and return the workers it names."""
        return self._wait(lambda: not self._in_flight(), "the jobs in flight", give_up=give_up)

    # ------------------------------------------------------------------ waiting
    def _poll(self) -> bool:
        """Receive whatever has arrived: results, evaluation replies, state trees."""
        got = self._receive_some()
        if self.eval_pending is not None and MPI.Request.Testall(self.eval_pending["recvs"]):
            self._finish_eval()
            got = True
        if self.trees_wanted:
            for j in sorted(self.trees_wanted):
                if self.comm.Iprobe(source=j, tag=C.TAG_TREE):
                    self.trees[j] = C.recv_tree(self.comm, j)
                    self.trees_wanted.discard(j)
                    self.last_heard[j] = time.monotonic()
                    got = True
        return got

    def _wait(self, done, what: str, backoff: C.Backoff | None = None, give_up=None) -> list[int]:
        """Receive until ``done()``; meanwhile honour stop requests and the watchdog.
        ``give_up()`` may end the wait early by returning the workers it gives up on."""
        backoff = backoff or C.Backoff()
        started = time.monotonic()
        idle = 0
        while not done():
            if self._poll():
                continue
            idle += 1
            if idle % 16 == 0:  # the clocks are looked at now and then, not on every poll
                self._watch(started, what)
                if give_up is not None:
                    lagging = give_up()
                    if lagging:
                        backoff.done()
                        return lagging
            backoff.wait()
        backoff.done()
        return []

    def _owes(self, worker: int) -> bool:
        """Something sent to ``worker`` still waits for its answer."""
        if self.unanswered[worker] or worker in self.trees_wanted:
            return True
        pending = self.eval_pending
        return pending is not None and not pending["recvs"][worker - 1].Test()

    def _quiet_for(self, worker: int, now: float) -> float:
        oldest = next((j.sent_at for j in self.jobs[worker] if j.result is None and not j.held), -math.inf)
        return now - max(self.last_heard[worker], oldest)

    def _watch(self, started: float, what: str) -> None:
        """Called while a wait gets nothing: the stop deadline, the watchdog, and a
        wait for something nobody owes (an engine bug, never a silent hang)."""
        now = time.monotonic()
        if self.stop_deadline == math.inf and self.stop.check():
            self.stop_deadline = now + self.stop_timeout
        waited = now - started
        if waited < 1.0 and now < self.stop_deadline:
            return
        owing = [j for j in self.workers if self._owes(j)]
        if now >= self.stop_deadline:
            raise WorkerSilentError(owing, f"the stop request ({self.stop.reason}) waited "
                                           f"{self.stop_timeout:g} s (run.stop_timeout) for {what}")
        if self.worker_timeout and waited >= self.worker_timeout:
            silent = [j for j in owing if self._quiet_for(j, now) >= self.worker_timeout]
            if silent:
                raise WorkerSilentError(silent, f"the master waited {waited:.0f} s "
                                                f"(run.worker_timeout) for {what}")
        if not owing:
            raise RuntimeError(f"the master waits for {what} but no worker owes it anything")

    def queued(self, worker: int) -> int:
        return len(self.jobs[worker])

    def at_epoch_end(self) -> bool:
        return self.mirror.at_epoch_end()

    def overdue_seconds(self) -> list[float]:
        """Wall clock: per worker (index rank - 1), how long its oldest unanswered job
        has been out (0 when it owes nothing)."""
        now = time.monotonic()
        return [next((now - j.sent_at for j in self.jobs[w] if j.result is None and not j.held), 0.0)
                for w in self.workers]

    def _lagging(self) -> list[int]:
        """Wall clock: workers whose next reply is far later than usual."""
        now = time.monotonic()
        return [j for j in self.workers if self.unanswered[j] and
                self._quiet_for(j, now) > max(LAG_MIN, LAG_FACTOR * self.turnaround[j])]

    def _inflight_tree(self) -> dict:
        """Live jobs after ``drain``: each with its timing, its place in the event queue
        and its result, so a resumed master takes them exactly where this one would.
        (Their workers have moved past them: cursors and delay streams included.)"""
        key = {(w, seq): k0 for k0, seq, w in self.ready}
        live = sorted((j for q in self.jobs.values() for j in q), key=lambda j: j.seq)
        assert all((j.worker, j.seq) in key and not j.result.pairs.size for j in live)
        n = C.RESULT_HEADER + self.d
        return {
            "jobs": np.array([[j.worker, j.seq, j.version, j.batch, j.flags] for j in live],
                             dtype=np.int64).reshape(-1, 5),
            "times": np.array([[j.t_assign, j.start, j.t_done, key[j.worker, j.seq]] for j in live],
                              dtype=np.float64).reshape(-1, 4),
            "results": np.array([j.result.buf[:n] for j in live], dtype=np.float64).reshape(-1, n),
        }

    def _load_inflight(self, tree: dict) -> None:
        n = C.RESULT_HEADER + self.d
        for (worker, seq, version, batch, flags), (t_assign, start, t_done, k0), row in zip(
                tree["jobs"].tolist(), tree["times"].tolist(), tree["results"]):
            buf = np.empty(self.recv_size)
            buf[:n] = row
            job = Job(worker, seq, version, batch, flags, t_assign, start=start, t_done=t_done,
                      sent_at=time.monotonic(), result=self._parse(worker, buf))
            self.jobs[worker].append(job)
            self.ready.append((k0 if self.simulated else int(k0), seq, worker))
        heapq.heapify(self.ready)

    # ------------------------------------------------------------------ updates
    def apply(self, grad: np.ndarray, *, contributors: list[int], staleness: int, batch: int,
              step_size: float | None = None, scale: float = 1.0, extra: dict | None = None,
              block: slice | None = None) -> None:
        """Step along ``scale * grad``, built from the listed workers' results, then the
        l1 prox; with ``block``, only those coordinates move (block-coordinate methods,
        whose ``grad`` is the block's gradient).

        Scaling inside the fused step kernel saves a pass over d when a method hands
        over a sum of gradients rather than their mean.
        """
        lr = self.lr if step_size is None else step_size
        params = self.params if block is None else self.params[block]
        if self.beta > 0.0:
            momentum = self.momentum if block is None else self.momentum[block]
            finite = heavy_ball_step(params, momentum, grad, lr, self.beta, scale)
        else:
            finite = sgd_step(params, grad, lr, scale)
        if not finite:
            raise DivergenceError(f"non-finite gradient at update {self.version + 1}")
        if self.l1 > 0.0:
            prox_l1(params, lr * self.l1)
        self.version += 1
        for j in contributors:
            self.contributions[j] += 1
        worker = contributors[0] if len(contributors) == 1 else -1
        k = len(contributors)
        self.trace.append(update=self.version, wall_time=self.wall_time(),
                          sim_time=self.sim_now if self.simulated else math.nan,
                          worker=worker, staleness=staleness, step_size=lr, k=k, batch=batch,
                          samples_computed=self.row_samples, messages=self.row_messages,
                          compute_seconds=self.row_compute, **(extra or {}))
        self.row_samples = 0
        self.row_messages = 0
        self.row_compute = 0.0
        self.updated = True


    # ------------------------------------------------------------------ evaluation
    def evaluate(self, wait: bool = False) -> None:
        """Full train and test metrics at the current model, summed over every worker's
        rows.  In the simulated clock (or with ``wait``) the master waits for them; in the
        wall clock it trains on while the replies come, so a frozen worker delays the
        row, not the run (an evaluation due meanwhile is made once that one is in).
        The row's times are those of the request; the training clock is set back by the
        evaluation's own cost (the slowest worker's compute and the reduction here)."""
        if self.eval_pending is not None:
            if not (wait or self.simulated):
                self.eval_due = True
                return
            self._wait(lambda: self.eval_pending is None, "an evaluation")
        self.eval_due = False
        if self.eval_bufs is None:
            self.eval_bufs = np.empty((self.M, C.EVAL_HEADER + self.d))
        buf = C.job_buffer(self.params, self.version, 0)
        for j in self.workers:
            self._send(buf, j, C.TAG_EVAL)
        self.eval_pending = {
            "row": dict(update=self.version, epoch=self.mirror.epoch(), wall_time=self.wall_time(),
                        sim_time=self.sim_now if self.simulated else math.nan),
            "params": buf[C.JOB_HEADER:],
            "recvs": [self.comm.Irecv(self.eval_bufs[j - 1], source=j, tag=C.TAG_EVAL_RESULT)
                      for j in self.workers],
        }
        if wait or self.simulated:
            self._wait(lambda: self.eval_pending is None, "an evaluation")

    def _finish_eval(self) -> None:
        t = time.perf_counter()
        pending, self.eval_pending = self.eval_pending, None
        replies = self.eval_bufs
        now = time.monotonic()
        for j in self.workers:
            self.last_heard[j] = max(self.last_heard[j], now)
        tot = replies[:, :C.EVAL_HEADER].sum(axis=0)
        params = pending["params"]
        grad = replies[:, C.EVAL_HEADER:].sum(axis=0) / tot[C.E_TRAIN_N]
        self.model.reg_grad_add(params, grad)
        reg = self.model.reg_value(params) + self.l1 * float(np.abs(params).sum())
        n_test = tot[C.E_TEST_N]
        classify = self.model.kind != "least_squares"
        row = dict(pending["row"],
                   train_loss=tot[C.E_TRAIN_LOSS] / tot[C.E_TRAIN_N] + reg,
                   # no test rows: no test metrics (NaN), never a made-up 0
                   test_loss=tot[C.E_TEST_LOSS] / n_test if n_test else math.nan,
                   test_accuracy=tot[C.E_TEST_CORRECT] / n_test if classify and n_test else math.nan,
                   grad_norm=float(np.linalg.norm(grad)))
        self.evals.append(**row)
        self._schedule_eval()
        self.paused += float(replies[:, C.E_SECONDS].max()) + time.perf_counter() - t
        if not math.isfinite(row["train_loss"]):
            raise DivergenceError(f"non-finite training loss at update {row['update']}")

    def _schedule_eval(self) -> None:
        """eval_seconds: the next evaluation is due at the first multiple of eval_seconds
        after the last one's clock time (derived from /eval, so a resumed run keeps it)."""
        if self.eval_seconds and self.evals.n:
            last = self.evals.last("sim_time" if self.simulated else "wall_time")
            self.next_eval_at = (math.floor(last / self.eval_seconds) + 1) * self.eval_seconds

    def _eval_is_due(self) -> bool:
        if self.eval_due and self.eval_pending is None:
            return True
        if self.eval_every:
            return self.version % self.eval_every == 0
        return bool(self.eval_seconds) and self.now() >= self.next_eval_at

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, postpone: bool = False) -> Path | None:
        """Write a checkpoint; every worker's order and streams come with it, so every
        job in flight is waited for first.  With ``postpone`` (wall clock, periodic
        checkpoints) a lagging worker is not waited for: the checkpoint is taken at the
        first update after it has answered again, and training goes on meanwhile."""
        self.method.flush(self)
        lagging = self.drain(give_up=self._lagging if postpone and not self.simulated else None)
        if lagging:
            if self.postponed is None and not self.quiet:
                print(f"[hpcsgd] checkpoint at update {self.version} postponed: "
                      f"no reply from {self.describe(lagging, time.monotonic())}; training goes on",
                      flush=True)
            self.postponed = {j: self.last_heard[j] for j in lagging}
            return None
        self.postponed = None
        if self.eval_pending is not None:
            self._wait(lambda: self.eval_pending is None, "an evaluation")
        t = time.perf_counter()
        for j in self.workers:
            self._send(C.job_buffer(None, self.version, 0), j, C.TAG_STATE_GET)
        self.trees, self.trees_wanted = {}, set(self.workers)
        self._wait(lambda: not self.trees_wanted, "the workers' state for a checkpoint")
        tree = self.state_tree(self.trees)
        self.trees = {}
        try:
            path = checkpoint.save_checkpoint(self.run_dir, tree, keep=self.cfg["run"]["keep_checkpoints"])
        except OSError as exc:
            raise CheckpointWriteError(
                f"cannot write a checkpoint into {self.run_dir} at update {self.version} "
                f"({exc.strerror or exc}); {self.last_checkpoint_text()}") from None
        self.last_checkpoint = path
        self.paused += time.perf_counter() - t
        return path

    def _checkpoint_is_due(self) -> bool:
        if self.postponed is not None:
            return all(self.last_heard[j] > t for j, t in self.postponed.items())
        return bool(self.ckpt_every) and self.version % self.ckpt_every == 0

    def last_checkpoint_text(self) -> str:
        """Names the checkpoint that is intact: this job's last one, or the one it
        resumed from (``last_checkpoint`` starts there)."""
        if self.last_checkpoint is not None:
            return f"the last good checkpoint is {self.last_checkpoint}"
        return f"no checkpoint was written in {self.run_dir}"

    def describe(self, workers: list[int], now: float) -> str:
        """'worker 3 (host n07, silent 12 s)' for each of ``workers``."""
        return ", ".join(f"worker {j} (host {self.hosts[j]}, silent {self._quiet_for(j, now):.0f} s)"
                         for j in workers)

    def state_tree(self, worker_states: dict[int, dict]) -> dict:
        M = self.M
        nmax = max(self.mirror.sizes)
        perm = np.full((M, nmax), -1, dtype=np.int64)
        order = {"perm": perm, "pos": np.zeros(M, dtype=np.int64),
                 "epochs_started": np.zeros(M, dtype=np.int64)}
        rng = {"master": {"method": stream_state(self.rng)}}
        workers = {}
        histories = {}
        for j, st in worker_states.items():
            p = st["order"]["perm"]
            perm[j - 1, :p.size] = p
            order["pos"][j - 1] = st["order"]["pos"]
            order["epochs_started"][j - 1] = st["order"]["epochs_started"]
            if "history" in st["order"]:
                histories[j] = st["order"]["history"]
            rng[f"worker_{j}"] = st["rng"]
            workers[f"worker_{j}"] = st["ordering"]
        if histories:
            epochs = max(h.shape[0] for h in histories.values())
            hist = np.full((epochs, M, nmax), -1, dtype=np.int64)
            for j, h in histories.items():
                hist[:h.shape[0], j - 1, :h.shape[1]] = h
            order["history"] = hist
        pending = np.array([(a.worker, a.batch, C.FLAG_PREEMPTIBLE if a.preemptible else 0) for a in self.pending],
                           dtype=np.int64).reshape(-1, 3)
        return {
            "update": self.version, "epoch": self.mirror.epoch(), "method": self.method.name,
            "world_size": M + 1, "config": to_json(self.cfg), "clock": self.cfg["run"]["clock"],
            "hpcsgd_version": __version__, "stop_reason": self.stop_reason or "",
            "test_rows": self.test_rows, "data_fingerprint": self.data_fingerprint,
            "model": {"params": self.params.copy()},
            "state": {
                "optimizer": {"momentum": self.momentum.copy()},
                "method": self.method.state_dict(),
                "engine": {"version": self.version, "seq": self.seq, "sim_now": self.sim_now,
                           "wall_time": self.wall_time(), "worker_end": self.worker_end.copy(),
                           "contributions": np.array(self.contributions, dtype=np.int64),
                           **self.mirror.state(),
                           "pending": pending, "arrivals": self.arrivals,
                           "inflight": self._inflight_tree(),
                           "row_samples": self.row_samples, "row_messages": self.row_messages,
                           "row_compute": self.row_compute,
                           "busy_seconds": self.busy_seconds, "wait_seconds": self.wait_seconds},
                "workers": workers,
            },
            "rng": rng,
            "order": order,
            "trace": self.trace.arrays(),
            "eval": self.evals.arrays(),
        }

    def load_state(self, tree: dict) -> dict[int, dict]:
        """Restore the master from a checkpoint tree; return each worker's state."""
        eng = tree["state"]["engine"]
        self.params[:] = tree["model"]["params"]
        self.momentum[:] = tree["state"]["optimizer"]["momentum"]
        self.method.load_state_dict(tree["state"]["method"])
        self.version = int(eng["version"])
        self.seq = int(eng["seq"])
        self.sim_now = float(eng["sim_now"])
        self.wall_offset = float(eng["wall_time"])
        self.worker_end[:] = eng["worker_end"]
        self.contributions = [int(c) for c in eng["contributions"]]
        self.mirror.load(eng)
        self.pending = [Assignment(int(w), int(b), bool(int(f) & C.FLAG_PREEMPTIBLE)) for w, b, f in eng["pending"]]
        self.arrivals = int(eng["arrivals"])
        self._load_inflight(eng["inflight"])
        self.row_samples = int(eng["row_samples"])
        self.row_messages = int(eng["row_messages"])
        self.row_compute = float(eng["row_compute"])
        self.busy_seconds = float(eng["busy_seconds"])
        self.wait_seconds = float(eng["wait_seconds"])
        set_stream_state(self.rng, tree["rng"]["master"]["method"])
        self.trace.load(tree["trace"])
        self.evals.load(tree["eval"])
        self._schedule_eval()
        return worker_states(tree, self.mirror.sizes)

    # ------------------------------------------------------------------ main loop
    def should_stop(self) -> str:
        if self.max_updates and self.version >= self.max_updates:
            return f"reached run.max_updates = {self.max_updates}"
        if self.max_epochs and self.mirror.epoch() >= self.max_epochs:
            return f"reached run.epochs = {self.max_epochs}"
        if self.max_seconds and self.now() >= self.max_seconds:
            return f"reached run.max_seconds = {self.max_seconds:g}"
        if self.stop.check():
            if self.stop_deadline == math.inf:
                self.stop_deadline = time.monotonic() + self.stop_timeout
            return f"stop requested ({self.stop.reason})"
        return ""

    def run(self, fresh: bool) -> int:
        self.t0 = time.perf_counter()
        try:
            if fresh:
                self.pending = list(self.method.start(self))
                self.evaluate(wait=True)
            self.stop_reason = self.should_stop()
            while not self.stop_reason:
                t0 = time.perf_counter()
                self._assign_pending()
                self.method.flush(self)
                t1 = time.perf_counter()
                job = self.next_event()
                t2 = time.perf_counter()
                self.pending.extend(self.method.on_result(self, job.result))
                self.free_bufs.append(job.result.buf)
                self.busy_seconds += (t1 - t0) + (time.perf_counter() - t2)
                self.wait_seconds += t2 - t1
                if self.updated:
                    self.updated = False
                    self._between_updates()
            self.drain()
            if self.eval_pending is not None:
                self._wait(lambda: self.eval_pending is None, "an evaluation")
            if self.evals.last("update") != self.version:
                self.evaluate(wait=True)
            path = self.checkpoint()
        except DivergenceError as exc:
            print(f"hpcsgd: error: training diverged: {exc}; {self.last_checkpoint_text()} "
                  f"(try a smaller method.lr)", file=sys.stderr, flush=True)
            self.stop_workers(3)
            return 3
        except CheckpointWriteError as exc:
            print(f"hpcsgd: error: {exc}", file=sys.stderr, flush=True)
            self.stop_workers(exc.exit_code)
            return exc.exit_code
        except WorkerSilentError as exc:
            self._abandon(exc)
        self._progress(force=True)
        self.stop_workers(0)
        hint = ""
        if self.stop.reason:
            self.stop.consume_file()
            hint = f"; continue with: hpcsgd resume {self.run_dir}"
        if not self.quiet:
            print(f"[hpcsgd] stopped: {self.stop_reason}; checkpoint {path}{hint}", flush=True)
        return 0

    def _abandon(self, exc: WorkerSilentError) -> None:
        """A worker cannot be waited for any longer: one line on what happened and which
        checkpoint is intact, then end every rank (a frozen one cannot leave by itself)."""
        who = self.describe(exc.workers, time.monotonic()) if exc.workers else "no worker"
        resume = f"; resume with: hpcsgd resume {self.run_dir}" if self.last_checkpoint else ""
        sys.stdout.flush()
        sys.stderr.write(f"hpcsgd: error: no reply from {who}: {exc}; no new checkpoint, "
                         f"{self.last_checkpoint_text()}{resume}\n")
        sys.stderr.flush()
        time.sleep(0.5)  # let mpiexec forward the line before the job is torn down
        self.comm.Abort(exc.exit_code)

    def _between_updates(self) -> None:
        self.progress_updates += 1
        self.stop_reason = self.should_stop()
        if not self.stop_reason:
            if self.eval_due or self.eval_seconds or (self.eval_every and self.version % self.eval_every == 0):
                if self._eval_is_due():
                    self.evaluate()
            if self.postponed is not None or (self.ckpt_every and self.version % self.ckpt_every == 0):
                if self._checkpoint_is_due():
                    self.checkpoint(postpone=True)
            if self.epochs_only and self.worker_timeout:
                self._check_epochs_can_end()
        self._progress()

    def _check_epochs_can_end(self) -> None:
        """run.epochs counts the slowest worker's passes: a run that stops on nothing else
        cannot end while a worker is silent, even if updates go on without it (the other
        waits' watchdog never fires then).  Looked at once a second."""
        now = time.monotonic()
        if now < self.next_epochs_check:
            return
        self.next_epochs_check = now + 1.0
        silent = [j for j in self.workers if self.unanswered[j] and self._quiet_for(j, now) >= self.worker_timeout]
        if silent:
            raise WorkerSilentError(silent, f"run.epochs = {self.max_epochs} is the only stopping rule and "
                                            f"needs every worker's passes (run.worker_timeout)")

    def _progress(self, force: bool = False) -> None:
        if self.quiet or not self.progress_every:
            return
        now = time.perf_counter()
        if not force and now - self.last_progress < self.progress_every:
            return
        rate = self.progress_updates / max(now - self.last_progress, 1e-9)
        self.last_progress, self.progress_updates = now, 0
        frac = max(self.version / self.max_updates if self.max_updates else 0.0,
                   self.mirror.epoch() / self.max_epochs if self.max_epochs else 0.0,
                   self.now() / self.max_seconds if self.max_seconds else 0.0)
        elapsed = self.wall_time()
        eta = elapsed * (1 - frac) / frac if 0 < frac < 1 else 0.0
        loss = self.evals.last("train_loss")
        acc = self.evals.last("test_accuracy")
        sim = f" sim {self.sim_now:.3g}s" if self.simulated else ""
        print(f"[hpcsgd] update {self.version} epoch {self.mirror.epoch():.2f} "
              f"loss {loss:.4g} acc {acc:.4f} {rate:.0f} upd/s elapsed {elapsed:.1f}s"
              f"{sim} eta {eta:.0f}s", flush=True)

    def stop_workers(self, status: int) -> None:
        # Drop jobs never sent, receive and discard whatever is still in flight so that
        # no worker is left blocked in a send, then let every worker leave its loop.
        for worker in self.workers:
            self._withdraw_held(worker, self.version + 1)
        self.cancel_jobs_before(self.version + 1)
        try:
            self.drain()
            if self.eval_pending is not None:
                self._wait(lambda: self.eval_pending is None, "an evaluation")
        except WorkerSilentError as exc:
            self._abandon(exc)
        for j in self.workers:
            self._send(C.job_buffer(None, self.version, 0, status), j, C.TAG_STOP)
        for req in self.recvs:
            req.Cancel()
        MPI.Request.Waitall(self.recvs)
        C.wait_all(self.send_reqs)
        self.send_reqs.clear()
        self.send_bufs.clear()
