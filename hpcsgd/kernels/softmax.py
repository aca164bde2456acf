"""Multinomial logistic (softmax) regression kernels (Numba, serial, no Python objects).

Layout: ``w = [W (C x p, row-major), b (C)]`` so ``d = C * (p + 1)``; the number of
classes C is inferred as ``len(w) // (p + 1)`` (must divide exactly, C >= 2).
Labels ``y`` hold class ids 0..C-1 as float64.  With logits ``z = W x + b`` the
per-example loss is ``logsumexp(z) - z[y]`` (max-shifted, never overflows) and the
gradient is ``(softmax(z) - onehot(y)) outer [x, 1]``.

Arguments shared by all kernels: ``X`` float64 C-contiguous [n, p], ``y`` float64
[n], ``idx`` int64 [B] (row indices into X, any length >= 1, repeats allowed).
Losses/gradients are the DATA term only (no regulariser).

Performance: ``grad_sum`` processes rows in blocks of 4 and features in chunks, so
each weight chunk is loaded once per 4 rows and each output chunk is updated once
per 4 rows (register-blocked dot and rank-4 update), instead of once per row.

Floating-point flags: ``contract``/``reassoc``/``nsz`` only (never nnan/ninf):
NaN and Inf propagate.
"""

import numpy as np
from numba import njit

_FM = {"contract", "reassoc", "nsz"}

# Feature chunk (elements) for the blocked kernel: 4 rows x 512 doubles = 16 KiB.
_JC = 512


@njit(cache=True, error_model="numpy")
def _check(w, X, y, idx):
    """Validate shapes and indices; return the number of classes C."""
    n, p = X.shape
    d = w.shape[0]
    if d % (p + 1) != 0 or d // (p + 1) < 2:
        raise ValueError("softmax: len(w) must be n_classes * (n_features + 1), n_classes >= 2")
    C = d // (p + 1)
    if y.shape[0] != n:
        raise ValueError("softmax: len(y) must equal the number of rows of X")
    bad = False
    for q in range(idx.shape[0]):
        i = idx[q]
        bad |= (i < 0) | (i >= n)
    if bad:
        raise IndexError("softmax: batch index out of range")
    return C


@njit(cache=True, error_model="numpy")
def _label(yi, C):
    if not (yi >= 0.0 and yi < C):
        raise ValueError("softmax: label outside 0..n_classes-1")
    return int(yi)


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _logits(w, x, p, C, z):
    """z[c] = W[c].x + b[c] for one row."""
    cp = C * p
    for c in range(C):
        wc = w[c * p : (c + 1) * p]
        acc = 0.0
        for j in range(p):
            acc += wc[j] * x[j]
        z[c] = acc + w[cp + c]


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _logits4(w, x0, x1, x2, x3, p, C, G):
    """G[r, c] = W[c].x_r + b[c] for 4 rows: register-blocked 4 rows x 2 classes."""
    cp = C * p
    for c in range(C):
        bc = w[cp + c]
        G[0, c] = bc
        G[1, c] = bc
        G[2, c] = bc
        G[3, c] = bc
    for j0 in range(0, p, _JC):
        j1 = min(p, j0 + _JC)
        m = j1 - j0
        y0 = x0[j0:j1]
        y1 = x1[j0:j1]
        y2 = x2[j0:j1]
        y3 = x3[j0:j1]
        c = 0
        while c + 2 <= C:
            wa = w[c * p + j0 : c * p + j1]
            wb = w[(c + 1) * p + j0 : (c + 1) * p + j1]
            a0 = 0.0
            a1 = 0.0
            a2 = 0.0
            a3 = 0.0
            b0 = 0.0
            b1 = 0.0
            b2 = 0.0
            b3 = 0.0
            for j in range(m):
                u = wa[j]
                v = wb[j]
                t0 = y0[j]
                t1 = y1[j]
                t2 = y2[j]
                t3 = y3[j]
                a0 += u * t0
                a1 += u * t1
                a2 += u * t2
                a3 += u * t3
                b0 += v * t0
                b1 += v * t1
                b2 += v * t2
                b3 += v * t3
            G[0, c] += a0
            G[1, c] += a1
            G[2, c] += a2
            G[3, c] += a3
            G[0, c + 1] += b0
            G[1, c + 1] += b1
            G[2, c + 1] += b2
            G[3, c + 1] += b3
            c += 2
        if c < C:
            wa = w[c * p + j0 : c * p + j1]
            a0 = 0.0
            a1 = 0.0
            a2 = 0.0
            a3 = 0.0
            for j in range(m):
                u = wa[j]
                a0 += u * y0[j]
                a1 += u * y1[j]
                a2 += u * y2[j]
                a3 += u * y3[j]
            G[0, c] += a0
            G[1, c] += a1
            G[2, c] += a2
            G[3, c] += a3


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _update4(out, x0, x1, x2, x3, p, C, G):
    """out[c*p:(c+1)*p] += sum_r G[r, c] * x_r (rank-4 update, 2 classes at a time)."""
    for j0 in range(0, p, _JC):
        j1 = min(p, j0 + _JC)
        m = j1 - j0
        y0 = x0[j0:j1]
        y1 = x1[j0:j1]
        y2 = x2[j0:j1]
        y3 = x3[j0:j1]
        c = 0
        while c + 2 <= C:
            oa = out[c * p + j0 : c * p + j1]
            ob = out[(c + 1) * p + j0 : (c + 1) * p + j1]
            ga0 = G[0, c]
            ga1 = G[1, c]
            ga2 = G[2, c]
            ga3 = G[3, c]
            gb0 = G[0, c + 1]
            gb1 = G[1, c + 1]
            gb2 = G[2, c + 1]
            gb3 = G[3, c + 1]
            for j in range(m):
                t0 = y0[j]
                t1 = y1[j]
                t2 = y2[j]
                t3 = y3[j]
                oa[j] += (ga0 * t0 + ga1 * t1) + (ga2 * t2 + ga3 * t3)
                ob[j] += (gb0 * t0 + gb1 * t1) + (gb2 * t2 + gb3 * t3)
            c += 2
        if c < C:
            oa = out[c * p + j0 : c * p + j1]
            ga0 = G[0, c]
            ga1 = G[1, c]
            ga2 = G[2, c]
            ga3 = G[3, c]
            for j in range(m):
                oa[j] += (ga0 * y0[j] + ga1 * y1[j]) + (ga2 * y2[j] + ga3 * y3[j])


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _softmax_inplace(z, C, k):
    """Overwrite z[:C] with softmax(z) - onehot(k); return logsumexp(z) - z[k]."""
    m = z[0]
    for c in range(1, C):
        if z[c] > m:
            m = z[c]
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


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _lse_minus(z, C, k):
    """logsumexp(z[:C]) - z[k] (max-shifted), z unchanged."""
    m = z[0]
    for c in range(1, C):
        if z[c] > m:
            m = z[c]
    s = 0.0
    for c in range(C):
        s += np.exp(z[c] - m)
    return np.log(s) + (m - z[k])


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _argmax(z, C):
    k = 0
    m = z[0]
    for c in range(1, C):
        if z[c] > m:
            m = z[c]
            k = c
    return k


@njit(cache=True, fastmath=_FM, error_model="numpy")
def loss_sum(w, X, y, idx):
    """Sum over idx of per-example cross-entropy (no regulariser)."""
    C = _check(w, X, y, idx)
    p = X.shape[1]
    B = idx.shape[0]
    G = np.empty((4, C))
    total = 0.0
    q = 0
    while q + 4 <= B:
        _logits4(w, X[idx[q]], X[idx[q + 1]], X[idx[q + 2]], X[idx[q + 3]], p, C, G)
        for r in range(4):
            total += _lse_minus(G[r], C, _label(y[idx[q + r]], C))
        q += 4
    z = G[0]
    while q < B:
        i = idx[q]
        _logits(w, X[i], p, C, z)
        total += _lse_minus(z, C, _label(y[i], C))
        q += 1
    return total


@njit(cache=True, fastmath=_FM, error_model="numpy")
def grad_sum(w, X, y, idx, out):
    """out[:] = sum over idx of per-example gradients; return the loss sum."""
    C = _check(w, X, y, idx)
    p = X.shape[1]
    d = C * (p + 1)
    cp = C * p
    if out.shape[0] != d:
        raise ValueError("softmax: len(out) must equal len(w)")
    for j in range(d):
        out[j] = 0.0
    B = idx.shape[0]
    G = np.empty((4, C))  # logits, then residuals, for a block of 4 rows
    total = 0.0
    q = 0
    # blocks of 4 rows: each weight and output chunk is touched once per block
    while q + 4 <= B:
        i0 = idx[q]
        i1 = idx[q + 1]
        i2 = idx[q + 2]
        i3 = idx[q + 3]
        x0 = X[i0]
        x1 = X[i1]
        x2 = X[i2]
        x3 = X[i3]
        _logits4(w, x0, x1, x2, x3, p, C, G)
        total += _softmax_inplace(G[0], C, _label(y[i0], C))
        total += _softmax_inplace(G[1], C, _label(y[i1], C))
        total += _softmax_inplace(G[2], C, _label(y[i2], C))
        total += _softmax_inplace(G[3], C, _label(y[i3], C))
        for c in range(C):
            out[cp + c] += (G[0, c] + G[1, c]) + (G[2, c] + G[3, c])
        _update4(out, x0, x1, x2, x3, p, C, G)
        q += 4
    # remaining rows one at a time
    z = G[0]
    while q < B:
        i = idx[q]
        x = X[i]
        _logits(w, x, p, C, z)
        total += _softmax_inplace(z, C, _label(y[i], C))
        for c in range(C):
            g = z[c]
            oc = out[c * p : (c + 1) * p]
            out[cp + c] += g
            for j in range(p):
                oc[j] += g * x[j]
        q += 1
    return total


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _write_row(o, x, z, p, C):
    cp = C * p
    for c in range(C):
        g = z[c]
        oc = o[c * p : (c + 1) * p]
        for j in range(p):
            oc[j] = g * x[j]
        o[cp + c] = g


@njit(cache=True, fastmath=_FM, error_model="numpy")
def per_example_grads(w, X, y, idx, out):
    """out[q, :] = gradient of example idx[q]; out is float64 [len(idx), C*(p+1)]."""
    C = _check(w, X, y, idx)
    p = X.shape[1]
    B = idx.shape[0]
    if out.shape[0] != B or out.shape[1] != C * (p + 1):
        raise ValueError("softmax: out must have shape (len(idx), len(w))")
    G = np.empty((4, C))
    q = 0
    while q + 4 <= B:
        _logits4(w, X[idx[q]], X[idx[q + 1]], X[idx[q + 2]], X[idx[q + 3]], p, C, G)
        for r in range(4):
            i = idx[q + r]
            _softmax_inplace(G[r], C, _label(y[i], C))
            _write_row(out[q + r], X[i], G[r], p, C)
        q += 4
    z = G[0]
    while q < B:
        i = idx[q]
        x = X[i]
        _logits(w, x, p, C, z)
        _softmax_inplace(z, C, _label(y[i], C))
        _write_row(out[q], x, z, p, C)
        q += 1


@njit(cache=True, fastmath=_FM, error_model="numpy")
def correct_count(w, X, y, idx):
    """Number of rows whose argmax logit (first on ties) equals the label."""
    C = _check(w, X, y, idx)
    p = X.shape[1]
    B = idx.shape[0]
    G = np.empty((4, C))
    cnt = 0
    q = 0
    while q + 4 <= B:
        _logits4(w, X[idx[q]], X[idx[q + 1]], X[idx[q + 2]], X[idx[q + 3]], p, C, G)
        for r in range(4):
            if _argmax(G[r], C) == y[idx[q + r]]:
                cnt += 1
        q += 4
    z = G[0]
    while q < B:
        i = idx[q]
        _logits(w, X[i], p, C, z)
        if _argmax(z, C) == y[i]:
            cnt += 1
        q += 1
    return cnt
