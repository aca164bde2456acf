"""Gradient-balancing kernels for GraB, PairBalance and CD-GraB (ALGORITHMS.md section 1).

Every kernel checks the shapes and slot bounds it is given (O(1)) and raises ValueError
rather than index past an array's end (Numba does not bounds-check).

Running sums are float64 and no fastmath flag is used: a sign decision taken on a
reassociated or NaN-blind sum would silently change the order.

The sign kernels balance vectors c given as ``(v, w)``: c = v - w, formed on the fly
from a pair's two gradient rows (then no [Q, d] array of differences is written and
read back), or c = v when w is None (differences stored by the caller).  c[k] is the
same float64 either way and the dot sums in the same order, so both take the same signs.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload


def _term(v, w, k):
    """c[k] for c = v - w, or c = v when w is None."""


@overload(_term, inline="always")
def _term_impl(v, w, k):
    if isinstance(w, types.NoneType):
        return lambda v, w, k: v[k]
    return lambda v, w, k: v[k] - w[k]


_V4 = ir.VectorType(ir.DoubleType(), 4)
_V4F = ir.VectorType(ir.FloatType(), 4)


def _vector(a, dtypes=(types.float64,)):
    return isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and a.dtype in dtypes


@intrinsic
def _lane_sums(typingctx, s, v, w):
    """(a0, a1, a2, a3), a_r = the sum, in increasing k, of s[k] * c[k] over the k < 4 *
    (len(s) // 4) with k % 4 == r: four independent partial sums of <s, c>.

    One <4 x double> accumulator whose lane r takes exactly the adds a scalar a_r would,
    so the sums are bit-identical to four scalar ones, at a quarter of the instructions.
    Written by hand because Numba turns LLVM's SLP vectoriser off and its loop
    vectoriser only vectorises a float sum it may reassociate.  Stored differences
    (w None) may be float32 (``order.pair_dtype``): each is widened to float64 exactly
    before it is used, so the sums are those of the float64 copy of the same values.
    """
    if not (_vector(s) and (_vector(w) or (isinstance(w, types.NoneType)
                                           and _vector(v, (types.float64, types.float32))))):
        return None
    narrow = v.dtype == types.float32
    sig = types.UniTuple(types.float64, 4)(s, v, w)

    def codegen(context, builder, sig, args):
        arrays = [context.make_array(t)(context, builder, a)
                  for t, a in zip(sig.args, args) if isinstance(t, types.Array)]
        n = builder.extract_value(arrays[0].shape, 0)
        four = ir.Constant(n.type, 4)
        acc = cgutils.alloca_once_value(builder, ir.Constant(_V4, None))  # +0.0 lanes
        with cgutils.for_range(builder, builder.sdiv(n, four)) as loop:
            k = builder.mul(loop.index, four)

            def load(a, narrow=False):
                p = builder.gep(a.data, [k], inbounds=True)
                if narrow:  # four float32, widened exactly
                    return builder.fpext(builder.load(builder.bitcast(p, _V4F.as_pointer()), align=4), _V4)
                return builder.load(builder.bitcast(p, _V4.as_pointer()), align=8)

            c = load(arrays[1], narrow)
            if len(arrays) == 3:
                c = builder.fsub(c, load(arrays[2]))
            builder.store(builder.fadd(builder.load(acc), builder.fmul(load(arrays[0]), c)), acc)
        total = builder.load(acc)
        lanes = [builder.extract_element(total, ir.Constant(ir.IntType(32), r)) for r in range(4)]
        return context.make_tuple(builder, sig.return_type, lanes)

    return sig, codegen


@njit(inline="always")
def _dot(s, v, w):
    # Four independent partial sums in a fixed order: the CPU overlaps them (one chain
    # would wait on every add), and the result stays deterministic without fastmath.
    n = s.size
    a0, a1, a2, a3 = _lane_sums(s, v, w)
    for k in range(n - n % 4, n):
        a0 += s[k] * _term(v, w, k)
    return (a0 + a1) + (a2 + a3)


@njit(inline="always")
def _add_scaled(s, v, w, sign):
    for k in range(s.size):
        s[k] += sign * _term(v, w, k)


@njit(inline="always")
def _balance(s, v, w):
    """The sign of c: +1 when <s, c> <= 0 (then s += c), else -1 (s -= c)."""
    if _dot(s, v, w) <= 0.0:
        _add_scaled(s, v, w, 1.0)
        return 1
    _add_scaled(s, v, w, -1.0)
    return -1


@njit(cache=True, error_model="numpy")
def cd_grab_signs(s, diffs, eps):
    """Coordinated signs: pair index q outer, worker j inner, one shared running sum.

    s: float64 [d], updated in place; diffs: pair differences g_a - g_b, float64 or
    float32, as one [M, Q, d] array or a tuple of M [Q, d] arrays (the master's result
    buffers, read where they arrived); eps: int8 [M, Q], written: +1 when <s, c> <= 0
    (then s += c), else -1 (s -= c).
    """
    M, Q = eps.shape[0], eps.shape[1]
    if len(diffs) != M:
        raise ValueError("cd_grab_signs: diffs must hold M = eps.shape[0] workers' pairs")
    for j in range(M):
        if diffs[j].shape[0] != Q or diffs[j].shape[1] != s.size:
            raise ValueError("cd_grab_signs: each worker's diffs must have shape (eps.shape[1], len(s))")
    for q in range(Q):
        for j in range(M):
            eps[j, q] = _balance(s, diffs[j][q], None)


@njit(cache=True, error_model="numpy")
def pair_signs(s, diffs, eps):
    """PairBalance on one worker: the same rule with one worker (diffs [Q, d], eps [Q])."""
    if diffs.shape[1] != s.size or eps.size != diffs.shape[0]:
        raise ValueError("pair_signs: diffs must have shape (len(eps), len(s))")
    for q in range(diffs.shape[0]):
        c = diffs[q]
        eps[q] = _balance(s, c, None)


@njit(cache=True, error_model="numpy")
def pair_row_signs(s, rows, eps):
    """pair_signs for the differences c_q = rows[2q] - rows[2q + 1] of consecutive
    gradient rows [2Q, d], without materialising them (eps [Q])."""
    if rows.shape[0] != 2 * eps.size or rows.shape[1] != s.size:
        raise ValueError("rows must have shape (2 * len(eps), len(s))")
    for q in range(eps.size):
        eps[q] = _balance(s, rows[2 * q], rows[2 * q + 1])


@njit(cache=True)
def place_pairs(next_perm, first, second, eps, left, right):
    """Put pair q's examples at both ends of the next order: eps=+1 keeps (a, b) as
    (next[left+q], next[right-q]), eps=-1 swaps them.  Returns the new (left, right)."""
    Q = eps.size
    if first.size != Q or second.size != Q or left < 0 or right >= next_perm.size or 2 * Q > right - left + 1:
        raise ValueError("place_pairs: first, second and eps must have one length Q and 2Q slots "
                         "must be free between left and right")
    for q in range(eps.size):
        if eps[q] > 0:
            next_perm[left + q] = first[q]
            next_perm[right - q] = second[q]
        else:
            next_perm[left + q] = second[q]
            next_perm[right - q] = first[q]
    return left + eps.size, right - eps.size


@njit(cache=True)
def grab_balance(s, mean, acc, grads, ids, next_perm, left, right):
    """GraB mean balance on one worker for the examples ``ids`` with gradients ``grads``.

    acc accumulates the RAW gradients (the next epoch's stale mean); the balancing uses
    the centred c = g - mean.  Returns the new (left, right).
    """
    d = s.size
    if mean.size != d or acc.size != d or grads.shape[1] != d or grads.shape[0] != ids.size:
        raise ValueError("grab_balance: grads must have shape (len(ids), len(s)), mean and acc len(s)")
    if left < 0 or right >= next_perm.size or ids.size > right - left + 1:
        raise ValueError("grab_balance: len(ids) slots must be free between left and right")
    c = np.empty(d)
    for t in range(ids.size):
        g = grads[t]
        dot = 0.0
        for k in range(d):
            acc[k] += g[k]
            c[k] = g[k] - mean[k]
            dot += s[k] * c[k]
        if dot <= 0.0:
            for k in range(d):
                s[k] += c[k]
            next_perm[left] = ids[t]
            left += 1
        else:
            for k in range(d):
                s[k] -= c[k]
            next_perm[right] = ids[t]
            right -= 1
    return left, right
