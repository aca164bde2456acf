"""The configuration sweep's CI subset (hpcsgd.sweep.covering_set) under mpiexec at 3
and 5 ranks: every point runs to its end with finite outputs and a loadable checkpoint,
or is refused at start naming a key -- never a hang (the per-test timeout), never a
traceback.  The whole product is scripts/sweep (counts in the README)."""

from __future__ import annotations

import pytest

from hpcsgd.sweep import covering_set

pytestmark = pytest.mark.mpi(min_size=3)
POINTS = covering_set()


@pytest.fixture(scope="module")
def base(data_dir):
    from mpi4py import MPI
    if MPI.COMM_WORLD.Get_rank() == 0:
        (data_dir / "sweep.toml").write_text("# every key comes with --set\n")
    MPI.COMM_WORLD.Barrier()
    return data_dir


def _name(i: int, p: list[str]) -> str:
    value = {s.split("=", 1)[0]: s.split("=", 1)[1].strip("'") for s in p}
    return f"{i}-{value['method.kind']}-{value['order.kind']}-{value['run.clock']}-{value['stragglers.model']}"


@pytest.mark.parametrize("index", range(len(POINTS)), ids=[_name(i, p) for i, p in enumerate(POINTS)])
def test_point_runs_or_is_refused_naming_a_key(base, index):
    from mpi4py import MPI
    from hpcsgd.comm import bcast_text
    from hpcsgd.sweep import run_point
    result = run_point(MPI.COMM_WORLD, index, POINTS[index], base)
    verdict = "" if result is None or result["outcome"] in ("ok", "refused") else \
        f"{result['outcome']}: {result['message']} ({' '.join(POINTS[index])})"
    verdict = bcast_text(MPI.COMM_WORLD, verdict)
    assert not verdict, verdict


def test_the_subset_covers_every_pair_and_every_value():
    """Pairs of (method, order, clock, stragglers on/off), and every enumerated value."""
    import itertools
    from hpcsgd.config import SCHEMA
    from hpcsgd.sweep import enumerated_keys
    def value(p, key):
        return next((s.split("=", 1)[1].strip("'") for s in p if s.startswith(key + "=")), None)
    rows = [(value(p, "method.kind"), value(p, "order.kind"), value(p, "run.clock"),
             value(p, "stragglers.model") != "none") for p in POINTS]
    for a, b in itertools.combinations(range(4), 2):
        want = {(x, y) for x in {r[a] for r in rows} for y in {r[b] for r in rows}}
        assert {(r[a], r[b]) for r in rows} == want, (a, b)
    assert {r[0] for r in rows} == set(SCHEMA["method"]["kind"].choices)
    text = " ".join(" ".join(p) for p in POINTS)
    for t, k in enumerated_keys():
        for v in SCHEMA[t][k].choices or (True, False):
            shown = ("true" if v else "false") if isinstance(v, bool) else f"'{v}'"
            assert f"{t}.{k}={shown}" in text, (t, k, v)
