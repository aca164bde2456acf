"""jobs/slurm/hpcsgd-job.sh's launch line under a (fake) multi-node allocation: the
master alone on the first node, for mpiexec (-hosts) and for srun (SLURM_HOSTFILE with
--distribution=arbitrary).  scripts/slurm-test runs the same script on a real 3-node
Slurm; this checks the placement without one, on every machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "jobs" / "slurm" / "hpcsgd-job.sh"

# stand-ins that print how they were called (and, for srun, the host file it was given)
FAKE_MPIEXEC = '#!/bin/sh\necho "mpiexec $*"\n'
FAKE_SRUN = '#!/bin/sh\necho "srun $*"\n[ -n "$SLURM_HOSTFILE" ] && tr "\\n" " " < "$SLURM_HOSTFILE" && echo\n'
FAKE_SCONTROL = ('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && { echo n01; echo n02; echo n03; exit 0; }\n'
                 'echo "scontrol $*"\n')


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("mpiexec", FAKE_MPIEXEC), ("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    return bin_dir


def job(fake_bin: Path, tmp_path: Path, nodes: int, ntasks: int, **env) -> str:
    full = dict(os.environ, PATH=f"{fake_bin}:{os.environ['PATH']}", HPCSGD_BIN=str(fake_bin),
                SLURM_NTASKS=str(ntasks), SLURM_JOB_NUM_NODES=str(nodes), SLURM_JOB_NODELIST="n[01-03]",
                TMPDIR=str(tmp_path), **env)
    full.pop("SLURM_JOB_ID", None)
    p = subprocess.run(["bash", str(JOB), "cfg.toml", str(tmp_path / "run")], capture_output=True, text=True,
                       env=full, cwd=ROOT, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_mpiexec_puts_the_master_alone_on_the_first_node(fake_bin, tmp_path):
    out = job(fake_bin, tmp_path, nodes=3, ntasks=5)
    assert "placement: n01:1,n02:2,n03:2 (the master alone on the first node)" in out
    assert f"mpiexec -n 5 -hosts n01:1,n02:2,n03:2 {fake_bin}/python -m hpcsgd train cfg.toml" in out


def test_srun_gets_the_same_layout_as_a_host_file(fake_bin, tmp_path):
    out = job(fake_bin, tmp_path, nodes=3, ntasks=6, HPCSGD_LAUNCH="srun")
    assert "srun --mpi=pmi2 -n 6 --distribution=arbitrary" in out
    assert "n01 n02 n02 n02 n03 n03 \n" in out  # rank 0 on n01, then blocks of workers
    assert not list(tmp_path.glob("hpcsgd-hosts.*")), "the host file was left behind"


def test_workers_per_node_and_slurms_own_layout(fake_bin, tmp_path):
    out = job(fake_bin, tmp_path, nodes=3, ntasks=4, HPCSGD_PER_NODE="2")
    assert "-hosts n01:1,n02:2,n03:1 " in out
    out = job(fake_bin, tmp_path, nodes=3, ntasks=5, HPCSGD_PLACEMENT="slurm")
    assert "placement:" not in out and "mpiexec -n 5 " in out and "-hosts" not in out


def test_one_node_needs_no_placement(fake_bin, tmp_path):
    out = job(fake_bin, tmp_path, nodes=1, ntasks=5)
    assert "placement:" not in out and "-hosts" not in out


def test_a_layout_that_does_not_fit_is_refused(fake_bin, tmp_path):
    full = dict(os.environ, PATH=f"{fake_bin}:{os.environ['PATH']}", HPCSGD_BIN=str(fake_bin), SLURM_NTASKS="9",
                SLURM_JOB_NUM_NODES="3", SLURM_JOB_NODELIST="n[01-03]", HPCSGD_PER_NODE="2")
    p = subprocess.run(["bash", str(JOB), "cfg.toml", str(tmp_path / "run")], capture_output=True, text=True,
                       env=full, cwd=ROOT, timeout=60)
    assert p.returncode == 2 and "8 workers do not fit on 2 hosts x 2 per host" in p.stderr
    assert "mpiexec" not in p.stdout
