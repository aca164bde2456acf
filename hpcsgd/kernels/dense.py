"""One dense layer with C outputs over a batch of rows, and the batched kernels of the
models built on it: ``softmax`` (the layer, then softmax cross-entropy) and ``mlp``
(the layer with C = H hidden units, then tanh, a second dense layer and softmax
cross-entropy; the second layer's parameters follow the first one's in ``w``).
(Numba, serial, no Python objects.)

The layer's parameters are ``[W (C x p, row-major), b (C)]`` (``C * (p + 1)``
entries); it maps a row x to ``z = W x + b``.  The batched loops live here once; a
model supplies its per-row functions, passed as arguments (Numba compiles one
specialisation per function and inlines it), and ``ctx``, a tuple of whatever else
they need (``()`` when nothing):

* ``loss_row(z, yi, ctx) -> loss`` and ``hit_row(z, yi, ctx) -> 1.0 if the
  prediction is yi else 0.0``, summed by ``row_sum`` (both may overwrite z);
* ``grad_row(z, yi, o, ctx) -> loss`` overwrites z with dLoss/dz and adds the
  gradient of any parameters after the first layer into ``o`` (the gradient vector,
  or one row of the per-example output, whose entries past the first layer are
  zeroed first), for ``grad_sum`` and ``per_example_grads``.

The kernels that take row functions are ``inline="always"``: a compiled function that
receives another function as an argument cannot be written to Numba's on-disk cache,
so each model module's own ``@njit(cache=True)`` kernels inline them instead.

Performance: rows go through the layer 4 at a time and features in chunks of
``_JC``, so each weight chunk is loaded once per 4 rows and each gradient chunk is
updated once per 4 rows (register-blocked dot products, then one rank-4 update),
while the rows' bytes are in cache.  (One-output models use ``linear.py``, whose
margins and residuals stay in registers.)

Floating-point flags: ``FM`` = ``contract``/``reassoc``/``nsz`` only (never
nnan/ninf), used by every kernel: NaN and Inf propagate.
"""

import numpy as np
from numba import njit

# Safe subset of fast-math: never "nnan"/"ninf" (NaN/Inf must propagate).
FM = {"contract", "reassoc", "nsz"}

# Feature chunk (elements) for the blocked loops: 4 rows x 512 doubles = 16 KiB.
_JC = 512


# ---- validation --------------------------------------------------------------------


@njit(cache=True, error_model="numpy")
def check_batch(X, y, idx):
    """Raise unless len(y) equals the number of rows of X and every idx is a row."""
    n = X.shape[0]
    if y.shape[0] != n:
        raise ValueError("len(y) must equal the number of rows of X")
    bad = False
    for q in range(idx.shape[0]):
        i = idx[q]
        bad |= (i < 0) | (i >= n)
    if bad:
        raise IndexError("batch index out of range")


@njit(cache=True, fastmath=FM, error_model="numpy")
def dot1(wv, x, p):
    """wv.x over the first p entries."""
    a = 0.0
    for j in range(p):
        a += wv[j] * x[j]
    return a


@njit(cache=True, fastmath=FM, error_model="numpy")
def dot4(wv, x0, x1, x2, x3, p):
    """(wv.x0, wv.x1, wv.x2, wv.x3) over the first p entries, in one pass over wv."""
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


# ---- the layer: forward and gradient, one row or four ------------------------------


@njit(cache=True, fastmath=FM, error_model="numpy")
def forward1(w, x, p, C, z):
    """z[c] = W[c].x + b[c] for one row."""
    cp = C * p
    for c in range(C):
        z[c] = dot1(w[c * p : (c + 1) * p], x, p) + w[cp + c]


@njit(cache=True, fastmath=FM, error_model="numpy")
def forward4(w, x0, x1, x2, x3, p, C, G):
    """G[r, c] = W[c].x_r + b[c] for 4 rows: register-blocked 4 rows x 2 outputs."""
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
            a0, a1, a2, a3 = dot4(w[c * p + j0 : c * p + j1], y0, y1, y2, y3, m)
            G[0, c] += a0
            G[1, c] += a1
            G[2, c] += a2
            G[3, c] += a3


@njit(cache=True, fastmath=FM, error_model="numpy")
def grad_add1(out, x, p, C, z):
    """out[W] += z x^T, out[b] += z (one row; z = dLoss/dz)."""
    cp = C * p
    for c in range(C):
        g = z[c]
        out[cp + c] += g
        oc = out[c * p : (c + 1) * p]
        for j in range(p):
            oc[j] += g * x[j]


@njit(cache=True, fastmath=FM, error_model="numpy")
def grad_add4(out, x0, x1, x2, x3, p, C, G):
    """out[W] += sum_r G[r] x_r^T, out[b] += sum_r G[r] (rank-4 update, 2 outputs at a time)."""
    cp = C * p
    for c in range(C):
        out[cp + c] += (G[0, c] + G[1, c]) + (G[2, c] + G[3, c])
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


# ---- generic kernels (see the module docstring for the row functions) --------------


@njit(inline="always")
def row_sum(w, X, y, idx, C, row_fn, ctx):
    """Sum over idx of row_fn(z, yi, ctx), z the row's layer output (may be overwritten).

    ``loss_sum`` is row_sum with a loss per row, ``correct_count`` with a 0/1 hit."""
    check_batch(X, y, idx)
    p = X.shape[1]
    B = idx.shape[0]
    G = np.empty((4, C))
    total = 0.0
    q = 0
    while q + 4 <= B:
        forward4(w, X[idx[q]], X[idx[q + 1]], X[idx[q + 2]], X[idx[q + 3]], p, C, G)
        for r in range(4):
            total += row_fn(G[r], y[idx[q + r]], ctx)
        q += 4
    z = G[0]
    while q < B:
        i = idx[q]
        forward1(w, X[i], p, C, z)
        total += row_fn(z, y[i], ctx)
        q += 1
    return total


@njit(inline="always")
def _rows4(w, X, idx, q, p, C, G):
    """Rows idx[q..q+3]: their ids and feature rows, with the first layer in G."""
    i0, i1, i2, i3 = idx[q], idx[q + 1], idx[q + 2], idx[q + 3]
    x0, x1, x2, x3 = X[i0], X[i1], X[i2], X[i3]
    forward4(w, x0, x1, x2, x3, p, C, G)
    return i0, i1, i2, i3, x0, x1, x2, x3


@njit(inline="always")
def grad_sum(w, X, y, idx, out, C, grad_row, ctx):
    """out[:] = sum over idx of per-example gradients; return the loss sum."""
    check_batch(X, y, idx)
    d = w.shape[0]
    if out.shape[0] != d:
        raise ValueError("len(out) must equal len(w)")
    for j in range(d):
        out[j] = 0.0
    p = X.shape[1]
    B = idx.shape[0]
    G = np.empty((4, C))  # first-layer outputs, then their gradients, for 4 rows
    total = 0.0
    q = 0
    # blocks of 4 rows: each weight and gradient chunk is touched once per block
    while q + 4 <= B:
        i0, i1, i2, i3, x0, x1, x2, x3 = _rows4(w, X, idx, q, p, C, G)
        total += (grad_row(G[0], y[i0], out, ctx) + grad_row(G[1], y[i1], out, ctx)) + (
            grad_row(G[2], y[i2], out, ctx) + grad_row(G[3], y[i3], out, ctx)
        )
        grad_add4(out, x0, x1, x2, x3, p, C, G)
        q += 4
    # remaining rows one at a time
    z = G[0]
    while q < B:
        i = idx[q]
        x = X[i]
        forward1(w, x, p, C, z)
        total += grad_row(z, y[i], out, ctx)
        grad_add1(out, x, p, C, z)
        q += 1
    return total


@njit(inline="always")
def _example_grad(o, x, yi, p, C, z, grad_row, ctx):
    """o[:] = gradient of one example, given its first-layer output z."""
    for j in range(C * (p + 1), o.shape[0]):
        o[j] = 0.0
    grad_row(z, yi, o, ctx)
    cp = C * p
    for c in range(C):
        g = z[c]
        oc = o[c * p : (c + 1) * p]
        for j in range(p):
            oc[j] = g * x[j]
        o[cp + c] = g


@njit(inline="always")
def per_example_grads(w, X, y, idx, out, C, grad_row, ctx):
    """out[q, :] = gradient of example idx[q]; out is float64 [len(idx), len(w)]."""
    check_batch(X, y, idx)
    p = X.shape[1]
    B = idx.shape[0]
    if out.shape[0] != B or out.shape[1] != w.shape[0]:
        raise ValueError("out must have shape (len(idx), len(w))")
    G = np.empty((4, C))
    q = 0
    while q + 4 <= B:
        forward4(w, X[idx[q]], X[idx[q + 1]], X[idx[q + 2]], X[idx[q + 3]], p, C, G)
        for r in range(4):
            i = idx[q + r]
            _example_grad(out[q + r], X[i], y[i], p, C, G[r], grad_row, ctx)
        q += 4
    z = G[0]
    while q < B:
        i = idx[q]
        forward1(w, X[i], p, C, z)
        _example_grad(out[q], X[i], y[i], p, C, z, grad_row, ctx)
        q += 1


@njit(cache=True, fastmath=FM, error_model="numpy")
def _pair_layer(o, x0, x1, p, C, z0, z1):
    """o[W] = z0 x0^T - z1 x1^T, o[b] = z0 - z1 (first-layer gradient difference)."""
    cp = C * p
    for c in range(C):
        g0 = z0[c]
        g1 = z1[c]
        oc = o[c * p : (c + 1) * p]
        for j in range(p):
            oc[j] = g0 * x0[j] - g1 * x1[j]
        o[cp + c] = g0 - g1


@njit(cache=True, fastmath=FM, error_model="numpy")
def _pair_tail(mean, o, t, k0):
    """mean[k0:] += o[k0:] + t[k0:]; o[k0:] -= t[k0:] (parameters past the first layer)."""
    for j in range(k0, o.shape[0]):
        a = o[j]
        b = t[j]
        mean[j] += a + b
        o[j] = a - b


@njit(inline="always")
def _pair_rows(o, t, mean, x0, y0, x1, y1, p, C, z0, z1, grad_row, ctx):
    """One pair, given both rows' first-layer outputs z0, z1: o[:] = grad0 - grad1 and
    mean[past the first layer] += grad0 + grad1 (the caller adds the first layer's
    part from z0, z1, which now hold dLoss/dz); t is scratch of len(o).  Returns the
    two losses' sum."""
    k0 = C * (p + 1)
    for j in range(k0, o.shape[0]):
        o[j] = 0.0
        t[j] = 0.0
    loss = grad_row(z0, y0, o, ctx) + grad_row(z1, y1, t, ctx)
    _pair_tail(mean, o, t, k0)
    _pair_layer(o, x0, x1, p, C, z0, z1)
    return loss


@njit(cache=True, fastmath=FM, error_model="numpy")
def scale(v, s):
    """v *= s."""
    for j in range(v.shape[0]):
        v[j] *= s


@njit(inline="always")
def pair_grads(w, X, y, idx, mean_out, diffs_out, C, grad_row, ctx):
    """In one pass over idx (B rows): mean_out[:] = mean per-example gradient (zeros if
    B == 0), diffs_out[q, :] = grad(idx[2q]) - grad(idx[2q + 1]) for q < B // 2 (an odd
    last row counts in the mean only); return the loss sum.  diffs_out is float64
    [B // 2, len(w)]; scratch is O(len(w)), no per-example matrix is formed."""
    check_batch(X, y, idx)
    d = w.shape[0]
    B = idx.shape[0]
    if mean_out.shape[0] != d:
        raise ValueError("len(mean_out) must equal len(w)")
    if diffs_out.shape[0] != B // 2 or diffs_out.shape[1] != d:
        raise ValueError("diffs_out must have shape (len(idx) // 2, len(w))")
    for j in range(d):
        mean_out[j] = 0.0
    p = X.shape[1]
    k0 = C * (p + 1)
    G = np.empty((4, C))  # first-layer outputs, then their gradients, for 4 rows
    t = np.empty(d)  # the second row's gradient past the first layer
    total = 0.0
    q = 0
    # blocks of 4 rows = 2 pairs (q stays even, so blocks never split a pair)
    while q + 4 <= B:
        i0, i1, i2, i3, x0, x1, x2, x3 = _rows4(w, X, idx, q, p, C, G)
        h = q // 2
        total += _pair_rows(diffs_out[h], t, mean_out, x0, y[i0], x1, y[i1], p, C, G[0], G[1], grad_row, ctx)
        total += _pair_rows(diffs_out[h + 1], t, mean_out, x2, y[i2], x3, y[i3], p, C, G[2], G[3], grad_row, ctx)
        grad_add4(mean_out, x0, x1, x2, x3, p, C, G)
        q += 4
    if q + 2 <= B:
        i0 = idx[q]
        i1 = idx[q + 1]
        x0 = X[i0]
        x1 = X[i1]
        z0 = G[0]
        z1 = G[1]
        forward1(w, x0, p, C, z0)
        forward1(w, x1, p, C, z1)
        total += _pair_rows(diffs_out[q // 2], t, mean_out, x0, y[i0], x1, y[i1], p, C, z0, z1, grad_row, ctx)
        grad_add1(mean_out, x0, p, C, z0)
        grad_add1(mean_out, x1, p, C, z1)
        q += 2
    if q < B:  # odd last row: the mean only
        i = idx[q]
        x = X[i]
        z = G[0]
        forward1(w, x, p, C, z)
        for j in range(k0, d):
            t[j] = 0.0
        total += grad_row(z, y[i], t, ctx)
        for j in range(k0, d):
            mean_out[j] += t[j]
        grad_add1(mean_out, x, p, C, z)
    if B > 0:
        scale(mean_out, 1.0 / B)
    return total
