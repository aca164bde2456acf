"""The engine on rank 0, the master: it holds the model, applies updates and decides who
computes what, by composing its parts (hpcsgd.engine) with the method.

The loop, in one sentence: create the jobs the method asked for, take the next event (a
worker's result), let the method decide whether to update the model and which jobs to
create next, then trace, evaluate, checkpoint and check the stopping rules between
updates.  Every wait goes through ``_wait``: it keeps receiving whatever arrives and
lets ``Watch`` end the job when a stop request or a silent worker cannot be waited out.

With parameter servers (``run.servers``, hpcsgd.engine.servers) the same engine runs on
every server, each on its slice of the model; this one, on rank 0, also tells the
others what it does (``Servers``) and evaluates and checkpoints the whole model.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

from hpcsgd import checkpoint, streams
from hpcsgd import comm as C
from hpcsgd import transport as T
from hpcsgd.engine import layout
from hpcsgd.engine.clock import COST_COLUMNS, CostClock, make_clock
from hpcsgd.engine.evaluation import Evaluation
from hpcsgd.engine.interface import Assignment
from hpcsgd.engine.params import ParameterState
from hpcsgd.engine.recorder import Recorder
from hpcsgd.engine.scheduler import Scheduler
from hpcsgd.engine.servers import Servers, cut_tree, follower_sum, join_trees
from hpcsgd.engine.watch import Watch
from hpcsgd.errors import CheckpointWriteError, DivergenceError, WorkerSilentError
from hpcsgd.ordering import ORDERINGS
from hpcsgd.placement import WorkerMap
from hpcsgd.stop import StopRequest
from hpcsgd.streams import make_stream


class Engine:
    """Implements ``hpcsgd.engine.interface.Engine`` for the method it drives."""

    def __init__(self, comm: MPI.Comm, cfg: dict, model, shard_sizes: list[int], method, run_dir: Path,
                 stop: StopRequest, workers: WorkerMap, hosts: list[str] | None = None,
                 trace_extras: dict | None = None, test_rows: int = -1, data_fingerprint: str = "",
                 quiet: bool = False, part: slice | None = None, servers: Servers | None = None,
                 follower: bool = False):
        """``workers``: which worker rank hosts which worker; ``hosts``: each worker's host
        name (index 0: the master's).  With parameter servers: ``part`` is this server's
        slice of the parameters, ``servers`` (rank 0) the other servers, ``follower`` a
        server that is not rank 0 (it keeps no trace)."""
        self.comm, self.cfg, self.model, self.method = comm, cfg, model, method
        self.run_dir, self.stop, self.quiet = run_dir, stop, quiet
        self.root = {"test_rows": test_rows, "data_fingerprint": data_fingerprint}  # kept in checkpoints
        run, order = cfg["run"], cfg["order"]
        self.M = workers.M
        self.workers = range(1, self.M + 1)
        self.n_params = model.dim
        self.part = slice(0, model.dim) if part is None else part
        dim = self.part.stop - self.part.start
        self.servers, self.records = servers, not follower
        # the sum of every server's partial inner product (None: this engine has them all)
        self.sums = servers.sum if servers else (follower_sum(comm) if follower else None)
        self.clock = make_clock(run["clock"], self.M, cfg.get("cluster"), model.dim, (T.RESULT_HEADER, T.JOB_HEADER),
                                servers=run["servers"])
        self.costs = isinstance(self.clock, CostClock)  # the cost model's trace columns
        extras = {**(trace_extras or {}), **(COST_COLUMNS if self.costs else {})}
        self.recorder = Recorder(run, self.clock, extras=extras, quiet=quiet)
        # CD-GraB's pair differences (whole d-vectors) come to rank 0 alone: it signs them
        pairs = 0 if follower else ORDERINGS[order["kind"]].pair_differences(order["batch"])
        self.link = T.MasterTransport(comm, dim, pairs, workers, held=lambda: self.scheduler.held_buffers(),
                                      pair_d=model.dim, pair_dtype=order["pair_dtype"])
        self.scheduler = Scheduler(shard_sizes, self.clock, message=self.link.job_message, send_job=self.link.send_job,
                                   load=self.recorder, recycle=self.link.recycle,
                                   observe=None if self.clock.simulated or not method.watches_replies else method.observe,
                                   withdraws=self.clock.withdraws_unsent and servers is None and not follower)
        self.state = ParameterState(dim, cfg["method"]["momentum"], cfg["model"]["l1"])
        self.evaluation = Evaluation(self.link, model, cfg["model"]["l1"], self.recorder, self.clock)
        self.watch = Watch(stop, run["worker_timeout"], run["stop_timeout"],
                           list(hosts) if hosts else ["?"] * (self.M + 1), self.scheduler)
        self.cancel_jobs_before = self.scheduler.cancel_before
        self.send_signs = self.link.send_signs
        self.queued = self.scheduler.queued
        self.at_epoch_end = self.scheduler.at_epoch_end
        self.lr = cfg["method"]["lr"]
        self.version = 0
        self.rng = make_stream(run["seed"], 0, streams.METHOD)
        self.contributions = [0] * (self.M + 1)  # applied gradients per worker
        self.pending: list[Assignment] = []      # jobs the method asked for, not created yet
        self.busy_seconds = 0.0  # master time spent deciding and updating (not waiting)
        self.wait_seconds = 0.0  # master time spent waiting for results
        self.updated = False
        self.stop_reason = ""
        self.last_checkpoint: Path | None = None
        self.trees: dict[int, dict] = {}
        self.trees_wanted: set[int] = set()
        self.postponed: dict[int, float] | None = None  # a checkpoint waits for these to be heard
        self.backoff = C.Backoff()
        self.limits = (run["max_updates"], run["epochs"], run["max_seconds"])
        self.ckpt_every = run["checkpoint_every"]
        # wall clock, no other stopping rule: the epoch count needs every worker
        self.epochs_only = not self.clock.simulated and run["epochs"] and not run["max_updates"] \
            and not run["max_seconds"]

    # ------------------------------------------------------------------ what a method uses
    def apply(self, grad: np.ndarray, *, contributors: list[int], staleness: int, batch: int,
              step_size: float | None = None, scale: float = 1.0, extra: dict | None = None,
              block: slice | None = None) -> None:
        lr = self.lr if step_size is None else step_size
        # rank 0 decides on its slice; another server's non-finite slice shows in the
        # next evaluation's loss (a follower must not stop on its own)
        # the step writes the new model straight into the next job message
        if not self.state.step(grad, lr, scale, block, self.link.params_buffer()) and self.records:
            raise DivergenceError(f"non-finite gradient at update {self.version + 1}")
        self.version += 1
        if self.costs:
            self.clock.charge_update(grad.size)  # a block method hands over the block's gradient
        for j in contributors:
            self.contributions[j] += 1
        row = {"update": self.version, "wall_time": self.clock.wall(), "sim_time": self.clock.sim_time(),
               "worker": contributors[0] if len(contributors) == 1 else -1, "staleness": staleness,
               "step_size": lr, "k": len(contributors), "batch": batch}
        if extra:
            row.update(extra)
        if self.costs:
            row.update(self.clock.trace_row())
        if self.records:
            self.recorder.update(row)
        self.updated = True

    @property
    def params(self) -> np.ndarray:
        return self.state.params  # (moves to a new array at every full step)

    # cancel_jobs_before, send_signs, queued and at_epoch_end are the parts' own methods,
    # bound in __init__ (a method calls them on every update)

    def keep(self, r) -> None:
        r.kept = True

    def recycle(self, r) -> None:
        self.link.recycle(r)  # (r stays marked kept: the loop must not recycle it again)

    def overdue_seconds(self) -> list[float]:
        return self.scheduler.overdue(time.monotonic())

    def dot(self, a: np.ndarray, b: np.ndarray) -> float:
        part = float(np.dot(a, b))
        return part if self.sums is None else self.sums(part, self.wait_for_server)

    # ------------------------------------------------------------------ the loop
    def run(self, fresh: bool) -> int:
        self.clock.start()
        try:
            if fresh:
                self.pending = list(self.method.start(self))
                self.evaluate(wait=True)
            self.stop_reason = self.should_stop()
            while not self.stop_reason:
                t0 = time.perf_counter()
                pending, self.pending = self.pending, []
                if pending:
                    if self.servers:
                        self.servers.create(self.scheduler.seq)
                    self.scheduler.create(pending, self.params, self.version)
                self.method.flush(self)
                t1 = time.perf_counter()
                self._wait(self.scheduler.event_ready, "a result", self.backoff)
                job = self.scheduler.take()
                if self.servers:
                    self.servers.took(job)
                self.recorder.took(job.batch, job.result.compute_seconds)
                t2 = time.perf_counter()
                self.pending.extend(self.method.on_result(self, job.result))
                if not job.result.kept:
                    self.link.recycle(job.result)
                self.busy_seconds += (t1 - t0) + (time.perf_counter() - t2)
                self.wait_seconds += t2 - t1
                if self.updated:
                    self.updated = False
                    self._between_updates()
            self._drain()
            self._wait(lambda: self.evaluation.pending is None, "an evaluation")
            if self.recorder.evals.last("update") != self.version:
                self.evaluate(wait=True)
            path = self.checkpoint()
        except DivergenceError as exc:
            print(f"hpcsgd: error: training diverged: {exc}; {self.last_checkpoint_text()} "
                  f"(try a smaller method.lr)", file=sys.stderr, flush=True)
            self.release_workers(3)
            return 3
        except CheckpointWriteError as exc:
            print(f"hpcsgd: error: {exc}", file=sys.stderr, flush=True)
            self.release_workers(exc.exit_code)
            return exc.exit_code
        except WorkerSilentError as exc:
            self._abandon(exc)
        self._progress(force=True)
        self.release_workers(0)
        hint = ""
        if self.stop.reason:
            self.stop.consume_file()
            hint = f"; continue with: hpcsgd resume {self.run_dir}"
        if not self.quiet:
            print(f"[hpcsgd] stopped: {self.stop_reason}; checkpoint {path}{hint}", flush=True)
        return 0

    def should_stop(self) -> str:
        max_updates, max_epochs, max_seconds = self.limits
        if max_updates and self.version >= max_updates:
            return f"reached run.max_updates = {max_updates}"
        if max_epochs and self.scheduler.epoch() >= max_epochs:
            return f"reached run.epochs = {max_epochs}"
        if max_seconds and self.clock.now() >= max_seconds:
            return f"reached run.max_seconds = {max_seconds:g}"
        if self.watch.stop_requested():
            return f"stop requested ({self.stop.reason})"
        return ""

    def _between_updates(self) -> None:
        self.stop_reason = self.should_stop()
        if not self.stop_reason:
            ev = self.evaluation
            if (ev.due and ev.pending is None) or self.recorder.eval_due(self.version):
                self.evaluate()
            if self.postponed is not None or (self.ckpt_every and self.version % self.ckpt_every == 0):
                if self.postponed is None or all(self.scheduler.last_heard[j] > t for j, t in self.postponed.items()):
                    self.checkpoint(postpone=True)
            if self.epochs_only:
                self.watch.epochs_can_end(self.limits[1])
        self._progress()

    def _progress(self, force: bool = False) -> None:
        if not (force or self.recorder.progress_due()):
            return
        max_updates, max_epochs, max_seconds = self.limits
        epoch = self.scheduler.epoch()
        fraction = max(self.version / max_updates if max_updates else 0.0,
                       epoch / max_epochs if max_epochs else 0.0,
                       self.clock.now() / max_seconds if max_seconds else 0.0)
        self.recorder.progress(self.version, epoch, fraction, force)

    # ------------------------------------------------------------------ waiting
    def _poll(self) -> bool:
        """Receive whatever has arrived: results, evaluation replies, state trees."""
        results = self.link.poll_results()
        for r in results:  # () when nothing came
            if r.stop and not self.stop.reason:
                self.stop.reason = f"a signal on worker {r.worker}"
            self.scheduler.replied(r)
        got = bool(results)
        if self.evaluation.pending is not None and self.evaluation.poll():
            now = time.monotonic()
            for j in self.workers:
                self.scheduler.heard(j, now)
            got = True
        if self.trees_wanted:
            for j, tree in self.link.poll_states(self.trees_wanted).items():
                self.trees[j] = tree
                self.trees_wanted.discard(j)
                self.scheduler.heard(j, time.monotonic())
                got = True
        return got

    def _owing(self) -> list[int]:
        return [j for j in self.workers if self.scheduler.unanswered[j] or j in self.trees_wanted
                or self.evaluation.owes(j)]

    def _wait(self, done, what: str, backoff: C.Backoff | None = None, give_up=None) -> list[int]:
        """Receive until ``done()``; ``give_up()`` may end the wait early by naming
        the workers it gives up on."""
        backoff = backoff or C.Backoff()
        started = time.monotonic()
        idle = 0
        while not done():
            if self._poll():
                backoff.progress()
                continue
            idle += 1
            if idle % 16 == 0:  # the clocks are looked at now and then, not on every poll
                self.watch.check(started, what, self._owing)
                if give_up is not None:
                    lagging = give_up()
                    if lagging:
                        backoff.done()
                        return lagging
            backoff.wait()
        backoff.done()
        return []

    def wait_for_server(self, done, backoff: C.Backoff | None = None) -> None:
        """Wait for another parameter server's message, receiving results meanwhile.  No
        worker owes it, so ``Watch``'s silence rules do not apply (a server rank that
        dies ends the MPI job)."""
        backoff = backoff or C.Backoff()
        while not done():
            if self._poll():
                backoff.progress()
            else:
                backoff.wait()
        backoff.done()

    def _drain(self, give_up=None) -> list[int]:
        """Wait for every job in flight (cancelled ones are dropped on arrival)."""
        return self._wait(lambda: not self.scheduler.in_flight(), "the jobs in flight", give_up=give_up)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, wait: bool = False) -> None:
        """Evaluate the current model; the wall clock trains on while the replies come
        (one due meanwhile is made once that one is in), the simulated clock waits."""
        ev = self.evaluation
        waits = wait or not self.clock.collects_in_background
        if ev.pending is not None:
            if not waits:
                ev.due = True
                return
            self._wait(lambda: ev.pending is None, "an evaluation")
        params = self.servers.gather_params(self.params, self.wait_for_server) if self.servers else self.params
        ev.request(params, self.version, self.scheduler.epoch())
        if waits:
            self._wait(lambda: ev.pending is None, "an evaluation")

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, postpone: bool = False) -> Path | None:
        """Write a checkpoint; every worker's order and streams come with it, so every
        job in flight is waited for first.  With ``postpone`` (wall clock, periodic
        checkpoints) a lagging worker is not waited for: the checkpoint is taken at the
        first update after it has answered again, and training goes on meanwhile."""
        self.method.flush(self)
        give_up = (lambda: self.scheduler.lagging(time.monotonic())) \
            if postpone and self.clock.collects_in_background else None
        lagging = self._drain(give_up)
        if lagging:
            if self.postponed is None and not self.quiet:
                print(f"[hpcsgd] checkpoint at update {self.version} postponed: "
                      f"no reply from {self.watch.describe(lagging)}; training goes on", flush=True)
            self.postponed = {j: self.scheduler.last_heard[j] for j in lagging}
            return None
        self.postponed = None
        self._wait(lambda: self.evaluation.pending is None, "an evaluation")
        t = time.perf_counter()
        self.link.request_states(self.version)
        self.trees, self.trees_wanted = {}, set(self.workers)
        self._wait(lambda: not self.trees_wanted, "the workers' state for a checkpoint")
        tree = layout.engine_tree(self, self.trees)
        if self.servers:
            tree = join_trees(tree, self.servers.gather_state(), self.method.per_parameter)
        self.trees = {}
        try:
            path = checkpoint.save_checkpoint(self.run_dir, tree, keep=self.cfg["run"]["keep_checkpoints"])
        except OSError as exc:
            raise CheckpointWriteError(
                f"cannot write a checkpoint into {self.run_dir} at update {self.version} "
                f"({exc.strerror or exc}); {self.last_checkpoint_text()}") from None
        self.last_checkpoint = path
        self.clock.pause(time.perf_counter() - t)
        return path

    def resume_from(self, tree: dict, path: Path) -> None:
        """Continue from a checkpoint tree: every part loads its state, and every worker
        gets its own."""
        own = tree
        if self.servers:
            self.servers.resume(tree, self.method.per_parameter)
            own = cut_tree(tree, self.servers.slices.of(0), self.method.per_parameter)
        for j, state in layout.restore_engine(self, own).items():
            self.link.send_state(j, self.version, state)
        self.last_checkpoint = path

    def last_checkpoint_text(self) -> str:
        """Names the checkpoint that is intact: this job's last one, or the one it
        resumed from."""
        if self.last_checkpoint is not None:
            return f"the last good checkpoint is {self.last_checkpoint}"
        return f"no checkpoint was written in {self.run_dir}"

    # ------------------------------------------------------------------ the end
    def _abandon(self, exc: WorkerSilentError) -> None:
        """A worker cannot be waited for any longer: one line on what happened and which
        checkpoint is intact, then end every rank (a frozen one cannot leave by itself)."""
        who = self.watch.describe(exc.workers) if exc.workers else "no worker"
        resume = f"; resume with: hpcsgd resume {self.run_dir}" if self.last_checkpoint else ""
        C.abort(self.comm, f"hpcsgd: error: no reply from {who}: {exc}; no new checkpoint, "
                           f"{self.last_checkpoint_text()}{resume}", exc.exit_code)

    def release_workers(self, status: int) -> None:
        """Drop jobs never sent, receive and discard whatever is still in flight so that
        no worker is left blocked in a send, then let every worker leave its loop."""
        if not self.servers:
            # (with servers every job goes out and is answered: a job withdrawn here but
            # sent by another server would leave its slice unreceived)
            self.scheduler.withdraw_held(self.version + 1)
        self.scheduler.cancel_before(self.version + 1)
        try:
            self._drain()
            self._wait(lambda: self.evaluation.pending is None, "an evaluation")
        except WorkerSilentError as exc:
            self._abandon(exc)
        if self.servers:
            self.servers.stop()
        self.link.release(self.version, status)
