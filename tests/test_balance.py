"""Balancing orders against plain-Python references written here from ALGORITHMS.md."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from hpcsgd.kernels.balance import _dot, cd_grab_signs, pair_row_signs, pair_signs
from hpcsgd.ordering import make_ordering
from hpcsgd.ordering.herding import herding_rounds, unit_vectors

# ---------------------------------------------------------------- references


def ref_grab(perm, Z, epochs):
    """GraB on one worker; Z[e][i] is example i's gradient in epoch e."""
    n = len(perm)
    mu = np.zeros(Z.shape[2])
    perms = [list(perm)]
    for e in range(epochs):
        s, acc = np.zeros_like(mu), np.zeros_like(mu)
        nxt, L, R = [None] * n, 0, n - 1
        for i in perms[-1]:
            g = Z[e][i]
            acc = acc + g
            c = g - mu
            if s @ c <= 0:
                s, nxt[L], L = s + c, i, L + 1
            else:
                s, nxt[R], R = s - c, i, R - 1
        mu = acc / n
        perms.append(nxt)
    return perms


def ref_pair(perm, Z, epochs):
    n = len(perm)
    perms = [list(perm)]
    for e in range(epochs):
        s = np.zeros(Z.shape[2])
        nxt, L, R = [None] * n, 0, n - 1
        p = perms[-1]
        for q in range(n // 2):
            a, b = p[2 * q], p[2 * q + 1]
            c = Z[e][a] - Z[e][b]
            if s @ c <= 0:
                s, nxt[L], nxt[R] = s + c, a, b
            else:
                s, nxt[L], nxt[R] = s - c, b, a
            L, R = L + 1, R - 1
        if n % 2:
            nxt[L] = p[-1]
        perms.append(nxt)
    return perms


def ref_dot(s, c):
    """<s, c> in plain Python floats as the kernels sum it: four partial sums over
    k mod 4 in increasing k (a trailing d % 4 into the first), then paired."""
    d, part = len(s), [0.0] * 4
    for k in range(d - d % 4):
        part[k % 4] += float(s[k]) * float(c[k])
    for k in range(d - d % 4, d):
        part[0] += float(s[k]) * float(c[k])
    return (part[0] + part[1]) + (part[2] + part[3])


def ref_pair_signs(s, rows):
    """The pair sign pass in plain Python floats, operation for operation: c = a - b,
    sign +1 when <s, c> <= 0 else -1, s += sign * c.  Returns (s, eps)."""
    s, eps = [float(x) for x in s], []
    for a, b in zip(rows[0::2], rows[1::2]):
        c = [float(x) - float(y) for x, y in zip(a, b)]
        sign = 1.0 if ref_dot(s, c) <= 0.0 else -1.0
        s = [x + sign * y for x, y in zip(s, c)]
        eps.append(int(sign))
    return np.array(s), np.array(eps, dtype=np.int8)


def ref_cd_grab(perms0, Z, epochs, B):
    """CD-GraB with the loop order of the paper: step, then pair q outer, worker j inner."""
    M, n = len(perms0), len(perms0[0])
    history = [[list(p) for p in perms0]]
    for e in range(epochs):
        s = np.zeros(Z.shape[3])
        nxt = [[None] * n for _ in range(M)]
        L, R = 0, n - 1
        cur = history[-1]
        for start in range(0, n - n % 2, B):
            Q = min(B, n - n % 2 - start) // 2
            for q in range(Q):
                for j in range(M):
                    a, b = cur[j][start + 2 * q], cur[j][start + 2 * q + 1]
                    c = Z[e][j][a] - Z[e][j][b]
                    if s @ c <= 0:
                        s = s + c
                        nxt[j][L + q], nxt[j][R - q] = a, b
                    else:
                        s = s - c
                        nxt[j][L + q], nxt[j][R - q] = b, a
            L, R = L + Q, R - Q
        if n % 2:
            for j in range(M):
                nxt[j][L] = cur[j][-1]
        history.append(nxt)
    return history


def run(order, Z, epochs, B):
    """Drive an ordering with fixed per-epoch gradients Z[e][j][i]; its orders per epoch."""
    return run_batches(order, Z, epochs, [B])


def run_batches(order, Z, epochs, sizes):
    """``run`` with batch sizes cycling through ``sizes``, which may be odd (an example
    then waits for the next step) or 0; the last batch of an epoch may be shorter."""
    out = []
    for e in range(epochs + 1):
        perms = order.next_epoch()
        out.append([list(p) for p in perms])
        if e == epochs:
            break
        start, t = 0, 0
        while start < perms[0].size:
            b = sizes[t % len(sizes)]
            order.step([Z[e][j][p[start:start + b]] for j, p in enumerate(perms)])
            start, t = start + b, t + 1
    return out


def gradients(epochs, M, n, d, seed=0):
    return np.random.default_rng(seed).standard_normal((epochs, M, n, d))

# ---------------------------------------------------------------- exact orders


@pytest.mark.parametrize("n, B", [(12, 4), (11, 3), (9, 1), (10, 10)])
def test_grab_matches_reference(n, B):
    Z = gradients(4, 2, n, 5)
    got = run(make_ordering("grab", [n, n], seed=1), Z, 3, B)
    for j in range(2):
        want = ref_grab(got[0][j], Z[:, j], 3)
        assert [g[j] for g in got] == want


@pytest.mark.parametrize("n, B", [(12, 4), (11, 2), (9, 1), (8, 8)])
def test_pair_matches_reference(n, B):
    Z = gradients(4, 3, n, 4)
    got = run(make_ordering("pair", [n] * 3, seed=2), Z, 3, B)
    for j in range(3):
        assert [g[j] for g in got] == ref_pair(got[0][j], Z[:, j], 3)


@pytest.mark.parametrize("n", [13, 14])
def test_pair_with_odd_batches_carries_an_example_across_steps(n):
    # d = 37: four-lane sums plus a tail; the batches leave an example pending (and an
    # empty step keeps it pending) at many points of the epoch
    Z = gradients(4, 2, n, 37, seed=14)
    got = run_batches(make_ordering("pair", [n, n], seed=7), Z, 3, [3, 1, 0, 5, 2, 1])
    for j in range(2):
        assert [g[j] for g in got] == ref_pair(got[0][j], Z[:, j], 3)


def test_pair_state_saved_with_an_example_pending_continues_exactly():
    Z = gradients(3, 1, 11, 9, seed=16)
    a, b = make_ordering("pair", [11], seed=2), make_ordering("pair", [11], seed=2)
    for e in range(3):
        perm = a.next_epoch()[0]
        assert np.array_equal(perm, b.next_epoch()[0])
        for start in range(0, 11, 3):
            a.step([Z[e][0][perm[start:start + 3]]])
            b.step([Z[e][0][perm[start:start + 3]]])
            if b.pending_id[0] >= 0:
                b2 = make_ordering("pair", [11], seed=99)
                b2.load_state_dict(b.state_dict())
                b = b2
    assert np.array_equal(a.next_epoch()[0], b.next_epoch()[0])
    assert a.s[0].tobytes() == b.s[0].tobytes()


@njit
def kernel_dot(s, v, w):
    return _dot(s, v, w)


@pytest.mark.parametrize("d", [0, 1, 2, 3, 4, 5, 7, 8, 9, 13, 64, 1001])
def test_dot_sums_in_the_reference_order(d):
    # mixed magnitudes, so that other orders (one chain, BLAS, 8 partial sums) give
    # other low bits for most d
    rng = np.random.default_rng(d)
    s, a, b = rng.standard_normal((3, d)) * 10.0 ** rng.integers(-2, 2, (3, d))
    assert kernel_dot(s, a, b) == ref_dot(s, a - b)
    assert kernel_dot(s, a, None) == ref_dot(s, a)


@pytest.mark.parametrize("d", [0, 1, 3, 4, 5, 8, 11, 37])
def test_pair_sign_kernels_are_bit_identical_to_the_reference(d):
    rng = np.random.default_rng(d)
    rows = rng.standard_normal((10, d)) * 10.0 ** rng.integers(-30, 30, (10, d))
    if d:
        rows[6, d // 2] = np.inf  # inf - inf and 0 * inf: NaN sums take the -1 branch
        rows[7, d // 2] = np.inf
        rows[8, 0] = -0.0
    s0 = rng.standard_normal(d)

    def same(x, y):  # bitwise, NaN payloads aside
        x, y = np.where(np.isnan(x), np.nan, x), np.where(np.isnan(y), np.nan, y)
        return x.tobytes() == y.tobytes()

    with np.errstate(invalid="ignore"):
        want_s, want_eps = ref_pair_signs(s0, rows)
        diffs = rows[0::2] - rows[1::2]
    s, eps = s0.copy(), np.empty(5, dtype=np.int8)
    pair_row_signs(s, rows, eps)  # from the rows: differences formed on the fly
    assert same(s, want_s) and np.array_equal(eps, want_eps)
    s, eps = s0.copy(), np.empty(5, dtype=np.int8)
    pair_signs(s, diffs, eps)  # stored differences
    assert same(s, want_s) and np.array_equal(eps, want_eps)
    s, eps = s0.copy(), np.empty((1, 5), dtype=np.int8)
    cd_grab_signs(s, diffs[None], eps)
    assert same(s, want_s) and np.array_equal(eps[0], want_eps)


@pytest.mark.parametrize("d", [0, 1, 3, 4, 5, 8, 11, 37, 1001])
def test_cd_grab_signs_take_float32_differences_and_per_worker_buffers(d):
    # order.pair_dtype = float32: every difference is widened exactly, so the signs and
    # the float64 sum are the reference's on the float64 copy of the same values; a tuple
    # of per-worker [Q, d] buffers (the master's result buffers) gives the stacked result
    rng = np.random.default_rng(100 + d)
    diffs = (rng.standard_normal((3, 4, d)) * 10.0 ** rng.integers(-3, 3, (3, 4, d))).astype(np.float32)
    s0 = rng.standard_normal(d)
    interleaved = np.zeros((2 * 12, d))  # rows 2q, 2q+1 with row 2q - row 2q+1 = the difference
    interleaved[0::2] = diffs.astype(np.float64).transpose(1, 0, 2).reshape(12, d)
    want_s, want_eps = ref_pair_signs(s0, interleaved)
    for given in (diffs, tuple(diffs), diffs.astype(np.float64), tuple(diffs.astype(np.float64))):
        s, eps = s0.copy(), np.empty((3, 4), dtype=np.int8)
        cd_grab_signs(s, given, eps)
        assert s.tobytes() == want_s.tobytes()
        assert np.array_equal(eps.T.reshape(-1), want_eps)


def test_cd_grab_worker_pairs_carry_an_odd_example():
    n, d = 11, 6
    G = gradients(1, 1, n, d, seed=15)[0, 0]
    order = make_ordering("cd_grab", [n], seed=3)
    perm = order.next_epoch()[0]
    firsts, seconds, diffs, start = [], [], [], 0
    for b in [3, 0, 2, 1, 5]:
        first, second, c = order.visit_pairs(0, G[perm[start:start + b]])
        order.place(0, first, second, np.ones(first.size, dtype=np.int8))
        firsts.append(first)
        seconds.append(second)
        diffs.append(c)
        start += b
    a, b = perm[0:n - 1:2], perm[1:n - 1:2]
    assert np.array_equal(np.concatenate(firsts), a) and np.array_equal(np.concatenate(seconds), b)
    assert np.concatenate(diffs).tobytes() == (G[a] - G[b]).tobytes()
    assert list(order.next_epoch()[0]) == list(a) + [perm[-1]] + list(b[::-1])


@pytest.mark.parametrize("M, n, B", [(3, 12, 4), (4, 10, 2), (2, 9, 4), (5, 16, 16)])
def test_cd_grab_matches_reference(M, n, B):
    Z = gradients(4, M, n, 6, seed=3)
    got = run(make_ordering("cd_grab", [n] * M, seed=4), Z, 3, B)
    assert got == ref_cd_grab(got[0], Z, 3, B)


def test_cd_grab_with_one_worker_is_pair_balance():
    Z = gradients(5, 1, 14, 3, seed=5)
    assert run(make_ordering("cd_grab", [14], seed=6), Z, 4, 4) == \
        run(make_ordering("pair", [14], seed=6), Z, 4, 4)


@pytest.mark.parametrize("kind", ["pair", "cd_grab"])
def test_batch_one_pairs_consecutive_steps(kind):
    Z = gradients(3, 2, 10, 4, seed=7)
    assert run(make_ordering(kind, [10, 10], seed=8), Z, 2, 1) == \
        run(make_ordering(kind, [10, 10], seed=8), Z, 2, 2)


def test_step_pairs_equals_step():
    Z = gradients(3, 3, 8, 4, seed=9)
    a, b = make_ordering("cd_grab", [8] * 3, seed=1), make_ordering("cd_grab", [8] * 3, seed=1)
    for e in range(3):
        pa, pb = a.next_epoch(), b.next_epoch()
        assert all(np.array_equal(x, y) for x, y in zip(pa, pb))
        for start in range(0, 8, 4):
            g = np.stack([Z[e][j][p[start:start + 4]] for j, p in enumerate(pa)])
            a.step(g)
            b.step_pairs(g[:, 0::2] - g[:, 1::2])

# ---------------------------------------------------------------- properties


def test_pair_balance_ignores_a_constant_shift():
    Z = gradients(4, 2, 12, 5, seed=10)
    shifted = Z + np.random.default_rng(0).standard_normal(5) * 100
    assert run(make_ordering("pair", [12, 12], seed=3), Z, 3, 4) == \
        run(make_ordering("pair", [12, 12], seed=3), shifted, 3, 4)


def test_grab_stale_mean_is_the_mean_of_raw_gradients():
    Z = gradients(3, 1, 10, 4, seed=11)
    order = make_ordering("grab", [10], seed=0)
    run(order, Z, 2, 5)  # two full epochs, then next_epoch() once more
    assert np.allclose(order.mean[0], Z[1, 0].mean(axis=0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["grab", "pair", "cd_grab"])
def test_state_dict_mid_epoch_continues_exactly(kind):
    Z = gradients(4, 2, 10, 3, seed=12)
    a = make_ordering(kind, [10, 10], seed=5)
    run(a, Z, 1, 2)  # one epoch done, second started
    perms = [p.copy() for p in a.perms]
    a.step([Z[1][j][p[0:4]] for j, p in enumerate(perms)])
    b = make_ordering(kind, [10, 10], seed=99)
    b.load_state_dict(a.state_dict())
    for order in (a, b):
        order.step([Z[1][j][p[4:10]] for j, p in enumerate(perms)])
    assert all(np.array_equal(x, y) for x, y in zip(a.next_epoch(), b.next_epoch()))


def test_every_order_is_a_permutation_and_missing_steps_are_caught():
    Z = gradients(3, 2, 7, 3, seed=13)
    for kind in ("grab", "pair", "cd_grab"):
        for perms in run(make_ordering(kind, [7, 7], seed=0), Z, 2, 3):
            for p in perms:
                assert sorted(p) == list(range(7))
        order = make_ordering(kind, [7, 7], seed=0)
        order.next_epoch()
        order.step([Z[0][j][:3] for j in range(2)])
        with pytest.raises(ValueError, match="feed every visited example"):
            order.next_epoch()
    with pytest.raises(ValueError, match="equal shard sizes"):
        make_ordering("cd_grab", [7, 8], seed=0)

# ---------------------------------------------------------------- herding bound


@pytest.mark.parametrize("M", [5, 20])
def test_herding_bound_cd_grab_beats_rr_and_independent_balance(M):
    n, d = 2000 if M == 5 else 500, 16
    Z = unit_vectors(M, n, d, seed=M)
    final = {kind: herding_rounds(make_ordering(kind, [n] * M, seed=1), Z, 11, batch=2)[-1]
             for kind in ("rr", "pair", "grab", "cd_grab")}
    assert final["cd_grab"] * 10 <= final["rr"], final
    assert final["cd_grab"] < final["pair"] and final["cd_grab"] < final["grab"], final
