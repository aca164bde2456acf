"""Orderings used standalone (no MPI), and the epoch cursor the workers walk."""

import numpy as np
import pytest

from hpcsgd.engine.scheduler import EpochMirror
from hpcsgd.ordering import EpochCursor, make_ordering


def test_rr_draws_a_fresh_permutation_per_worker_per_epoch():
    order = make_ordering("rr", [7, 5], seed=3)
    e1, e2 = order.next_epoch(), order.next_epoch()
    for perms, sizes in ((e1, [7, 5]), (e2, [7, 5])):
        for p, n in zip(perms, sizes):
            assert p.dtype == np.int64 and np.array_equal(np.sort(p), np.arange(n))
    assert not np.array_equal(e1[0], e2[0])
    # worker j's stream depends only on (seed, j): a single-worker ordering agrees
    alone = make_ordering("rr", [5], seed=3, workers=[2])
    assert np.array_equal(alone.next_epoch()[0], e1[1])
    assert np.array_equal(alone.next_epoch()[0], e2[1])


def test_so_reuses_one_permutation():
    order = make_ordering("so", [9, 9], seed=1)
    e1, e2 = order.next_epoch(), order.next_epoch()
    assert np.array_equal(e1[0], e2[0]) and np.array_equal(e1[1], e2[1])
    assert not np.array_equal(e1[0], e1[1])


@pytest.mark.parametrize("kind", ["rr", "so"])
def test_state_dict_round_trip_continues_identically(kind):
    a = make_ordering(kind, [6, 4], seed=5)
    a.next_epoch()
    b = make_ordering(kind, [6, 4], seed=99)
    b.load_state_dict(a.state_dict())
    for _ in range(3):
        for x, y in zip(a.next_epoch(), b.next_epoch()):
            assert np.array_equal(x, y)


def test_unknown_ordering():
    with pytest.raises(ValueError, match="allowed: rr, so, grab, pair, cd_grab"):
        make_ordering("grabby", [3], seed=0)


def test_cursor_batches_never_cross_epochs_and_visit_each_example_once():
    cursor = EpochCursor(make_ordering("rr", [10], seed=0, workers=[1]))
    cursor.history = []
    batches = [cursor.next_batch(4) for _ in range(6)]
    assert [b.size for b in batches] == [4, 4, 2, 4, 4, 2]
    assert np.array_equal(np.sort(np.concatenate(batches[:3])), np.arange(10))
    assert np.array_equal(np.concatenate(batches[3:]), cursor.history[1])
    mirror = EpochMirror([10])
    assert [mirror.take(1, 4) for _ in range(6)] == [4, 4, 2, 4, 4, 2]
    assert mirror.epoch() == 2.0


def test_cursor_resumes_mid_epoch():
    a = EpochCursor(make_ordering("rr", [11], seed=2, workers=[3]))
    a.next_batch(3), a.next_batch(3)
    b = EpochCursor(make_ordering("rr", [11], seed=0, workers=[3]))
    b.load_state_dict(a.state_dict())
    for _ in range(8):
        assert np.array_equal(a.next_batch(3), b.next_batch(3))


def test_mirror_epoch_is_the_slowest_workers_progress():
    mirror = EpochMirror([4, 8])
    mirror.take(1, 4), mirror.take(2, 4)
    assert mirror.epoch() == 0.5
    mirror.take(1, 4)
    assert mirror.epoch() == 0.5
    mirror.take(2, 4)
    assert mirror.epoch() == 1.0


def test_mirror_epoch_follows_every_take_and_undo():
    # the minimum is recomputed only when the slowest worker moves (or a take is undone):
    # after any sequence it equals the minimum over all workers computed from scratch
    rng = np.random.default_rng(5)
    sizes = [5, 7, 3, 9]
    mirror = EpochMirror(sizes)
    undo = []
    for _ in range(400):
        w = int(rng.integers(1, 5))
        if undo and rng.random() < 0.2:
            w, position = undo.pop()
            mirror.restore(w, position)
        else:
            undo.append((w, mirror.position(w)))
            mirror.take(w, int(rng.integers(0, 4)))
        want = min(s - 1 + p / n if s > 0 else 0.0 for s, p, n in zip(mirror.started, mirror.pos, sizes))
        assert mirror.epoch() == want
