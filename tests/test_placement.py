"""Rank placement on several hosts (hpcsgd.placement): the master alone on the first."""

import subprocess
import sys

import pytest

from hpcsgd.placement import PlacementError, WorkerMap, describe, hostfile, hydra_hosts, master_alone


@pytest.mark.parametrize("hosts, ranks, per_host, want", [
    (["a"], 5, None, [("a", 5)]),
    (["a", "b", "c"], 5, None, [("a", 1), ("b", 2), ("c", 2)]),
    (["a", "b", "c"], 4, None, [("a", 1), ("b", 2), ("c", 1)]),
    (["a", "b", "c"], 2, None, [("a", 1), ("b", 1)]),          # c gets nothing: left out
    (["a", "b", "c"], 1, None, [("a", 1)]),
    (["a", "b", "c", "d"], 6, 2, [("a", 1), ("b", 2), ("c", 2), ("d", 1)]),
    (["a", "b", "c"], 3, 2, [("a", 1), ("b", 2)]),
])
def test_rank_0_alone_then_the_workers_in_blocks(hosts, ranks, per_host, want):
    layout = master_alone(hosts, ranks, per_host)
    assert layout == want
    assert sum(c for _, c in layout) == ranks


def test_the_two_spellings():
    layout = [("a", 1), ("b", 2)]
    assert hydra_hosts(layout) == "a:1,b:2"
    assert hostfile(layout) == "a\nb\nb\n"


@pytest.mark.parametrize("hosts, ranks, per_host, says", [
    (["a", "b"], 5, 2, "4 workers do not fit on 1 hosts x 2 per host"),
    (["a", "b"], 0, None, "ranks must be >= 1"),
    ([], 3, None, "no hosts"),
    (["a", "b"], 3, 0, "workers per host must be >= 1"),
])
def test_impossible_layouts_are_refused(hosts, ranks, per_host, says):
    with pytest.raises(PlacementError, match=says):
        master_alone(hosts, ranks, per_host)


def test_command_line():
    run = lambda *a: subprocess.run([sys.executable, "-m", "hpcsgd.placement", *a],  # noqa: E731
                                    capture_output=True, text=True)
    p = run("--ranks", "5", "n1", "n2", "n3")
    assert (p.returncode, p.stdout) == (0, "n1:1,n2:2,n3:2\n")
    p = run("--ranks", "3", "--hostfile", "n1", "n2")
    assert (p.returncode, p.stdout) == (0, "n1\nn2\nn2\n")
    p = run("--ranks", "9", "--per-host", "2", "n1", "n2")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "do not fit" in p.stderr


@pytest.mark.parametrize("rank_hosts, want", [
    (["a", "b", "b", "c", "c"], "a: master; b: workers 1-2; c: workers 3-4"),
    (["a", "a", "b"], "a: master; a: worker 1; b: worker 2"),
    (["a", "b", "a", "b"], "a: master; b: worker 1; a: worker 2; b: worker 3"),
])
def test_describe_names_each_host_and_its_ranks(rank_hosts, want):
    assert describe(rank_hosts) == want


@pytest.mark.parametrize("M, R, blocks", [
    (4, 4, [[1], [2], [3], [4]]),
    (6, 4, [[1, 2], [3, 4], [5], [6]]),
    (6, 1, [[1, 2, 3, 4, 5, 6]]),
    (7, 3, [[1, 2, 3], [4, 5], [6, 7]]),
])
def test_workers_on_fewer_ranks_in_even_contiguous_blocks(M, R, blocks):
    m = WorkerMap(M, R)
    assert [list(m.hosted(r)) for r in range(1, R + 1)] == blocks
    for r, block in enumerate(blocks, 1):
        for slot, j in enumerate(block):
            assert (m.rank(j), m.slot(j)) == (r, slot)
    assert m.most_hosted() == len(blocks[0])


@pytest.mark.parametrize("M, R", [(2, 3), (3, 0)])
def test_more_ranks_than_workers_is_refused(M, R):
    with pytest.raises(PlacementError, match="cannot be hosted"):
        WorkerMap(M, R)
