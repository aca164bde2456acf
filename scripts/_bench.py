"""Plumbing shared by the scripts/bench-* benchmarks: one thread per process, prepared
data sets, `mpiexec` jobs whose rank 0 prints one JSON line, job directories and
configurations inside such a job, and the results file."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pin_threads() -> None:
    """One thread per process for Numba, OpenMP and BLAS.  Call before they are
    imported; mpiexec and every child process inherit it."""
    for var in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")


def prepare(name: str, out: Path, **options) -> Path:
    """`hpcsgd prepare NAME --out OUT --option value ...`."""
    cmd = [sys.executable, "-m", "hpcsgd", "prepare", name, "--out", str(out)]
    for key, value in options.items():
        cmd += [f"--{key}", str(value)]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def mpiexec_json(ranks: int, script: str, *args):
    """Run `script --inner ARGS` on `ranks` MPI ranks and return the last line its
    rank 0 printed, parsed as JSON.  On failure, show the job's output and stop."""
    cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks), sys.executable, script,
           "--inner", *map(str, args)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-3000:] + p.stderr[-5000:])
        raise SystemExit(f"{Path(script).name}: the mpiexec job ({' '.join(cmd[6:])}) failed with status "
                         f"{p.returncode}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def job_dir(comm, prefix: str) -> Path:
    """Collective: a temporary directory made by rank 0, known to every rank, removed
    when rank 0 exits."""
    from hpcsgd.comm import bcast_text
    path = None
    if comm.Get_rank() == 0:
        path = tempfile.mkdtemp(prefix=prefix)
        atexit.register(shutil.rmtree, path, True)
    return Path(bcast_text(comm, path))


def write_config(comm, path: Path, text: str) -> str:
    """Collective: rank 0 writes a TOML job configuration, every rank waits for it."""
    if comm.Get_rank() == 0:
        path.write_text(text)
    comm.Barrier()
    return str(path)


def sync_logistic(data: str, batch: int, epochs: int) -> str:
    """The ordering benchmarks' job: logistic regression, sync, wall clock, no injected
    delays, no evaluations in between (run.out and order.kind are set per run)."""
    return (f'[run]\nepochs = {epochs}\neval_every = {10**9}\nprogress_every = 0\n'
            f'[data]\nsource = "{data}"\n[model]\nkind = "logistic"\n'
            f'[method]\nkind = "sync"\nlr = 0.01\n[order]\nbatch = {batch}\n')


def least_squares_batch1(out: Path, data: str, updates: int, method: str, extra: str = "") -> str:
    """The engine benchmarks' job: least squares, batch 1, `updates` updates, no
    evaluations in between; `method` is the [method] table's body, `extra` more tables."""
    return (f'[run]\nout = "{out}"\nmax_updates = {updates}\nepochs = 0\neval_every = {10**9}\n'
            f'progress_every = 0\n[data]\nsource = "{data}"\n[model]\nkind = "least_squares"\n'
            f'[method]\n{method}[order]\nbatch = 1\n{extra}')


# -- the message patterns of the engine's methods, written directly with mpi4py ----

TAG_UP, TAG_DOWN = 21, 22


def raw_async(comm, d: int, rounds: int, X=None, lr: float = 1e-9) -> float:
    """Round trips per second of the bare async pattern; with ``X`` (a worker's data
    row block) the workers compute a least-squares batch-1 gradient and the master
    applies the step and copies the model into the outgoing buffer, as the engine does."""
    import numpy as np
    from mpi4py import MPI
    from hpcsgd.kernels import least_squares, optim
    rank, M = comm.Get_rank(), comm.Get_size() - 1
    total = rounds + M  # every worker's last message is answered with a stop (empty)
    comm.Barrier()
    if rank == 0:
        w = np.zeros(d)
        bufs = [np.empty(d) for _ in range(M)]
        outs = [np.empty(d) for _ in range(M)]
        recvs = [comm.Irecv(bufs[j], source=j + 1, tag=TAG_UP) for j in range(M)]
        sends = [MPI.REQUEST_NULL] * M
        t0 = time.perf_counter()
        for k in range(total):
            j = MPI.Request.Waitany(recvs)
            sends[j].Wait()  # the previous reply to this worker has left its buffer
            if k < rounds:
                if X is not None:  # the step writes the reply (out of place, as the engine's)
                    optim.sgd_step(w, bufs[j], lr, 1.0, outs[j])
                    w = outs[j]
                sends[j] = comm.Isend(outs[j], dest=j + 1, tag=TAG_DOWN)
                recvs[j] = comm.Irecv(bufs[j], source=j + 1, tag=TAG_UP)
            else:
                sends[j] = comm.Isend(outs[j][:0], dest=j + 1, tag=TAG_DOWN)
                recvs[j] = MPI.REQUEST_NULL
        elapsed = time.perf_counter() - t0
        MPI.Request.Waitall(sends)
        return rounds / elapsed
    w = np.zeros(d)
    g = np.empty(d)
    idx = np.zeros(1, dtype=np.int64)
    y = np.zeros(1)
    status = MPI.Status()
    while True:
        if X is not None:
            least_squares.grad_sum(w, X, y, idx, g)
        comm.Send(g, dest=0, tag=TAG_UP)
        comm.Recv(w, source=0, tag=TAG_DOWN, status=status)
        if status.Get_count(MPI.DOUBLE) == 0:
            return 0.0


def raw_sync(comm, d: int, rounds: int) -> float:
    """Seconds per step of the bare synchronous pattern: rank 0 sends d float64 to every
    worker (Isend), every worker replies with d float64, rank 0 waits for all and sums."""
    import numpy as np
    from mpi4py import MPI
    rank, M = comm.Get_rank(), comm.Get_size() - 1
    w = np.zeros(d)
    comm.Barrier()
    if rank == 0:
        bufs = [np.empty(d) for _ in range(M)]
        total = np.empty(d)
        t0 = time.perf_counter()
        for _ in range(rounds):
            reqs = [comm.Irecv(bufs[j], source=j + 1, tag=TAG_UP) for j in range(M)]
            reqs += [comm.Isend(w, dest=j + 1, tag=TAG_DOWN) for j in range(M)]
            MPI.Request.Waitall(reqs)
            np.sum(bufs, axis=0, out=total)
        return (time.perf_counter() - t0) / rounds
    g = np.empty(d)
    for _ in range(rounds):
        comm.Recv(w, source=0, tag=TAG_DOWN)
        comm.Send(g, dest=0, tag=TAG_UP)
    return 0.0


def raw_allreduce(comm, d: int, rounds: int) -> float:
    """Seconds per Allreduce of d float64 among ranks 1..M (rank 0 idles): the MPI
    library's own collective over the same links, what a ring-based trainer moves."""
    import numpy as np
    from mpi4py import MPI
    workers = comm.Split(0 if comm.Get_rank() > 0 else MPI.UNDEFINED, comm.Get_rank())
    comm.Barrier()
    seconds = None
    if workers != MPI.COMM_NULL:
        g, total = np.ones(d), np.empty(d)
        workers.Allreduce(g, total)
        t0 = time.perf_counter()
        for _ in range(rounds):
            workers.Allreduce(g, total)
        seconds = (time.perf_counter() - t0) / rounds
        workers.Free()
    out = np.array([seconds if seconds is not None else 0.0])
    comm.Bcast(out, root=1)  # every rank returns worker 1's time
    return float(out[0])


def save(name: str, results) -> Path:
    """bench-results/NAME.json."""
    out = ROOT / "bench-results" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    return out
