"""Serial tests for the Numba model kernels and hpcsgd.models.

Reference formulas are written here in plain NumPy, independently of the kernels.
Batches of 7 rows (with a repeat) exercise both the 4-row blocked path and the
1-row remainder path of the kernels; one wide case (p > 512) crosses the feature
chunk boundary of the blocked softmax/mlp kernels.
"""

import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcsgd.errors import UserError
from hpcsgd.models import MODEL_KINDS, make_model, prox_l1

# ----------------------------------------------------------------------------------
# independent NumPy references: return (loss_sum, grad_sum, per-example grads [B, d])
# ----------------------------------------------------------------------------------


def _softmax_xent(Z, yb):
    m = Z.max(axis=1, keepdims=True)
    E = np.exp(Z - m)
    S = E.sum(axis=1, keepdims=True)
    loss = np.log(S[:, 0]) + m[:, 0] - Z[np.arange(len(yb)), yb]
    P = E / S
    P[np.arange(len(yb)), yb] -= 1.0
    return loss, P


def ref_logistic(w, X, y, idx):
    p = X.shape[1]
    Xb, yb = X[idx], y[idx]
    z = Xb @ w[:p] + w[p]
    loss = np.logaddexp(0.0, z) - yb * z
    r = 0.5 * (1.0 + np.tanh(0.5 * z)) - yb  # sigmoid via tanh
    pex = np.hstack([r[:, None] * Xb, r[:, None]])
    return loss.sum(), pex.sum(0), pex


def ref_least_squares(w, X, y, idx):
    p = X.shape[1]
    Xb, yb = X[idx], y[idx]
    r = Xb @ w[:p] + w[p] - yb
    pex = np.hstack([r[:, None] * Xb, r[:, None]])
    return 0.5 * (r @ r), pex.sum(0), pex


def ref_softmax(w, X, y, idx, C):
    p = X.shape[1]
    W = w[: C * p].reshape(C, p)
    b = w[C * p :]
    Xb, yb = X[idx], y[idx].astype(np.int64)
    loss, P = _softmax_xent(Xb @ W.T + b, yb)
    pex = np.hstack([(P[:, :, None] * Xb[:, None, :]).reshape(len(idx), C * p), P])
    return loss.sum(), pex.sum(0), pex


def ref_mlp(w, X, y, idx, H, C):
    p = X.shape[1]
    W1 = w[: H * p].reshape(H, p)
    b1 = w[H * p : H * (p + 1)]
    o2 = H * (p + 1)
    W2 = w[o2 : o2 + C * H].reshape(C, H)
    b2 = w[o2 + C * H :]
    Xb, yb = X[idx], y[idx].astype(np.int64)
    Hh = np.tanh(Xb @ W1.T + b1)
    loss, dZ = _softmax_xent(Hh @ W2.T + b2, yb)
    dA = (dZ @ W2) * (1.0 - Hh**2)
    B = len(idx)
    pex = np.hstack(
        [
            (dA[:, :, None] * Xb[:, None, :]).reshape(B, H * p),
            dA,
            (dZ[:, :, None] * Hh[:, None, :]).reshape(B, C * H),
            dZ,
        ]
    )
    return loss.sum(), pex.sum(0), pex


def ref_predict(model, w, X, idx):
    """Predicted class per row (NumPy argmax), for correct_count."""
    p = X.shape[1]
    Xb = X[idx]
    if model.kind == "logistic":
        return (Xb @ w[:p] + w[p] > 0).astype(np.int64)
    if model.kind == "softmax":
        C = model.n_classes
        return np.argmax(Xb @ w[: C * p].reshape(C, p).T + w[C * p :], axis=1)
    H, C = model.hidden, model.n_classes
    o2 = H * (p + 1)
    Hh = np.tanh(Xb @ w[: H * p].reshape(H, p).T + w[H * p : o2])
    return np.argmax(Hh @ w[o2 : o2 + C * H].reshape(C, H).T + w[o2 + C * H :], axis=1)


def reference(model, w, X, y, idx):
    if model.kind == "logistic":
        return ref_logistic(w, X, y, idx)
    if model.kind == "least_squares":
        return ref_least_squares(w, X, y, idx)
    if model.kind == "softmax":
        return ref_softmax(w, X, y, idx, model.n_classes)
    return ref_mlp(w, X, y, idx, model.hidden, model.n_classes)


# ----------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------

CASES = {
    "logistic": dict(kind="logistic", p=5, C=2),
    "softmax3": dict(kind="softmax", p=4, C=3),
    "softmax4": dict(kind="softmax", p=6, C=4),
    "least_squares": dict(kind="least_squares", p=6, C=1),
    "mlp": dict(kind="mlp", p=5, C=3, H=5),
    "mlp_binary": dict(kind="mlp", p=4, C=2, H=3),
}


def make_problem(case, n=9, seed=0, wscale=0.5, **reg):
    rng = np.random.default_rng(seed)
    c = CASES[case] if isinstance(case, str) else case
    model = make_model(c["kind"], c["p"], c["C"], hidden=c.get("H", 32), **reg)
    X = rng.standard_normal((n, c["p"]))
    if c["kind"] == "least_squares":
        y = rng.standard_normal(n)
    else:
        y = rng.integers(0, model.n_classes, n).astype(np.float64)
    w = rng.normal(0.0, wscale, model.dim)
    return model, w, X, y


# 7 rows (one 4-block + 3 remainder rows), with a repeated index
IDX = np.array([3, 0, 7, 3, 5, 1, 8], dtype=np.int64)


def fd_grad(f, w, h=1e-5):
    g = np.empty_like(w)
    for k in range(w.size):
        wp, wm = w.copy(), w.copy()
        wp[k] += h
        wm[k] -= h
        g[k] = (f(wp) - f(wm)) / (2 * h)
    return g


# ----------------------------------------------------------------------------------
# gradients and losses
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_grad_matches_finite_differences(case):
    model, w, X, y = make_problem(case)
    g = np.empty(model.dim)
    loss = model.grad_sum(w, X, y, IDX, g)
    assert loss == pytest.approx(model.loss_sum(w, X, y, IDX), rel=1e-12)
    fd = fd_grad(lambda v: model.loss_sum(v, X, y, IDX), w)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("idx", [IDX, np.array([4], dtype=np.int64), np.arange(9, dtype=np.int64)[::-1].copy()])
def test_against_numpy_reference(case, idx):
    model, w, X, y = make_problem(case, seed=1)
    ref_loss, ref_g, ref_pex = reference(model, w, X, y, idx)
    g = np.full(model.dim, np.nan)  # grad_sum must overwrite, not accumulate
    loss = model.grad_sum(w, X, y, idx, g)
    assert loss == pytest.approx(ref_loss, rel=1e-12, abs=1e-12)
    assert model.loss_sum(w, X, y, idx) == pytest.approx(ref_loss, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(g, ref_g, rtol=1e-10, atol=1e-12)
    pex = np.full((len(idx), model.dim), np.nan)
    model.per_example_grads(w, X, y, idx, pex)
    np.testing.assert_allclose(pex, ref_pex, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(pex.sum(0), g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind,C", [("softmax", 3), ("softmax", 10), ("mlp", 3), ("logistic", 2), ("least_squares", 1)])
def test_wide_features_cross_chunk_boundary(kind, C):
    # p > 2 * 512 exercises the chunked inner loops of the blocked kernels
    case = dict(kind=kind, p=1100, C=C, H=3)
    model, w, X, y = make_problem(case, n=12, seed=2, wscale=0.03)
    idx = np.array([0, 11, 5, 5, 2, 9, 3, 1, 10], dtype=np.int64)
    ref_loss, ref_g, ref_pex = reference(model, w, X, y, idx)
    g = np.empty(model.dim)
    assert model.grad_sum(w, X, y, idx, g) == pytest.approx(ref_loss, rel=1e-11)
    np.testing.assert_allclose(g, ref_g, rtol=1e-9, atol=1e-11)
    pex = np.empty((len(idx), model.dim))
    model.per_example_grads(w, X, y, idx, pex)
    np.testing.assert_allclose(pex, ref_pex, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("case", [c for c in CASES if c != "least_squares"])
def test_correct_count_matches_numpy_argmax(case):
    model, w, X, y = make_problem(case, n=40, seed=3)
    idx = np.concatenate([np.arange(40), [0, 0, 7]]).astype(np.int64)
    pred = ref_predict(model, w, X, idx)
    expected = int(np.sum(pred == y[idx].astype(np.int64)))
    assert 0 < expected < len(idx)  # the check is not vacuous
    assert model.correct_count(w, X, y, idx) == expected
    assert model.accuracy(w, X, y, idx) == pytest.approx(expected / len(idx))


@pytest.mark.parametrize("case", [c for c in CASES if c != "least_squares"])
def test_ties_predict_the_first_class(case):
    # zero weights: all logits tie -> NumPy argmax picks class 0 (logistic: z = 0 -> class 0)
    model, w, X, y = make_problem(case, n=40, seed=9)
    idx = np.arange(40, dtype=np.int64)
    assert model.correct_count(np.zeros(model.dim), X, y, idx) == int(np.sum(y == 0))


def test_least_squares_has_no_accuracy():
    model, w, X, y = make_problem("least_squares")
    assert model.correct_count(w, X, y, IDX) == -1
    assert math.isnan(model.accuracy(w, X, y, IDX))


@pytest.mark.parametrize("case", list(CASES))
def test_mean_grad_includes_regulariser(case):
    model, w, X, y = make_problem(case, seed=4, l2=0.3, nonconvex=0.7)
    n = len(IDX)

    def objective(v):
        return model.loss_sum(v, X, y, IDX) / n + model.reg_value(v)

    g = np.full(model.dim, np.nan)
    val = model.mean_grad(w, X, y, IDX, g)
    assert val == pytest.approx(objective(w), rel=1e-12)
    np.testing.assert_allclose(g, fd_grad(objective, w), rtol=1e-6, atol=1e-7)
    # regulariser formula on all entries (biases included)
    expected_reg = 0.15 * np.sum(w**2) + 0.7 * np.sum(w**2 / (1 + w**2))
    assert model.reg_value(w) == pytest.approx(expected_reg, rel=1e-12)
    out = np.ones(model.dim)
    model.reg_grad_add(w, out, scale=2.0)
    np.testing.assert_allclose(out, 1.0 + 2.0 * (0.3 * w + 0.7 * 2 * w / (1 + w**2) ** 2), rtol=1e-12)


def test_prox_l1_soft_threshold():
    rng = np.random.default_rng(5)
    w = np.concatenate([rng.standard_normal(50), [0.0, -0.0, 0.3, -0.3, np.nan, np.inf, -np.inf]])
    for t in (0.0, 0.3, 0.7, 5.0):
        v = w.copy()
        prox_l1(v, t)
        np.testing.assert_array_equal(v, np.sign(w) * np.maximum(np.abs(w) - t, 0.0))


# ----------------------------------------------------------------------------------
# numerical robustness
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in CASES if c != "least_squares"])
def test_stable_for_huge_logits(case):
    model, w, X, y = make_problem(case, seed=6)
    w = w * 3000.0  # logits of order 1e3 and beyond
    loss = model.loss_sum(w, X, y, IDX)
    g = np.empty(model.dim)
    assert math.isfinite(loss) and loss >= 0.0
    assert model.grad_sum(w, X, y, IDX, g) == pytest.approx(loss, rel=1e-12)
    assert np.all(np.isfinite(g))
    ref_loss, ref_g, _ = reference(model, w, X, y, IDX)  # references are stable too
    assert loss == pytest.approx(ref_loss, rel=1e-9)
    np.testing.assert_allclose(g, ref_g, rtol=1e-9, atol=1e-9)


def test_logistic_exact_values_at_extremes():
    model = make_model("logistic", 1, 2)
    X = np.array([[1.0], [1.0], [1.0], [1.0]])
    y = np.array([1.0, 0.0, 1.0, 0.0])
    w = np.array([1000.0, 0.0])  # z = 1000 for every row
    losses = [model.loss_sum(w, X, y, np.array([i])) for i in range(4)]
    assert losses == [0.0, 1000.0, 0.0, 1000.0]
    w = np.array([40.0, 0.0])
    assert model.loss_sum(w, X, y, np.array([0])) == pytest.approx(math.exp(-40.0), rel=1e-12)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weights_propagate(case, bad):
    # no nnan/ninf fast-math: a NaN/Inf weight must surface in the loss
    model, w, X, y = make_problem(case, seed=7, l2=0.1, nonconvex=0.1)
    g = np.empty(model.dim)
    for pos in (0, model.dim - 1):  # a data weight and a bias
        v = w.copy()
        v[pos] = bad
        if bad == bad and model.kind == "mlp" and pos == 0:
            pass  # tanh saturates: an infinite first-layer weight gives a finite data loss
        else:
            for loss in (model.loss_sum(v, X, y, IDX), model.grad_sum(v, X, y, IDX, g)):
                assert math.isnan(loss) if bad != bad else not math.isfinite(loss)
        assert not math.isfinite(model.reg_value(v))
        assert not math.isfinite(model.mean_grad(v, X, y, IDX, g))


@pytest.mark.parametrize("case", list(CASES))
def test_nan_in_weights_gives_nan_gradient(case):
    model, w, X, y = make_problem(case, seed=8)
    w[0] = np.nan
    g = np.empty(model.dim)
    assert math.isnan(model.grad_sum(w, X, y, IDX, g))
    assert np.isnan(g).any()
    assert math.isnan(model.mean_grad(w, X, y, IDX, g))


# ----------------------------------------------------------------------------------
# interface
# ----------------------------------------------------------------------------------


def test_make_model_dims_and_errors():
    assert make_model("logistic", 7, 2).dim == 8
    assert make_model("softmax", 7, 3).dim == 24
    assert make_model("least_squares", 7, 0).n_classes == 1
    m = make_model("mlp", 7, 3, hidden=4)
    assert m.dim == 4 * 8 + 3 * 5 and m.n_classes == 3 and m.hidden == 4
    assert set(MODEL_KINDS) == {"logistic", "softmax", "least_squares", "mlp"}
    for args, kw in [
        (("logistic", 5, 3), {}),
        (("softmax", 5, 1), {}),
        (("mlp", 5, 1), {}),
        (("mlp", 5, 3), {"hidden": 0}),
        (("perceptron", 5, 2), {}),
        (("softmax", 0, 3), {}),
        (("softmax", 5, 3), {"l2": -1.0}),
        (("softmax", 5, 3), {"nonconvex": float("nan")}),
    ]:
        with pytest.raises(UserError) as e:
            make_model(*args, **kw)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind,C", [("logistic", 2), ("softmax", 3), ("least_squares", 1), ("mlp", 3)])
def test_init_params(kind, C):
    model = make_model(kind, 6, C, hidden=4)
    rng = np.random.default_rng(0)
    w = model.init_params(rng)
    assert w.shape == (model.dim,) and w.dtype == np.float64
    if kind == "mlp":
        W1 = w[:24]
        assert np.all(w[24:28] == 0) and np.all(w[-3:] == 0) and np.std(W1) > 0
    else:
        assert np.all(w == 0)
    assert np.all(model.init_params(rng, "zeros") == 0)
    assert np.all(model.init_params(rng, "ones") == 1)
    v = model.init_params(rng, "normal", scale=2.0)
    assert 0.5 < np.std(v) < 4.0
    a = model.init_params(np.random.default_rng(3), "normal")
    b = model.init_params(np.random.default_rng(3), "normal")
    np.testing.assert_array_equal(a, b)
    with pytest.raises(UserError):
        model.init_params(rng, "xavier")


def test_bad_indices_and_labels_raise():
    model, w, X, y = make_problem("softmax3")
    g = np.empty(model.dim)
    with pytest.raises(IndexError):
        model.grad_sum(w, X, y, np.array([0, 9], dtype=np.int64), g)
    with pytest.raises(IndexError):
        model.loss_sum(w, X, y, np.array([-1], dtype=np.int64))
    y2 = y.copy()
    y2[0] = 3.0
    with pytest.raises(ValueError):
        model.loss_sum(w, X, y2, np.array([0]))
    with pytest.raises(ValueError):
        model.grad_sum(w, X, y, IDX, np.empty(model.dim + 1))
    with pytest.raises(TypeError):
        model.loss_sum(w, X.astype(np.float32), y, IDX)
    # idx given as a list / int32 is converted
    assert model.loss_sum(w, X, y, [3, 0, 7]) == model.loss_sum(w, X, y, np.array([3, 0, 7], dtype=np.int32))


def _check_pair_grads(model, w, X, y, idx, rtol=1e-12, atol=1e-14):
    B = len(idx)
    pex = np.empty((B, model.dim))
    model.per_example_grads(w, X, y, idx, pex)
    mean = np.full(model.dim, np.nan)  # must overwrite, not accumulate
    diffs = np.full((B // 2, model.dim), np.nan)
    loss = model.pair_grads(w, X, y, idx, mean, diffs)
    assert loss == pytest.approx(model.loss_sum(w, X, y, idx), rel=rtol, abs=atol)
    np.testing.assert_allclose(mean, pex.mean(0), rtol=rtol, atol=atol)
    q = B // 2
    np.testing.assert_allclose(diffs, pex[0 : 2 * q : 2] - pex[1 : 2 * q : 2], rtol=rtol, atol=atol)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(
    "idx",
    [
        IDX,  # odd (7): one 4-row block, one pair, one leftover row; repeated index
        np.array([3, 0, 7, 3, 5, 1, 8, 2], dtype=np.int64),  # even (8): two blocks
        np.array([6, 2, 2, 4, 1, 1], dtype=np.int64),  # even (6): block + pair, repeats
        np.array([5, 5], dtype=np.int64),  # one pair of the same example: zero diff
        np.array([4], dtype=np.int64),  # a single row: mean only
        np.arange(9, dtype=np.int64)[::-1].copy(),
    ],
)
def test_pair_grads_match_per_example_grads(case, idx):
    model, w, X, y = make_problem(case, seed=3)
    _check_pair_grads(model, w, X, y, idx)


@pytest.mark.parametrize("kind,C", [("softmax", 3), ("mlp", 3), ("logistic", 2), ("least_squares", 1)])
def test_pair_grads_wide_features(kind, C):
    model, w, X, y = make_problem(dict(kind=kind, p=1100, C=C, H=3), n=12, seed=2, wscale=0.03)
    _check_pair_grads(model, w, X, y, np.array([0, 11, 5, 5, 2, 9, 3, 1, 10, 4], dtype=np.int64), rtol=1e-11)


@pytest.mark.parametrize("case", list(CASES))
def test_pair_grads_empty_batch_and_bad_shapes(case):
    model, w, X, y = make_problem(case)
    mean = np.full(model.dim, np.nan)
    assert model.pair_grads(w, X, y, np.empty(0, dtype=np.int64), mean, np.empty((0, model.dim))) == 0.0
    assert np.all(mean == 0.0)
    with pytest.raises(ValueError):
        model.pair_grads(w, X, y, IDX, mean, np.empty((len(IDX), model.dim)))  # not len(idx) // 2 rows
    with pytest.raises(ValueError):
        model.pair_grads(w, X, y, IDX, np.empty(model.dim + 1), np.empty((len(IDX) // 2, model.dim)))
    with pytest.raises(IndexError):
        model.pair_grads(w, X, y, np.array([0, 9], dtype=np.int64), mean, np.empty((1, model.dim)))


@pytest.mark.parametrize("case", list(CASES))
def test_pair_grads_nan_propagates(case):
    model, w, X, y = make_problem(case)
    w[0] = np.nan
    mean = np.empty(model.dim)
    diffs = np.empty((len(IDX) // 2, model.dim))
    assert math.isnan(model.pair_grads(w, X, y, IDX, mean, diffs))
    assert np.isnan(mean).any() and np.isnan(diffs).any()


def test_warm_up_runs():
    for kind, C in [("logistic", 2), ("softmax", 3), ("least_squares", 1), ("mlp", 2)]:
        make_model(kind, 3, C, hidden=2, l2=0.1).warm_up()


@settings(max_examples=25, deadline=None)
@given(
    case=st.sampled_from(list(CASES)),
    B=st.integers(1, 13),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_batches_property(case, B, seed):
    model, w, X, y = make_problem(case, n=10, seed=seed)
    idx = np.random.default_rng(seed).integers(0, 10, B)
    ref_loss, ref_g, _ = reference(model, w, X, y, idx)
    g = np.empty(model.dim)
    assert model.grad_sum(w, X, y, idx, g) == pytest.approx(ref_loss, rel=1e-11, abs=1e-12)
    np.testing.assert_allclose(g, ref_g, rtol=1e-9, atol=1e-11)


# ----------------------------------------------------------------------------------
# Numba cache: one directory per version of the kernel sources
# ----------------------------------------------------------------------------------


def test_cache_dir_is_keyed_by_every_kernel_source(tmp_path, monkeypatch):
    import numba

    import hpcsgd.kernels as K

    kdir = Path(K.__file__).resolve().parent
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    d = Path(K.numba_cache_dir())
    # one directory per host: nodes sharing a home directory never share a cache
    assert d == tmp_path / "hpcsgd" / f"numba-{K.source_hash(kdir)}" / socket.gethostname() and d.is_dir()
    if not os.environ.get("NUMBA_CACHE_DIR"):  # the running kernels use such a directory
        assert Path(numba.config.CACHE_DIR).parts[-2:] == d.parts[-2:]
        assert K.logistic.grad_sum._cache._cache_path.startswith(numba.config.CACHE_DIR)
    # any byte of any file, or a new file, gives a new key
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("x = 1\n")
    (src / "b.py").write_text("y = 2\n")
    keys = {K.source_hash(src)}
    (src / "b.py").write_text("y = 3\n")
    keys.add(K.source_hash(src))
    (src / "c.py").write_text("")
    keys.add(K.source_hash(src))
    assert len(keys) == 3


def test_editing_a_helper_in_another_file_is_not_served_from_cache(tmp_path):
    # A copy of the package: logistic's cached kernel inlines dense.dot4 from another
    # file.  After dot4 is edited, the next process must run the new code.
    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "hpcsgd", tmp_path / "hpcsgd", ignore=shutil.ignore_patterns("__pycache__"))
    probe = (
        "import numpy as np\n"
        "from hpcsgd.kernels import logistic\n"
        "f = logistic.loss_sum\n"
        "print(f(np.full(4, 0.5), np.ones((4, 3)), np.zeros(4), np.arange(4)),"
        " sum(f._cache_hits.values()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH=str(tmp_path))

    def run():
        out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path,
                             capture_output=True, text=True, check=True).stdout.split()
        return float(out[0]), int(out[1])

    loss, hits = run()
    assert run() == (loss, 1)  # same sources: loaded from the cache
    dense = tmp_path / "hpcsgd" / "kernels" / "dense.py"
    text = dense.read_text()
    assert text.count("    return a0, a1, a2, a3\n") == 1
    dense.write_text(text.replace("    return a0, a1, a2, a3\n", "    return 2.0 * a0, 2.0 * a1, 2.0 * a2, 2.0 * a3\n"))
    loss2, hits2 = run()
    assert hits2 == 0 and loss2 != loss  # z = 2 * 1.5 + 0.5 instead of 1.5 + 0.5
    assert loss2 == pytest.approx(4 * math.log1p(math.exp(3.5)))
