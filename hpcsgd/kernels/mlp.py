"""One-hidden-layer MLP kernels (Numba, serial, no Python objects).

Model: ``h = tanh(W1 x + b1)`` (H units), logits ``z = W2 h + b2`` (C >= 2 classes),
softmax cross-entropy loss (binary tasks use C = 2).  Labels ``y`` hold class ids
0..C-1 as float64.

Layout: ``w = [W1 (H x p, row-major), b1 (H), W2 (C x H, row-major), b2 (C)]`` so
``d = H*(p+1) + C*(H+1)``.  Because H and C cannot both be recovered from ``d``,
every kernel here takes the number of hidden units as an extra LAST argument
``n_hidden``; C is derived from ``len(w)`` (must divide exactly).

Arguments shared by all kernels: ``X`` float64 C-contiguous [n, p], ``y`` float64
[n], ``idx`` int64 [B] (row indices into X, any length >= 1, repeats allowed).
Losses/gradients are the DATA term only (no regulariser).

The first layer is the generic dense layer of ``dense.py`` (4 rows at a time,
register-blocked); the rest of the network (tanh, the second dense layer and the
softmax cross-entropy head of ``softmax.py``) is the per-row part defined here.
Scratch buffers are allocated once per call and passed in ``ctx``.
"""

import numpy as np
from numba import njit

from . import dense
from .dense import FM
from .softmax import argmax, label, xent, xent_grad


@njit(cache=True, error_model="numpy")
def _ctx(w, X, H):
    """Validate len(w) and n_hidden; return the row functions' context
    (W2 and b2 as one dense layer, hidden-unit and logit scratch, offset of W2 in w)."""
    p = X.shape[1]
    if H < 1:
        raise ValueError("mlp: n_hidden must be >= 1")
    o2 = H * (p + 1)
    rest = w.shape[0] - o2
    if rest <= 0 or rest % (H + 1) != 0 or rest // (H + 1) < 2:
        raise ValueError("mlp: len(w) must be H*(n_features+1) + C*(H+1) with C >= 2")
    C = rest // (H + 1)
    return (w[o2:], np.empty(H), np.empty(C), o2)


@njit(cache=True, fastmath=FM, error_model="numpy")
def _head(a, ctx):
    """h = tanh(a) and z = W2 h + b2 for one row, into the scratch of ctx."""
    w2, h, z, _ = ctx
    H = a.shape[0]
    for k in range(H):
        h[k] = np.tanh(a[k])
    dense.forward1(w2, h, H, z.shape[0], z)


@njit(cache=True, fastmath=FM, error_model="numpy")
def _loss_row(a, yi, ctx):
    _head(a, ctx)
    z = ctx[2]
    C = z.shape[0]
    return xent(z, C, label(yi, C))


@njit(cache=True, fastmath=FM, error_model="numpy")
def _hit_row(a, yi, ctx):
    _head(a, ctx)
    z = ctx[2]
    return 1.0 if argmax(z, z.shape[0]) == yi else 0.0


@njit(cache=True, fastmath=FM, error_model="numpy")
def _grad_row(a, yi, o, ctx):
    """Forward and backward through the head: o[W2, b2] += dz h^T, dz;
    a <- dLoss/da = (W2^T dz) * (1 - h^2); return the loss."""
    _head(a, ctx)
    w2, h, z, o2 = ctx
    H = a.shape[0]
    C = z.shape[0]
    loss = xent_grad(z, C, label(yi, C))
    ob2 = o2 + C * H
    for k in range(H):
        a[k] = 0.0
    for c in range(C):
        g = z[c]
        o[ob2 + c] += g
        w2c = w2[c * H : (c + 1) * H]
        g2c = o[o2 + c * H : o2 + (c + 1) * H]
        for k in range(H):
            g2c[k] += g * h[k]
            a[k] += g * w2c[k]
    for k in range(H):
        a[k] *= 1.0 - h[k] * h[k]
    return loss


@njit(cache=True, fastmath=FM, error_model="numpy")
def loss_sum(w, X, y, idx, n_hidden):
    """Sum over idx of per-example cross-entropy (no regulariser)."""
    return dense.row_sum(w, X, y, idx, n_hidden, _loss_row, _ctx(w, X, n_hidden))


@njit(cache=True, fastmath=FM, error_model="numpy")
def grad_sum(w, X, y, idx, out, n_hidden):
    """out[:] = sum over idx of per-example gradients; return the loss sum."""
    return dense.grad_sum(w, X, y, idx, out, n_hidden, _grad_row, _ctx(w, X, n_hidden))


@njit(cache=True, fastmath=FM, error_model="numpy")
def per_example_grads(w, X, y, idx, out, n_hidden):
    """out[q, :] = gradient of example idx[q]; out is float64 [len(idx), len(w)]."""
    dense.per_example_grads(w, X, y, idx, out, n_hidden, _grad_row, _ctx(w, X, n_hidden))


@njit(cache=True, fastmath=FM, error_model="numpy")
def pair_grads(w, X, y, idx, mean_out, diffs_out, n_hidden):
    """One pass: mean_out[:] = mean gradient over idx, diffs_out[q] = grad(idx[2q]) -
    grad(idx[2q+1]) (shape [len(idx) // 2, len(w)]); return the loss sum."""
    return dense.pair_grads(w, X, y, idx, mean_out, diffs_out, n_hidden, _grad_row, _ctx(w, X, n_hidden))


@njit(cache=True, fastmath=FM, error_model="numpy")
def correct_count(w, X, y, idx, n_hidden):
    """Number of rows whose argmax logit (first on ties) equals the label."""
    return int(dense.row_sum(w, X, y, idx, n_hidden, _hit_row, _ctx(w, X, n_hidden)))
