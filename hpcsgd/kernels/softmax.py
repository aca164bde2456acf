"""Multinomial logistic (softmax) regression kernels (Numba, serial, no Python objects).

Layout: ``w = [W (C x p, row-major), b (C)]`` so ``d = C * (p + 1)``; the number of
classes C is inferred as ``len(w) // (p + 1)`` (must divide exactly, C >= 2).
Labels ``y`` hold class ids 0..C-1 as float64.  With logits ``z = W x + b`` the
per-example loss is ``logsumexp(z) - z[y]`` (max-shifted, never overflows) and the
gradient is ``(softmax(z) - onehot(y)) outer [x, 1]``.

Arguments shared by all kernels: ``X`` float64 C-contiguous [n, p], ``y`` float64
[n], ``idx`` int64 [B] (row indices into X, any length >= 1, repeats allowed).
Losses/gradients are the DATA term only (no regulariser).

The model is one dense layer (``dense.py``: 4-row-blocked loops) followed by the
softmax cross-entropy head defined here, which ``mlp.py`` uses as its output too.
"""

import numpy as np
from numba import njit

from . import dense
from .dense import FM


@njit(cache=True, error_model="numpy")
def _n_classes(w, X):
    """Validate len(w); return the number of classes C."""
    p = X.shape[1]
    d = w.shape[0]
    if d % (p + 1) != 0 or d // (p + 1) < 2:
        raise ValueError("softmax: len(w) must be n_classes * (n_features + 1), n_classes >= 2")
    return d // (p + 1)


# ---- the softmax cross-entropy head (also used by mlp.py) --------------------------


@njit(cache=True, error_model="numpy")
def label(yi, C):
    """Class id of a float label; raises unless it is in 0..C-1."""
    if not (yi >= 0.0 and yi < C):
        raise ValueError("label outside 0..n_classes-1")
    return int(yi)


@njit(cache=True, fastmath=FM, error_model="numpy")
def _max(z, C):
    m = z[0]
    for c in range(1, C):
        if z[c] > m:
            m = z[c]
    return m


@njit(cache=True, fastmath=FM, error_model="numpy")
def xent_grad(z, C, k):
    """Overwrite z[:C] with softmax(z) - onehot(k); return logsumexp(z) - z[k]."""
    m = _max(z, C)
    zk = z[k]
    s = 0.0
    for c in range(C):
        e = np.exp(z[c] - m)
        z[c] = e
        s += e
    inv = 1.0 / s
    for c in range(C):
        z[c] *= inv
    z[k] -= 1.0
    return np.log(s) + (m - zk)


@njit(cache=True, fastmath=FM, error_model="numpy")
def xent(z, C, k):
    """logsumexp(z[:C]) - z[k] (max-shifted), z unchanged."""
    m = _max(z, C)
    s = 0.0
    for c in range(C):
        s += np.exp(z[c] - m)
    return np.log(s) + (m - z[k])


@njit(cache=True, fastmath=FM, error_model="numpy")
def argmax(z, C):
    """Index of the largest of z[:C] (the first one on ties)."""
    k = 0
    m = z[0]
    for c in range(1, C):
        if z[c] > m:
            m = z[c]
            k = c
    return k


# ---- row functions for the dense-layer kernels --------------------------------------


@njit(cache=True, fastmath=FM, error_model="numpy")
def _loss_row(z, yi, ctx):
    C = z.shape[0]
    return xent(z, C, label(yi, C))


@njit(cache=True, fastmath=FM, error_model="numpy")
def _grad_row(z, yi, o, ctx):
    C = z.shape[0]
    return xent_grad(z, C, label(yi, C))


@njit(cache=True, fastmath=FM, error_model="numpy")
def _hit_row(z, yi, ctx):
    return 1.0 if argmax(z, z.shape[0]) == yi else 0.0


# ---- kernels ---------------------------------------------------------------------


@njit(cache=True, fastmath=FM, error_model="numpy")
def loss_sum(w, X, y, idx):
    """Sum over idx of per-example cross-entropy (no regulariser)."""
    return dense.row_sum(w, X, y, idx, _n_classes(w, X), _loss_row, ())


@njit(cache=True, fastmath=FM, error_model="numpy")
def grad_sum(w, X, y, idx, out):
    """out[:] = sum over idx of per-example gradients; return the loss sum."""
    return dense.grad_sum(w, X, y, idx, out, _n_classes(w, X), _grad_row, ())


@njit(cache=True, fastmath=FM, error_model="numpy")
def per_example_grads(w, X, y, idx, out):
    """out[q, :] = gradient of example idx[q]; out is float64 [len(idx), C*(p+1)]."""
    dense.per_example_grads(w, X, y, idx, out, _n_classes(w, X), _grad_row, ())


@njit(cache=True, fastmath=FM, error_model="numpy")
def pair_grads(w, X, y, idx, mean_out, diffs_out):
    """One pass: mean_out[:] = mean gradient over idx, diffs_out[q] = grad(idx[2q]) -
    grad(idx[2q+1]) (shape [len(idx) // 2, C*(p+1)]); return the loss sum."""
    return dense.pair_grads(w, X, y, idx, mean_out, diffs_out, _n_classes(w, X), _grad_row, ())


@njit(cache=True, fastmath=FM, error_model="numpy")
def correct_count(w, X, y, idx):
    """Number of rows whose argmax logit (first on ties) equals the label."""
    return int(dense.row_sum(w, X, y, idx, _n_classes(w, X), _hit_row, ()))
