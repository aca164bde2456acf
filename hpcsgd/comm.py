"""MPI helpers every rank uses: polite waiting (``Backoff``), trees of arrays without
pickle (``send_tree``/``recv_tree``: a JSON description in a uint8 buffer, then one
buffer per array), and the small collectives of set-up.  The engine's own messages are
laid out in hpcsgd.transport.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from mpi4py import MPI


class Backoff:
    """Adaptive polling: spin (yielding the CPU) for about twice the waits seen lately,
    then sleep with growing intervals (up to a sixteenth of the waits seen lately), so an
    idle rank never holds a core for long.

    MPICH's blocking waits poll at full speed; with more ranks than cores that steals
    time from the ranks doing real work.  Pure sleeping instead adds up to a sleep
    interval of latency to every message, which dominates small updates.  Spinning for
    roughly the expected wait gets both: replies that come soon are seen at once, and
    long waits (a straggler) cost at most ``max_spin`` of CPU before the rank sleeps.
    Call ``wait()`` after each unsuccessful poll and ``done()`` once the wait is over;
    keep one instance per waiting site so it learns that site's typical wait.
    """

    def __init__(self, min_spin: float = 100e-6, max_spin: float = 1e-3, max_sleep: float = 1e-3):
        self.min_spin = min_spin
        self.max_spin = max_spin
        self.max_sleep = max_sleep
        self.expected = min_spin
        self.started = None
        self.sleep = 20e-6

    def wait(self) -> None:
        now = time.perf_counter()
        if self.started is None:
            self.started = now
            self.sleep = 20e-6
        if now - self.started < min(max(2.0 * self.expected, self.min_spin), self.max_spin):
            os.sched_yield()
            return
        time.sleep(self.sleep)
        # Sleeps grow, but to at most a sixteenth of the usual wait: a large message
        # moves only while both ends poll (MPI's rendezvous), and a 1 ms sleep on a
        # wait of ~2 ms (80 KB across 1 Gbit/s) doubled the round (measured: 4.8 ms, 2.3
        # with this cap).  Long waits still sleep up to max_sleep.
        self.sleep = min(self.sleep * 2.0, self.max_sleep, max(20e-6, self.expected / 16))

    def progress(self) -> None:
        """Something arrived but the wait goes on (the simulated clock waiting for the
        earliest of many replies, a drain): spin again as at a wait's start.  A stream
        of large messages moves only while both ends poll; measured with 1,000 virtual
        workers on 2 ranks, sync: sleeping on through the stream 37 s for 20 rounds,
        short sleeps again after each arrival 20 s, spinning again 6 s."""
        self.done()

    def done(self) -> None:
        if self.started is not None:
            waited = time.perf_counter() - self.started
            self.expected = 0.75 * self.expected + 0.25 * waited
            self.started = None


def abort(comm, line: str, status: int) -> None:
    """End every rank of the job with ``status`` after one line on stderr.  The line gets
    half a second to reach mpiexec: MPI_Abort tears the job down at once, and a line
    written just before it was seen lost (a second stop signal's, in CI)."""
    sys.stdout.flush()
    sys.stderr.write(line if line.endswith("\n") else line + "\n")
    sys.stderr.flush()
    time.sleep(0.5)
    comm.Abort(status)


def fine_timer_slack() -> None:
    """Let short sleeps be short: Linux stretches every sleep by the thread's timer
    slack (50 us by default), which would dominate the polling intervals above."""
    try:
        import ctypes
        PR_SET_TIMERSLACK = 29
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)  # 1 us
    except (OSError, AttributeError):
        pass  # not Linux: sleeps are merely longer


def wait_all(requests: list[MPI.Request]) -> None:
    backoff = Backoff()
    while not MPI.Request.Testall(requests):
        backoff.wait()


def recv_sized(comm: MPI.Comm, source: int, tag: int, dtype=np.float64) -> tuple[np.ndarray, MPI.Status]:
    """Receive a message of unknown length (probe with back-off, then receive)."""
    status = MPI.Status()
    backoff = Backoff()
    while not comm.Iprobe(source=source, tag=tag, status=status):
        backoff.wait()
    count = status.Get_count(MPI.BYTE) // np.dtype(dtype).itemsize
    buf = np.empty(count, dtype=dtype)
    comm.Recv(buf, source=status.Get_source(), tag=status.Get_tag())
    return buf, status


# ---------------------------------------------------------------- trees of arrays

def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for name, value in tree.items():
        path = f"{prefix}/{name}" if prefix else str(name)
        if isinstance(value, dict):
            flat.update(flatten(value, path))
        else:
            flat[path] = value
    return flat


def unflatten(flat: dict) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def send_tree(comm: MPI.Comm, dest: int, tree: dict, tag: int) -> None:
    """Send a nested dict of arrays and JSON-able scalars without pickle."""
    flat = flatten(tree)
    arrays = {k: np.ascontiguousarray(v) for k, v in flat.items() if isinstance(v, np.ndarray)}
    meta = {
        "scalars": {k: (v.item() if isinstance(v, np.generic) else v)
                    for k, v in flat.items() if not isinstance(v, np.ndarray)},
        "arrays": [[k, a.dtype.str, list(a.shape)] for k, a in arrays.items()],
    }
    comm.Send(np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), dest=dest, tag=tag)
    for a in arrays.values():
        comm.Send(a.reshape(-1).view(np.uint8), dest=dest, tag=tag)


def recv_tree(comm: MPI.Comm, source: int, tag: int) -> dict:
    raw, _ = recv_sized(comm, source, tag, dtype=np.uint8)
    meta = json.loads(raw.tobytes().decode())
    flat = dict(meta["scalars"])
    for name, dtype, shape in meta["arrays"]:
        a = np.empty(shape, dtype=np.dtype(dtype))
        comm.Recv(a.reshape(-1).view(np.uint8), source=source, tag=tag)
        flat[name] = a
    return unflatten(flat)


def bcast_text(comm: MPI.Comm, text: str | None, root: int = 0) -> str:
    data = np.frombuffer(text.encode(), dtype=np.uint8) if comm.Get_rank() == root else None
    n = np.array([0 if data is None else data.size], dtype=np.int64)
    comm.Bcast(n, root=root)
    buf = data.copy() if data is not None else np.empty(int(n[0]), dtype=np.uint8)
    comm.Bcast(buf, root=root)
    return buf.tobytes().decode()


def gather_text(comm: MPI.Comm, text: str, root: int = 0) -> list[str] | None:
    """Every rank's ``text``, in rank order, on ``root`` (None elsewhere); buffers, no pickle."""
    data = np.frombuffer(text.encode(), dtype=np.uint8)
    sizes = np.empty(comm.Get_size(), dtype=np.int64) if comm.Get_rank() == root else None
    comm.Gather(np.array([data.size], dtype=np.int64), sizes, root=root)
    if comm.Get_rank() != root:
        comm.Gatherv(data, None, root=root)
        return None
    buf = np.empty(int(sizes.sum()), dtype=np.uint8)
    comm.Gatherv(data, (buf, sizes), root=root)
    ends = np.cumsum(sizes)
    return [buf[e - s:e].tobytes().decode() for s, e in zip(sizes.tolist(), ends.tolist())]


def first_error(comm: MPI.Comm, message: str | None) -> str | None:
    """Collective: every rank learns the first error any rank hit (lowest rank wins).

    Every rank must call this at the same point, with None when it is fine, so that a
    bad file seen by one worker stops all ranks at once instead of hanging the others.
    """
    mine = np.array([1 if message else 0], dtype=np.int64)
    flags = np.empty(comm.Get_size(), dtype=np.int64)
    comm.Allgather(mine, flags)
    if not flags.any():
        return None
    root = int(np.argmax(flags))
    return bcast_text(comm, message if comm.Get_rank() == root else None, root=root)
