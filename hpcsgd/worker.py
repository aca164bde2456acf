"""A worker (ranks 1..M): owns its shard, computes what the master asks, in order.

The worker reads master messages with ANY_TAG, so jobs, evaluations and state requests
are handled in exactly the order the master sent them.  Each job takes the next batch
of the worker's own example order and draws one duration from its delay stream, in
both clocks, so what a worker computes never depends on timing.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np
from mpi4py import MPI

from hpcsgd import comm as C
from hpcsgd.ordering import EpochCursor
from hpcsgd.stop import StopRequest
from hpcsgd.streams import set_stream_state, stream_state
from hpcsgd.stragglers import DelayModel, samples_done


class Worker:
    def __init__(self, comm: MPI.Comm, cfg: dict, model, X, y, X_test, y_test,
                 cursor: EpochCursor, delay: DelayModel, stop: StopRequest):
        """``X, y``: the worker's whole shard, all of it evaluated; the cursor's order
        visits its first ``cursor.n`` rows (all of them, except where CD-GraB cuts every
        shard to the smallest)."""
        self.comm = comm
        self.stop = stop
        self.rank = comm.Get_rank()
        self.model = model
        self.X, self.y, self.X_test, self.y_test = X, y, X_test, y_test
        self.all_rows = np.arange(X.shape[0], dtype=np.int64)
        self.test_rows = np.arange(X_test.shape[0], dtype=np.int64)
        self.cursor = cursor
        self.delay = delay
        self.simulated = cfg["run"]["clock"] == "simulated"
        d = model.dim
        ordering = cursor.ordering
        self.per_example = ordering.per_example
        self.coordinated = ordering.coordinated
        batch = cfg["order"]["batch"]
        self.inbox = np.empty(C.JOB_HEADER + max(d, batch))  # a job, or up to B/2 signs
        self.params = self.inbox[C.JOB_HEADER:C.JOB_HEADER + d]  # the model of a job or evaluation
        self.result = np.empty(C.result_length(d, ordering.pair_differences(batch)))
        self.grads = np.empty((batch, d)) if self.per_example else None
        # CD-GraB pairs waiting for the master's signs, oldest first (signs may come one
        # job late: the master computes them while this worker runs the next step)
        self.awaiting: deque[tuple[np.ndarray, np.ndarray]] = deque()
        self.eval_reply = np.empty(C.EVAL_HEADER + d)
        self.status = MPI.Status()
        self.backoff = C.Backoff()

    # ------------------------------------------------------------------ messages
    def _receive(self) -> int:
        """Block politely for the next master message; returns its tag."""
        while not self.comm.Iprobe(source=0, tag=MPI.ANY_TAG, status=self.status):
            self.backoff.wait()
        self.backoff.done()
        tag = self.status.Get_tag()
        self.comm.Recv(self.inbox, source=0, tag=tag)
        return tag

    def run(self) -> int:
        """Serve the master until it says stop; returns the exit status it sent."""
        while True:
            tag = self._receive()
            if tag == C.TAG_JOB:
                self.job()
            elif tag == C.TAG_EVAL:
                self.evaluate()
            elif tag == C.TAG_STATE_GET:
                C.send_tree(self.comm, 0, self.state_dict())
            elif tag == C.TAG_STATE_SET:
                self.load_state_dict(C.recv_tree(self.comm, 0))
            elif tag == C.TAG_SIGNS:
                self.place_signs()
            elif tag == C.TAG_STOP:
                return int(self.inbox[C.J_FLAGS])
            else:
                raise RuntimeError(f"worker {self.rank}: unexpected message tag {tag}")

    # ------------------------------------------------------------------ work
    def job(self) -> None:
        h = self.inbox[:C.JOB_HEADER].tolist()
        version, batch, flags = int(h[C.J_VERSION]), int(h[C.J_BATCH]), int(h[C.J_FLAGS])
        w = self.params
        idx = self.cursor.next_batch(batch)
        assert idx.size == batch, f"worker {self.rank}: master expected batch {batch}, order gives {idx.size}"
        # The batch and the delay are drawn even for a dropped job, so that what later
        # jobs compute never depends on timing.
        delay_comm, delay_compute = self.delay.draw(idx.size)
        out = self.result
        preemptible = bool(flags & C.FLAG_PREEMPTIBLE)
        if preemptible and not self.simulated and not self.per_example and \
                self.comm.Iprobe(source=0, tag=MPI.ANY_TAG):
            # The master already sent something newer: this job is obsolete, skip it.
            # (A balancing order needs every example's gradient to place it: no skip.)
            self._reply(version, idx.size, 0, delay_comm, delay_compute, 0.0, 0.0, True, 0)
            return
        d = self.model.dim
        grad = out[C.RESULT_HEADER:C.RESULT_HEADER + d]
        t = time.perf_counter()
        n_pairs = 0
        if self.per_example:
            loss_sum, n_pairs = self._balance_batch(w, idx, grad, out)
        else:
            loss_sum = self.model.grad_sum(w, self.X, self.y, idx, grad)
            grad *= 1.0 / idx.size
        self.model.reg_grad_add(w, grad)
        compute = time.perf_counter() - t
        duration = delay_comm + delay_compute
        abandoned, samples = False, idx.size
        if not self.simulated and duration > 0.0:
            elapsed = self._sleep(duration, preemptible)
            if elapsed is not None:
                # the injected delay stands for the work: count what it had got through
                abandoned = True
                samples = samples_done(idx.size, delay_compute, elapsed)
        if preemptible and not self.simulated and not abandoned:
            # obsolete already? then the gradient is not worth sending
            abandoned = self.comm.Iprobe(source=0, tag=MPI.ANY_TAG)
        self._reply(version, idx.size, samples, delay_comm, delay_compute, compute, loss_sum,
                    abandoned, n_pairs)

    def _reply(self, version, batch, samples, delay_comm, delay_compute, compute, loss_sum,
               abandoned, n_pairs) -> None:
        out = self.result
        h = [0.0] * C.RESULT_HEADER  # filled as a list, copied in once (NumPy scalar writes are slow)
        h[C.R_VERSION], h[C.R_BATCH], h[C.R_SAMPLES] = version, batch, samples
        h[C.R_DURATION], h[C.R_DELAY_COMM] = delay_comm + delay_compute, delay_comm
        h[C.R_COMPUTE_S], h[C.R_LOSS_SUM] = compute, loss_sum
        h[C.R_ABANDONED] = abandoned
        h[C.R_EPOCH], h[C.R_PAIRS] = self.cursor.epochs_started, n_pairs
        h[C.R_STOP] = bool(self.stop.reason)
        out[:C.RESULT_HEADER] = h
        # An abandoned job's gradient is never used: send the header only.
        n = C.RESULT_HEADER if abandoned else C.RESULT_HEADER + self.model.dim * (1 + n_pairs)
        self.comm.Send(out[:n], dest=0, tag=C.TAG_RESULT)

    def _balance_batch(self, w, idx, grad, out) -> tuple[float, int]:
        """Per-example gradients for a balancing order: the mean goes to ``grad``;
        independent orders balance here, CD-GraB ships its pair differences after the
        gradient and waits for the master's signs.  CD-GraB with no unpaired example
        waiting and an even batch takes the mean and the pair differences in one pass
        (``Model.pair_grads``), the differences written straight into ``out``."""
        b = idx.size
        if self.coordinated and b % 2 == 0 and self.cursor.ordering.pending_id[0] < 0:
            d = grad.size
            diffs = out[C.RESULT_HEADER + d:C.RESULT_HEADER + d * (1 + b // 2)].reshape(b // 2, d)
            loss_sum = self.model.pair_grads(w, self.X, self.y, idx, grad, diffs)
            first, second = self.cursor.ordering.pair_ids(0, b)
            if first.size:
                self.awaiting.append((first, second))
            return loss_sum, b // 2
        G = self.grads[:idx.size]
        self.model.per_example_grads(w, self.X, self.y, idx, G)
        np.mean(G, axis=0, out=grad)
        loss_sum = self.model.loss_sum(w, self.X, self.y, idx)
        if not self.coordinated:
            self.cursor.ordering.step(G[None])
            return loss_sum, 0
        first, second, diffs = self.cursor.ordering.pairs(0, G)
        d = grad.size
        out[C.RESULT_HEADER + d:C.RESULT_HEADER + d * (1 + first.size)] = diffs.reshape(-1)
        if first.size:
            self.awaiting.append((first, second))
        return loss_sum, first.size

    def place_signs(self) -> None:
        count = self.status.Get_count(MPI.DOUBLE)
        eps = self.inbox[:count].astype(np.int8)
        first, second = self.awaiting.popleft()
        assert eps.size == first.size, f"worker {self.rank}: {eps.size} signs for {first.size} pairs"
        self.cursor.ordering.place(0, first, second, eps)

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
            if self.comm.Iprobe(source=0, tag=MPI.ANY_TAG):
                return now - start
            time.sleep(min(end - now, 5e-4))

    def evaluate(self) -> None:
        t = time.perf_counter()
        w = self.params
        r = self.eval_reply
        m = self.model
        r[C.E_TRAIN_LOSS] = m.grad_sum(w, self.X, self.y, self.all_rows, r[C.EVAL_HEADER:])
        r[C.E_TRAIN_N] = self.all_rows.size
        r[C.E_TRAIN_CORRECT] = m.correct_count(w, self.X, self.y, self.all_rows)
        if self.test_rows.size:
            r[C.E_TEST_LOSS] = m.loss_sum(w, self.X_test, self.y_test, self.test_rows)
            r[C.E_TEST_CORRECT] = m.correct_count(w, self.X_test, self.y_test, self.test_rows)
        else:
            r[C.E_TEST_LOSS] = r[C.E_TEST_CORRECT] = 0.0
        r[C.E_TEST_N] = self.test_rows.size
        r[C.E_SECONDS] = time.perf_counter() - t
        self.comm.Send(r, dest=0, tag=C.TAG_EVAL_RESULT)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        assert not self.awaiting, "the master flushes CD-GraB signs before every checkpoint"
        cur = self.cursor.state_dict()
        ordering = dict(cur["ordering"])
        order_rng = ordering.pop(f"rng_{self.rank}")
        order = {"perm": cur["perm"], "pos": cur["pos"], "epochs_started": cur["epochs_started"]}
        if "history" in cur:
            order["history"] = cur["history"]
        return {"rng": {"order": order_rng, "delay": stream_state(self.delay.rng)},
                "order": order, "ordering": ordering}

    def load_state_dict(self, state: dict) -> None:
        load_worker_state(self.cursor, self.delay.rng, self.rank, state)


def load_worker_state(cursor: EpochCursor, delay_rng, rank: int, state: dict) -> None:
    """Put a worker's saved state (``Worker.state_dict``) into its cursor and delay stream."""
    ordering = dict(state["ordering"])
    ordering[f"rng_{rank}"] = state["rng"]["order"]
    cur = dict(state["order"])
    cur["ordering"] = ordering
    cursor.load_state_dict(cur)
    set_stream_state(delay_rng, state["rng"]["delay"])
