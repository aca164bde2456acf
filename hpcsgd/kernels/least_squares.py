"""Least-squares (linear regression) kernels (Numba, serial, no Python objects).

Layout: ``w = [weights (p), bias]`` so ``d = p + 1``.  Targets ``y`` are real values.
With ``z = x.w[:p] + w[p]`` the per-example loss is ``0.5 * (z - y)^2`` and the
gradient is ``(z - y) * [x, 1]``.  There is no accuracy: ``correct_count`` returns -1.

Arguments shared by all kernels: ``X`` float64 C-contiguous [n, p], ``y`` float64
[n], ``idx`` int64 [B] (row indices into X, any length >= 1, repeats allowed; out of
range raises IndexError).  Losses/gradients are the DATA term only (no regulariser).

The batched loops (4 rows at a time) are ``linear.py``'s, shared with logistic
regression; this module supplies the squared loss.
"""

from numba import njit

from . import linear
from .dense import FM


@njit(cache=True, fastmath=FM, error_model="numpy")
def _loss_resid(z, yi):
    """Return (0.5 * (z - y)^2, z - y)."""
    r = z - yi
    return 0.5 * r * r, r


@njit(cache=True, fastmath=FM, error_model="numpy")
def _loss(z, yi):
    return _loss_resid(z, yi)[0]


@njit(cache=True, fastmath=FM, error_model="numpy")
def loss_sum(w, X, y, idx):
    """Sum over idx of 0.5 * (x.w + b - y)^2 (no regulariser)."""
    return linear.row_sum(w, X, y, idx, _loss)


@njit(cache=True, fastmath=FM, error_model="numpy")
def grad_sum(w, X, y, idx, out):
    """out[:] = sum over idx of per-example gradients; return the loss sum."""
    return linear.grad_sum(w, X, y, idx, out, _loss_resid)


@njit(cache=True, fastmath=FM, error_model="numpy")
def per_example_grads(w, X, y, idx, out):
    """out[q, :] = gradient of example idx[q]; out is float64 [len(idx), p + 1]."""
    linear.per_example_grads(w, X, y, idx, out, _loss_resid)


@njit(cache=True, fastmath=FM, error_model="numpy")
def pair_grads(w, X, y, idx, mean_out, diffs_out):
    """One pass: mean_out[:] = mean gradient over idx, diffs_out[q] = grad(idx[2q]) -
    grad(idx[2q+1]) (shape [len(idx) // 2, p + 1]); return the loss sum."""
    return linear.pair_grads(w, X, y, idx, mean_out, diffs_out, _loss_resid)


@njit(cache=True, error_model="numpy")
def correct_count(w, X, y, idx):
    """Regression has no accuracy: always returns -1 (after validating arguments)."""
    linear.check(w, X, y, idx)
    return -1
