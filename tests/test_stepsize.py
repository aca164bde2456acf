"""Delay-adaptive step-size policies: the window principle and the long-run steps."""

import numpy as np
import pytest

from hpcsgd.methods.stepsize import StepPolicy


def run(policy, taus):
    return np.array([policy.step(int(t)) for t in taus])


def delays(rng, n, high):
    """Random delays as an asynchronous system produces them: the oldest information
    ages by at most one update per update, tau_k <= tau_{k-1} + 1 (it may refresh)."""
    taus, tau = [], 0
    for _ in range(n):
        tau = min(tau + 1, int(rng.integers(0, high)))
        taus.append(tau)
    return np.array(taus)


@pytest.mark.parametrize("kind", ["adaptive1", "adaptive2"])
@pytest.mark.parametrize("seed", range(5))
def test_every_window_sum_stays_below_gamma_prime(kind, seed):
    rng = np.random.default_rng(seed)
    gp, alpha = 0.3, 0.5
    taus = np.concatenate([delays(rng, 300, 20), delays(rng, 600, 300), np.arange(150)])
    assert taus.max() > 100  # far past the initial buffer of 8
    p = StepPolicy(kind, gp, alpha=alpha, capacity=8)
    gammas = run(p, taus)
    for k, tau in enumerate(taus):
        window = gammas[max(0, k - tau):k + 1].sum()
        assert window <= gp * (1 + 1e-12), (k, tau, window)
    assert gammas.max() <= alpha * gp and gammas.min() >= 0.0
    assert gammas.mean() > 0.0


@pytest.mark.parametrize("tau", [1, 3, 7, 20])
def test_adaptive2_long_run_mean_is_gamma_prime_over_tau_plus_one(tau):
    gp, alpha = 1.0, 0.5
    assert tau >= (1 - alpha) / alpha
    gammas = run(StepPolicy("adaptive2", gp, alpha=alpha), [tau] * 4000)
    tail = gammas[-100 * (tau + 1):]  # whole periods of the steady state
    assert tail.mean() == pytest.approx(gp / (tau + 1), rel=1e-9)


def test_fixed_policy_and_adaptive_steps_never_exceed_alpha_gamma_prime():
    assert np.all(run(StepPolicy("fixed", 0.8, tau_max=7), [0, 3, 50]) == 0.1)
    g = run(StepPolicy("adaptive1", 0.8, alpha=0.25), [0] * 10)
    assert np.all(g == 0.2)  # no delay: always the full alpha gamma'
    g = run(StepPolicy("adaptive1", 1.0, alpha=0.5), [2] * 12)
    # adaptive1 with a constant delay, against a plain loop over the window
    steps = []
    for k in range(12):
        s = sum(steps[max(0, k - 2):k])
        steps.append(0.5 if s <= 0.5 else 0.0)
    assert g.tolist() == steps


def test_state_round_trip_and_buffer_growth():
    rng = np.random.default_rng(3)
    taus = rng.integers(0, 40, 200)
    a = StepPolicy("adaptive2", 0.5, capacity=4)
    first = run(a, taus[:100])
    b = StepPolicy("adaptive2", 0.5, capacity=4)
    b.load_state_dict(a.state_dict())
    assert np.array_equal(run(a, taus[100:]), run(b, taus[100:]))
    ref = StepPolicy("adaptive2", 0.5, capacity=1024)  # never grows
    assert np.allclose(first, run(ref, taus[:100]))


def test_adaptive1_and_adaptive2_coincide_when_alpha_is_one_over_an_integer():
    """Steps of alpha gamma' keep S a multiple of alpha gamma', so with alpha = 1/m
    adaptive2's gamma' - S never falls strictly between 0 and alpha gamma': the two
    reconstructed policies take the same steps (exactly so in floating point when
    alpha is a power of two; 1/3 differs by rounding).  Other alphas separate them."""
    rng = np.random.default_rng(11)
    taus = delays(rng, 2000, 40)
    for alpha in (0.5, 0.25):
        a1 = run(StepPolicy("adaptive1", 1.0, alpha=alpha), taus)
        a2 = run(StepPolicy("adaptive2", 1.0, alpha=alpha), taus)
        np.testing.assert_allclose(a1, a2, atol=1e-12)
    a1 = run(StepPolicy("adaptive1", 1.0, alpha=0.4), taus)
    a2 = run(StepPolicy("adaptive2", 1.0, alpha=0.4), taus)
    assert not np.allclose(a1, a2) and a2.mean() > a1.mean()
