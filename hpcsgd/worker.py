"""The workers: a worker owns its shard, order and delay stream and computes what the
master asks, in order; a worker rank (ranks 1..R) hosts one worker, or several
(virtual workers, simulated clock), and serves their messages.

The rank takes master messages with ANY_TAG, so jobs, evaluations and state requests
are handled in exactly the order the master sent them; each message names the hosted
worker it is for.  Each job takes the next batch of its worker's own example order and
draws one duration from that worker's delay stream, in both clocks, so what a worker
computes never depends on timing, nor on which rank hosts it or what else that rank
hosts.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np

from hpcsgd import transport as T
from hpcsgd.engine import layout
from hpcsgd.ordering import EpochCursor
from hpcsgd.stop import StopRequest
from hpcsgd.stragglers import DelayModel, samples_done


class WorkerRank:
    """Serves the master for the workers this rank hosts (``hosted[slot]``)."""

    def __init__(self, link: T.WorkerTransport, hosted: list[Worker]):
        self.link, self.hosted = link, hosted

    def run(self) -> int:
        """Serve the master until it releases this rank; returns the exit status sent."""
        link, hosted = self.link, self.hosted
        while True:
            kind, slot = link.receive()
            if kind == T.TAG_JOB:
                hosted[slot].job()
            elif kind == T.TAG_EVAL:
                for w in hosted:
                    w.evaluate()
                link.eval_reply()
            elif kind == T.TAG_STATE_GET:
                link.send_state(slot, hosted[slot].state())
            elif kind == T.TAG_STATE_SET:
                hosted[slot].load_state(link.receive_state(slot))
            elif kind == T.TAG_SIGNS:
                hosted[slot].place_signs()
            elif kind == T.TAG_RELEASE:
                link.finish_sends()
                return link.exit_status()
            else:
                raise RuntimeError(f"worker rank {link.comm.Get_rank()}: unexpected message tag {kind}")


class Worker:
    def __init__(self, worker: int, slot: int, link: T.WorkerTransport, cfg: dict, model, X, y, X_test, y_test,
                 cursor: EpochCursor, delay: DelayModel, stop: StopRequest, grads: np.ndarray | None):
        """``X, y``: the worker's whole shard, all of it evaluated; the cursor's order
        visits its first ``cursor.n`` rows (all of them, except where a coordinated
        ordering cuts every shard to the smallest).  ``link`` and the per-example
        gradient scratch ``grads`` are its rank's, shared by the workers there."""
        self.stop = stop
        self.id, self.slot = worker, slot
        self.model = model
        self.X, self.y, self.X_test, self.y_test = X, y, X_test, y_test
        self.all_rows = np.arange(X.shape[0], dtype=np.int64)
        self.test_rows = np.arange(X_test.shape[0], dtype=np.int64)
        self.cursor = cursor
        self.ordering = cursor.ordering
        self.delay = delay
        self.simulated = cfg["run"]["clock"] == "simulated"
        self.link = link
        self.grads = grads
        # CD-GraB pairs waiting for the master's signs, oldest first (signs may come one
        # job late: the master computes them while this worker runs the next step)
        self.awaiting: deque[tuple[np.ndarray, np.ndarray]] = deque()

    def state(self) -> dict:
        assert not self.awaiting, "the master flushes CD-GraB signs before every checkpoint"
        return layout.worker_state(self.cursor, self.delay.rng, self.id)

    def load_state(self, state: dict) -> None:
        layout.load_worker_state(self.cursor, self.delay.rng, self.id, state)

    # ------------------------------------------------------------------ work
    def job(self) -> None:
        link = self.link
        version, batch, preemptible = link.job()
        w = link.params
        idx = self.cursor.next_batch(batch)
        assert idx.size == batch, f"worker {self.id}: master expected batch {batch}, order gives {idx.size}"
        # The batch and the delay are drawn even for a dropped job, so that what later
        # jobs compute never depends on timing.
        delay_comm, delay_compute = self.delay.draw(idx.size)
        preempt = preemptible and not self.simulated
        epoch, stop = self.cursor.epochs_started, bool(self.stop.reason)
        if preempt and not self.ordering.per_example and link.newer_waiting():
            # The master already sent something newer: this job is obsolete, skip it.
            # (A balancing order needs every example's gradient to place it: no skip.)
            link.reply(self.id, version, idx.size, 0, delay_comm, delay_compute, 0.0, 0.0, True, 0, epoch, stop)
            return
        grad = link.grad
        t = time.perf_counter()
        n_pairs = 0
        if self.ordering.per_example:
            loss_sum, n_pairs = self._balance_batch(w, idx, grad)
        else:
            loss_sum = self.model.grad_sum(w, self.X, self.y, idx, grad)
            if idx.size > 1:  # (x * 1.0 is x: a batch of one skips a pass over d)
                grad *= 1.0 / idx.size
        self.model.reg_grad_add(w, grad)
        compute = time.perf_counter() - t
        duration = delay_comm + delay_compute
        abandoned, samples = False, idx.size
        if not self.simulated and duration > 0.0:
            elapsed = self._sleep(duration, preempt)
            if elapsed is not None:
                # the injected delay stands for the work: count what it had got through
                abandoned = True
                samples = samples_done(idx.size, delay_compute, elapsed)
        if preempt and not abandoned:
            # obsolete already? then the gradient is not worth sending
            abandoned = link.newer_waiting()
        link.reply(self.id, version, idx.size, samples, delay_comm, delay_compute, compute, loss_sum, abandoned,
                   n_pairs, self.cursor.epochs_started, bool(self.stop.reason))

    def _balance_batch(self, w, idx, grad) -> tuple[float, int]:
        """Per-example gradients for a balancing order: the mean goes to ``grad``;
        independent orders balance here, a coordinated one ships its pair differences
        after the gradient and waits for the master's signs.  With whole pairs the mean
        and the pair differences come in one pass (``Model.pair_grads``), written
        straight into the reply."""
        b, ordering = idx.size, self.ordering
        if ordering.coordinated and ordering.whole_pairs(0, b):
            loss_sum = self.model.pair_grads(w, self.X, self.y, idx, grad, self.link.pair_slot(b // 2))
            first, second = ordering.pair_ids(0, b)
            if first.size:
                self.awaiting.append((first, second))
            return loss_sum, b // 2
        G = self.grads[:b]
        self.model.per_example_grads(w, self.X, self.y, idx, G)
        np.mean(G, axis=0, out=grad)
        loss_sum = self.model.loss_sum(w, self.X, self.y, idx)
        if not ordering.coordinated:
            ordering.step(G[None])
            return loss_sum, 0
        first, second, diffs = ordering.visit_pairs(0, G)
        self.link.pair_slot(first.size)[:] = diffs.reshape(first.size, self.model.dim)
        if first.size:
            self.awaiting.append((first, second))
        return loss_sum, first.size

    def place_signs(self) -> None:
        eps = self.link.signs()
        first, second = self.awaiting.popleft()
        assert eps.size == first.size, f"worker {self.id}: {eps.size} signs for {first.size} pairs"
        self.ordering.place(0, first, second, eps)

    def _sleep(self, seconds: float, preemptible: bool) -> float | None:
        """Injected straggler delay.  A preemptible job is abandoned as soon as the
        master sends anything newer (it has moved on); returns the seconds slept when
        abandoned, None when the delay ran out."""
        if not preemptible:
            time.sleep(seconds)
            return None
        start = time.perf_counter()
        end = start + seconds
        while True:
            now = time.perf_counter()
            if now >= end:
                return None
            if self.link.newer_waiting():
                return now - start
            time.sleep(min(end - now, 5e-4))

    def evaluate(self) -> None:
        """This worker's row of an evaluation of the model in the rank's inbox."""
        t = time.perf_counter()
        link, m = self.link, self.model
        w = link.params
        train_loss = m.grad_sum(w, self.X, self.y, self.all_rows, link.eval_grad(self.slot))
        train_correct = m.correct_count(w, self.X, self.y, self.all_rows)
        test_loss = test_correct = 0.0
        if self.test_rows.size:
            test_loss = m.loss_sum(w, self.X_test, self.y_test, self.test_rows)
            test_correct = m.correct_count(w, self.X_test, self.y_test, self.test_rows)
        link.eval_row(self.slot, train_loss, self.all_rows.size, train_correct, test_loss, self.test_rows.size,
                      test_correct, time.perf_counter() - t)
