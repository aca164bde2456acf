"""Parameter servers (``run.servers = S``): rank 0 and the last S - 1 ranks each own one
contiguous slice of the parameters and of every per-parameter piece of method state
(``Method.per_parameter``).

Every server runs the same engine on its slice: the same method (its policy code
unchanged), scheduler and clock, so each makes the same decisions from the same result
headers.  Rank 0, the master, is server 0 and the only one that chooses: it tells the
others when it creates the jobs its method asked for, which event it took (worker, job
number), and when it evaluates, checkpoints or stops.  The others, the followers, do
the same at the same points: each creates the same jobs, sending its slice of the model
to their workers, and takes the same events.  Workers send every server the result header with that server's slice of the
gradient.  Only rank 0 evaluates and writes: the followers' slices are gathered into
the one checkpoint layout of SPEC section 5 (so a run resumes with any S) and
scattered again on resume.

    control   [kind, worker, seq, version]            rank 0 -> follower   TAG_CONTROL
    params    [parameters of the follower's slice]    follower -> rank 0   TAG_SLICE
    sum       [partial inner product] / [total]        follower <-> rank 0  TAG_SUM
    state     comm.send_tree (params, method, results) follower -> rank 0   TAG_SLICE
    start     the initial model's slice, or a checkpoint tree cut to the slice
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from hpcsgd import comm as C
from hpcsgd import transport as T
from hpcsgd.placement import even_counts

TAG_CONTROL = 21
TAG_SLICE = 22
TAG_SUM = 23
CREATE, EVENT, GATHER_PARAMS, GATHER_STATE, STOP = range(1, 6)


class ParamSlices:
    """S contiguous slices of d parameters, as even as they go: server s owns
    ``of(s)``; server 0 is rank 0, server s >= 1 is rank ``world - S + s`` (the last
    ranks of the job; ranks 1 .. world - S are the worker ranks)."""

    def __init__(self, d: int, servers: int, world: int):
        self.d, self.S = d, servers
        self.bounds = [0]
        for n in even_counts(d, servers):
            self.bounds.append(self.bounds[-1] + n)
        self.ranks = [0] + [world - servers + s for s in range(1, servers)]

    def of(self, s: int) -> slice:
        return slice(self.bounds[s], self.bounds[s + 1])

    def size(self, s: int) -> int:
        return self.bounds[s + 1] - self.bounds[s]

    def server_of(self, rank: int) -> int | None:
        return self.ranks.index(rank) if rank in self.ranks else None

    def followers(self) -> range:
        return range(1, self.S)


# ---------------------------------------------------------------------------- checkpoint trees

def cut_tree(tree: dict, part: slice, per_parameter: tuple[str, ...]) -> dict:
    """A checkpoint tree as the server owning ``part`` loads it: every parameter-sized
    array cut to the slice (the model, the momentum, the method's per-parameter state,
    the gradients of the results in flight), everything else as it is."""
    state, eng = tree["state"], tree["state"]["engine"]
    results = eng["inflight"]["results"]
    method = {k: (v[..., part].copy() if k in per_parameter else v) for k, v in state["method"].items()}
    return {**tree, "model": {**tree["model"], "params": tree["model"]["params"][part].copy()},
            "state": {**state, "optimizer": {"momentum": state["optimizer"]["momentum"][part].copy()},
                      "method": method,
                      "engine": {**eng, "inflight": {**eng["inflight"], "results": np.concatenate(
                          [results[:, :T.RESULT_HEADER], results[:, T.RESULT_HEADER:][:, part]], axis=1)}}}}


def join_trees(tree: dict, slices: list[dict], per_parameter: tuple[str, ...]) -> dict:
    """Rank 0's checkpoint tree (its own slice) joined with the followers' ``state``
    trees, in server order: the checkpoint of the whole model."""
    state = tree["state"]
    tree["model"]["params"] = np.concatenate([tree["model"]["params"], *(s["params"] for s in slices)])
    state["optimizer"]["momentum"] = np.concatenate([state["optimizer"]["momentum"],
                                                     *(s["momentum"] for s in slices)])
    for k in per_parameter:
        state["method"][k] = np.concatenate([state["method"][k], *(s["method"][k] for s in slices)], axis=-1)
    inflight = state["engine"]["inflight"]
    inflight["results"] = np.concatenate([inflight["results"], *(s["results"][:, T.RESULT_HEADER:]
                                                                 for s in slices)], axis=1)
    return tree


# ---------------------------------------------------------------------------- rank 0's side

class Servers:
    """What rank 0 tells the followers, and what it gathers from them."""

    def __init__(self, comm: MPI.Comm, slices: ParamSlices):
        self.comm, self.slices = comm, slices
        self.sends: list[tuple[MPI.Request, np.ndarray]] = []

    def _tell(self, kind: int, worker: int = 0, seq: int = 0, version: int = 0) -> None:
        buf = np.array([kind, worker, seq, version], dtype=np.float64)
        for s in self.slices.followers():
            self.sends.append((self.comm.Isend(buf, dest=self.slices.ranks[s], tag=TAG_CONTROL), buf))
        if len(self.sends) > 64:
            self.sends = [(r, b) for r, b in self.sends if not r.Test()]

    def create(self, seq: int) -> None:
        """Rank 0 creates the jobs its method asked for, the first numbered ``seq``."""
        self._tell(CREATE, seq=seq)

    def took(self, job) -> None:
        """Rank 0 took this job's result as the next event."""
        self._tell(EVENT, job.worker, job.seq, job.version)

    def start(self, params: np.ndarray) -> None:
        """A fresh run: every follower gets its slice of the initial model."""
        for s in self.slices.followers():
            self.comm.Send(np.ascontiguousarray(params[self.slices.of(s)]), dest=self.slices.ranks[s],
                           tag=TAG_SLICE)

    def resume(self, tree: dict, per_parameter: tuple[str, ...]) -> None:
        for s in self.slices.followers():
            C.send_tree(self.comm, self.slices.ranks[s], cut_tree(tree, self.slices.of(s), per_parameter), TAG_SLICE)

    def gather_params(self, own: np.ndarray, wait) -> np.ndarray:
        """The whole model (rank 0 evaluates it); ``wait(done)`` keeps receiving results
        meanwhile."""
        self._tell(GATHER_PARAMS)
        whole = np.empty(self.slices.d)
        whole[self.slices.of(0)] = own
        reqs = [self.comm.Irecv(whole[self.slices.of(s)], source=self.slices.ranks[s], tag=TAG_SLICE)
                for s in self.slices.followers()]
        wait(lambda: MPI.Request.Testall(reqs))
        return whole

    def gather_state(self) -> list[dict]:
        """Every follower's part of a checkpoint (called once every job has answered)."""
        self._tell(GATHER_STATE)
        return [C.recv_tree(self.comm, self.slices.ranks[s], TAG_SLICE) for s in self.slices.followers()]

    def sum(self, partial: float, wait) -> float:
        """Every server's partial inner product, added in server order (rank 0's first);
        every follower gets the total.  Each server calls this at the same point of the
        same method, so it is a reduction among the servers alone."""
        parts = np.zeros(self.slices.S)
        parts[0] = partial
        reqs = [self.comm.Irecv(parts[s:s + 1], source=self.slices.ranks[s], tag=TAG_SUM)
                for s in self.slices.followers()]
        wait(lambda: MPI.Request.Testall(reqs))
        total = np.array([sum(parts.tolist())])
        for s in self.slices.followers():
            self.sends.append((self.comm.Isend(total, dest=self.slices.ranks[s], tag=TAG_SUM), total))
        return float(total[0])

    def stop(self) -> None:
        self._tell(STOP)
        C.wait_all([r for r, _ in self.sends])
        self.sends.clear()


# ---------------------------------------------------------------------------- a follower

def follow(engine, comm: MPI.Comm, fresh: bool) -> int:
    """A follower's loop: do what rank 0 says, when it says it: create the jobs the
    method asked for (sending this slice of the model), take the event it took, hand
    over this slice of the model or of the state, stop.  Returns 0 once stopped."""
    sched = engine.scheduler
    control = np.empty(4)
    backoff = C.Backoff()
    if fresh:
        engine.pending = list(engine.method.start(engine))
    while True:
        req = comm.Irecv(control, source=0, tag=TAG_CONTROL)
        engine.wait_for_server(req.Test, backoff)
        kind, worker, seq, version = (int(x) for x in control)
        if kind == CREATE:
            assert seq == sched.seq, f"rank 0 creates job {seq}, this server job {sched.seq}"
            pending, engine.pending = engine.pending, []
            sched.create(pending, engine.params, engine.version)
        elif kind == EVENT:
            assert version <= engine.version, f"rank 0 took v{version} at v{engine.version}"
            engine._wait(lambda: sched.has_result(worker, seq), f"worker {worker}'s result", engine.backoff)
            job = sched.take_job(worker, seq)
            engine.pending.extend(engine.method.on_result(engine, job.result))
            engine.link.recycle(job.result)
        elif kind == GATHER_PARAMS:
            comm.Send(engine.params, dest=0, tag=TAG_SLICE)
        elif kind == GATHER_STATE:
            engine._drain()
            p = engine.state.state_dict()
            # the results in flight, as rank 0's checkpoint keeps them: this slice of each gradient
            results = sched.state_dict(engine.link.result_row, engine.link.row_width)["results"]
            C.send_tree(comm, 0, {"params": p["params"], "momentum": p["momentum"],
                                  "method": engine.method.state_dict(), "results": results}, TAG_SLICE)
        elif kind == STOP:
            engine._drain()
            engine.link.close()
            return 0
        else:
            raise RuntimeError(f"server rank {comm.Get_rank()}: unexpected control {kind}")


def follower_sum(comm: MPI.Comm):
    """A follower's side of ``Servers.sum``."""
    def total(partial: float, wait) -> float:
        out, back = np.array([partial]), np.empty(1)
        sent = comm.Isend(out, dest=0, tag=TAG_SUM)
        got = comm.Irecv(back, source=0, tag=TAG_SUM)
        wait(lambda: MPI.Request.Testall([sent, got]))
        return float(back[0])
    return total


def receive_start(comm: MPI.Comm, engine, fresh: bool) -> dict | None:
    """A follower's start: its slice of the initial model, or of the checkpoint."""
    if fresh:
        comm.Recv(engine.params, source=0, tag=TAG_SLICE)
        return None
    return C.recv_tree(comm, 0, TAG_SLICE)
