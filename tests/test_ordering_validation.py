"""Orderings refuse bad input and bad states with a ValueError and change nothing, and
their states survive np.savez / np.load(allow_pickle=False) and the checkpoint's HDF5 tree."""

from __future__ import annotations

import io

import h5py
import numpy as np
import pytest

from hpcsgd.checkpoint import read_tree, write_tree
from hpcsgd.kernels.balance import cd_grab_signs, grab_balance, pair_row_signs, pair_signs, place_pairs
from hpcsgd.ordering import ORDERINGS, make_ordering

BALANCING = ("grab", "pair", "cd_grab")
KINDS = tuple(ORDERINGS)


def same_state(a: dict, b: dict) -> bool:
    """Key for key equal, arrays bit for bit (dtype and shape included)."""
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            return False
    return True


def sizes_for(kind: str) -> list[int]:
    return [11, 11] if kind == "cd_grab" else [11, 9]  # cd_grab needs equal shards


def gradients(epochs: int, sizes: list[int], d: int, seed: int = 0) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal((n, d)) for n in sizes] for _ in range(epochs)]


def feed(order, Z_e, perms, start: int, stop: int) -> None:
    """Step with every worker's gradients of visit positions start..stop-1 (list form)."""
    order.step([Z_e[j][p[start:stop]] for j, p in enumerate(perms)])


def mid_epoch(kind: str, d: int = 4, seed: int = 0):
    """An ordering one epoch and 9 of 11 examples into the next (with B = 3, pair orders
    then hold an example waiting for its partner), its gradients and current perms."""
    sizes = sizes_for(kind)
    Z = gradients(4, sizes, d, seed)
    order = make_ordering(kind, sizes, seed=3)
    perms = order.next_epoch()
    for start in range(0, 11, 3):
        feed(order, Z[0], perms, start, start + 3)
    perms = order.next_epoch()
    for start in range(0, 9, 3):
        feed(order, Z[1], perms, start, start + 3)
    return order, Z, perms


def finish(order, Z, perms) -> list[list[np.ndarray]]:
    """Feed the rest of epoch 2 and all of epoch 3; the orders produced on the way."""
    feed(order, Z[1], perms, 9, 11)
    out = [order.next_epoch()]
    for start in range(0, 11, 4):
        feed(order, Z[2], out[-1], start, start + 4)
    out.append(order.next_epoch())
    return out


def assert_continues_like(a, b, Z, perms) -> None:
    for x, y in zip(finish(a, Z, perms), finish(b, Z, perms)):
        assert all(np.array_equal(p, q) for p, q in zip(x, y))
    assert same_state(a.state_dict(), b.state_dict())


# ---------------------------------------------------------------- the out-of-bounds read


def test_grab_refuses_rows_narrower_than_the_earlier_steps():
    # before the check, grab_balance read d = 5 values from rows of 3 (past the array's
    # end) and folded whatever followed into the running sum and the stale mean
    order = make_ordering("grab", [8], seed=0)
    perm = order.next_epoch()[0]
    G = np.random.default_rng(1).standard_normal((8, 5))
    order.step(G[None, perm[:2]])
    before = order.state_dict()
    narrower = r"\[1, B, 5\], d = 5 as in the earlier steps .*got an array of shape \(1, 2, 3\)"
    with pytest.raises(ValueError, match=narrower):
        order.step(G[None, perm[2:4], :3])
    with pytest.raises(ValueError, match=r"must have shape \[B, 5\], got shape \(2, 3\)"):
        order.step([G[perm[2:4], :3]])
    assert same_state(order.state_dict(), before)


def test_kernels_refuse_shapes_that_would_index_past_an_end():
    s, rows, eps = np.zeros(5), np.ones((4, 3)), np.empty(2, dtype=np.int8)
    nxt, ids = np.full(6, -1, dtype=np.int64), np.arange(4, dtype=np.int64)
    with pytest.raises(ValueError, match="grab_balance: grads must have shape"):
        grab_balance(s, np.zeros(5), np.zeros(5), rows, ids, nxt, 0, 5)  # rows of 3, d = 5
    with pytest.raises(ValueError, match="grab_balance: grads must have shape"):
        grab_balance(s, np.zeros(5), np.zeros(5), np.ones((3, 5)), ids, nxt, 0, 5)  # 3 rows, 4 ids
    with pytest.raises(ValueError, match="len\\(ids\\) slots must be free"):
        grab_balance(s, np.zeros(5), np.zeros(5), np.ones((4, 5)), ids, nxt, 3, 5)  # 3 slots left
    with pytest.raises(ValueError, match="len\\(ids\\) slots must be free"):
        grab_balance(s, np.zeros(5), np.zeros(5), np.ones((4, 5)), ids, nxt, 0, 6)  # right past the end
    with pytest.raises(ValueError, match="pair_signs: diffs must have shape"):
        pair_signs(s, np.ones((2, 3)), eps)
    with pytest.raises(ValueError, match="pair_signs: diffs must have shape"):
        pair_signs(s, np.ones((3, 5)), eps)  # 3 pairs, 2 signs
    with pytest.raises(ValueError, match="rows must have shape"):
        pair_row_signs(s, rows, eps)
    with pytest.raises(ValueError, match="cd_grab_signs: each worker's diffs must have shape"):
        cd_grab_signs(s, np.ones((2, 2, 3)), np.empty((2, 2), dtype=np.int8))
    with pytest.raises(ValueError, match="cd_grab_signs: diffs must hold M"):
        cd_grab_signs(s, np.ones((2, 2, 5)), np.empty((1, 2), dtype=np.int8))
    with pytest.raises(ValueError, match="cd_grab_signs: each worker's diffs must have shape"):
        cd_grab_signs(s, (np.ones((2, 5)), np.ones((1, 5))), np.empty((2, 2), dtype=np.int8))
    first, second, signs = ids[:2], ids[2:], np.ones(2, dtype=np.int8)
    with pytest.raises(ValueError, match="place_pairs"):
        place_pairs(nxt, first, second[:1], signs, 0, 5)  # one second for two pairs
    with pytest.raises(ValueError, match="place_pairs"):
        place_pairs(nxt, first, second, signs, 2, 4)  # 3 free slots for 2 pairs
    with pytest.raises(ValueError, match="place_pairs"):
        place_pairs(nxt, first, second, signs, 0, 6)
    assert (nxt == -1).all() and (s == 0).all()
    assert place_pairs(nxt, first, second, signs, 1, 4) == (3, 2)  # exactly 4 free slots is fine
    assert nxt.tolist() == [-1, 0, 1, 3, 2, -1]


# ---------------------------------------------------------------- step() shapes


def bad_steps(kind: str, B: int, d: int):
    """(input, message pattern) pairs every balancing kind must refuse, for M = 2 workers
    of 11 examples at the start of an epoch, after steps of d = 4 (B = 3 here)."""
    rng = np.random.default_rng(0)
    G = rng.standard_normal((2, B, d))
    ragged = [[[1.0, 2.0], [3.0]], G[1]]
    return [
        (G[0], r"\[2, B, 4\].*got an array of shape \(3, 4\); is the worker axis missing"),
        (G[None], r"\[2, B, 4\].*got an array of shape \(1, 2, 3, 4\)"),
        (G[:1], r"\[2, B, 4\].*got an array of shape \(1, 3, 4\)"),
        (np.concatenate([G, G[:1]]), r"got an array of shape \(3, 3, 4\)"),
        ([G[0]], r"\[2, B, 4\].*got a list of 1"),
        (G[:, :, :3], r"d = 4 as in the earlier steps.*got an array of shape \(2, 3, 3\)"),
        (np.concatenate([G, G], axis=2), r"got an array of shape \(2, 3, 8\)"),
        ([G[0], G[1, :, :3]], r"worker 2's gradients must have shape \[B, 4\], got shape \(3, 3\)"),
        ([G[0], G[1, 0]], r"worker 2's gradients must have shape \[B, 4\], got shape \(4,\)"),
        (ragged, r"worker 1's gradients must be a 2-D array"),
        (G.astype(complex), r"real numbers .* got dtype complex128"),
        (G.astype(object), r"real numbers .* got dtype object"),
        (np.full((2, B, d), "x"), r"real numbers .* got dtype <U1"),
        (np.concatenate([G] * 4, axis=1), r"visit 12 examples, but 11 of the epoch's 11 are left"),
        ("G", r"got str 'G'"),
        (None, r"got NoneType None"),
    ]


@pytest.mark.parametrize("kind", BALANCING)
def test_bad_gradients_are_refused_and_change_nothing(kind):
    sizes = [11, 11]
    order, twin = make_ordering(kind, sizes, seed=4), make_ordering(kind, sizes, seed=4)
    Z = gradients(2, sizes, 4, seed=5)
    for o in (order, twin):
        perms = o.next_epoch()
        for start in range(0, 11, 4):
            feed(o, Z[0], perms, start, start + 4)  # d = 4 is fixed; odd end leaves pending
        perms = o.next_epoch()
    for batch, pattern in bad_steps(kind, 3, 4):
        before = order.state_dict()
        with pytest.raises(ValueError, match=pattern):
            order.step(batch)
        assert same_state(order.state_dict(), before), pattern
    # and the refused calls left no trace: both go on identically
    for o in (order, twin):
        for start in range(0, 11, 3):
            feed(o, Z[1], perms, start, start + 3)
    assert all(np.array_equal(x, y) for x, y in zip(order.next_epoch(), twin.next_epoch()))
    assert same_state(order.state_dict(), twin.state_dict())


@pytest.mark.parametrize("kind", BALANCING)
def test_step_checks_before_the_first_epoch_and_the_first_step(kind):
    order = make_ordering(kind, [6], seed=0)
    with pytest.raises(ValueError, match=r"call next_epoch\(\) before step\(\)"):
        order.step(np.zeros((1, 2, 3)))
    order.next_epoch()
    missing_axis = r"\[1, B, d\], d >= 1 .*got an array of shape \(2, 3\); is the worker axis"
    with pytest.raises(ValueError, match=missing_axis):
        order.step(np.zeros((2, 3)))  # [B, d] for M = 1: never guessed
    with pytest.raises(ValueError, match=r"got an array of shape \(1, 2, 0\)"):
        order.step(np.zeros((1, 2, 0)))
    with pytest.raises(ValueError, match=r"visit 7 examples, but 6 of the epoch's 6 are left"):
        order.step(np.zeros((1, 7, 3)))
    assert order.dim == 0 and order.pos == [0]  # refused first steps fix no d
    order.step(np.zeros((1, 6, 3)))
    with pytest.raises(ValueError, match=r"visit 1 examples, but 0 of the epoch's 6 are left"):
        order.step(np.zeros((1, 1, 3)))


@pytest.mark.parametrize("kind", BALANCING)
def test_real_dtypes_and_strided_input_are_converted_exactly(kind):
    sizes = sizes_for(kind)
    Z = gradients(3, sizes, 6, seed=8)
    Z32 = [[g.astype(np.float32) for g in e] for e in Z]
    ref = make_ordering(kind, sizes, seed=1)
    conv = make_ordering(kind, sizes, seed=1)
    for e in range(2):
        perms, other = ref.next_epoch(), conv.next_epoch()
        for start in range(0, 11, 4):
            exact = [Z32[e][j][p[start:start + 4]].astype(np.float64) for j, p in enumerate(perms)]
            ref.step(exact)
            # float32, Fortran order, a strided view and an integer-typed list
            given = [np.asfortranarray(Z32[e][0][other[0][start:start + 4]]),
                     np.repeat(Z32[e][1][other[1][start:start + 4]], 2, axis=1)[:, ::2]]
            conv.step(given)
    assert same_state(ref.state_dict(), conv.state_dict())
    # integer gradients: the same as their float64 values
    ints, floats = make_ordering(kind, sizes, seed=2), make_ordering(kind, sizes, seed=2)
    for o in (ints, floats):
        perms = o.next_epoch()
    G = np.random.default_rng(0).integers(-5, 5, (2, 4, 6))
    ints.step(G)
    floats.step(G.astype(np.float64))
    assert same_state(ints.state_dict(), floats.state_dict())


@pytest.mark.parametrize("kind", BALANCING)
def test_non_finite_gradients_still_give_permutations_and_wear_off(kind):
    # values are not checked (documented): the orders stay permutations of the shard,
    # and once the gradients are finite again the sums are finite from the next epoch
    # on (pair orders) or the one after (GraB: its stale mean is NaN for one epoch)
    sizes = sizes_for(kind)
    Z = gradients(4, sizes, 4, seed=9)
    Z[0][0][3, 1], Z[0][1][5, 0], Z[0][0][2, 2] = np.nan, np.inf, -np.inf
    order = make_ordering(kind, sizes, seed=0)
    finite = []
    for e in range(4):
        perms = order.next_epoch()
        for p, n in zip(perms, sizes):
            assert np.array_equal(np.sort(p), np.arange(n))
        if e < 3:
            with np.errstate(invalid="ignore"):
                for start in range(0, 11, 4):
                    feed(order, Z[e], perms, start, start + 4)
            sums = [order.shared.s] if kind == "cd_grab" else order.s
            finite.append(all(np.isfinite(s).all() for s in sums))
    assert finite == ([False, False, True] if kind == "grab" else [False, True, True])


# ---------------------------------------------------------------- pairs


@pytest.mark.parametrize("kind", ["pair", "cd_grab"])
def test_bad_pair_differences_are_refused_and_change_nothing(kind):
    order = make_ordering(kind, [10, 10], seed=1)
    perms = order.next_epoch()
    Z = gradients(1, [10, 10], 3, seed=2)[0]
    G = np.stack([Z[j][p[:4]] for j, p in enumerate(perms)])
    order.step_pairs(G[:, 0::2] - G[:, 1::2])  # d = 3 fixed
    D = np.ones((2, 2, 3))
    pairs, step = order.step_pairs, order.step
    cases = [
        (pairs, D[:, :, 0], r"pair differences of shape \[M, Q, d\] = \[2, Q, 3\].*got an array of "
                            r"shape \(2, 2\)"),
        (pairs, D[:1], r"got an array of shape \(1, 2, 3\)"),
        (pairs, np.ones((2, 2, 4)), r"got an array of shape \(2, 2, 4\)"),
        (pairs, np.ones((2, 4, 3)), r"visit 8 examples, but 6 of the epoch's 10 are left"),
        (pairs, [D[0], D[1, :, :2]], r"worker 2's pair differences must have shape \[Q, 3\]"),
    ]
    if kind == "cd_grab":  # shared pointers: no worker may run ahead
        cases.append((pairs, [D[0], D[1, :1]], r"cd_grab moves all workers together.*\[\(2, 3\), \(1, 3\)\]"))
        cases.append((step, [Z[0][:2], Z[1][:3]], r"cd_grab moves all workers together"))
    for call, batch, pattern in cases:
        before = order.state_dict()
        with pytest.raises(ValueError, match=pattern):
            call(batch)
        assert same_state(order.state_dict(), before), pattern
    order.step([Z[0][perms[0][4:5]], Z[1][perms[1][4:5]]])  # one example each now waits
    before = order.state_dict()
    with pytest.raises(ValueError, match="needs whole pairs"):
        order.step_pairs(np.ones((2, 1, 3)))
    assert same_state(order.state_dict(), before)


def test_cd_grab_worker_calls_refuse_what_would_break_the_order():
    order = make_ordering("cd_grab", [8], seed=0, workers=[1])
    order.next_epoch()
    G = np.random.default_rng(0).standard_normal((8, 3))
    first, second, diffs = order.visit_pairs(0, G[:4])
    before = order.state_dict()
    with pytest.raises(ValueError, match=r"gradients must have shape \[b, 3\], got shape \(2, 2\)"):
        order.visit_pairs(0, G[:2, :2])
    with pytest.raises(ValueError, match=r"gradients must have shape \[b, 3\], got shape \(1, 2, 3\)"):
        order.visit_pairs(0, G[None, :2])
    with pytest.raises(ValueError, match="visit 6 examples, but 4 of the epoch's 8 are left"):
        order.visit_pairs(0, G[:6])
    with pytest.raises(ValueError, match="pair_ids\\(\\) visit 6 examples, but 4"):
        order.pair_ids(0, 6)
    with pytest.raises(ValueError, match="needs whole pairs"):
        order.pair_ids(0, 3)
    ones = np.ones(2, dtype=np.int8)
    with pytest.raises(ValueError, match="place_pairs: first, second and eps must have one length"):
        order.place(0, first, second[:1], ones)
    with pytest.raises(ValueError, match=r"place\(\) got 3 signs, but 2 visited pairs wait"):
        order.place(0, np.arange(3), np.arange(3), np.ones(3, dtype=np.int8))
    assert same_state(order.state_dict(), before)
    first2, second2, _ = order.visit_pairs(0, G[4:8])  # all 8 visited, the first 2 pairs placed next
    order.place(0, first, second, ones)
    before = order.state_dict()
    with pytest.raises(ValueError, match=r"2 visited pairs still wait for place\(\)"):
        order.next_epoch()
    assert same_state(order.state_dict(), before)
    order.place(0, first2, second2, -ones)
    with pytest.raises(ValueError, match=r"place\(\) got 1 signs, but 0 visited pairs"):
        order.place(0, first[:1], second[:1], ones[:1])
    nxt = order.next_epoch()[0]
    assert nxt.tolist() == [*first, *second2, *first2[::-1], *second[::-1]]


# ---------------------------------------------------------------- constructor


def test_constructor_refuses_bad_sizes_and_workers():
    with pytest.raises(ValueError, match="non-negative integer, got -1"):
        make_ordering("rr", [3, -1], seed=0)
    with pytest.raises(ValueError, match="non-negative integer, got 2.5"):
        make_ordering("grab", [2.5], seed=0)
    with pytest.raises(ValueError, match="at least one worker"):
        make_ordering("pair", [], seed=0)
    with pytest.raises(ValueError, match=r"distinct, got \[2, 2\]"):
        make_ordering("so", [3, 3], seed=0, workers=[2, 2])
    with pytest.raises(ValueError, match="one size per worker"):
        make_ordering("so", [3, 3], seed=0, workers=[1])


# ---------------------------------------------------------------- load_state_dict


def reference_state(kind: str) -> tuple:
    if kind in BALANCING:
        order, Z, perms = mid_epoch(kind)
    else:
        order = make_ordering(kind, sizes_for(kind), seed=3)
        order.next_epoch()
    return order, order.state_dict()


@pytest.mark.parametrize("kind", KINDS)
def test_load_refuses_another_kind_size_or_worker_set(kind):
    order, state = reference_state(kind)
    sizes = sizes_for(kind)
    other_kind = "rr" if kind != "rr" else "so"
    cases = [
        (make_ordering(other_kind, sizes, seed=0), f"is for kind '{kind}', this ordering is '{other_kind}'"),
        (make_ordering(kind, sizes + [sizes[-1]], seed=0), r"is for M = 2 workers .* has M = 3"),
        (make_ordering(kind, sizes[:1], seed=0), r"is for M = 2 workers .* has M = 1"),
        (make_ordering(kind, [12, 12], seed=0),
         rf"is for shard sizes \[{sizes[0]}, {sizes[1]}\], this ordering has \[12, 12\]"),
        (make_ordering(kind, sizes, seed=0, workers=[1, 3]),
         r"is for workers \[1, 2\], this ordering serves \[1, 3\]"),
    ]
    for target, pattern in cases:
        before = target.state_dict()
        with pytest.raises(ValueError, match=pattern):
            target.load_state_dict(state)
        assert same_state(target.state_dict(), before)


@pytest.mark.parametrize("kind", BALANCING)
def test_load_refuses_another_gradient_dimension(kind):
    _, state = reference_state(kind)  # d = 4
    target = make_ordering(kind, sizes_for(kind), seed=0)
    perms = target.next_epoch()
    feed(target, gradients(1, sizes_for(kind), 7)[0], perms, 0, 2)
    before = target.state_dict()
    with pytest.raises(ValueError, match="is for gradients of d = 4, this ordering has taken d = 7"):
        target.load_state_dict(state)
    assert same_state(target.state_dict(), before)


@pytest.mark.parametrize("kind", KINDS)
def test_load_refuses_a_damaged_state_naming_the_key(kind):
    _, state = reference_state(kind)
    target = make_ordering(kind, sizes_for(kind), seed=0)
    before = target.state_dict()
    for key, value in state.items():
        missing = {k: v for k, v in state.items() if k != key}
        with pytest.raises(ValueError, match=f"has no key '{key}'"):
            target.load_state_dict(missing)
        if isinstance(value, np.ndarray):
            damaged = np.concatenate([value, value[:1] if value.size else np.zeros(1, value.dtype)])
            wrong = [damaged, value.astype(str), value[None]]
        else:  # str or int: the other type, then a one-element array
            wrong = [1.5, [value]] if isinstance(value, int) else [3, np.array([value])]
        for bad in wrong:
            with pytest.raises(ValueError, match=f"'{key}'"):
                target.load_state_dict({**state, key: bad})
        assert same_state(target.state_dict(), before), key
    with pytest.raises(ValueError, match="mapping of names"):
        target.load_state_dict([("kind", kind)])
    target.load_state_dict(state)  # the undamaged state still loads
    assert same_state(target.state_dict(), state)


@pytest.mark.parametrize("kind", BALANCING)
def test_load_refuses_inconsistent_counters(kind):
    order, state = reference_state(kind)
    target = make_ordering(kind, sizes_for(kind), seed=0)
    n = 11
    perm = state["perm_1"]
    nxt = state["next_1"].copy()
    nxt[state["left_1"]] = perm[0]  # a slot between left and right filled
    doubled = state["next_1"].copy()
    doubled[0] = doubled[n - 1]  # an example placed twice
    cases = [({"left_1": state["left_1"] + 1}, "do not describe a partly built order"),
             ({"next_1": nxt}, "do not describe a partly built order"),
             ({"next_1": doubled}, "do not describe a partly built order"),
             ({"right_1": n}, r"'right_1' = 11 is outside -1..10"),
             ({"pos_1": n + 1}, r"'pos_1' = 12 is outside 0..11"),
             ({"perm_1": np.zeros(n, dtype=np.int64)}, "'perm_1' is not a permutation"),
             ({"rng_1": '{"bit_generator": "MT19937"}'}, "'rng_1' is not a PCG64 stream state"),
             ({"epoch": -1}, r"'epoch' = -1 is outside")]
    if kind == "grab":
        cases.append(({"pos_1": state["pos_1"] - 1}, "differs from the 'next_1' slots filled"))
    else:
        assert state["pending_id_1"] >= 0  # 9 visited: one waits
        cases.append(({"pending_id_1": int(perm[0])}, "is not the last visited example"))
        cases.append(({"pending_id_1": -1}, "disagree"))  # 9 visited cannot all be paired
    if kind == "cd_grab":
        cases.append(({"shared_s": np.zeros(3)}, r"'shared_s' has shape \(3,\), expected \(0,\) or \(4,\)"))
    before = target.state_dict()
    for change, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            target.load_state_dict({**state, **change})
        assert same_state(target.state_dict(), before), pattern


# ---------------------------------------------------------------- round trips


def started(kind: str):
    """An ordering part-way through its work (mid-epoch for the balancing orders) and
    what ``continues_alike`` needs to drive it on."""
    if kind in BALANCING:
        return mid_epoch(kind)
    a = make_ordering(kind, sizes_for(kind), seed=3)
    a.next_epoch()
    return a, None, None


def continues_alike(kind: str, a, b, Z, perms) -> None:
    if kind in BALANCING:
        assert_continues_like(a, b, Z, perms)
    else:
        for _ in range(3):
            assert all(np.array_equal(x, y) for x, y in zip(a.next_epoch(), b.next_epoch()))
    assert same_state(a.state_dict(), b.state_dict())


@pytest.mark.parametrize("kind", KINDS)
def test_state_survives_savez_and_load_without_pickle(kind, tmp_path):
    a, Z, perms = started(kind)
    state = a.state_dict()
    np.savez(tmp_path / "order.npz", **state)
    with np.load(tmp_path / "order.npz", allow_pickle=False) as saved:
        b = make_ordering(kind, sizes_for(kind), seed=99)
        b.load_state_dict(saved)
    assert same_state(b.state_dict(), state)
    continues_alike(kind, a, b, Z, perms)


@pytest.mark.parametrize("kind", KINDS)
def test_state_survives_the_engine_checkpoint_tree(kind):
    # as the engine stores it: the worker keeps its order stream apart, the rest goes
    # into /state/workers/worker_j of the HDF5 file; read back and rejoined on resume
    a, Z, perms = started(kind)
    state = a.state_dict()
    rest = dict(state)
    streams = {j: rest.pop(f"rng_{j}") for j in (1, 2)}
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        write_tree(f.create_group("worker"), rest)
    with h5py.File(buffer, "r") as f:
        back = read_tree(f["worker"])
    back.update((f"rng_{j}", text) for j, text in streams.items())
    b = make_ordering(kind, sizes_for(kind), seed=99)
    b.load_state_dict(back)
    assert same_state(b.state_dict(), state)
    continues_alike(kind, a, b, Z, perms)


@pytest.mark.parametrize("kind", BALANCING)
def test_a_fresh_state_loads_into_a_used_ordering(kind):
    # a state saved before any step knows no d: it is no conflict, it rewinds
    fresh = make_ordering(kind, sizes_for(kind), seed=3)
    state = fresh.state_dict()
    used, _, _ = mid_epoch(kind)
    used.load_state_dict(state)
    assert used.dim == 0 and same_state(used.state_dict(), state)


def test_grab_first_epoch_centres_by_a_zero_mean():
    Z = gradients(2, [6], 3, seed=4)
    order = make_ordering("grab", [6], seed=0)
    perm = order.next_epoch()[0]
    order.step([Z[0][0][perm[:3]]])
    assert order.mean[0].tobytes() == np.zeros(3).tobytes()  # no mean known in epoch 1
    order.step([Z[0][0][perm[3:]]])
    order.next_epoch()
    assert np.allclose(order.mean[0], Z[0][0].mean(axis=0), rtol=0, atol=1e-12)
