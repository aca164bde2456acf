"""Master-side update kernels: one fused pass over the parameters per update, in place
or into the next job message (then no copy of the model is made to send it)."""

import numpy as np
from numba import njit


@njit(cache=True)
def sgd_step(w, g, lr, scale, out):
    """out = w - lr * scale * g (``out`` may be ``w``: in place); returns False if g held
    NaN/Inf (then out is spoiled too)."""
    finite = True
    step = lr * scale
    for i in range(w.size):
        if not np.isfinite(g[i]):
            finite = False
        out[i] = w[i] - step * g[i]
    return finite


@njit(cache=True)
def heavy_ball_step(w, m, g, lr, beta, scale, out):
    """m = beta*m + scale*g; out = w - lr*m (``out`` may be ``w``); returns False if g
    held NaN/Inf."""
    finite = True
    for i in range(w.size):
        if not np.isfinite(g[i]):
            finite = False
        m[i] = beta * m[i] + scale * g[i]
        out[i] = w[i] - lr * m[i]
    return finite


@njit(cache=True)
def add_into(acc, g):
    for i in range(acc.size):
        acc[i] += g[i]


def warm_up() -> None:
    """Compile (or load from cache) before the first timed update."""
    w, m, g = np.zeros(2), np.zeros(2), np.ones(2)
    sgd_step(w, g, 0.1, 1.0, w)
    heavy_ball_step(w, m, g, 0.1, 0.5, 1.0, w)
    add_into(w, g)
