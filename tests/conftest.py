"""Shared fixtures.  MPI tests (marked ``mpi``) run on every rank of ``mpiexec``:
paths are created on rank 0 and broadcast, so all ranks agree on them."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _rank() -> int:
    if "mpi4py.MPI" not in sys.modules and "--with-mpi" not in sys.argv:
        return 0
    from mpi4py import MPI
    return MPI.COMM_WORLD.Get_rank()


def pytest_configure(config):
    # Under mpiexec only rank 0 reports to the terminal; the others log to a file that
    # scripts/test prints when a stage fails.
    rank = _rank()
    logs = os.environ.get("HPCSGD_TEST_LOGS")
    if rank > 0 and logs:
        log = open(Path(logs) / f"rank-{rank}.log", "a")
        sys.stdout = log
        sys.stderr = log


_SHARED_DIRS: list[str] = []  # rank 0's shared_dir()s, removed when the session ends


def shared_dir() -> Path:
    """A fresh directory known to every rank (rank 0 creates it, and removes it at the
    end of the session)."""
    from mpi4py import MPI
    from hpcsgd.comm import bcast_text
    comm = MPI.COMM_WORLD
    path = None
    if comm.Get_rank() == 0:
        path = tempfile.mkdtemp(prefix="hpcsgd-test-")
        _SHARED_DIRS.append(path)
    return Path(bcast_text(comm, path))


def pytest_sessionfinish(session, exitstatus):
    # every test ends with a collective on its results: no rank reads these any more
    for path in _SHARED_DIRS:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """Prepared digits and breast_cancer sets; shared by every rank under MPI."""
    from hpcsgd.data import prepare
    if "mpi4py.MPI" in sys.modules:
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        d = shared_dir()
        if comm.Get_rank() == 0:
            for name in ("digits", "breast_cancer"):
                prepare(name, data_dir=d)
        comm.Barrier()
        return d
    d = tmp_path_factory.mktemp("data")
    for name in ("digits", "breast_cancer"):
        prepare(name, data_dir=d)
    return d
