"""adaptive_k's stage switching, driven by a fake engine with chosen gradients."""

from types import SimpleNamespace

import numpy as np

from hpcsgd.methods.adaptive_k import AdaptiveK


class FakeEngine:
    def __init__(self):
        self.version = 0
        self.applied = []

    def apply(self, grad, *, contributors, staleness, batch, scale, extra):
        self.applied.append((scale * grad.copy(), list(contributors), extra["stage"]))
        self.version += 1

    def cancel_jobs_before(self, version):
        pass


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
