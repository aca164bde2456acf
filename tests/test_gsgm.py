"""GSGM's scheduling and partial averaging on a fake engine (NumPy references)."""

from types import SimpleNamespace

import numpy as np
import pytest

from hpcsgd.methods.gsgm import GSGM


class FakeEngine:
    """Records what the method applies: the step direction scale * grad and the extras."""

    def __init__(self):
        self.version = 0
        self.applied = []

    def apply(self, grad, *, contributors, staleness, batch, scale, extra):
        self.applied.append({"worker": contributors[0], "direction": scale * grad.copy(), **extra})
        self.version += 1


def drive(method, finishers, dim=3, seed=0):
    """Feed one random gradient per finisher; return the engine and the gradients sent."""
    rng = np.random.default_rng(seed)
    eng, sent = FakeEngine(), []
    for j in finishers:
        g = rng.normal(size=dim)
        sent.append((int(j), g))
        jobs = method.on_result(eng, SimpleNamespace(worker=int(j), version=eng.version, grad=g.copy(), batch=4))
        assert jobs == [(int(j), 4, 0)], "every reply gets the current model back at once"
    return eng, sent


def skewed_finishers(M, n, seed=0):
    """Fast low ranks: worker j finishes with probability proportional to 1/j."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, M + 1)
    return rng.choice(np.arange(1, M + 1), size=n, p=p / p.sum())


def reference(M, sent, average=True):
    """Plain-Python white list: the admitted directions and their rounds."""
    listed, buffers, rnd, out = set(range(1, M + 1)), {j: [] for j in range(1, M + 1)}, 0, []
    for j, g in sent:
        if j not in listed:
            buffers[j].append(g)
            continue
        grads = [g] + (buffers[j] if average else [])
        out.append((j, rnd, np.mean(grads, axis=0), len(grads)))
        buffers[j] = []
        listed.discard(j)
        if not listed:
            listed, rnd = set(range(1, M + 1)), rnd + 1
    return out


@pytest.mark.parametrize("M", [1, 3, 6])
def test_each_worker_is_admitted_exactly_once_per_round(M):
    eng, _ = drive(GSGM(M, 4, 3), skewed_finishers(M, 400, seed=M))
    rounds = {}
    for a in eng.applied:
        rounds.setdefault(a["round"], []).append(a["worker"])
    *full, last = sorted(rounds.items())
    assert len(full) >= 5
    for _, workers in full:
        assert sorted(workers) == list(range(1, M + 1))
    assert len(set(last[1])) == len(last[1])
    if M > 1:
        assert sum(a["deferred"] for a in eng.applied) > 0, "fast workers must have been deferred"


@pytest.mark.parametrize("average", [True, False])
def test_admitted_gradient_is_the_mean_with_the_deferred_ones(average):
    M = 4
    eng, sent = drive(GSGM(M, 4, 3, average=average), skewed_finishers(M, 300, seed=7))
    want = reference(M, sent, average)
    assert len(eng.applied) == len(want)
    for a, (j, rnd, direction, n) in zip(eng.applied, want):
        assert (a["worker"], a["round"], a["averaged"]) == (j, rnd, n)
        np.testing.assert_allclose(a["direction"], direction, rtol=1e-13, atol=1e-15)
    assert max(a["averaged"] for a in eng.applied) > (2 if average else 0)
    # every gradient is either admitted, averaged into an admitted one or still buffered
    deferred = sum(a["deferred"] for a in eng.applied)
    assert deferred + len(eng.applied) <= len(sent)


def test_without_scheduling_every_gradient_is_applied_as_it_arrives():
    M = 5
    finishers = skewed_finishers(M, 100, seed=2)
    eng, sent = drive(GSGM(M, 4, 3, schedule=False), finishers)
    assert [a["worker"] for a in eng.applied] == [j for j, _ in sent]
    for a, (_, g) in zip(eng.applied, sent):
        assert a["averaged"] == 1 and a["deferred"] == 0
        np.testing.assert_array_equal(a["direction"], g)


def test_state_round_trip_continues_exactly():
    M, dim = 5, 4
    finishers = skewed_finishers(M, 200, seed=11)
    whole = GSGM(M, 4, dim)
    eng_whole, _ = drive(whole, finishers, dim, seed=1)

    first = GSGM(M, 4, dim)
    eng_first, _ = drive(first, finishers[:97], dim, seed=1)
    second = GSGM(M, 4, dim)
    second.load_state_dict(first.state_dict())
    assert second.deferred_count.sum() > 0, "the cut must fall with gradients buffered"
    # replay the rest with the same gradient stream
    rng = np.random.default_rng(1)
    grads = [rng.normal(size=dim) for _ in finishers]
    eng = FakeEngine()
    for j, g in zip(finishers[97:], grads[97:]):
        second.on_result(eng, SimpleNamespace(worker=int(j), version=0, grad=g.copy(), batch=4))
    tail = eng_whole.applied[len(eng_first.applied):]
    assert len(eng.applied) == len(tail) > 10
    for a, b in zip(eng.applied, tail):
        assert (a["worker"], a["round"], a["averaged"], a["deferred"]) == \
               (b["worker"], b["round"], b["averaged"], b["deferred"])
        np.testing.assert_array_equal(a["direction"], b["direction"])
