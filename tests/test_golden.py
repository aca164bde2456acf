"""Golden trajectories (tests/golden_runs.py): eleven simulated-clock runs per number of
workers (M = 1, 2, 4, 6, each recorded with one rank per worker) covering every method,
every order, runs with and without delays, every partition, the four models and the
cost model must
reproduce the stored final parameters, trace columns and evaluation rows bit for bit:
at M = R, the MPI stage's own worker ranks (2, 3 and 5 ranks), and at every M > R as
virtual workers, several on a rank (M = 6 on 1, 2 and 4 ranks, M = 4 on 1 and 2, M = 2
on 1)."""

from __future__ import annotations

import numpy as np
import pytest

from golden_runs import golden_file, runs, train

pytestmark = pytest.mark.mpi(min_size=2)
NAMES = list(runs(1))
GOLDEN_M = (1, 2, 4, 6)  # recorded with M + 1 ranks; M = 6 (7 ranks) only as virtual workers in CI


@pytest.mark.parametrize("M", GOLDEN_M)
@pytest.mark.parametrize("name", NAMES)
def test_the_trajectory_is_the_recorded_one(data_dir, name, M):
    """M workers on this job's worker ranks: one rank each (the recorded layout) or, with
    fewer ranks, several virtual workers a rank, which must give the same bits."""
    from mpi4py import MPI
    from conftest import shared_dir
    from hpcsgd.comm import bcast_text
    comm = MPI.COMM_WORLD
    R = comm.Get_size() - 1
    if M < R:
        pytest.skip(f"M = {M} workers cannot fill {R} worker ranks")
    path = golden_file(M, name)
    if not path.exists():
        pytest.skip(f"no golden run recorded for M = {M}")
    virtual = ("run.workers=" + str(M),) if M > R else ()
    got = train(comm, data_dir, shared_dir() / f"{name}-M{M}", (*runs(M)[name], *virtual))
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
