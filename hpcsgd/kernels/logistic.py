"""Binary logistic regression kernels (Numba, serial, no Python objects).

Layout: ``w = [weights (p), bias]`` so ``d = p + 1``.  Labels ``y`` are 0.0/1.0
(values in [0, 1] are accepted as soft labels).  With ``z = x.w[:p] + w[p]`` the
per-example loss is ``softplus(z) - y*z``, computed as ``log1p(exp(-|z|)) + ...`` so
it never overflows (|z| ~ 1e3 is fine); the gradient is ``(sigmoid(z) - y) * [x, 1]``.

Arguments shared by all kernels: ``X`` float64 C-contiguous [n, p], ``y`` float64
[n], ``idx`` int64 [B] (row indices into X, any length >= 1, repeats allowed; out of
range raises IndexError).  Losses/gradients are the DATA term only (no regulariser).

The batched loops (4 rows at a time) are ``linear.py``'s, shared with least squares;
this module supplies the link/loss.
"""

import numpy as np
from numba import njit

from . import linear
from .dense import FM


@njit(cache=True, fastmath=FM, error_model="numpy")
def _loss_resid(z, yi):
    """Return (loss, sigmoid(z) - y), stable for any z; NaN in -> NaN out."""
    if z > 0.0:
        e = np.exp(-z)
        return np.log1p(e) + (1.0 - yi) * z, 1.0 / (1.0 + e) - yi
    else:
        e = np.exp(z)
        return np.log1p(e) - yi * z, e / (1.0 + e) - yi


@njit(cache=True, fastmath=FM, error_model="numpy")
def _loss(z, yi):
    return _loss_resid(z, yi)[0]


@njit(cache=True, fastmath=FM, error_model="numpy")
def _hit(z, yi):
    return 1.0 if (1.0 if z > 0.0 else 0.0) == yi else 0.0


@njit(cache=True, fastmath=FM, error_model="numpy")
def loss_sum(w, X, y, idx):
    """Sum over idx of per-example logistic loss (no regulariser)."""
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


@njit(cache=True, fastmath=FM, error_model="numpy")
def correct_count(w, X, y, idx):
    """Number of rows where the prediction (z > 0 -> 1, else 0) equals y."""
    return int(linear.row_sum(w, X, y, idx, _hit))
