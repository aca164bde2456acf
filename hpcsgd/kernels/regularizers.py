"""Regulariser kernels (Numba, serial, no Python objects).

Every regulariser here acts on ALL entries of the flat parameter vector ``w``,
including bias entries; there is no per-layer or bias exemption.

* l2:        R(w) = (l2 / 2) * sum_i w_i^2                 grad = l2 * w
* nonconvex: R(w) = ncvx * sum_i w_i^2 / (1 + w_i^2)       grad = ncvx * 2 w / (1 + w^2)^2
* l1 is never part of a gradient: it is applied by the proximal step ``prox_l1``.

Floating-point flags: only ``contract`` (FMA), ``reassoc`` (vectorised sums) and
``nsz`` are enabled; ``nnan``/``ninf`` are NOT, so NaN and Inf propagate.
"""

from numba import njit

from .dense import FM


@njit(cache=True, fastmath=FM, error_model="numpy")
def reg_value(w, l2, ncvx):
    """Return (l2/2)*||w||^2 + ncvx * sum w_i^2/(1+w_i^2) over ALL entries of w."""
    s2 = 0.0
    sn = 0.0
    if ncvx != 0.0:
        for i in range(w.shape[0]):
            v2 = w[i] * w[i]
            s2 += v2
            sn += v2 / (1.0 + v2)
    else:
        for i in range(w.shape[0]):
            s2 += w[i] * w[i]
    return 0.5 * l2 * s2 + ncvx * sn


@njit(cache=True, fastmath=FM, error_model="numpy")
def reg_grad_add(w, l2, ncvx, scale, out):
    """out += scale * grad R(w), R as in ``reg_value`` (all entries of w)."""
    n = w.shape[0]
    if out.shape[0] != n:
        raise ValueError("reg_grad_add: out and w differ in length")
    a = scale * l2
    if ncvx != 0.0:
        b = 2.0 * scale * ncvx
        for i in range(n):
            v = w[i]
            den = 1.0 + v * v
            out[i] += a * v + b * v / (den * den)
    elif a != 0.0:
        for i in range(n):
            out[i] += a * w[i]


@njit(cache=True, fastmath=FM, error_model="numpy")
def mean_finish(w, l2, ncvx, inv_n, out):
    """One pass: out = inv_n * out + grad R(w); return R(w).

    Used to turn a gradient *sum* over a batch into the regularised mean gradient.
    """
    n = w.shape[0]
    if out.shape[0] != n:
        raise ValueError("mean_finish: out and w differ in length")
    s2 = 0.0
    sn = 0.0
    if ncvx != 0.0:
        b = 2.0 * ncvx
        for i in range(n):
            v = w[i]
            v2 = v * v
            den = 1.0 + v2
            s2 += v2
            sn += v2 / den
            out[i] = inv_n * out[i] + l2 * v + b * v / (den * den)
    elif l2 != 0.0:
        for i in range(n):
            v = w[i]
            s2 += v * v
            out[i] = inv_n * out[i] + l2 * v
    else:
        for i in range(n):
            out[i] *= inv_n
    return 0.5 * l2 * s2 + ncvx * sn


@njit(cache=True, fastmath=FM, error_model="numpy")
def prox_l1(w, t):
    """In place soft-threshold: w = sign(w) * max(|w| - t, 0) (all entries).

    NaN entries stay NaN.
    """
    for i in range(w.shape[0]):
        v = w[i]
        a = abs(v) - t
        if a > 0.0:
            w[i] = a if v > 0.0 else -a
        elif a <= 0.0:
            w[i] = 0.0
        else:  # a is NaN (w_i or t NaN): keep NaN
            w[i] = a
