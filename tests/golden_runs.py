"""Golden trajectories: fixed simulated-clock runs whose final parameters, every trace
column and every evaluation row are stored under tests/golden/ and must stay
bit-identical (tests/test_golden.py).  Regenerate them only for an intended change of
behaviour, and say so in the commit:

    .venv/bin/mpiexec -n M+1 .venv/bin/python -m mpi4py tests/golden_runs.py DATA_DIR   (M = 1, 2, 4, 6)

with DATA_DIR holding digits.h5 and breast_cancer.h5 (``hpcsgd prepare``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).resolve().parent / "golden"
# columns that measure the machine, not the trajectory
MEASURED = {"wall_time", "compute_seconds"}

BASE = ("run.clock='simulated'", "run.epochs=0", "run.max_updates=40", "run.eval_every=10",
        "run.progress_every=0", "run.seed=3")
LOGISTIC = ("data.source='breast_cancer'", "model.kind='logistic'")
EXP = ("stragglers.model='exp'", "stragglers.comm_mean=1.0", "stragglers.compute_mean=0.01")


def runs(M: int) -> dict[str, tuple[str, ...]]:
    """Name -> settings, for M workers: every method, every order, no delays and drawn
    delays, every partition, the four models, and the cost model."""
    k = max(1, M - 1)
    return {
        "sync-rr-none-iid-softmax": ("method.kind='sync'", "order.kind='rr'", "data.source='digits'",
                                     "order.batch=8", "method.lr=0.5"),
        "sync-cd_grab-exp-dirichlet": (*LOGISTIC, *EXP, "method.kind='sync'", "order.kind='cd_grab'",
                                       "order.batch=4", "data.partition='dirichlet'", "data.alpha=1.0",
                                       "method.momentum=0.9", "method.lr=0.05"),
        "fastest_k-grab-exp-iid": (*LOGISTIC, *EXP, "method.kind='fastest_k'", f"method.k={k}",
                                   "order.kind='grab'", "order.batch=4"),
        "adaptive_kb-so-shifted_exp-contiguous": (*LOGISTIC, "stragglers.model='shifted_exp'",
                                                  "stragglers.comm_mean=0.5", "stragglers.compute_mean=0.05",
                                                  "method.kind='adaptive_kb'", f"method.targets=[4, {8 * M}]",
                                                  "method.burn_in=5", "order.kind='so'",
                                                  "data.partition='contiguous'", "method.mc_samples=500"),
        "adaptive_k-pair-gamma-shards-lsq": ("data.source='breast_cancer'", "model.kind='least_squares'",
                                             "stragglers.model='gamma'", "stragglers.compute_mean=0.02",
                                             "method.kind='adaptive_k'", "method.burn_in=5", "order.kind='pair'",
                                             "order.batch=4", "data.partition='shards'", "method.lr=0.01"),
        "async_random-rr-exp-linear-sorted": (*LOGISTIC, *EXP, "stragglers.speeds='linear'", "method.kind='async'",
                                              "method.assign='random'", "order.kind='rr'", "data.partition='sorted'",
                                              "method.momentum=0.5", "method.lr=0.02"),
        "async_shuffle-pair-fixed-slow": (*LOGISTIC, "stragglers.model='fixed'", "stragglers.comm_mean=1.0",
                                          f"stragglers.slow_workers=[{M}]", "stragglers.slow_factor=3.0",
                                          "method.kind='async'", "method.assign='shuffle'", "order.kind='pair'",
                                          "order.batch=2"),
        "gsgm-so-uniform-dirichlet-mlp": ("data.source='digits'", "model.kind='mlp'", "model.hidden=8",
                                          "stragglers.model='uniform'", "stragglers.comm_mean=1.0",
                                          "stragglers.speeds='linear'", "method.kind='gsgm'", "method.momentum=0.9",
                                          "method.lr=0.05", "order.kind='so'", "data.partition='dirichlet'"),
        "piag-rr-exp-full-l1": (*LOGISTIC, *EXP, "method.kind='piag'", "order.batch=0", "model.l1=0.01",
                                "model.l2=0.1", "method.stepsize='adaptive1'", "method.alpha=0.4"),
        "async-rr-exp-cost": (*LOGISTIC, *EXP, "method.kind='async'", "order.kind='rr'", "cluster.cost=true",
                              # costs of the order of the delays, so that they change the event order
                              "cluster.link_gbit=1e-5", "cluster.latency=0.1", "cluster.workers_per_host=2",
                              "cluster.master_update=0.1", "cluster.master_per_param=1e-3",
                              "cluster.master_message=0.05", "cluster.master_message_per_param=2e-3",
                              "cluster.worker_job=0.3",
                              "cluster.worker_per_sample_param=1e-3"),
        "async_bcd-rr-normal-replicate": (*LOGISTIC, "stragglers.model='normal'", "stragglers.comm_mean=1.0",
                                          "stragglers.cv=0.5", "method.kind='async_bcd'", "method.blocks=4",
                                          "data.partition='replicate'", "method.stepsize='fixed'",
                                          "method.tau_max=8", "model.nonconvex=0.01"),
    }


def runs_with_servers(M: int) -> dict[str, tuple[str, ...]]:
    """The runs parameter servers can make (``config.resolve_servers``): the rest need
    the whole model at rank 0 or the cost model."""
    from hpcsgd.config import resolve, resolve_servers
    from hpcsgd.errors import UserError
    out = {}
    for name, settings in runs(M).items():
        try:
            resolve_servers(resolve({}, [*BASE, *settings, "run.servers=2"]), 3)
        except UserError:
            continue
        out[name] = settings
    return out


def golden_file(M: int, name: str) -> Path:
    return GOLDEN / f"M{M}-{name}.npz"


def differs_from_recorded(got: dict, M: int, name: str) -> str:
    """'' if ``got`` (``flat``'s columns) is the recorded golden run bit for bit, else what differs."""
    with np.load(golden_file(M, name), allow_pickle=False) as want:
        if set(want.files) != set(got):
            return f"{name}: columns differ: {sorted(set(want.files) ^ set(got))}"
        bad = [k for k in want.files if want[k].dtype != got[k].dtype
               or not np.array_equal(want[k], got[k], equal_nan=True)]
        return f"{name}: not bit-identical: {bad}" if bad else ""


def flat(tree: dict) -> dict[str, np.ndarray]:
    """What a golden file holds: final parameters, every trace and eval column."""
    out = {"params": tree["model"]["params"]}
    for table in ("trace", "eval"):
        for col, arr in tree[table].items():
            if col not in MEASURED:
                out[f"{table}/{col}"] = arr
    return out


def train(comm, data_dir: Path, out: Path, settings: tuple[str, ...]) -> dict | None:
    """Run in-process on every rank; rank 0 returns the flat result."""
    from hpcsgd import run
    from hpcsgd.checkpoint import load_checkpoint
    config = out.parent / f"{out.name}.toml"
    if comm.Get_rank() == 0:
        config.write_text("# every key comes with --set\n")
    comm.Barrier()
    status = run.train(comm, str(config), [f"data.dir='{data_dir}'", f"run.out='{out}'", *BASE, *settings],
                       quiet=True)
    assert status == 0, status
    return flat(load_checkpoint(out)[1]) if comm.Get_rank() == 0 else None


def main() -> None:
    import argparse
    import tempfile
    from mpi4py import MPI
    from hpcsgd.comm import bcast_text
    comm = MPI.COMM_WORLD
    ap = argparse.ArgumentParser(description="record the golden runs (or, with --out, write them elsewhere)")
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--workers", type=int, default=0, help="M workers (default: one per worker rank)")
    ap.add_argument("--out", type=Path, help="write the .npz files here instead of tests/golden")
    ap.add_argument("--only", action="append", help="this run only (repeatable)")
    ap.add_argument("--servers", type=int, default=1, help="S parameter servers (the runs they can make)")
    args = ap.parse_args()
    M = args.workers or comm.Get_size() - args.servers
    virtual = (f"run.workers={M}",) if args.workers else ()
    virtual += (f"run.servers={args.servers}",) if args.servers > 1 else ()
    data_dir = args.data_dir.resolve()
    base = Path(bcast_text(comm, tempfile.mkdtemp(prefix="golden-") if comm.Get_rank() == 0 else None))
    out_dir = args.out or GOLDEN
    out_dir.mkdir(exist_ok=True)
    for name, settings in (runs_with_servers(M) if args.servers > 1 else runs(M)).items():
        if args.only and name not in args.only:
            continue
        result = train(comm, data_dir, base / name, (*settings, *virtual))
        if comm.Get_rank() == 0:
            target = out_dir / golden_file(M, name).name
            np.savez_compressed(target, **result)
            print(f"wrote {target}: {result['trace/update'].size} updates", flush=True)
    comm.Barrier()
    if comm.Get_rank() == 0:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
