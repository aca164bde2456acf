"""Linear models with one output, ``z = x.w[:p] + w[p]``: the batched loops shared by
``logistic`` and ``least_squares`` (Numba, serial, no Python objects).

Layout: ``w = [weights (p), bias]`` so ``d = p + 1``.  A model supplies its link/loss
as an njit function passed as an argument (Numba compiles one specialisation per
function and inlines it):

* ``link(z, yi) -> (loss, dLoss/dz)`` for ``grad_sum`` and ``per_example_grads``
  (the gradient of an example is ``dLoss/dz * [x, 1]``);
* ``f(z, yi) -> float`` summed over the batch by ``row_sum``: the loss for
  ``loss_sum``, 1.0 or 0.0 (prediction equals yi) for ``correct_count``.

Performance: rows are processed 4 at a time (4 dot products sharing each load of
``w``, then one rank-4 update of ``out``), which keeps several rows' memory traffic in
flight and cuts loads/stores of ``w``/``out`` by 4; the 4 margins and residuals stay
in registers.  (``dense.py`` is the same layer for C outputs; with one output these
register-resident loops are 10-25% faster on small hot batches, hence this module.)

The kernels here are ``inline="always"``: a compiled function that receives another
function as an argument cannot be written to Numba's on-disk cache, so each model
module's own ``@njit(cache=True)`` kernels inline them with the link fixed.
"""

from numba import njit

from .dense import FM, check_batch, dot1, dot4


@njit(cache=True, error_model="numpy")
def check(w, X, y, idx):
    if w.shape[0] != X.shape[1] + 1:
        raise ValueError("len(w) must be n_features + 1")
    check_batch(X, y, idx)


@njit(inline="always")
def row_sum(w, X, y, idx, f):
    """Sum over idx of f(z, yi): ``loss_sum`` with f a loss, ``correct_count`` with f a
    0/1 hit."""
    check(w, X, y, idx)
    p = X.shape[1]
    B = idx.shape[0]
    wv = w[:p]
    b = w[p]
    total = 0.0
    q = 0
    while q + 4 <= B:
        i0, i1, i2, i3 = idx[q], idx[q + 1], idx[q + 2], idx[q + 3]
        a0, a1, a2, a3 = dot4(wv, X[i0], X[i1], X[i2], X[i3], p)
        total += (f(a0 + b, y[i0]) + f(a1 + b, y[i1])) + (f(a2 + b, y[i2]) + f(a3 + b, y[i3]))
        q += 4
    while q < B:
        i = idx[q]
        x = X[i]
        total += f(dot1(wv, x, p) + b, y[i])
        q += 1
    return total


@njit(inline="always")
def _rows4(wv, b, X, y, idx, q, p, link):
    """Rows idx[q..q+3]: their feature rows, summed loss and dloss/dz, in one pass."""
    i0, i1, i2, i3 = idx[q], idx[q + 1], idx[q + 2], idx[q + 3]
    x0, x1, x2, x3 = X[i0], X[i1], X[i2], X[i3]
    a0, a1, a2, a3 = dot4(wv, x0, x1, x2, x3, p)
    l0, r0 = link(a0 + b, y[i0])
    l1, r1 = link(a1 + b, y[i1])
    l2, r2 = link(a2 + b, y[i2])
    l3, r3 = link(a3 + b, y[i3])
    return x0, x1, x2, x3, (l0 + l1) + (l2 + l3), r0, r1, r2, r3


@njit(inline="always")
def grad_sum(w, X, y, idx, out, link):
    """out[:] = sum over idx of per-example gradients; return the loss sum."""
    check(w, X, y, idx)
    p = X.shape[1]
    if out.shape[0] != p + 1:
        raise ValueError("len(out) must be n_features + 1")
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
        x0, x1, x2, x3, loss, r0, r1, r2, r3 = _rows4(wv, b, X, y, idx, q, p, link)
        total += loss
        gb += (r0 + r1) + (r2 + r3)
        for j in range(p):
            ov[j] += (r0 * x0[j] + r1 * x1[j]) + (r2 * x2[j] + r3 * x3[j])
        q += 4
    while q < B:
        i = idx[q]
        x = X[i]
        loss, r = link(dot1(wv, x, p) + b, y[i])
        total += loss
        gb += r
        for j in range(p):
            ov[j] += r * x[j]
        q += 1
    out[p] = gb
    return total


@njit(cache=True, fastmath=FM, error_model="numpy")
def _write_grad(o, x, r, p):
    for j in range(p):
        o[j] = r * x[j]
    o[p] = r


@njit(inline="always")
def per_example_grads(w, X, y, idx, out, link):
    """out[q, :] = gradient of example idx[q]; out is float64 [len(idx), p + 1]."""
    check(w, X, y, idx)
    p = X.shape[1]
    B = idx.shape[0]
    if out.shape[0] != B or out.shape[1] != p + 1:
        raise ValueError("out must have shape (len(idx), n_features + 1)")
    wv = w[:p]
    b = w[p]
    q = 0
    while q + 4 <= B:
        # each row is written out right after its dot product, while it is in cache
        a = dot4(wv, X[idx[q]], X[idx[q + 1]], X[idx[q + 2]], X[idx[q + 3]], p)
        for r in range(4):
            i = idx[q + r]
            _write_grad(out[q + r], X[i], link(a[r] + b, y[i])[1], p)
        q += 4
    while q < B:
        i = idx[q]
        x = X[i]
        _write_grad(out[q], x, link(dot1(wv, x, p) + b, y[i])[1], p)
        q += 1


@njit(inline="always")
def pair_grads(w, X, y, idx, mean_out, diffs_out, link):
    """In one pass over idx (B rows): mean_out[:] = mean per-example gradient (zeros if
    B == 0), diffs_out[q, :] = grad(idx[2q]) - grad(idx[2q + 1]) for q < B // 2 (an odd
    last row counts in the mean only); return the loss sum.  diffs_out is float64
    [B // 2, p + 1]; no scratch beyond registers."""
    check(w, X, y, idx)
    p = X.shape[1]
    B = idx.shape[0]
    if mean_out.shape[0] != p + 1:
        raise ValueError("len(mean_out) must be n_features + 1")
    if diffs_out.shape[0] != B // 2 or diffs_out.shape[1] != p + 1:
        raise ValueError("diffs_out must have shape (len(idx) // 2, n_features + 1)")
    wv = w[:p]
    b = w[p]
    mv = mean_out[:p]
    for j in range(p):
        mv[j] = 0.0
    total = 0.0
    gb = 0.0
    q = 0
    # blocks of 4 rows = 2 pairs (q stays even, so blocks never split a pair)
    while q + 4 <= B:
        x0, x1, x2, x3, loss, r0, r1, r2, r3 = _rows4(wv, b, X, y, idx, q, p, link)
        total += loss
        gb += (r0 + r1) + (r2 + r3)
        da = diffs_out[q // 2]
        db = diffs_out[q // 2 + 1]
        for j in range(p):
            t0 = r0 * x0[j]
            t1 = r1 * x1[j]
            t2 = r2 * x2[j]
            t3 = r3 * x3[j]
            mv[j] += (t0 + t1) + (t2 + t3)
            da[j] = t0 - t1
            db[j] = t2 - t3
        da[p] = r0 - r1
        db[p] = r2 - r3
        q += 4
    if q + 2 <= B:
        i0, i1 = idx[q], idx[q + 1]
        x0, x1 = X[i0], X[i1]
        l0, r0 = link(dot1(wv, x0, p) + b, y[i0])
        l1, r1 = link(dot1(wv, x1, p) + b, y[i1])
        total += l0 + l1
        gb += r0 + r1
        da = diffs_out[q // 2]
        for j in range(p):
            t0 = r0 * x0[j]
            t1 = r1 * x1[j]
            mv[j] += t0 + t1
            da[j] = t0 - t1
        da[p] = r0 - r1
        q += 2
    if q < B:  # odd last row: the mean only
        i = idx[q]
        x = X[i]
        loss, r = link(dot1(wv, x, p) + b, y[i])
        total += loss
        gb += r
        for j in range(p):
            mv[j] += r * x[j]
    mean_out[p] = gb
    if B > 0:
        s = 1.0 / B
        for j in range(p + 1):
            mean_out[j] *= s
    return total
