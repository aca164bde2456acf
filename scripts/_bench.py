"""Plumbing shared by the scripts/bench-* benchmarks: one thread per process, prepared
data sets, `mpiexec` jobs whose rank 0 prints one JSON line, job directories and
configurations inside such a job, and the results file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
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
    """Collective: a temporary directory made by rank 0, known to every rank."""
    from hpcsgd.comm import bcast_text
    return Path(bcast_text(comm, tempfile.mkdtemp(prefix=prefix) if comm.Get_rank() == 0 else None))


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


def save(name: str, results) -> Path:
    """bench-results/NAME.json."""
    out = ROOT / "bench-results" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    return out
