"""Gradient-balancing kernels for GraB, PairBalance and CD-GraB (ALGORITHMS.md section 1).

Running sums are float64 and no fastmath flag is used: a sign decision taken on a
reassociated or NaN-blind sum would silently change the order.
"""

import numpy as np
from numba import njit


@njit(cache=True)
def _dot(s, v):
    # Four independent partial sums in a fixed order: the CPU overlaps them (one chain
    # would wait on every add), and the result stays deterministic without fastmath.
    n = s.size
    a0 = a1 = a2 = a3 = 0.0
    k = 0
    while k + 4 <= n:
        a0 += s[k] * v[k]
        a1 += s[k + 1] * v[k + 1]
        a2 += s[k + 2] * v[k + 2]
        a3 += s[k + 3] * v[k + 3]
        k += 4
    while k < n:
        a0 += s[k] * v[k]
        k += 1
    return (a0 + a1) + (a2 + a3)


@njit(cache=True)
def _add_scaled(s, v, sign):
    for k in range(s.size):
        s[k] += sign * v[k]


@njit(cache=True)
def cd_grab_signs(s, diffs, eps):
    """Coordinated signs: pair index q outer, worker j inner, one shared running sum.

    s: float64 [d], updated in place; diffs: [M, Q, d] pair differences g_a - g_b;
    eps: int8 [M, Q], written: +1 when <s, c> <= 0 (then s += c), else -1 (s -= c).
    """
    M, Q = diffs.shape[0], diffs.shape[1]
    for q in range(Q):
        for j in range(M):
            c = diffs[j, q]
            if _dot(s, c) <= 0.0:
                _add_scaled(s, c, 1.0)
                eps[j, q] = 1
            else:
                _add_scaled(s, c, -1.0)
                eps[j, q] = -1


@njit(cache=True)
def pair_signs(s, diffs, eps):
    """PairBalance on one worker: the same rule with one worker (diffs [Q, d], eps [Q])."""
    for q in range(diffs.shape[0]):
        c = diffs[q]
        if _dot(s, c) <= 0.0:
            _add_scaled(s, c, 1.0)
            eps[q] = 1
        else:
            _add_scaled(s, c, -1.0)
            eps[q] = -1


@njit(cache=True)
def place_pairs(next_perm, first, second, eps, left, right):
    """Put pair q's examples at both ends of the next order: eps=+1 keeps (a, b) as
    (next[left+q], next[right-q]), eps=-1 swaps them.  Returns the new (left, right)."""
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
