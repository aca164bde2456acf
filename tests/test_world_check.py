"""The start-up check of the MPI world size under Slurm (run._check_slurm)."""

from types import SimpleNamespace

import pytest

from hpcsgd.errors import UserError
from hpcsgd.run import _check_slurm


def world(n):
    return SimpleNamespace(Get_size=lambda: n)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "HPCSGD_NTASKS"):
        monkeypatch.delenv(name, raising=False)


def test_outside_slurm_anything_goes():
    _check_slurm(world(1))
    _check_slurm(world(5))


def test_srun_without_pmi_starts_singletons(monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "5")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "5")
    with pytest.raises(UserError, match=r"world size is 1 in a Slurm step of 5 tasks.*srun --mpi=pmi2"):
        _check_slurm(world(1))
    _check_slurm(world(5))  # srun --mpi=pmi2: one world of 5


def test_mpiexec_inside_an_allocation(monkeypatch):
    # hydra launches one proxy per node through srun: the ranks see a 1-task step
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")
    monkeypatch.setenv("HPCSGD_NTASKS", "5")
    _check_slurm(world(5))
    with pytest.raises(UserError, match=r"world size is 3 but the job script asked for HPCSGD_NTASKS = 5"):
        _check_slurm(world(3))
