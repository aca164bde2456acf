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
  MPI message happens to arrive first.  Ties go to the lower worker rank, then the
  earlier job.
"""

from __future__ import annotations

import heapq
import math
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mpi4py import MPI

from hpcsgd import __version__, checkpoint
from hpcsgd import comm as C
from hpcsgd.config import to_json
from hpcsgd.errors import CheckpointWriteError, DivergenceError
from hpcsgd.kernels.optim import heavy_ball_step, sgd_step
from hpcsgd.kernels.regularizers import prox_l1
from hpcsgd.stop import StopRequest
from hpcsgd.stragglers import STREAM_METHOD, make_stream, samples_done, set_stream_state, stream_state
from hpcsgd.trace import EVAL_COLUMNS, TRACE_COLUMNS, Table


@dataclass(slots=True)
class Job:
    worker: int
    seq: int
    version: int
    batch: int
    flags: int
    t_assign: float
    start: float = math.nan
    t_done: float = math.nan
    cancel_time: float = math.nan
    result: "Result | None" = None

    @property
    def cancelled(self) -> bool:
        return not math.isnan(self.cancel_time)


@dataclass(slots=True)
class Result:
    worker: int
    version: int
    batch: int
    samples: int
    duration: float
    delay_comm: float
    compute_seconds: float
    loss_sum: float
    abandoned: bool
    epoch: int
    stop: bool         # the worker was asked to stop (a signal on its rank)
    grad: np.ndarray
    pairs: np.ndarray  # [Q, d] pair differences (Q = 0 unless the master balances)
    buf: np.ndarray = field(repr=False)


def _carries_gradient(r: Result) -> bool:
    return r.samples > 0 and not r.abandoned


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
                "mirror_started": np.array(self.started, dtype=np.int64)}

    def load(self, engine_state: dict) -> None:
        self.pos = [int(p) for p in engine_state["mirror_pos"]]
        self.started = [int(s) for s in engine_state["mirror_started"]]
        self._stale = True


class Master:
    def __init__(self, comm: MPI.Comm, cfg: dict, model, shard_sizes: list[int], method,
                 run_dir: Path, stop: StopRequest, quiet: bool = False):
        self.comm = comm
        self.stop = stop
        self.cfg = cfg
        self.model = model
        self.method = method
        self.run_dir = run_dir
        self.quiet = quiet
        self.M = comm.Get_size() - 1
        self.workers = range(1, self.M + 1)
        self.simulated = cfg["run"]["clock"] == "simulated"
        self.lr = cfg["method"]["lr"]
        self.beta = cfg["method"]["momentum"]
        self.l1 = cfg["model"]["l1"]
        self.d = model.dim

        self.params = np.zeros(self.d)
        self.momentum = np.zeros(self.d)
        self.version = 0
        self.rng = make_stream(cfg["run"]["seed"], 0, STREAM_METHOD)
        self.mirror = EpochMirror(shard_sizes)
        self.contributions = [0] * (self.M + 1)  # applied gradients per worker
        self.trace = Table(TRACE_COLUMNS)
        self.evals = Table(EVAL_COLUMNS)

        # scheduling state
        self.seq = 0
        self.sim_now = 0.0
        self.worker_end = np.zeros(self.M + 1)
        self.jobs: dict[int, deque[Job]] = {j: deque() for j in self.workers}
        self.ready: list[tuple[float, int, int]] = []  # sim mode: (t_done, worker, seq)
        self.pending: list[tuple[int, int, int]] = []  # assignments not yet sent

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
        self.stop_reason = ""
        self.last_checkpoint: Path | None = None

        self.sends: list[tuple[MPI.Request, np.ndarray]] = []
        self.job_bufs: dict[tuple[int, int, int], np.ndarray] = {}  # (version, batch, flags)
        self.spare_job_bufs: list[np.ndarray] = []
        self.recv_size = C.result_length(self.d, cfg["order"])
        self.free_bufs: list[np.ndarray] = []
        self.recv_bufs: dict[int, np.ndarray] = {}
        self.recvs = [self._post_recv(j) for j in self.workers]
        self.arrivals = 0
        self.updated = False
        self.backoff = C.Backoff()
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
        return self.wall_offset + time.perf_counter() - self.t0 - self.paused

    def now(self) -> float:
        """The clock that orders events: simulated seconds, or wall seconds."""
        return self.sim_now if self.simulated else self.wall_time()

    # ------------------------------------------------------------------ messaging
    def _post_recv(self, worker: int) -> MPI.Request:
        buf = self.free_bufs.pop() if self.free_bufs else np.empty(self.recv_size)
        self.recv_bufs[worker] = buf
        return self.comm.Irecv(buf, source=worker, tag=C.TAG_RESULT)

    def _send(self, buf: np.ndarray, worker: int, tag: int) -> None:
        self.sends.append((self.comm.Isend(buf, dest=worker, tag=tag), buf))

    def _reap_sends(self) -> None:
        if self.sends and MPI.Request.Testall([r for r, _ in self.sends]):
            self.sends.clear()

    def assign(self, worker: int, batch: int, flags: int) -> None:
        """Create a job at the current model for ``worker``; it queues behind its others."""
        actual = self.mirror.take(worker, batch)
        job = Job(worker, self.seq, self.version, actual, flags, t_assign=self.now())
        self.seq += 1
        self.jobs[worker].append(job)
        self.row_messages += 1
        # Isend needs a buffer nobody writes to until it completes, and the model changes
        # at the next update: copy the parameters once per version and share the copy
        # among every send of that version.
        key = (self.version, actual, flags)
        buf = self.job_bufs.get(key)
        if buf is None:
            buf = self._job_buffer(actual, flags)
            self.job_bufs[key] = buf
        self._send(buf, worker, C.TAG_JOB)

    def _job_buffer(self, batch: int, flags: int) -> np.ndarray:
        """A job buffer for the current version, reusing old ones whose sends are done
        (a fresh d-sized allocation per update costs page faults at large d)."""
        self._reap_sends()
        old = [k for k in self.job_bufs if k[0] != self.version]
        if not self.sends:
            self.spare_job_bufs.extend(self.job_bufs.pop(k) for k in old)
        buf = self.spare_job_bufs.pop() if self.spare_job_bufs else np.empty(C.JOB_HEADER + self.d)
        buf[C.J_VERSION], buf[C.J_BATCH], buf[C.J_FLAGS] = self.version, batch, flags
        buf[C.JOB_HEADER:] = self.params
        return buf

    def send_signs(self, worker: int, eps: np.ndarray) -> None:
        """CD-GraB signs for ``worker``'s last pairs; they reach it before its next job."""
        self._send(eps.astype(np.float64), worker, C.TAG_SIGNS)

    def _assign_pending(self) -> None:
        pending, self.pending = self.pending, []
        for worker, batch, flags in pending:
            self.assign(worker, batch, flags)

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
        assert job.version == r.version and job.batch == r.batch, (
            f"worker {worker} answered (v{r.version}, b{r.batch}), expected (v{job.version}, b{job.batch})")
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
                heapq.heappush(self.ready, (job.t_done, worker, job.seq))
        else:
            job.t_done = self.wall_time()
            self.method.observe(job, r)
            if job.cancelled:
                self._count_dropped(r.samples, sent_gradient=_carries_gradient(r))
                self._forget(job)
            else:
                heapq.heappush(self.ready, (self.arrivals, worker, job.seq))
                self.arrivals += 1

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
            for job in list(self.jobs[worker]):
                if job.version >= version or job.cancelled:
                    continue
                job.cancel_time = t
                if not self.simulated:
                    if job.result is not None:
                        self._count_dropped(job.result.samples, sent_gradient=_carries_gradient(job.result))
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
        self.ready = [e for e in self.ready if self._job(e[1], e[2]) is not None]
        heapq.heapify(self.ready)

    def _job(self, worker: int, seq: int) -> Job | None:
        return next((j for j in self.jobs[worker] if j.seq == seq), None)

    def _can_take(self, key: tuple[float, int, int]) -> bool:
        """Simulated clock: no job still running can finish before ``key``."""
        for worker in self.workers:
            for job in self.jobs[worker]:
                if job.result is None and not job.cancelled:
                    bound = (max(job.t_assign, self.worker_end[worker]), worker, job.seq)
                    if bound < key:
                        return False
                    break  # later jobs of this worker end later still
        return True

    def next_event(self) -> Job:
        backoff = self.backoff
        while True:
            if self.ready and (not self.simulated or self._can_take(self.ready[0])):
                backoff.done()
                _, worker, seq = heapq.heappop(self.ready)
                job = self._job(worker, seq)
                self.jobs[worker].remove(job)
                if self.simulated:
                    self.sim_now = job.t_done
                self.row_messages += 1
                self.row_samples += job.batch
                self.row_compute = max(self.row_compute, job.result.compute_seconds)
                return job
            if not self._receive_some():
                backoff.wait()

    def drain(self) -> None:
        """Wait for every job in flight.  Cancelled ones are dropped on arrival."""
        backoff = C.Backoff()
        while any(j.result is None for q in self.jobs.values() for j in q):
            if not self._receive_some():
                backoff.wait()

    def _inflight_tree(self) -> dict:
        """Live jobs after ``drain``: each with its timing, its place in the event queue
        and its result, so a resumed master takes them exactly where this one would.
        (Their workers have moved past them: cursors and delay streams included.)"""
        key = {(w, seq): k0 for k0, w, seq in self.ready}
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
                      result=self._parse(worker, buf))
            self.jobs[worker].append(job)
            self.ready.append((k0 if self.simulated else int(k0), worker, seq))
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
    def evaluate(self) -> None:
        """Full train and test metrics at the current model.  The wall clock pauses for
        the evaluation's own cost (the slowest worker's compute and the reduction here),
        not for the wait while workers finish jobs already running."""
        wall = self.wall_time()  # the row's time is when evaluation started, not ended
        buf = C.job_buffer(self.params, self.version, 0)
        for j in self.workers:
            self._send(buf, j, C.TAG_EVAL)
        replies = []
        for j in self.workers:
            reply, _ = C.recv_sized(self.comm, j, C.TAG_EVAL_RESULT)
            replies.append(reply)
        t = time.perf_counter()
        tot = np.sum([r[:C.EVAL_HEADER] for r in replies], axis=0)
        grad = np.sum([r[C.EVAL_HEADER:] for r in replies], axis=0) / tot[C.E_TRAIN_N]
        self.model.reg_grad_add(self.params, grad)
        reg = self.model.reg_value(self.params) + self.l1 * float(np.abs(self.params).sum())
        classify = self.model.kind != "least_squares"
        row = dict(update=self.version, epoch=self.mirror.epoch(), wall_time=wall,
                   sim_time=self.sim_now if self.simulated else math.nan,
                   train_loss=tot[C.E_TRAIN_LOSS] / tot[C.E_TRAIN_N] + reg,
                   test_loss=tot[C.E_TEST_LOSS] / max(tot[C.E_TEST_N], 1),
                   test_accuracy=tot[C.E_TEST_CORRECT] / max(tot[C.E_TEST_N], 1) if classify else math.nan,
                   grad_norm=float(np.linalg.norm(grad)))
        self.evals.append(**row)
        self._schedule_eval()
        self.paused += max(r[C.E_SECONDS] for r in replies) + time.perf_counter() - t
        if not math.isfinite(row["train_loss"]):
            raise DivergenceError(f"non-finite training loss at update {self.version}")

    def _schedule_eval(self) -> None:
        """eval_seconds: the next evaluation is due at the first multiple of eval_seconds
        after the last one's clock time (derived from /eval, so a resumed run keeps it)."""
        if self.eval_seconds and self.evals.n:
            last = self.evals.last("sim_time" if self.simulated else "wall_time")
            self.next_eval_at = (math.floor(last / self.eval_seconds) + 1) * self.eval_seconds

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> Path:
        self.method.flush(self)
        self.drain()  # jobs run to completion meanwhile: training time, not paused
        t = time.perf_counter()
        states = {}
        for j in self.workers:
            self._send(C.job_buffer(None, self.version, 0), j, C.TAG_STATE_GET)
        for j in self.workers:
            states[j] = C.recv_tree(self.comm, j)
        tree = self.state_tree(states)
        try:
            path = checkpoint.save_checkpoint(self.run_dir, tree, keep=self.cfg["run"]["keep_checkpoints"])
        except OSError as exc:
            raise CheckpointWriteError(
                f"cannot write a checkpoint into {self.run_dir} at update {self.version} "
                f"({exc.strerror or exc}); the last good checkpoint is "
                f"{self.last_checkpoint or 'none of this job'}") from None
        self.last_checkpoint = path
        self.paused += time.perf_counter() - t
        return path

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
        pending = np.array(self.pending, dtype=np.int64).reshape(-1, 3)
        return {
            "update": self.version, "epoch": self.mirror.epoch(), "method": self.method.name,
            "world_size": M + 1, "config": to_json(self.cfg), "clock": self.cfg["run"]["clock"],
            "hpcsgd_version": __version__, "stop_reason": self.stop_reason or "",
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
        self.pending = [tuple(int(x) for x in row) for row in eng["pending"]]
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
        order = tree["order"]
        states = {}
        for j in self.workers:
            n = self.mirror.sizes[j - 1]
            st = {"rng": tree["rng"][f"worker_{j}"], "ordering": tree["state"]["workers"][f"worker_{j}"],
                  "order": {"perm": order["perm"][j - 1][order["perm"][j - 1] >= 0][:n].copy(),
                            "pos": int(order["pos"][j - 1]),
                            "epochs_started": int(order["epochs_started"][j - 1])}}
            if "history" in order:
                h = order["history"][:, j - 1, :n]
                st["order"]["history"] = h[(h >= 0).all(axis=1)].copy()
            states[j] = st
        return states

    # ------------------------------------------------------------------ main loop
    def should_stop(self) -> str:
        if self.max_updates and self.version >= self.max_updates:
            return f"reached run.max_updates = {self.max_updates}"
        if self.max_epochs and self.mirror.epoch() >= self.max_epochs:
            return f"reached run.epochs = {self.max_epochs}"
        if self.max_seconds and self.now() >= self.max_seconds:
            return f"reached run.max_seconds = {self.max_seconds:g}"
        if self.stop.check():
            return f"stop requested ({self.stop.reason})"
        return ""

    def run(self, fresh: bool) -> int:
        self.t0 = time.perf_counter()
        if fresh:
            self.pending = list(self.method.start(self))
            self.evaluate()
        self.stop_reason = self.should_stop()
        try:
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
            if self.evals.last("update") != self.version:
                self.evaluate()
            path = self.checkpoint()
        except DivergenceError as exc:
            self.stop_workers(3)
            where = (f"last good checkpoint: {self.last_checkpoint}" if self.last_checkpoint
                     else "no checkpoint was written")
            print(f"hpcsgd: error: training diverged: {exc}; {where} (try a smaller method.lr)",
                  file=sys.stderr, flush=True)
            return 3
        except CheckpointWriteError as exc:
            self.stop_workers(exc.exit_code)
            print(f"hpcsgd: error: {exc}", file=sys.stderr, flush=True)
            return exc.exit_code
        self._progress(force=True)
        self.stop_workers(0)
        hint = ""
        if self.stop.reason:
            self.stop.consume_file()
            hint = f"; continue with: hpcsgd resume {self.run_dir}"
        if not self.quiet:
            print(f"[hpcsgd] stopped: {self.stop_reason}; checkpoint {path}{hint}", flush=True)
        return 0

    def _between_updates(self) -> None:
        self.progress_updates += 1
        self.stop_reason = self.should_stop()
        if self.eval_every and self.version % self.eval_every == 0 and not self.stop_reason:
            self.evaluate()
        elif self.eval_seconds and self.now() >= self.next_eval_at and not self.stop_reason:
            self.evaluate()
        if self.ckpt_every and self.version % self.ckpt_every == 0 and not self.stop_reason:
            self.checkpoint()
        self._progress()

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
        # Receive and discard whatever is still in flight so that no worker is left
        # blocked in a send, then let every worker leave its loop.
        self.cancel_jobs_before(self.version + 1)
        self.drain()
        for j in self.workers:
            self._send(C.job_buffer(None, self.version, 0, status), j, C.TAG_STOP)
        for req in self.recvs:
            req.Cancel()
        MPI.Request.Waitall(self.recvs)
        C.wait_all([r for r, _ in self.sends])
        self.sends.clear()
