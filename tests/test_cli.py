"""End to end through the command line, each job under its own ``mpiexec``.

These check what a user sees: exit status 2 and one clear line on every rank for bad
input, no hang, existing checkpoints untouched, divergence and crashes ending the job.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from launch import MPIEXEC, hpcsgd_command, job_env


def run(*args: str, n: int = 3, timeout: float = 90, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(hpcsgd_command(*args, n=n), capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=job_env())


def serial(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpcsgd", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def job(tmp_path, data_dir):
    """A small valid config; returns (config path, run dir, base --set overrides)."""
    cfg = tmp_path / "job.toml"
    cfg.write_text('[data]\nsource = "digits"\n[run]\nmax_updates = 10\nprogress_every = 0\n')
    out = tmp_path / "run"
    base = ["--set", f"data.dir='{data_dir}'", "--set", f"run.out='{out}'"]
    return cfg, out, base


def errors(proc: subprocess.CompletedProcess) -> list[str]:
    """The error lines of all ranks (mpiexec may join lines that arrive together)."""
    return ["hpcsgd: error:" + part for part in proc.stderr.split("hpcsgd: error:")[1:]]


@pytest.mark.parametrize("override, needle", [
    ("method.lrr=0.1", "unknown key method.lrr"),
    ("method.lr=-1", "method.lr = -1 is not allowed: must be a finite number in (0, inf)"),
    ("method.kind='fastest_k'", None),  # valid: control case
])
def test_bad_config_exits_2_with_one_line_per_job(job, override, needle):
    cfg, out, base = job
    proc = run("train", str(cfg), *base, "--set", override, "--quiet")
    if needle is None:
        assert proc.returncode == 0, proc.stderr
        return
    assert proc.returncode == 2, proc.stderr
    lines = errors(proc)
    assert len(lines) == 1 and needle in lines[0], proc.stderr  # rank 0's, not one per rank
    assert "Traceback" not in proc.stderr


def test_k_larger_than_workers_and_too_few_ranks(job):
    cfg, out, base = job
    proc = run("train", str(cfg), *base, "--set", "method.kind='fastest_k'", "--set", "method.k=3")
    assert proc.returncode == 2 and "method.k = 3 exceeds the number of workers M = 2" in proc.stderr
    proc = run("train", str(cfg), *base, n=1)
    assert proc.returncode == 2 and "at least 2 MPI ranks" in proc.stderr


def test_bad_data_file_exits_2_and_names_it(job, tmp_path, data_dir):
    cfg, out, base = job
    bad = tmp_path / "bad.h5"
    with h5py.File(data_dir / "digits.h5", "r") as src, h5py.File(bad, "w") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for split in ("train", "test"):
            X = src[f"{split}/X"][...]
            if split == "train":
                X[-1, 3] = np.nan  # the last row: only the last worker reads it
            dst[f"{split}/X"] = X
            dst[f"{split}/y"] = src[f"{split}/y"][...]
    proc = run("train", str(cfg), *base, "--set", f"data.source='{bad}'")
    assert proc.returncode == 2, proc.stderr
    # only the last worker read the bad row; rank 0 says it, once
    assert len(errors(proc)) == 1 and str(bad) in errors(proc)[0] and "non-finite" in proc.stderr
    proc = run("train", str(cfg), *base, "--set", "data.source='mnist5k'",
               "--set", f"data.dir='{tmp_path / 'empty'}'")
    assert proc.returncode == 2 and "hpcsgd prepare mnist5k" in proc.stderr


def test_existing_checkpoints_are_never_touched(job):
    cfg, out, base = job
    assert run("train", str(cfg), *base, "--quiet").returncode == 0
    files = {p: p.read_bytes() for p in out.glob("ckpt-*.h5")}
    assert files
    proc = run("train", str(cfg), *base)  # same run.out: refused
    assert proc.returncode == 2 and "already holds checkpoints" in proc.stderr
    assert "pending" not in proc.stderr, "requests left behind at exit"
    proc = run("resume", str(out), "--set", "method.lr=1.0")  # trajectory key: refused
    assert proc.returncode == 2 and "cannot change on resume" in proc.stderr
    proc = run("resume", str(out), n=4)  # other world size: refused
    assert proc.returncode == 2 and "is a run of 2 workers, this job has 3 worker ranks; resume with " \
        "mpiexec -n 3" in proc.stderr
    assert {p: p.read_bytes() for p in out.glob("ckpt-*.h5")} == files


def test_resume_falls_back_from_a_truncated_checkpoint(job):
    cfg, out, base = job
    proc = run("train", str(cfg), *base, "--set", "run.checkpoint_every=5", "--quiet")
    assert proc.returncode == 0, proc.stderr
    newest = out / "ckpt-000000010.h5"
    newest.write_bytes(newest.read_bytes()[:2000])  # a crash while copying, say
    proc = run("resume", str(out), "--set", "run.max_updates=15", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "skipping corrupt checkpoint" in proc.stderr and "ckpt-000000010.h5" in proc.stderr
    info = serial("inspect", str(out), "--json")
    assert info.returncode == 0 and '"update": 15' in info.stdout


def test_divergence_stops_and_keeps_the_last_good_checkpoint(job):
    cfg, out, base = job
    proc = run("train", str(cfg), *base, "--set", "data.source='breast_cancer'",
               "--set", "model.kind='least_squares'", "--set", "method.lr=1000.0",
               "--set", "run.max_updates=400", "--set", "run.checkpoint_every=2", "--quiet")
    assert proc.returncode == 3, proc.stderr
    assert "training diverged" in proc.stderr and "last good checkpoint" in proc.stderr
    from hpcsgd.checkpoint import load_checkpoint
    _, tree = load_checkpoint(out)
    assert np.isfinite(tree["model"]["params"]).all() and int(tree["update"]) < 400


def test_a_crash_on_one_worker_ends_the_whole_job(job, tmp_path):
    cfg, out, base = job
    script = tmp_path / "crash.py"
    script.write_text(
        "import sys\n"
        "from mpi4py import MPI\n"
        "from hpcsgd import worker\n"
        "def broken(self):\n"
        "    if MPI.COMM_WORLD.Get_rank() == 2:\n"
        "        raise RuntimeError('injected failure on rank 2')\n"
        "    return original(self)\n"
        "original = worker.Worker.job\n"
        "worker.Worker.job = broken\n"
        "from hpcsgd.cli import main\n"
        "main(sys.argv[1:])\n")
    cmd = [MPIEXEC, "-n", "3", sys.executable, str(script), "train", str(cfg), *base]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=job_env())
    assert proc.returncode != 0
    assert "injected failure on rank 2" in proc.stderr


def test_prepare_inspect_plot(tmp_path, job):
    cfg, out, base = job
    assert run("train", str(cfg), *base, "--quiet").returncode == 0
    info = serial("inspect", str(out))
    assert info.returncode == 0 and "sync" in info.stdout
    png = tmp_path / "fig.png"
    proc = serial("plot", str(out), str(out / "latest.h5"), "-o", str(png))
    assert proc.returncode == 0 and png.stat().st_size > 10_000
    proc = serial("prepare", "nope", "--data-dir", str(tmp_path))
    assert proc.returncode == 2 and "digits" in proc.stderr
    proc = serial("inspect", str(tmp_path / "missing"))
    assert proc.returncode == 2


def test_a_key_the_method_does_not_read_warns_once(job):
    cfg, out, base = job
    proc = run("train", str(cfg), *base, "--set", "method.kind='sync'", "--set", "method.k=1", "--quiet")
    assert proc.returncode == 0, proc.stderr
    warnings = [x for x in proc.stderr.splitlines() if x.startswith("hpcsgd: warning:")]
    assert warnings == ["hpcsgd: warning: config: method.k = 1 is ignored: method.kind = 'sync' waits for "
                        "every worker (read with method.kind = 'fastest_k')"], proc.stderr


def test_a_run_out_that_is_a_file_is_refused(job, tmp_path):
    cfg, out, base = job
    target = tmp_path / "not-a-dir"
    target.write_text("precious")
    proc = run("train", str(cfg), *base, "--set", f"run.out='{target}'", "--quiet")
    assert proc.returncode == 2 and f"run.out {target} is a file" in proc.stderr, proc.stderr
    assert target.read_text() == "precious"
