"""Balancing orders against plain-Python references written here from ALGORITHMS.md."""

from __future__ import annotations

import numpy as np
import pytest

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
    out = []
    for e in range(epochs + 1):
        perms = order.next_epoch()
        out.append([list(p) for p in perms])
        if e == epochs:
            break
        n = perms[0].size
        for start in range(0, n, B):
            order.step([Z[e][j][p[start:start + B]] for j, p in enumerate(perms)])
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
