"""Binary logistic regression kernels (Numba, serial, no Python objects).

Layout: ``w = [weights (p), bias]`` so ``d = p + 1``.  Labels ``y`` are 0.0/1.0
(values in [0, 1] are accepted as soft labels).  With ``z = x.w[:p] + w[p]`` the
per-example loss is ``softplus(z) - y*z``, computed as ``log1p(exp(-|z|)) + ...`` so
it never overflows (|z| ~ 1e3 is fine); the gradient is ``(sigmoid(z) - y) * [x, 1]``.

Arguments shared by all kernels: ``X`` float64 C-contiguous [n, p], ``y`` float64
[n], ``idx`` int64 [B] (row indices into X, any length >= 1, repeats allowed; out of
range raises IndexError).  Losses/gradients are the DATA term only (no regulariser).

Performance: rows are processed 4 at a time (4 dot products sharing each load of
``w``, then one rank-4 update of ``out``), which keeps several rows' memory traffic in
flight and cuts loads/stores of ``w``/``out`` by 4.

Floating-point flags: ``contract``/``reassoc``/``nsz`` only (never nnan/ninf):
NaN and Inf propagate.
"""

import numpy as np
from numba import njit

_FM = {"contract", "reassoc", "nsz"}


@njit(cache=True, error_model="numpy")
def _check(w, X, y, idx):
    n, p = X.shape
    if w.shape[0] != p + 1:
        raise ValueError("logistic: len(w) must be n_features + 1")
    if y.shape[0] != n:
        raise ValueError("logistic: len(y) must equal the number of rows of X")
    bad = False
    for q in range(idx.shape[0]):
        i = idx[q]
        bad |= (i < 0) | (i >= n)
    if bad:
        raise IndexError("logistic: batch index out of range")


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _loss_resid(z, yi):
    """Return (loss, sigmoid(z) - y), stable for any z; NaN in -> NaN out."""
    if z > 0.0:
        e = np.exp(-z)
        return np.log1p(e) + (1.0 - yi) * z, 1.0 / (1.0 + e) - yi
    else:
        e = np.exp(z)
        return np.log1p(e) - yi * z, e / (1.0 + e) - yi


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _dot1(wv, x, p):
    a = 0.0
    for j in range(p):
        a += wv[j] * x[j]
    return a


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _dot4(wv, x0, x1, x2, x3, p):
    a0 = 0.0
    a1 = 0.0
    a2 = 0.0
    a3 = 0.0
    for j in range(p):
        u = wv[j]
        a0 += u * x0[j]
        a1 += u * x1[j]
        a2 += u * x2[j]
        a3 += u * x3[j]
    return a0, a1, a2, a3


@njit(cache=True, fastmath=_FM, error_model="numpy")
def loss_sum(w, X, y, idx):
    """Sum over idx of per-example logistic loss (no regulariser)."""
    _check(w, X, y, idx)
    p = X.shape[1]
    B = idx.shape[0]
    wv = w[:p]
    b = w[p]
    total = 0.0
    q = 0
    while q + 4 <= B:
        i0 = idx[q]
        i1 = idx[q + 1]
        i2 = idx[q + 2]
        i3 = idx[q + 3]
        a0, a1, a2, a3 = _dot4(wv, X[i0], X[i1], X[i2], X[i3], p)
        total += (_loss_resid(a0 + b, y[i0])[0] + _loss_resid(a1 + b, y[i1])[0]) + (
            _loss_resid(a2 + b, y[i2])[0] + _loss_resid(a3 + b, y[i3])[0]
        )
        q += 4
    while q < B:
        i = idx[q]
        total += _loss_resid(_dot1(wv, X[i], p) + b, y[i])[0]
        q += 1
    return total


@njit(cache=True, fastmath=_FM, error_model="numpy")
def grad_sum(w, X, y, idx, out):
    """out[:] = sum over idx of per-example gradients; return the loss sum."""
    _check(w, X, y, idx)
    p = X.shape[1]
    if out.shape[0] != p + 1:
        raise ValueError("logistic: len(out) must be n_features + 1")
    B = idx.shape[0]
    wv = w[:p]
    b = w[p]
    ov = out[:p]
    for j in range(p):
        ov[j] = 0.0
    total = 0.0
    gb = 0.0
    q = 0
    while q + 4 <= B:
        i0 = idx[q]
        i1 = idx[q + 1]
        i2 = idx[q + 2]
        i3 = idx[q + 3]
        x0 = X[i0]
        x1 = X[i1]
        x2 = X[i2]
        x3 = X[i3]
        a0, a1, a2, a3 = _dot4(wv, x0, x1, x2, x3, p)
        l0, r0 = _loss_resid(a0 + b, y[i0])
        l1, r1 = _loss_resid(a1 + b, y[i1])
        l2, r2 = _loss_resid(a2 + b, y[i2])
        l3, r3 = _loss_resid(a3 + b, y[i3])
        total += (l0 + l1) + (l2 + l3)
        gb += (r0 + r1) + (r2 + r3)
        for j in range(p):
            ov[j] += (r0 * x0[j] + r1 * x1[j]) + (r2 * x2[j] + r3 * x3[j])
        q += 4
    while q < B:
        i = idx[q]
        x = X[i]
        l, r = _loss_resid(_dot1(wv, x, p) + b, y[i])
        total += l
        gb += r
        for j in range(p):
            ov[j] += r * x[j]
        q += 1
    out[p] = gb
    return total


@njit(cache=True, fastmath=_FM, error_model="numpy")
def per_example_grads(w, X, y, idx, out):
    """out[q, :] = gradient of example idx[q]; out is float64 [len(idx), p + 1]."""
    _check(w, X, y, idx)
    p = X.shape[1]
    B = idx.shape[0]
    if out.shape[0] != B or out.shape[1] != p + 1:
        raise ValueError("logistic: out must have shape (len(idx), n_features + 1)")
    wv = w[:p]
    b = w[p]
    for q in range(B):
        i = idx[q]
        x = X[i]
        r = _loss_resid(_dot1(wv, x, p) + b, y[i])[1]
        o = out[q]
        for j in range(p):
            o[j] = r * x[j]
        o[p] = r


@njit(cache=True, fastmath=_FM, error_model="numpy")
def correct_count(w, X, y, idx):
    """Number of rows where the prediction (z > 0 -> 1, else 0) equals y."""
    _check(w, X, y, idx)
    p = X.shape[1]
    wv = w[:p]
    b = w[p]
    c = 0
    for q in range(idx.shape[0]):
        i = idx[q]
        pred = 1.0 if _dot1(wv, X[i], p) + b > 0.0 else 0.0
        if pred == y[i]:
            c += 1
    return c
