"""AsGrad's assignment rules (pure, random, shuffle, shuffle_once) on a fake engine."""

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from hpcsgd.methods.async_sgd import AsyncSGD


class FakeEngine:
    def __init__(self, M, seed=0):
        self.version = 0
        self.rng = np.random.default_rng(seed)
        self.jobs = {j: [None] * (j < M) for j in range(1, M + 1)}  # M - 1 jobs in flight
        self.applied = []

    def queued(self, worker):
        return len(self.jobs[worker])

    def apply(self, grad, *, contributors, staleness, batch, extra):
        self.applied.append((contributors[0], staleness, extra["assigned"], extra["queue"]))
        self.version += 1


def assignments(rule, M, n, seed=0, finishers=None):
    eng, m = FakeEngine(M, seed), AsyncSGD(M, 4, rule)
    out = []
    for t in range(n):
        finisher = finishers[t] if finishers else 1 + t % M
        r = SimpleNamespace(worker=finisher, version=max(eng.version - 2, 0), grad=np.zeros(2), batch=4)
        (j, batch, flags), = m.on_result(eng, r)
        assert batch == 4 and flags == 0
        out.append(j)
    return out, eng, m


def test_pure_gives_the_next_job_to_the_finisher():
    rng = np.random.default_rng(1)
    finishers = list(rng.integers(1, 6, size=50))
    got, eng, _ = assignments("pure", 5, 50, finishers=finishers)
    assert got == finishers
    assert [a[1] for a in eng.applied] == [0, 1] + [2] * 48  # staleness = version - job version


def test_shuffle_gives_everyone_one_job_per_block_and_redraws_the_block():
    M = 6
    got, _, _ = assignments("shuffle", M, 60, seed=3)
    blocks = [tuple(got[i:i + M]) for i in range(0, 60, M)]
    assert all(sorted(b) == list(range(1, M + 1)) for b in blocks)
    assert len(set(blocks)) > 5, "the permutation must be redrawn every block"


def test_shuffle_once_repeats_one_permutation():
    M = 6
    got, _, _ = assignments("shuffle_once", M, 60, seed=3)
    first = got[:M]
    assert sorted(first) == list(range(1, M + 1)) and first != list(range(1, M + 1))
    assert got == first * 10


def test_random_is_uniform_over_workers():
    M, n = 5, 20000
    got, _, _ = assignments("random", M, n, seed=7)
    counts = np.array([Counter(got)[j] for j in range(1, M + 1)])
    chi2 = float(((counts - n / M) ** 2 / (n / M)).sum())
    assert chi2 < 18.47, (counts, chi2)  # p = 0.001 critical value, 4 degrees of freedom
    # and independent of the finisher: the next assignment after finisher 1 is uniform too
    after_one = np.array(got)[1::M]
    assert len(set(after_one.tolist())) == M


def test_state_round_trip_continues_the_block():
    M = 4
    eng, m = FakeEngine(M, seed=2), AsyncSGD(M, 4, "shuffle")
    first = [m.next_worker(1, eng.rng) for _ in range(6)]
    copy = AsyncSGD(M, 4, "shuffle")
    copy.load_state_dict(m.state_dict())
    state = eng.rng.bit_generator.state
    rest = [m.next_worker(1, eng.rng) for _ in range(6)]
    eng.rng.bit_generator.state = state
    assert [copy.next_worker(1, eng.rng) for _ in range(6)] == rest
    assert sorted(first[:4]) == [1, 2, 3, 4] and sorted(first[4:] + rest[:2]) == [1, 2, 3, 4]


def test_unknown_rule_is_refused_by_the_config():
    from hpcsgd.config import resolve
    from hpcsgd.errors import UserError
    with pytest.raises(UserError, match=r"method\.assign = 'fifo' is not allowed"):
        resolve({"method": {"kind": "async", "assign": "fifo"}})
