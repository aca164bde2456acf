"""A worker (ranks 1..M): owns its shard, computes what the master asks, in order.

The worker reads master messages with ANY_TAG, so jobs, evaluations and state requests
are handled in exactly the order the master sent them.  Each job takes the next batch
of the worker's own example order and draws one duration from its delay stream, in
both clocks, so what a worker computes never depends on timing.
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

from hpcsgd import comm as C
from hpcsgd.ordering import EpochCursor
from hpcsgd.stragglers import DelayModel, set_stream_state, stream_state


class Worker:
    def __init__(self, comm: MPI.Comm, cfg: dict, model, X, y, X_test, y_test,
                 cursor: EpochCursor, delay: DelayModel):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.model = model
        self.X, self.y, self.X_test, self.y_test = X, y, X_test, y_test
        self.all_rows = np.arange(X.shape[0], dtype=np.int64)
        self.test_rows = np.arange(X_test.shape[0], dtype=np.int64)
        self.cursor = cursor
        self.delay = delay
        self.simulated = cfg["run"]["clock"] == "simulated"
        d = model.dim
        self.inbox = np.empty(C.JOB_HEADER + d)
        self.result = np.empty(C.RESULT_HEADER + d)
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
            elif tag == C.TAG_STOP:
                return int(self.inbox[C.J_FLAGS])
            else:
                raise RuntimeError(f"worker {self.rank}: unexpected message tag {tag}")

    # ------------------------------------------------------------------ work
    def job(self) -> None:
        h = self.inbox
        version, batch, flags = int(h[C.J_VERSION]), int(h[C.J_BATCH]), int(h[C.J_FLAGS])
        w = h[C.JOB_HEADER:]
        idx = self.cursor.next_batch(batch)
        assert idx.size == batch, f"worker {self.rank}: master expected batch {batch}, order gives {idx.size}"
        out = self.result
        grad = out[C.RESULT_HEADER:]
        t = time.perf_counter()
        loss_sum = self.model.grad_sum(w, self.X, self.y, idx, grad)
        grad *= 1.0 / idx.size
        self.model.reg_grad_add(w, grad)
        compute = time.perf_counter() - t
        duration = self.delay.duration(idx.size)
        abandoned = False
        if not self.simulated and duration > 0.0:
            abandoned = self._sleep(duration, preemptible=bool(flags & C.FLAG_PREEMPTIBLE))
        out[C.R_VERSION], out[C.R_BATCH], out[C.R_SAMPLES] = version, idx.size, idx.size
        out[C.R_DURATION], out[C.R_COMPUTE_S], out[C.R_LOSS_SUM] = duration, compute, loss_sum
        out[C.R_ABANDONED] = abandoned
        # An abandoned job's gradient is never used: send the header only.
        n = C.RESULT_HEADER if abandoned else out.size
        self.comm.Send(out[:n], dest=0, tag=C.TAG_RESULT)

    def _sleep(self, seconds: float, preemptible: bool) -> bool:
        """Injected straggler delay.  A preemptible job is abandoned as soon as the
        master sends anything newer (it has moved on); returns True if abandoned."""
        if not preemptible:
            time.sleep(seconds)
            return False
        end = time.perf_counter() + seconds
        while True:
            left = end - time.perf_counter()
            if left <= 0:
                return False
            if self.comm.Iprobe(source=0, tag=MPI.ANY_TAG):
                return True
            time.sleep(min(left, 5e-4))

    def evaluate(self) -> None:
        w = self.inbox[C.JOB_HEADER:]
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
        self.comm.Send(r, dest=0, tag=C.TAG_EVAL_RESULT)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        cur = self.cursor.state_dict()
        ordering = dict(cur["ordering"])
        order_rng = ordering.pop(f"rng_{self.rank}")
        order = {"perm": cur["perm"], "pos": cur["pos"], "epochs_started": cur["epochs_started"]}
        if "history" in cur:
            order["history"] = cur["history"]
        return {"rng": {"order": order_rng, "delay": stream_state(self.delay.rng)},
                "order": order, "ordering": ordering}

    def load_state_dict(self, state: dict) -> None:
        ordering = dict(state["ordering"])
        ordering[f"rng_{self.rank}"] = state["rng"]["order"]
        cur = dict(state["order"])
        cur["ordering"] = ordering
        self.cursor.load_state_dict(cur)
        set_stream_state(self.delay.rng, state["rng"]["delay"])
