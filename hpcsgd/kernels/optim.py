"""Master-side update kernels: one fused pass over the parameters per update."""

import numpy as np
from numba import njit


@njit(cache=True)
def sgd_step(w, g, lr):
    for i in range(w.size):
        w[i] -= lr * g[i]


@njit(cache=True)
def heavy_ball_step(w, m, g, lr, beta):
    """m = beta*m + g; w -= lr*m."""
    for i in range(w.size):
        m[i] = beta * m[i] + g[i]
        w[i] -= lr * m[i]


@njit(cache=True)
def add_into(acc, g):
    for i in range(acc.size):
        acc[i] += g[i]


@njit(cache=True)
def all_finite(x):
    for i in range(x.size):
        if not np.isfinite(x[i]):
            return False
    return True


def warm_up() -> None:
    """Compile (or load from cache) before the first timed update."""
    w, m, g = np.zeros(2), np.zeros(2), np.ones(2)
    sgd_step(w, g, 0.1)
    heavy_ball_step(w, m, g, 0.1, 0.5)
    add_into(w, g)
    all_finite(w)
