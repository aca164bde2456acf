"""Delay models: per-worker means, per-sample scaling, reproducible streams."""

import numpy as np
import pytest

from hpcsgd.config import resolve
from hpcsgd.streams import make_stream
from hpcsgd.stragglers import DelayModel



def duration(model, batch: int) -> float:
    """Seconds for one job of ``batch`` samples: its communication and computation draws."""
    return sum(model.draw(batch))

def model(worker=1, **stragglers):
    cfg = resolve({"stragglers": stragglers})["stragglers"]
    return DelayModel(cfg, worker, make_stream(0, worker, 2))


@pytest.mark.parametrize("kind", ["fixed", "exp", "shifted_exp", "gamma", "normal", "uniform", "poisson"])
def test_mean_duration_matches_configuration(kind):
    # worker 3 with linear speeds has 3x the base means; a job of b=4 samples
    m = model(worker=3, model=kind, comm_mean=2.0, compute_mean=0.5, speeds="linear", cv=0.2)
    draws = np.array([duration(m, 4) for _ in range(20000)])
    expected = 3 * 2.0 + 4 * 3 * 0.5
    assert abs(draws.mean() - expected) < 0.05 * expected, (kind, draws.mean(), expected)
    assert draws.min() >= 0.0


def test_fixed_is_deterministic_and_slow_workers_are_slower():
    fast = model(worker=1, model="fixed", comm_mean=0.001, slow_workers=[2], slow_factor=20.0)
    slow = model(worker=2, model="fixed", comm_mean=0.001, slow_workers=[2], slow_factor=20.0)
    assert duration(fast, 16) == 0.001 and duration(slow, 16) == pytest.approx(0.02)


def test_gamma_sums_per_sample_times():
    # Gamma(shape*b, mean/shape): the variance grows like b, not b^2 as for scaled draws
    g = model(model="gamma", compute_mean=1.0, shape=1.0)
    e = model(model="exp", compute_mean=1.0)
    dg = np.array([duration(g, 16) for _ in range(20000)])
    de = np.array([duration(e, 16) for _ in range(20000)])
    assert dg.var() == pytest.approx(16, rel=0.1) and de.var() == pytest.approx(256, rel=0.1)


def test_none_is_zero_and_streams_are_reproducible():
    assert duration(model(model="none", comm_mean=1.0), 10) == 0.0
    a = [duration(model(model="exp", comm_mean=1.0), 1) for _ in range(1)]
    b = [duration(model(model="exp", comm_mean=1.0), 1) for _ in range(1)]
    assert a == b
    assert duration(model(worker=1, model="exp", comm_mean=1.0), 1) != duration(model(worker=2, model="exp", comm_mean=1.0), 1)


def test_samples_done_by_a_cancelled_job():
    from hpcsgd.stragglers import samples_done
    assert samples_done(16, compute=0.4, elapsed=0.0) == 0      # never started
    assert samples_done(16, compute=0.4, elapsed=0.1) == 4      # a quarter of the compute
    assert samples_done(16, compute=0.4, elapsed=0.3999) == 15
    assert samples_done(16, compute=0.4, elapsed=0.5) == 16     # cancelled while replying
    assert samples_done(16, compute=0.0, elapsed=1e-9) == 16    # communication-only delay
