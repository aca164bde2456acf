"""Virtual workers (``run.workers`` > worker ranks, simulated clock) against runs with a
rank per worker, each under its own mpiexec: the recorded six-rank golden runs
(tests/golden/M6-*, every method) again with the six workers on three ranks (and on
six, as recorded), and runs
resumed on another number of ranks than they started on.  (The MPI stages check M = 6
on 1, 2 and 4 ranks in-process: tests/test_golden.py.)"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from golden_runs import BASE, differs_from_recorded, golden_file, runs
from hpcsgd.checkpoint import load_checkpoint
from launch import MPIEXEC, ROOT, finish, job_env, start

M = 6


def same_as_recorded(got: dict, name: str) -> str:
    return differs_from_recorded(got, M, name)


@pytest.mark.parametrize("ranks", [3, 6])
def test_six_workers_on_three_ranks_are_the_recorded_six_rank_runs(data_dir, tmp_path, ranks):
    """Every golden run of six workers, on three worker ranks and (the recorded layout)
    on six."""
    cmd = [MPIEXEC, "-n", str(ranks + 1), sys.executable, "-m", "mpi4py", str(ROOT / "tests" / "golden_runs.py"),
           str(data_dir), "--workers", str(M), "--out", str(tmp_path)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=job_env(), timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    problems = [same_as_recorded(dict(np.load(tmp_path / golden_file(M, name).name)), name) for name in runs(M)]
    assert not any(problems), "\n".join(x for x in problems if x)


@pytest.mark.parametrize("name, first, then", [
    ("async_shuffle-pair-fixed-slow", 2, 3),    # queued jobs in the checkpoint
    ("sync-cd_grab-exp-dirichlet", 3, 1),       # coordinated order, momentum
    ("gsgm-so-uniform-dirichlet-mlp", 1, 6),    # buffered gradients; then a rank per worker
    ("async-rr-exp-cost", 4, 2),                # the cost model's queues in the checkpoint
])
def test_a_run_resumed_on_another_number_of_ranks_is_the_recorded_run(data_dir, tmp_path, name, first, then):
    from golden_runs import flat
    cfg = tmp_path / "job.toml"
    cfg.write_text("# every key comes with --set\n")
    out = tmp_path / "run"
    settings = (f"data.dir='{data_dir}'", *BASE, *runs(M)[name], f"run.workers={M}")
    rc, text = finish(start(cfg, out, *settings, "run.max_updates=20", "run.checkpoint_every=10", n=first + 1))
    assert rc == 0, text
    assert load_checkpoint(out)[1]["update"] == 20
    rc, text = finish(start(cfg, out, "run.max_updates=40", command="resume", n=then + 1))
    assert rc == 0, text
    tree = load_checkpoint(out)[1]
    assert int(tree["world_size"]) == M + 1 and int(tree["ranks"]) == then + 1
    problem = same_as_recorded(flat(tree), name)
    assert not problem, problem


def test_a_wall_clock_run_of_more_workers_than_ranks_is_refused(tmp_path, data_dir):
    cfg = tmp_path / "job.toml"
    cfg.write_text("# every key comes with --set\n")
    rc, text = finish(start(cfg, tmp_path / "run", f"data.dir='{data_dir}'", "run.workers=4", "run.max_updates=5"))
    assert rc == 2, text
    assert "run.workers = 4 on 2 worker ranks needs run.clock = 'simulated'" in text and "Traceback" not in text
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").glob("ckpt-*"))
