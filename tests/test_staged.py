"""Staged fastest-k (adaptive_k, adaptive_kb) and its switching rules, driven by a fake
engine with chosen gradients."""

import math
from types import SimpleNamespace

import numpy as np
import pytest

from hpcsgd.config import resolve
from hpcsgd.methods import make_method
from hpcsgd.methods.switching import BoundSwitch, PflugTest, noise_floor, switch_level
from hpcsgd.methods.timing import IterationTimeModel, MeasuredTimeModel


def AdaptiveK(k0, step, burn_in, n_workers, batch):
    cfg = resolve({"run": {"clock": "simulated"}, "order": {"batch": batch},
                   "method": {"kind": "adaptive_k", "k0": k0, "k_step": step, "burn_in": burn_in}})
    return make_method(cfg, [10**6] * n_workers)


class FakeEngine:
    dot = staticmethod(lambda a, b: float(np.dot(a, b)))

    def __init__(self):
        self.version = 0
        self.applied = []

    def apply(self, grad, *, contributors, staleness, batch, scale, extra):
        self.applied.append((scale * grad.copy(), list(contributors), extra["stage"]))
        self.version += 1

    def cancel_jobs_before(self, version):
        pass

    def overdue_seconds(self):
        return self.overdue

    def at_epoch_end(self):
        return False

    overdue = None


def feed(method, engine, grads_per_round):
    """Each round: one result per worker, in rank order, all at the current version."""
    ks = []
    for grads in grads_per_round:
        ks.append(method.k)
        version = engine.version
        for j, g in enumerate(grads, start=1):
            if engine.version != version:
                break  # the round closed after k replies
            r = SimpleNamespace(worker=j, version=version, grad=np.asarray(g, float),
                                epoch=1, pairs=np.empty((0, 2)))
            method.on_result(engine, r)
    return ks


def test_stage_advances_exactly_when_the_pflug_sum_turns_negative():
    M, burn_in = 3, 2
    m, eng = AdaptiveK(k0=1, step=1, burn_in=burn_in, n_workers=M, batch=4), FakeEngine()
    # aligned gradients then alternating ones: <g_t, g_{t-1}> > 0, then < 0
    rounds = [[[1.0, 0.0]] * M] * 4 + [[[(-1.0) ** t, 0.0]] * M for t in range(6)]
    ks = feed(m, eng, rounds)
    # reference: the same statistic computed by hand from the applied gradients
    k, stage, in_stage, S, prev, want = 1, 0, 0, 0.0, None, []
    for g, _, st in eng.applied:
        want.append((k, stage))
        assert st == stage
        in_stage += 1
        if in_stage > burn_in and prev is not None:
            S += float(g @ prev)
        prev = g
        if S < 0 and k < M:
            k, stage, in_stage, S = k + 1, stage + 1, 0, 0.0
    assert ks == [w[0] for w in want]
    assert m.stage >= 1 and m.k == 1 + m.stage
    assert ks[:5] == [1] * 5  # aligned gradients never trigger a switch


def test_k_never_exceeds_m_and_state_round_trips():
    m, eng = AdaptiveK(k0=2, step=3, burn_in=0, n_workers=4, batch=2), FakeEngine()
    feed(m, eng, [[[(-1.0) ** t, 1e-3]] * 4 for t in range(12)])
    assert m.k == 4
    copy = AdaptiveK(k0=1, step=1, burn_in=5, n_workers=4, batch=2)
    copy.load_state_dict(m.state_dict())
    assert (copy.k, copy.stage, copy.switch.in_stage, copy.switch.S) == (m.k, m.stage, m.switch.in_stage, m.switch.S)
    assert np.array_equal(copy.switch.prev, m.switch.prev)


def adaptive_kb(M, targets, clock="simulated", **method):
    cfg = resolve({"run": {"clock": clock}, "stragglers": STRAGGLERS,
                   "method": {"kind": "adaptive_kb", "targets": targets, **method}})
    return make_method(cfg, [10**6] * M)


STRAGGLERS = {"model": "shifted_exp", "comm_mean": 0.005, "compute_mean": 0.001}


def test_adaptive_kb_runs_each_stage_at_the_argmin_of_mu():
    M, targets = 8, [16, 32, 64, 128]
    m, eng = adaptive_kb(M, targets, burn_in=0), FakeEngine()
    times = IterationTimeModel(resolve({"stragglers": STRAGGLERS})["stragglers"], M, seed=0)
    want = [times.best_kb(K) for K in targets]
    # the shifted exponential favours waiting for several workers with small batches
    assert want[0][0] > 1 and want[0][0] * want[0][1] >= 16
    seen = []
    for t in range(40):
        seen.append((m.stage, m.k, m.batch))
        version = eng.version
        for j in range(1, M + 1):
            if eng.version != version:
                break
            g = np.array([(-1.0) ** t, 0.0])  # alternating: the test fires at once
            m.on_result(eng, SimpleNamespace(worker=j, version=version, grad=g, epoch=1,
                                             pairs=np.empty((0, 2))))
    for stage, k, b in seen:
        assert (k, b) == want[stage]
    assert seen[-1][0] == len(targets) - 1  # reached the last stage and stays there
    assert sorted({s for s, _, _ in seen}) == [0, 1, 2, 3]


class TableTimes(IterationTimeModel):
    """mu from a hand-made table."""

    def __init__(self, table):
        self.M, self.table = 4, table

    def mu(self, k, b):
        return self.table[k, b]


def test_best_kb_returns_the_argmin_of_a_table():
    table = {(1, 12): 5.0, (2, 6): 3.0, (3, 4): 2.5, (4, 3): 2.5}
    assert TableTimes(table).best_kb(12) == (3, 4)  # ties go to the smaller k
    assert TableTimes({**table, (4, 3): 2.0}).best_kb(12) == (4, 3)
    assert TableTimes(table).best_kb(12, max_batch=5) == (3, 4)
    assert TableTimes({**table, (3, 4): 9.0, (4, 3): 9.0}).best_kb(12, max_batch=3) == (4, 3)
    with pytest.raises(ValueError):
        TableTimes(table).best_kb(12, max_batch=2)


def test_measured_times_estimate_the_order_statistics():
    """Exponential response times fed in: mu(k, b) ~ (H_M - H_{M-k}) * mean."""
    M, rng = 5, np.random.default_rng(3)
    times = MeasuredTimeModel(M, seed=0, samples=20000, window=4000)
    assert times.mu(1, 4) == math.inf  # nothing measured yet
    for _ in range(4000):
        for j in range(1, M + 1):
            times.observe(j, comm=0.0, per_sample=rng.exponential(0.01))
    assert times.seen() == 4000
    from hpcsgd.methods.timing import exponential_kth_mean
    for k in (1, 3, 5):
        assert times.mu(k, 8) == pytest.approx(exponential_kth_mean(M, k, 0.08), rel=0.04)
    # the window keeps only the latest jobs: a worker that became 10x slower shows it
    for _ in range(4000):
        times.observe(1, comm=0.0, per_sample=rng.exponential(0.1))
    times.refresh()
    assert times.mu(5, 8) > 3 * exponential_kth_mean(M, 5, 0.08)
    copy = MeasuredTimeModel(M, seed=0, samples=20000, window=4000)
    copy.load_state_dict(times.state_dict())
    assert copy.mu(3, 8) == times.mu(3, 8)


def test_wall_clock_adaptive_kb_measures_everyone_then_chooses():
    M = 4
    m, eng = adaptive_kb(M, [32], clock="wall", refresh_every=5), FakeEngine()
    assert (m.k, m.batch) == (M, 8)  # nothing measured: wait for all, measure all
    job = SimpleNamespace(cancelled=False, t_assign=0.0, t_done=0.0)
    for rep in range(2):
        for j in range(1, M + 1):
            slow = 50.0 if j == 1 else 1.0
            r = SimpleNamespace(worker=j, batch=8, compute_seconds=1e-5, duration=slow * 0.01,
                                delay_comm=slow * 0.002)
            m.observe(job, r)
        feed(m, eng, [[[1.0, 0.0]] * M])
    assert m.informed and m.k < M, (m.k, m.batch)  # worker 1 is 50x slower: leave it out
    assert (m.k, m.batch) == m.times.best_kb(32, 10**6)


def test_a_worker_that_stopped_answering_is_measured_as_slow():
    """Its fast past replies say nothing about a job it has owed for 30 s: every draw of
    its response time is at least that, so the next (k, b) leaves it out."""
    M = 4
    m, eng = adaptive_kb(M, [32], clock="wall", refresh_every=1), FakeEngine()
    job = SimpleNamespace(cancelled=False, t_assign=0.0, t_done=0.0)
    for rep in range(2):
        for j in range(1, M + 1):
            r = SimpleNamespace(worker=j, batch=8, compute_seconds=1e-5, duration=0.01, delay_comm=0.002)
            m.observe(job, r)
        eng.overdue = [0.0] * M
        feed(m, eng, [[[1.0, 0.0]] * M])
    assert m.k == M  # equal workers: wait for all with the smallest batch
    eng.overdue = [0.0, 30.0, 0.0, 0.0]  # worker 2 froze
    feed(m, eng, [[[1.0, 0.0]] * M])
    assert m.k < M and m.times.mu(M, 8) >= 30.0, (m.k, m.batch)
    copy = MeasuredTimeModel(M, seed=0, samples=m.times.samples)
    copy.load_state_dict(m.times.state_dict())
    assert copy.mu(M, 8) == m.times.mu(M, 8)


def test_pflug_test_is_quiet_in_the_transient_and_fires_near_the_floor():
    """SGD on f(w) = ||w||^2 / 2 with gradient noise sigma = 1 in d = 10: the iterates
    contract from ||w||^2 = 1000 for ~30 steps, then bounce around the floor
    E||w||^2 = lr d sigma^2 / (2 - lr)."""
    d, lr = 10, 0.1
    floor = lr * d / (2 - lr)
    fired_at = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        w, test = np.full(d, 10.0), PflugTest(burn_in=10)
        for t in range(5000):
            g = w + rng.standard_normal(d)
            if test.fires(g, 1.0):
                fired_at.append((t, float(w @ w)))
                break
            w -= lr * g
        else:
            fired_at.append((None, float(w @ w)))
    for t, sq in fired_at:
        assert t is not None and t > 30, fired_at   # never in the transient
        assert sq < 6 * floor, (t, sq, floor)       # fires when the iterate is at the floor


def test_bound_switch_follows_the_bound_and_switches_at_the_optimal_level():
    lr, c, L, s2 = 0.05, 0.5, 1.0, 4.0
    a1, a2 = noise_floor(lr, c, L, s2, 16), noise_floor(lr, c, L, s2, 64)
    assert a1 == pytest.approx(lr * L * s2 / (2 * c * 16)) and a2 == pytest.approx(a1 / 4)
    mu1, mu2 = 1.0, 2.5
    level = switch_level(mu1, a1, mu2, a2)
    # at e* both stages' bounds fall at the same rate per second
    assert (level - a1) / mu1 == pytest.approx((level - a2) / mu2)
    assert switch_level(2.0, a1, 1.0, a2) == math.inf  # a faster next stage: switch at once

    def time_to(eps, e_switch, e0=10.0):
        rate = -math.log(1 - lr * c)
        t1 = math.log((e0 - a1) / (e_switch - a1)) / rate * mu1
        return t1 + math.log((e_switch - a2) / (eps - a2)) / rate * mu2

    grid = np.linspace(a1 * 1.001, 5.0, 4000)
    best = grid[np.argmin([time_to(1.05 * a2 + 0.001, e) for e in grid])]
    assert best == pytest.approx(level, rel=0.01)
    sw = BoundSwitch(lr, c, gap0=10.0)
    sw.enter(a1, level)
    J = 0
    while not sw.fires(None, 1.0):
        J += 1
    assert sw.error == pytest.approx(a1 + (1 - lr * c) ** (J + 1) * (10.0 - a1))
    assert sw.error <= level < a1 + (1 - lr * c) ** J * (10.0 - a1)


def test_adaptive_kb_bound_switch_advances_on_the_predicted_error():
    lr, c, L, s2, gap0 = 0.05, 0.5, 1.0, 4.0, 10.0
    m = adaptive_kb(8, [16, 64], switch="bound", lr=lr, bound_c=c, bound_L=L, bound_sigma2=s2,
                    bound_gap0=gap0)
    eng = FakeEngine()
    times = m.times
    (k1, b1), (k2, b2) = times.best_kb(16), times.best_kb(64)
    a1, a2 = noise_floor(lr, c, L, s2, k1 * b1), noise_floor(lr, c, L, s2, k2 * b2)
    level = switch_level(times.mu(k1, b1), a1, times.mu(k2, b2), a2)
    e, J = gap0, 0
    while True:  # the update at which the bound first reaches the level
        e = a1 + (1 - lr * c) * (e - a1)
        J += 1
        if e <= level:
            break
    feed(m, eng, [[[1.0, 0.0]] * 8] * (J + 3))
    stage_of = [st for _, _, st in eng.applied]
    assert stage_of.index(1) == J  # updates 0..J-1 in stage 0
    state = m.state_dict()
    again = adaptive_kb(8, [16, 64], switch="bound", lr=lr, bound_c=c, bound_L=L, bound_sigma2=s2,
                        bound_gap0=gap0)
    again.load_state_dict(state)
    assert (again.stage, again.k, again.batch, again.switch.error) == (m.stage, m.k, m.batch, m.switch.error)
    assert again.switch.floor == m.switch.floor and again.switch.level == m.switch.level
