"""Every message between the master (rank 0) and the workers: its layout, its packing
and unpacking, the buffers behind it and the non-blocking calls that move it.  No other
module indexes a header.

Every per-update message is one float64 buffer ``[header | payload]`` sent with the
upper-case (buffer) mpi4py API; integers in headers (versions, counts) are exact in
float64 below 2**53.  Master -> worker messages all leave rank 0 and the worker rank
takes them with ``ANY_TAG``, so it sees them in the order they were sent.  The rarer
state exchanges of a checkpoint move trees of arrays (``comm.send_tree``).  Nothing
pickles.

A worker rank may host several workers (``placement.WorkerMap``): a message for one of
them carries its slot on the rank in the tag (``kind + TAG_STRIDE * slot``), so that a
job message stays one buffer shared by every worker at the same version; a result
names its worker in its header.  Evaluations and the release go to a rank once, and an
evaluation reply holds one row per hosted worker.

    job          [version, batch, flags | parameters]          TAG_JOB (+ slot)
    evaluation   [version, 0, 0 | parameters]                  TAG_EVAL (per rank)
    signs        [eps_0 .. eps_{Q-1}]  (CD-GraB, +1/-1)        TAG_SIGNS (+ slot)
    state get    [version, 0, 0]; the worker answers a tree    TAG_STATE_GET (+ slot)
    state set    [version, 0, 0], then a tree                  TAG_STATE_SET (+ slot)
    release      [version, 0, exit status]                     TAG_RELEASE (per rank)
    result       [RESULT header | gradient | pair differences] TAG_RESULT
                 (the pairs in ``order.pair_dtype``: float32 ones packed two per slot)
    eval reply   [EVAL header | gradient sum] per hosted worker TAG_EVAL_RESULT
    state tree   (comm.send_tree)                              TAG_TREE (+ slot)
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from mpi4py import MPI

from hpcsgd import comm as C
from hpcsgd.engine.interface import Result
from hpcsgd.placement import WorkerMap

# master -> worker
TAG_JOB = 1
TAG_EVAL = 2
TAG_STATE_GET = 3
TAG_STATE_SET = 4
TAG_RELEASE = 5     # leave the worker loop with the exit status in the header
TAG_SIGNS = 6
# worker -> master
TAG_RESULT = 11
TAG_EVAL_RESULT = 12
TAG_TREE = 13
TAG_STRIDE = 16  # tag = kind + TAG_STRIDE * (the worker's slot on its rank)


def slot_tag(kind: int, slot: int) -> int:
    return kind + TAG_STRIDE * slot


def tag_kind(tag: int) -> tuple[int, int]:
    """(kind, slot) of a tag."""
    return tag % TAG_STRIDE, tag // TAG_STRIDE

# Job header.  A job is identified by its place in the worker's queue, so one buffer
# serves every worker at the same version.
J_VERSION, J_BATCH, J_FLAGS = range(3)
JOB_HEADER = 3
FLAG_PREEMPTIBLE = 1  # any newer message from the master makes this job obsolete

# Result header.  R_DURATION is the injected delay drawn for the job (in full, even when
# it was abandoned) and R_DELAY_COMM its communication part; R_SAMPLES is 0 for a job
# dropped before it was computed; R_PAIRS counts the pair differences after the
# gradient; R_STOP is 1 once the worker was asked to stop (a signal on its rank);
# R_WORKER is the worker that computed it (its rank may host several).
(R_VERSION, R_BATCH, R_SAMPLES, R_DURATION, R_COMPUTE_S, R_LOSS_SUM, R_ABANDONED, R_EPOCH,
 R_PAIRS, R_DELAY_COMM, R_STOP, R_WORKER) = range(12)
RESULT_HEADER = 12

# Evaluation reply: sums over the worker's rows, then the gradient sum over its train
# rows.  E_SECONDS is how long the worker computed: the training clock is set back by
# the slowest worker's, not by the whole exchange (jobs still running meanwhile are
# training time).
(E_TRAIN_LOSS, E_TRAIN_N, E_TRAIN_CORRECT, E_TEST_LOSS, E_TEST_N, E_TEST_CORRECT, E_SECONDS) = range(7)
EVAL_HEADER = 7

SPARE_BUFFERS = 4  # job buffers of past versions kept for reuse
# Results a worker rank may have on their way at once (its ring of reply buffers, and
# the receives rank 0 keeps posted for it): one for a rank hosting one worker (which
# then waits for each reply to be taken, as with a blocking send: two were slower at
# d = 1e6, 153-170 against 177-184 async updates/s), else twice the workers it hosts, at
# most 16 and at most 64 MB of buffers.  A rank hosting many virtual workers then
# computes on while rank 0 is busy, instead of waiting in a send for each reply to be
# taken (measured with one: 3.5 ms per reply, M = 1,000 on 2 ranks).
RESULTS_IN_FLIGHT = 16
RESULT_BYTES_IN_FLIGHT = 64 << 20


def results_in_flight(hosted: int, result_length: int) -> int:
    """Reply buffers of a worker rank hosting ``hosted`` workers (= receives posted for it)."""
    if hosted == 1:
        return 1
    return max(1, min(2 * hosted, RESULTS_IN_FLIGHT, RESULT_BYTES_IN_FLIGHT // (8 * result_length)))


def pair_slots(count: int, pair_d: int, pair_dtype=np.float64) -> int:
    """float64 slots that ``count`` pair differences of ``pair_d`` values take."""
    return -(-count * pair_d * np.dtype(pair_dtype).itemsize // 8)


@functools.cache
def _no_pairs(pair_d: int, pair_dtype) -> np.ndarray:
    return np.empty((0, pair_d), dtype=pair_dtype)


def pair_view(buf: np.ndarray, start: int, count: int, pair_d: int, pair_dtype=np.float64) -> np.ndarray:
    """The [count, pair_d] pair differences stored in ``buf`` from slot ``start``."""
    if not count:  # (most results: one shared empty array, no views to make)
        return _no_pairs(pair_d, np.dtype(pair_dtype))
    raw = buf[start:start + pair_slots(count, pair_d, pair_dtype)]
    return raw.view(pair_dtype)[:count * pair_d].reshape(count, pair_d)


def result_length(d: int, pair_differences: int, pair_d: int | None = None, pair_dtype=np.float64) -> int:
    """Longest result message: header, gradient, and the pair differences a coordinated
    ordering ships (``Ordering.pair_differences``; ``pair_d`` parameters each: the whole
    model's, also when the gradient is a parameter server's slice of d)."""
    return RESULT_HEADER + d + pair_slots(pair_differences, d if pair_d is None else pair_d, pair_dtype)


def _header(version: int, batch: int = 0, flags: int = 0, d: int = 0) -> np.ndarray:
    buf = np.empty(JOB_HEADER + d, dtype=np.float64)
    buf[J_VERSION], buf[J_BATCH], buf[J_FLAGS] = version, batch, flags
    return buf


def unpack_job(buf: np.ndarray) -> tuple[int, int, bool]:
    """(version, batch, preemptible) of a job message."""
    h = buf[:JOB_HEADER].tolist()
    return int(h[J_VERSION]), int(h[J_BATCH]), bool(int(h[J_FLAGS]) & FLAG_PREEMPTIBLE)


def pack_result(out: np.ndarray, worker: int, version: int, batch: int, samples: int, delay_comm: float,
                delay_compute: float, compute: float, loss_sum: float, abandoned: bool, pairs: int,
                epoch: int, stop: bool) -> None:
    """Write a result header into ``out`` (the gradient and pairs follow it there)."""
    h = [0.0] * RESULT_HEADER  # filled as a list, copied in once (NumPy scalar writes are slow)
    h[R_WORKER] = worker
    h[R_VERSION], h[R_BATCH], h[R_SAMPLES] = version, batch, samples
    h[R_DURATION], h[R_DELAY_COMM] = delay_comm + delay_compute, delay_comm
    h[R_COMPUTE_S], h[R_LOSS_SUM] = compute, loss_sum
    h[R_ABANDONED] = abandoned
    h[R_EPOCH], h[R_PAIRS] = epoch, pairs
    h[R_STOP] = stop
    out[:RESULT_HEADER] = h


def unpack_result(buf: np.ndarray, d: int, pair_d: int | None = None, pair_dtype=np.float64) -> Result:
    """A result message as the methods see it (gradient and pairs are views into ``buf``;
    ``pair_d``: the pairs' length when the gradient is a slice of d)."""
    pair_d = d if pair_d is None else pair_d
    h = buf[:RESULT_HEADER].tolist()  # one conversion, not one NumPy scalar per field
    return Result(worker=int(h[R_WORKER]), version=int(h[R_VERSION]), batch=int(h[R_BATCH]),
                  samples=int(h[R_SAMPLES]), duration=float(h[R_DURATION]),
                  delay_comm=float(h[R_DELAY_COMM]), compute_seconds=float(h[R_COMPUTE_S]),
                  loss_sum=float(h[R_LOSS_SUM]), abandoned=bool(h[R_ABANDONED]),
                  epoch=int(h[R_EPOCH]), stop=bool(h[R_STOP]),
                  grad=buf[RESULT_HEADER:RESULT_HEADER + d],
                  pairs=pair_view(buf, RESULT_HEADER + d, int(h[R_PAIRS]), pair_d, pair_dtype),
                  buf=buf)


@dataclass(slots=True)
class EvalSums:
    """One evaluation's sums over every worker's rows."""
    train_loss: float
    train_n: float
    test_loss: float
    test_n: float
    test_correct: float
    seconds: float            # the slowest worker's evaluation compute
    grad_sum: np.ndarray      # the data loss gradient summed over the train rows


class MasterTransport:
    """Rank 0's side.  Result receives are posted for every worker rank at all times
    (``results_in_flight`` of them: as many as it may send at once), taken in the
    order they were posted; every send is non-blocking and its buffer lives until it
    completes; a job message is copied once per version and shared by every job of that
    version (``held`` names the job buffers the scheduler still holds unsent, so that
    none is reused early)."""

    def __init__(self, comm: MPI.Comm, d: int, pair_differences: int, workers: WorkerMap,
                 held: Callable[[], Sequence[np.ndarray]] = tuple, pair_d: int | None = None,
                 pair_dtype=np.float64):
        """``d``: the parameters this rank owns (all, or a parameter server's slice);
        ``pair_d``: the length of a pair difference (the whole model's)."""
        self.comm = comm
        self.map = workers
        self.M, self.R = workers.M, workers.R
        self.ranks = range(1, self.R + 1)
        self.d = d
        self.pair_d = d if pair_d is None else pair_d
        self.held = held
        self.pair_dtype = np.dtype(pair_dtype)
        self.recv_size = result_length(d, pair_differences, self.pair_d, self.pair_dtype)
        self.row_width = RESULT_HEADER + d  # a result without pair differences (``result_row``)
        self.send_reqs: list[MPI.Request] = []  # sends not known complete, and their buffers
        self.send_bufs: list[np.ndarray] = []
        self.job_bufs: dict[tuple[int, int], np.ndarray] = {}  # (batch, flags) -> this version's
        self.job_bufs_version = -1
        self.retired_bufs: list[np.ndarray] = []  # older versions' buffers, reusable once unused
        self.params_buf: np.ndarray | None = None  # the job buffer the model itself lives in (params_buffer)
        self.spare_bufs: list[np.ndarray] = []
        self.free_bufs: list[np.ndarray] = []     # result buffers
        # posted result receives: request i is for rank recv_rank[i] into recv_bufs[i];
        # each rank's requests in the order they were posted (= the order they match)
        self.recvs: list[MPI.Request] = []
        self.recv_rank: list[int] = []
        self.recv_bufs: list[np.ndarray] = []
        self.posted: dict[int, deque[int]] = {r: deque() for r in self.ranks}
        for r in self.ranks:
            for _ in range(results_in_flight(len(workers.hosted(r)), self.recv_size)):
                self.recvs.append(MPI.REQUEST_NULL)
                self.recv_rank.append(r)
                self.recv_bufs.append(None)
                self._post_recv(len(self.recvs) - 1)
        self.done = [False] * len(self.recvs)
        self.eval_bufs: np.ndarray | None = None

    # ---------------------------------------------------------------- sending
    def _send(self, buf: np.ndarray, rank: int, tag: int) -> None:
        self.send_reqs.append(self.comm.Isend(buf, dest=rank, tag=tag))
        self.send_bufs.append(buf)
        if len(self.send_reqs) > 8 * self.M:  # a rank that does not receive: keep the list short
            self.reap()

    def _send_to(self, buf: np.ndarray, worker: int, kind: int) -> None:
        m = self.map
        self._send(buf, m.rank(worker), slot_tag(kind, m.slot(worker)))

    def reap(self) -> None:
        """Forget completed sends; recycle old job buffers that nothing uses any more."""
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
        held = self.held()
        busy = {id(b) for b in self.send_bufs} | {id(b) for b in held} if (self.send_reqs or held) else ()
        keep = []
        for buf in self.retired_bufs:
            if id(buf) in busy:
                keep.append(buf)
            elif len(self.spare_bufs) < SPARE_BUFFERS:
                self.spare_bufs.append(buf)
        self.retired_bufs = keep

    def _spare(self) -> np.ndarray:
        if not self.spare_bufs:
            self.reap()  # refills the spares from retired buffers now unused
        return self.spare_bufs.pop() if self.spare_bufs else np.empty(JOB_HEADER + self.d)

    def _in_job_message(self, buf: np.ndarray) -> bool:
        """``buf`` is a job message of the current version already."""
        return any(b is buf for b in self.job_bufs.values())

    def params_buffer(self) -> np.ndarray:
        """Where an out-of-place step writes the next model (``ParameterState.step``):
        the payload of a job buffer, which the first job message at the new version
        then is, with no copy of the model.  The buffer the model was in is retired
        unless a job message uses it (it is reused only once nothing sends or holds it)."""
        buf = self._spare()
        old = self.params_buf
        if old is not None and not self._in_job_message(old):
            self.retired_bufs.append(old)  # (read by the step about to run: reap has run already)
        self.params_buf = buf
        return buf[JOB_HEADER:]

    def job_message(self, params: np.ndarray, version: int, batch: int, preemptible: bool) -> np.ndarray:
        """The job message for (version, batch, preemptible), shared by every job of that
        version.  Isend needs a buffer nobody writes to until it completes, and the model
        changes at the next update; old buffers are reused (a fresh d-sized allocation
        per update costs page faults)."""
        flags = FLAG_PREEMPTIBLE if preemptible else 0
        if self.job_bufs_version != version:
            self.retired_bufs.extend(self.job_bufs.values())
            self.job_bufs.clear()
            self.job_bufs_version = version
        buf = self.job_bufs.get((batch, flags))
        if buf is None:
            own = self.params_buf
            if own is not None and params.base is own and not self._in_job_message(own):
                buf = own  # the step wrote this version's model into it
            else:
                buf = self._spare()
                buf[JOB_HEADER:] = params
            buf[J_VERSION], buf[J_BATCH], buf[J_FLAGS] = version, batch, flags
            self.job_bufs[batch, flags] = buf
        return buf

    def send_job(self, worker: int, buf: np.ndarray) -> None:
        self._send_to(buf, worker, TAG_JOB)

    def send_signs(self, worker: int, eps: np.ndarray) -> None:
        self._send_to(eps.astype(np.float64), worker, TAG_SIGNS)

    def send_state(self, worker: int, version: int, tree: dict) -> None:
        self._send_to(_header(version), worker, TAG_STATE_SET)
        m = self.map
        C.send_tree(self.comm, m.rank(worker), tree, tag=slot_tag(TAG_TREE, m.slot(worker)))

    def request_states(self, version: int) -> None:
        for j in range(1, self.M + 1):
            self._send_to(_header(version), j, TAG_STATE_GET)

    def poll_states(self, wanted: set[int]) -> dict[int, dict]:
        """The state trees of ``wanted`` workers that have arrived (non-blocking)."""
        got = {}
        m = self.map
        for j in sorted(wanted):
            rank, tag = m.rank(j), slot_tag(TAG_TREE, m.slot(j))
            if self.comm.Iprobe(source=rank, tag=tag):
                got[j] = C.recv_tree(self.comm, rank, tag=tag)
        return got

    # ---------------------------------------------------------------- results
    def _post_recv(self, i: int) -> None:
        rank = self.recv_rank[i]
        buf = self.free_bufs.pop() if self.free_bufs else np.empty(self.recv_size)
        self.recv_bufs[i] = buf
        self.recvs[i] = self.comm.Irecv(buf, source=rank, tag=TAG_RESULT)
        self.posted[rank].append(i)

    def poll_results(self) -> list[Result] | tuple:
        """Every result that has arrived, by worker rank, each rank's in the order they
        were sent (their receives re-posted)."""
        idx = MPI.Request.Testsome(self.recvs)
        if not idx:
            return ()
        done = self.done
        for i in idx:
            done[i] = True
        out = []
        for rank in sorted({self.recv_rank[i] for i in idx}):
            posted = self.posted[rank]
            while posted and done[posted[0]]:  # (a later receive may complete first)
                i = posted.popleft()
                done[i] = False
                buf = self.recv_bufs[i]
                self._post_recv(i)
                out.append(unpack_result(buf, self.d, self.pair_d, self.pair_dtype))
        return out

    def recycle(self, result: Result) -> None:
        """A result's buffer may take the next message."""
        self.free_bufs.append(result.buf)

    def result_row(self, result: Result) -> np.ndarray:
        """A result without pair differences as one row (checkpoints keep results in flight)."""
        return result.buf[:self.row_width]

    def result_from_row(self, worker: int, row: np.ndarray) -> Result:
        buf = np.empty(self.recv_size)
        if row.size == self.row_width - 1:  # stored before results named their worker
            buf[:R_WORKER], buf[RESULT_HEADER:self.row_width] = row[:R_WORKER], row[R_WORKER:]
        else:
            buf[:self.row_width] = row
        buf[R_WORKER] = worker
        return unpack_result(buf, self.d, self.pair_d, self.pair_dtype)

    # ---------------------------------------------------------------- evaluation
    def request_eval(self, params: np.ndarray, version: int) -> list[MPI.Request]:
        """Send the model to every worker rank for evaluation; the replies' receives,
        one per rank (its rows: one per hosted worker, in worker order)."""
        d = params.size  # the whole model, also where servers own slices of it
        buf = _header(version, d=d)
        buf[JOB_HEADER:] = params
        for r in self.ranks:
            self._send(buf, r, TAG_EVAL)
        if self.eval_bufs is None:
            self.eval_bufs = np.empty((self.M, EVAL_HEADER + d))
        hosted = self.map.hosted
        return [self.comm.Irecv(self.eval_bufs[hosted(r).start - 1:hosted(r).stop - 1], source=r,
                                tag=TAG_EVAL_RESULT) for r in self.ranks]

    def eval_sums(self) -> EvalSums:
        """The replies of the evaluation just completed, summed over the workers."""
        r = self.eval_bufs
        tot = r[:, :EVAL_HEADER].sum(axis=0)
        return EvalSums(train_loss=tot[E_TRAIN_LOSS], train_n=tot[E_TRAIN_N], test_loss=tot[E_TEST_LOSS],
                        test_n=tot[E_TEST_N], test_correct=tot[E_TEST_CORRECT],
                        seconds=float(r[:, E_SECONDS].max()), grad_sum=r[:, EVAL_HEADER:].sum(axis=0))

    # ---------------------------------------------------------------- the end
    def release(self, version: int, status: int) -> None:
        """Let every worker leave its loop with ``status``; cancel the receives and
        complete every send."""
        for r in self.ranks:
            self._send(_header(version, flags=status), r, TAG_RELEASE)
        self.close()

    def close(self) -> None:
        """Cancel the receives and complete every send (a follower server's end)."""
        for req in self.recvs:
            if req != MPI.REQUEST_NULL:  # (a result taken out of order waits done)
                req.Cancel()
        MPI.Request.Waitall(self.recvs)
        C.wait_all(self.send_reqs)
        self.send_reqs.clear()
        self.send_bufs.clear()


class _ReplyBuffers:
    """One reply on its way: rank 0's message (and, with parameter servers, each
    follower's slice) and the sends still moving it."""

    def __init__(self, out_len: int, lead_len: int | None, slices: list[int]):
        self.out = np.empty(out_len)
        self.lead = np.empty(lead_len) if lead_len is not None else None
        self.slices = [np.empty(n) for n in slices]
        self.sends: list[MPI.Request] = []

    def wait(self) -> None:
        """Complete its sends (as a blocking Send would wait for them)."""
        MPI.Request.Waitall(self.sends)
        self.sends = []


class WorkerTransport:
    """A worker rank's side, shared by the workers it hosts: it takes the master's
    messages in the order they were sent and answers with non-blocking sends from a ring
    of reply buffers (``results_in_flight``: rank 0 keeps as many receives posted for
    it), so that it computes on while its replies wait to be taken."""

    def __init__(self, comm: MPI.Comm, d: int, batch: int, pair_differences: int, hosted: int = 1,
                 servers: Sequence[tuple[int, slice]] = (), pair_dtype=np.float64):
        """``servers``: (rank, slice of the parameters) of every parameter server but rank
        0 (``run.servers``): a job's model comes in slices, rank 0's with the header,
        and each server gets its slice of the gradient."""
        self.comm = comm
        self.d = d
        self.inbox = np.empty(JOB_HEADER + max(d, batch))  # a job, or up to B/2 signs
        self.params = self.inbox[JOB_HEADER:JOB_HEADER + d]  # the model of a job or evaluation
        self.pair_dtype = np.dtype(pair_dtype)
        self.servers = list(servers)
        self.own = slice(0, servers[0][1].start) if servers else slice(0, d)  # rank 0's slice
        self.slice_in = [np.empty(JOB_HEADER + part.stop - part.start) for _, part in self.servers]
        out_len = result_length(d, pair_differences, pair_dtype=self.pair_dtype)
        # rank 0's message when pairs follow a slice of the gradient: [header | slice | pairs]
        lead_len = RESULT_HEADER + self.own.stop + pair_slots(pair_differences, d, self.pair_dtype) \
            if servers and pair_differences else None
        slices = [RESULT_HEADER + part.stop - part.start for _, part in self.servers]
        self.ring = [_ReplyBuffers(out_len, lead_len, slices) for _ in range(results_in_flight(hosted, out_len))]
        self.turn = 0
        self._use(self.ring[0])
        self.eval_out = np.empty((hosted, EVAL_HEADER + d))   # a row per hosted worker
        self.status = MPI.Status()
        self.backoff = C.Backoff()

    def receive(self) -> tuple[int, int]:
        """Block politely for the next master message; returns its (kind, slot)."""
        if not self.comm.Iprobe(source=0, tag=MPI.ANY_TAG, status=self.status):
            # nothing to do but wait: first see the replies through (a large one moves
            # only while this rank polls, and the wait below sleeps)
            self.finish_sends()
            while not self.comm.Iprobe(source=0, tag=MPI.ANY_TAG, status=self.status):
                self.backoff.wait()
            self.backoff.done()
        tag = self.status.Get_tag()
        self.comm.Recv(self.inbox, source=0, tag=tag)
        kind = tag_kind(tag)
        if kind[0] == TAG_JOB:
            version = self.inbox[J_VERSION]
            for (rank, part), buf in zip(self.servers, self.slice_in):
                self.comm.Recv(buf, source=rank, tag=tag)
                assert buf[J_VERSION] == version, f"server rank {rank} sent v{buf[J_VERSION]} for v{version}"
                self.params[part] = buf[JOB_HEADER:]
        return kind

    def newer_waiting(self) -> bool:
        """The master has sent something newer than the message being handled."""
        return self.comm.Iprobe(source=0, tag=MPI.ANY_TAG)

    def job(self) -> tuple[int, int, bool]:
        """(version, batch, preemptible) of the job just received; its model is ``params``."""
        return unpack_job(self.inbox)

    def exit_status(self) -> int:
        return int(self.inbox[J_FLAGS])

    def signs(self) -> np.ndarray:
        return self.inbox[:self.status.Get_count(MPI.DOUBLE)].astype(np.int8)

    def _use(self, reply: _ReplyBuffers) -> None:
        """The next job's result goes into ``reply``: ``grad`` and ``pair_slot`` are its."""
        reply.wait()  # (its sends of ``len(ring)`` replies ago)
        self.reply_bufs = reply
        self.out = reply.out
        self.grad = reply.out[RESULT_HEADER:RESULT_HEADER + self.d]  # where the mean gradient goes

    def finish_sends(self) -> None:
        """Complete every reply on its way (before the rank idles or leaves)."""
        for reply in self.ring:
            reply.wait()

    def pair_slot(self, count: int) -> np.ndarray:
        """Where ``count`` pair differences go, after the gradient: [count, d] of
        ``order.pair_dtype``."""
        return pair_view(self.out, RESULT_HEADER + self.d, count, self.d, self.pair_dtype)

    def reply(self, worker: int, version: int, batch: int, samples: int, delay_comm: float,
              delay_compute: float, compute: float, loss_sum: float, abandoned: bool, pairs: int, epoch: int,
              stop: bool) -> None:
        """Send the result of the job: the header, then (unless abandoned: its gradient is
        never used) the gradient in ``grad`` and ``pairs`` differences in ``pair_slot``;
        the next job's result goes into the next reply buffers of the ring."""
        reply, out = self.reply_bufs, self.out
        pack_result(out, worker, version, batch, samples, delay_comm, delay_compute, compute, loss_sum,
                    abandoned, pairs, epoch, stop)
        slots = pair_slots(pairs, self.d, self.pair_dtype)
        n = RESULT_HEADER if abandoned else RESULT_HEADER + self.own.stop + slots
        lead = out
        if pairs and self.servers:  # the pairs (whole d-vectors) go to rank 0 only, after its slice
            lead = reply.lead
            lead[:RESULT_HEADER + self.own.stop] = out[:RESULT_HEADER + self.own.stop]
            lead[RESULT_HEADER + self.own.stop:n] = out[RESULT_HEADER + self.d:RESULT_HEADER + self.d + slots]
        reply.sends.append(self.comm.Isend(lead[:n], dest=0, tag=TAG_RESULT))
        for (rank, part), buf in zip(self.servers, reply.slices):
            buf[:RESULT_HEADER] = out[:RESULT_HEADER]
            buf[R_PAIRS] = 0  # the pairs went to rank 0 alone
            if not abandoned:
                buf[RESULT_HEADER:] = self.grad[part]
            reply.sends.append(self.comm.Isend(buf[:RESULT_HEADER] if abandoned else buf, dest=rank,
                                               tag=TAG_RESULT))
        self.turn = (self.turn + 1) % len(self.ring)
        self._use(self.ring[self.turn])

    def eval_grad(self, slot: int) -> np.ndarray:
        """Where the train gradient sum of the worker in ``slot`` goes."""
        return self.eval_out[slot, EVAL_HEADER:]

    def eval_row(self, slot: int, train_loss: float, train_n: int, train_correct: float, test_loss: float,
                 test_n: int, test_correct: float, seconds: float) -> None:
        r = self.eval_out[slot]
        r[E_TRAIN_LOSS], r[E_TRAIN_N], r[E_TRAIN_CORRECT] = train_loss, train_n, train_correct
        r[E_TEST_LOSS], r[E_TEST_N], r[E_TEST_CORRECT] = test_loss, test_n, test_correct
        r[E_SECONDS] = seconds

    def eval_reply(self) -> None:
        """Send every hosted worker's evaluation row (``eval_row``, ``eval_grad``)."""
        self.comm.Send(self.eval_out, dest=0, tag=TAG_EVAL_RESULT)

    def send_state(self, slot: int, tree: dict) -> None:
        C.send_tree(self.comm, 0, tree, tag=slot_tag(TAG_TREE, slot))

    def receive_state(self, slot: int) -> dict:
        return C.recv_tree(self.comm, 0, tag=slot_tag(TAG_TREE, slot))
