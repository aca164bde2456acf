"""Master-side update kernels: one fused pass over the parameters per update."""

import numpy as np
from numba import njit


@njit(cache=True)
def sgd_step(w, g, lr, scale):
    """w -= lr * scale * g; returns False if g held NaN/Inf (then w is spoiled too)."""
    finite = True
    step = lr * scale
    for i in range(w.size):
        if not np.isfinite(g[i]):
            finite = False
        w[i] -= step * g[i]
    return finite


@njit(cache=True)
def heavy_ball_step(w, m, g, lr, beta, scale):
    """m = beta*m + scale*g; w -= lr*m; returns False if g held NaN/Inf."""
    finite = True
    for i in range(w.size):
        if not np.isfinite(g[i]):
            finite = False
        m[i] = beta * m[i] + scale * g[i]
        w[i] -= lr * m[i]
    return finite


@njit(cache=True)
def add_into(acc, g):
    for i in range(acc.size):
        acc[i] += g[i]


def warm_up() -> None:
    """Compile (or load from cache) before the first timed update."""
    w, m, g = np.zeros(2), np.zeros(2), np.ones(2)
    sgd_step(w, g, 0.1, 1.0)
    heavy_ball_step(w, m, g, 0.1, 0.5, 1.0)
    add_into(w, g)
