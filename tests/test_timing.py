"""The expected iteration time mu(k, b) of fastest-k SGD."""

import math

import numpy as np
import pytest

from hpcsgd.config import resolve
from hpcsgd.methods.timing import IterationTimeModel, exponential_kth_mean, harmonic


def stragglers(**kw):
    return resolve({"stragglers": kw})["stragglers"]


def test_exponential_order_statistic_formula_matches_simulation():
    rng = np.random.default_rng(0)
    draws = np.sort(rng.exponential(2.0, size=(200000, 5)), axis=1)
    for k in range(1, 6):
        assert exponential_kth_mean(5, k, 2.0) == pytest.approx(draws[:, k - 1].mean(), rel=0.01)
    assert exponential_kth_mean(5, 5, 1.0) == pytest.approx(harmonic(5))
    with pytest.raises(ValueError):
        exponential_kth_mean(5, 6, 1.0)


def test_exact_path_for_iid_exponential_and_monte_carlo_otherwise():
    exact = IterationTimeModel(stragglers(model="exp", compute_mean=0.01), 4, seed=0)
    assert exact.mu(2, 8) == pytest.approx(0.08 * (harmonic(4) - harmonic(2)))
    assert not exact.sorted_times  # no sampling needed
    # a worker 10x slower breaks the i.i.d. assumption: Monte Carlo from DelayModel
    slow = IterationTimeModel(stragglers(model="exp", compute_mean=0.01, slow_workers=[4],
                                         slow_factor=10.0), 4, seed=0, samples=20000)
    fast3 = exponential_kth_mean(3, 3, 0.08)  # the first 3 of 4 are usually the fast ones
    assert slow.mu(3, 8) < 1.3 * fast3
    assert slow.mu(4, 8) > 3 * fast3  # waiting for everyone means waiting for the slow one


def test_mu_grows_with_k_and_b():
    model = IterationTimeModel(stragglers(model="shifted_exp", comm_mean=0.002, compute_mean=0.001),
                               5, seed=1, samples=5000)
    ks = [model.mu(k, 4) for k in range(1, 6)]
    assert all(a < b for a, b in zip(ks, ks[1:]))
    assert model.mu(3, 2) < model.mu(3, 8)


def test_best_kb_meets_the_target_and_depends_on_how_compute_scales():
    # Per-sample times summed (Erlang): big batches concentrate, so waiting for more
    # workers that each compute fewer samples is faster (the adaptive-(k, b) regime).
    summed = IterationTimeModel(stragglers(model="gamma", compute_mean=0.001, shape=1.0), 8,
                                seed=2, samples=4000)
    k, b = summed.best_kb(64)
    assert k * b >= 64 and b == math.ceil(64 / k)
    assert k >= 4 and summed.mu(k, b) < 0.5 * summed.mu(1, 64), (k, b)
    # One per-sample draw scaled by b: mu(k, 64/k) = (64 m / k)(H_8 - H_{8-k}) is
    # smallest at k = 1, and a fixed communication cost also favours few replies.
    scaled = IterationTimeModel(stragglers(model="exp", compute_mean=0.001), 8, seed=2)
    assert scaled.best_kb(64) == (1, 64)
    assert scaled.mu(4, 16) == pytest.approx(16 * 0.001 * (harmonic(8) - harmonic(4)))
    comm = IterationTimeModel(stragglers(model="exp", comm_mean=0.05), 8, seed=2)
    assert comm.best_kb(64)[0] == 1
