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
Losses/gradients are the DATA term only (no regulariser).  Scratch buffers are
allocated once per call.  Rows are processed 4 at a time through the first layer
(register-blocked, as in softmax.py).

NOTE: the dense-layer helpers below are deliberately duplicated from softmax.py
instead of imported: Numba's on-disk cache only watches the defining file, so a
cross-module import could keep running stale machine code after an edit.

Floating-point flags: ``contract``/``reassoc``/``nsz`` only (never nnan/ninf):
NaN and Inf propagate.
"""

import numpy as np
from numba import njit

_FM = {"contract", "reassoc", "nsz"}

# Feature chunk (elements) for the blocked first layer: 4 rows x 512 doubles = 16 KiB.
_JC = 512


@njit(cache=True, error_model="numpy")
def _check(w, X, y, idx, H):
    """Validate shapes and indices; return the number of classes C."""
    n, p = X.shape
    if H < 1:
        raise ValueError("mlp: n_hidden must be >= 1")
    rest = w.shape[0] - H * (p + 1)
    if rest <= 0 or rest % (H + 1) != 0 or rest // (H + 1) < 2:
        raise ValueError("mlp: len(w) must be H*(n_features+1) + C*(H+1) with C >= 2")
    C = rest // (H + 1)
    if y.shape[0] != n:
        raise ValueError("mlp: len(y) must equal the number of rows of X")
    bad = False
    for q in range(idx.shape[0]):
        i = idx[q]
        bad |= (i < 0) | (i >= n)
    if bad:
        raise IndexError("mlp: batch index out of range")
    return C


@njit(cache=True, error_model="numpy")
def _label(yi, C):
    if not (yi >= 0.0 and yi < C):
        raise ValueError("mlp: label outside 0..n_classes-1")
    return int(yi)


# ---- dense-layer helpers (copied from softmax.py; keep in sync) ----


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _logits(w, x, p, C, z):
    """z[c] = W[c].x + b[c] for one row (W = first C*p entries of w, b follows)."""
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


# ---- MLP head -----------------------------------------------------------


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _forward_head(w, p, H, C, a, h, z):
    """h = tanh(a); z = W2 h + b2 (one row)."""
    o2 = H * (p + 1)
    ob2 = o2 + C * H
    for k in range(H):
        h[k] = np.tanh(a[k])
    for c in range(C):
        w2c = w[o2 + c * H : o2 + (c + 1) * H]
        acc = 0.0
        for k in range(H):
            acc += w2c[k] * h[k]
        z[c] = acc + w[ob2 + c]


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _backward_head(w, p, H, C, a, h, z, out):
    """Given z = softmax - onehot: out[W2, b2] += z h^T, z; a <- dLoss/d(pre-activation)."""
    o2 = H * (p + 1)
    ob2 = o2 + C * H
    for k in range(H):
        a[k] = 0.0
    for c in range(C):
        g = z[c]
        out[ob2 + c] += g
        w2c = w[o2 + c * H : o2 + (c + 1) * H]
        g2c = out[o2 + c * H : o2 + (c + 1) * H]
        for k in range(H):
            g2c[k] += g * h[k]
            a[k] += g * w2c[k]
    for k in range(H):
        a[k] *= 1.0 - h[k] * h[k]


@njit(cache=True, fastmath=_FM, error_model="numpy")
def loss_sum(w, X, y, idx, n_hidden):
    """Sum over idx of per-example cross-entropy (no regulariser)."""
    H = n_hidden
    C = _check(w, X, y, idx, H)
    p = X.shape[1]
    B = idx.shape[0]
    A = np.empty((4, H))
    Hb = np.empty(H)
    z = np.empty(C)
    total = 0.0
    q = 0
    while q + 4 <= B:
        _logits4(w, X[idx[q]], X[idx[q + 1]], X[idx[q + 2]], X[idx[q + 3]], p, H, A)
        for r in range(4):
            _forward_head(w, p, H, C, A[r], Hb, z)
            total += _lse_minus(z, C, _label(y[idx[q + r]], C))
        q += 4
    while q < B:
        i = idx[q]
        _logits(w, X[i], p, H, A[0])
        _forward_head(w, p, H, C, A[0], Hb, z)
        total += _lse_minus(z, C, _label(y[i], C))
        q += 1
    return total


@njit(cache=True, fastmath=_FM, error_model="numpy")
def grad_sum(w, X, y, idx, out, n_hidden):
    """out[:] = sum over idx of per-example gradients; return the loss sum."""
    H = n_hidden
    C = _check(w, X, y, idx, H)
    p = X.shape[1]
    d = w.shape[0]
    if out.shape[0] != d:
        raise ValueError("mlp: len(out) must equal len(w)")
    for j in range(d):
        out[j] = 0.0
    ob1 = H * p
    B = idx.shape[0]
    A = np.empty((4, H))  # pre-activations, then their gradients
    Hb = np.empty(H)
    z = np.empty(C)
    total = 0.0
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
        _logits4(w, x0, x1, x2, x3, p, H, A)
        for r in range(4):
            _forward_head(w, p, H, C, A[r], Hb, z)
            total += _softmax_inplace(z, C, _label(y[idx[q + r]], C))
            _backward_head(w, p, H, C, A[r], Hb, z, out)
        for k in range(H):
            out[ob1 + k] += (A[0, k] + A[1, k]) + (A[2, k] + A[3, k])
        _update4(out, x0, x1, x2, x3, p, H, A)
        q += 4
    a = A[0]
    while q < B:
        i = idx[q]
        x = X[i]
        _logits(w, x, p, H, a)
        _forward_head(w, p, H, C, a, Hb, z)
        total += _softmax_inplace(z, C, _label(y[i], C))
        _backward_head(w, p, H, C, a, Hb, z, out)
        for k in range(H):
            g = a[k]
            out[ob1 + k] += g
            ok = out[k * p : (k + 1) * p]
            for j in range(p):
                ok[j] += g * x[j]
        q += 1
    return total


@njit(cache=True, fastmath=_FM, error_model="numpy")
def per_example_grads(w, X, y, idx, out, n_hidden):
    """out[q, :] = gradient of example idx[q]; out is float64 [len(idx), len(w)]."""
    H = n_hidden
    C = _check(w, X, y, idx, H)
    p = X.shape[1]
    d = w.shape[0]
    B = idx.shape[0]
    if out.shape[0] != B or out.shape[1] != d:
        raise ValueError("mlp: out must have shape (len(idx), len(w))")
    ob1 = H * p
    o2 = H * (p + 1)
    a = np.empty(H)
    Hb = np.empty(H)
    z = np.empty(C)
    for q in range(B):
        i = idx[q]
        x = X[i]
        o = out[q]
        _logits(w, x, p, H, a)
        _forward_head(w, p, H, C, a, Hb, z)
        _softmax_inplace(z, C, _label(y[i], C))
        for j in range(o2, d):
            o[j] = 0.0
        _backward_head(w, p, H, C, a, Hb, z, o)
        for k in range(H):
            g = a[k]
            o[ob1 + k] = g
            ok = o[k * p : (k + 1) * p]
            for j in range(p):
                ok[j] = g * x[j]


@njit(cache=True, fastmath=_FM, error_model="numpy")
def correct_count(w, X, y, idx, n_hidden):
    """Number of rows whose argmax logit (first on ties) equals the label."""
    H = n_hidden
    C = _check(w, X, y, idx, H)
    p = X.shape[1]
    B = idx.shape[0]
    A = np.empty((4, H))
    Hb = np.empty(H)
    z = np.empty(C)
    cnt = 0
    q = 0
    while q + 4 <= B:
        _logits4(w, X[idx[q]], X[idx[q + 1]], X[idx[q + 2]], X[idx[q + 3]], p, H, A)
        for r in range(4):
            _forward_head(w, p, H, C, A[r], Hb, z)
            if _argmax(z, C) == y[idx[q + r]]:
                cnt += 1
        q += 4
    while q < B:
        i = idx[q]
        _logits(w, X[i], p, H, A[0])
        _forward_head(w, p, H, C, A[0], Hb, z)
        if _argmax(z, C) == y[i]:
            cnt += 1
        q += 1
    return cnt
