"""Golden trajectories (tests/golden_runs.py): ten simulated-clock runs per world size
(M = 1, 2, 4: the MPI stages at 2, 3 and 5 ranks) covering every method, every order,
runs with and without delays, every partition and the four models must reproduce the
stored final parameters, trace columns and evaluation rows bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from golden_runs import golden_file, runs, train

pytestmark = pytest.mark.mpi(min_size=2)
NAMES = list(runs(1))


@pytest.mark.parametrize("name", NAMES)
def test_the_trajectory_is_the_recorded_one(data_dir, name):
    from mpi4py import MPI
    from conftest import shared_dir
    from hpcsgd.comm import bcast_text
    comm = MPI.COMM_WORLD
    M = comm.Get_size() - 1
    path = golden_file(M, name)
    if not path.exists():
        pytest.skip(f"no golden run recorded for M = {M}")
    got = train(comm, data_dir, shared_dir() / name, runs(M)[name])
    message = ""
    if comm.Get_rank() == 0:
        with np.load(path, allow_pickle=False) as want:
            if set(want.files) != set(got):
                message = f"columns differ: {sorted(set(want.files) ^ set(got))}"
            else:
                bad = [k for k in want.files if want[k].dtype != got[k].dtype
                       or not np.array_equal(want[k], got[k], equal_nan=True)]
                message = f"not bit-identical: {bad}" if bad else ""
    message = bcast_text(comm, message)
    assert not message, message
