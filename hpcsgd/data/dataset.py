"""Open prepared HDF5 data sets and read the rows a worker needs.

The file layout is written by :mod:`hpcsgd.data.prepare` (see its docstring).
Only plain numeric datasets and attributes are read (no pickle, no object dtype),
so opening a data set cannot run code. Every problem with a file is a
:class:`~hpcsgd.errors.UserError` naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from hpcsgd.errors import UserError

FORMAT = "hpcsgd-dataset"
SUPPORTED_VERSIONS = (1,)
TASKS = ("binary", "multiclass", "regression")
SPLITS = ("train", "test")
_H5_SUFFIXES = (".h5", ".hdf5", ".hdf")
# rows are read in slabs of at most this many float64 elements (64 MiB)
_BLOCK_ELEMS = 1 << 23


@dataclass(frozen=True)
class DatasetInfo:
    path: Path
    name: str
    task: str
    n_classes: int
    n_features: int
    n_train: int
    n_test: int

    def n_rows(self, split: str) -> int:
        _check_split(split)
        return self.n_train if split == "train" else self.n_test


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _attr_str(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _attr_str(value.item())
    return str(value)


def resolve_source(source: str, data_dir: Path = Path("data")) -> Path:
    """Map ``data.source`` to a file: a name -> ``data_dir/NAME.h5``; a path -> itself.

    A value is a path when it ends in .h5/.hdf5/.hdf or contains a path separator.
    """
    if not isinstance(source, str) or not source.strip():
        raise UserError(f"data.source must be a prepared data set name (e.g. mnist5k) or a path "
                        f"to an .h5 file, got {source!r}")
    source = source.strip()
    is_path = source.lower().endswith(_H5_SUFFIXES) or "/" in source or os.sep in source
    if is_path:
        path = Path(source).expanduser()
        if not path.is_file():
            raise UserError(f"data.source: {path} not found; create it with: "
                            f"hpcsgd prepare NAME --out {path}")
        return path
    path = Path(data_dir) / f"{source}.h5"
    if not path.is_file():
        from hpcsgd.data.prepare import PREPARED_NAMES

        if source in PREPARED_NAMES:
            hint = f"run: hpcsgd prepare {source}"
        else:
            hint = (f"run: hpcsgd prepare NAME (NAME one of {', '.join(PREPARED_NAMES)}) "
                    "or give a path to an .h5 file")
        raise UserError(f"data.source: {path} not found; {hint}")
    return path


def _open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"data.source: {path} is not a readable HDF5 file ({msg}); "
                        "re-create it with hpcsgd prepare") from exc


def _get_dataset(f: h5py.File, path: Path, key: str) -> h5py.Dataset:
    obj = f.get(key)
    if not isinstance(obj, h5py.Dataset):
        raise UserError(f"data.source: {path} has no dataset /{key}; an hpcsgd data set needs "
                        "/train/X, /train/y, /test/X, /test/y (write one with hpcsgd prepare)")
    if obj.dtype.kind not in "fiu":
        raise UserError(f"data.source: {path}: /{key} has dtype {obj.dtype}; only numeric "
                        "(float/int) data is allowed")
    return obj


def open_dataset(source: str, data_dir: Path = Path("data")) -> DatasetInfo:
    """Resolve ``source`` and validate the file's format, datasets and shapes."""
    path = resolve_source(source, data_dir)
    try:
        with _open_h5(path) as f:
            fmt = _attr_str(f.attrs.get("format", ""))
            if fmt != FORMAT:
                raise UserError(f"data.source: {path} is not an hpcsgd data set (format attribute "
                                f"{fmt!r}, expected {FORMAT!r}); write one with hpcsgd prepare")
            version = f.attrs.get("format_version")
            try:
                version_i = int(version)
            except (TypeError, ValueError):
                version_i = None
            if version_i not in SUPPORTED_VERSIONS:
                raise UserError(f"data.source: {path} has format_version {version!r}; this hpcsgd "
                                f"reads {', '.join(map(str, SUPPORTED_VERSIONS))}")
            task = _attr_str(f.attrs.get("task", ""))
            if task not in TASKS:
                raise UserError(f"data.source: {path} has task {task!r}; allowed: {', '.join(TASKS)}")
            try:
                n_classes = int(f.attrs.get("n_classes", -1))
            except (TypeError, ValueError):
                n_classes = -1
            expected = {"binary": "2", "multiclass": ">= 3", "regression": "0"}[task]
            ok = ((task == "binary" and n_classes == 2) or (task == "multiclass" and n_classes >= 3)
                  or (task == "regression" and n_classes == 0))
            if not ok:
                raise UserError(f"data.source: {path} has n_classes={n_classes} for task {task!r} "
                                f"(must be {expected})")
            name = _attr_str(f.attrs.get("name", path.stem))
            shapes = {}
            for split in SPLITS:
                X = _get_dataset(f, path, f"{split}/X")
                y = _get_dataset(f, path, f"{split}/y")
                if X.ndim != 2:
                    raise UserError(f"data.source: {path}: /{split}/X has shape {X.shape}; must be "
                                    "2-D [rows, features]")
                if y.ndim != 1:
                    raise UserError(f"data.source: {path}: /{split}/y has shape {y.shape}; must be "
                                    "1-D [rows]")
                if X.shape[0] != y.shape[0]:
                    raise UserError(f"data.source: {path}: /{split}/X has {X.shape[0]} rows but "
                                    f"/{split}/y has {y.shape[0]}; they must match")
                shapes[split] = X.shape
            if shapes["train"][1] != shapes["test"][1]:
                raise UserError(f"data.source: {path}: /train/X has {shapes['train'][1]} features but "
                                f"/test/X has {shapes['test'][1]}; they must match")
            if shapes["train"][0] < 1 or shapes["train"][1] < 1:
                raise UserError(f"data.source: {path}: /train/X has shape {shapes['train']}; need at "
                                "least 1 row and 1 feature")
    except UserError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"data.source: {path} is corrupt or truncated ({msg}); "
                        "re-create it with hpcsgd prepare") from exc
    return DatasetInfo(path=path, name=name, task=task, n_classes=n_classes,
                       n_features=int(shapes["train"][1]), n_train=int(shapes["train"][0]),
                       n_test=int(shapes["test"][0]))


def _read_sorted(dset: h5py.Dataset, uniq: np.ndarray) -> np.ndarray:
    """Read rows ``uniq`` (sorted, unique) of ``dset`` as float64, slab by slab.

    Dense runs are read as one slice (fast, bounded memory); sparse runs use h5py's
    increasing-index selection so a few rows of a large file are read alone.
    """
    row_elems = int(np.prod(dset.shape[1:], dtype=np.int64)) if dset.ndim > 1 else 1
    block = max(1, _BLOCK_ELEMS // max(row_elems, 1))
    out = np.empty((len(uniq),) + tuple(dset.shape[1:]), dtype=np.float64)
    pos = 0
    while pos < len(uniq):
        lo = int(uniq[pos])
        end = int(np.searchsorted(uniq, lo + block, side="left"))
        sel = uniq[pos:end]
        hi = int(sel[-1]) + 1
        if 4 * len(sel) >= hi - lo:
            out[pos:end] = dset[lo:hi][sel - lo]
        else:
            out[pos:end] = dset[sel]
        pos = end
    return out


def _check_labels(info: DatasetInfo, split: str, y: np.ndarray, file_rows: np.ndarray) -> None:
    """Raise UserError for the first (lowest file row) bad label."""
    if info.task == "regression":
        bad = ~np.isfinite(y)
        allowed = "finite numbers"
    else:
        with np.errstate(invalid="ignore"):
            bad = ~(np.isfinite(y) & (y == np.round(y)) & (y >= 0) & (y < info.n_classes))
        allowed = f"integers 0..{info.n_classes - 1}"
    if bad.any():
        i = np.flatnonzero(bad)
        j = i[np.argmin(file_rows[i])]
        raise UserError(f"data.source: {info.path}: /{split}/y row {int(file_rows[j])} has label "
                        f"{y[j]!r}; allowed: {allowed} (task {info.task})")


def _check_features(info: DatasetInfo, split: str, X: np.ndarray, file_rows: np.ndarray) -> None:
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        i = np.flatnonzero(bad)
        j = i[np.argmin(file_rows[i])]
        raise UserError(f"data.source: {info.path}: /{split}/X row {int(file_rows[j])} has a "
                        "non-finite feature (NaN/Inf); features must be finite")


def read_labels(info: DatasetInfo, split: str) -> np.ndarray:
    """All labels of ``split`` as float64, validated (finite; classes in [0, n_classes))."""
    _check_split(split)
    try:
        with _open_h5(info.path) as f:
            y = np.asarray(_get_dataset(f, info.path, f"{split}/y")[...], dtype=np.float64)
    except UserError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise UserError(f"data.source: {info.path}: cannot read /{split}/y ({exc}); "
                        "the file is corrupt or truncated, re-create it with hpcsgd prepare") from exc
    if y.shape != (info.n_rows(split),):
        raise UserError(f"data.source: {info.path}: /{split}/y has shape {y.shape}, expected "
                        f"({info.n_rows(split)},); the file changed since it was opened")
    _check_labels(info, split, y, np.arange(len(y)))
    return y


def read_rows(info: DatasetInfo, split: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Read only ``rows`` of ``split``; returns (X [len(rows), p], y [len(rows)]) float64.

    The result follows the given order of ``rows`` (duplicates allowed). Features must
    be finite and labels valid, else UserError naming the file, split and first bad row.
    """
    _check_split(split)
    rows = np.asarray(rows)
    if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu"):
        raise ValueError(f"rows must be a 1-D integer array, got dtype {rows.dtype} shape {rows.shape}")
    rows = rows.astype(np.int64, copy=False)
    n = info.n_rows(split)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise IndexError(f"row indices must be in [0, {n}) for split {split!r} of {info.path}")
    p = info.n_features
    if rows.size == 0:
        return np.empty((0, p), dtype=np.float64), np.empty(0, dtype=np.float64)
    uniq, inverse = np.unique(rows, return_inverse=True)
    try:
        with _open_h5(info.path) as f:
            Xd = _get_dataset(f, info.path, f"{split}/X")
            yd = _get_dataset(f, info.path, f"{split}/y")
            if Xd.shape != (n, p) or yd.shape != (n,):
                raise UserError(f"data.source: {info.path}: /{split}/X or /{split}/y changed shape "
                                "since the file was opened")
            X_u = _read_sorted(Xd, uniq)
            y_u = _read_sorted(yd, uniq)
    except UserError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise UserError(f"data.source: {info.path}: cannot read /{split} rows ({exc}); "
                        "the file is corrupt or truncated, re-create it with hpcsgd prepare") from exc
    _check_features(info, split, X_u, uniq)
    _check_labels(info, split, y_u, uniq)
    inverse = inverse.reshape(-1)
    if len(uniq) == len(rows) and np.array_equal(uniq, rows):
        X, y = X_u, y_u
    else:
        X, y = X_u[inverse], y_u[inverse]
    return np.ascontiguousarray(X, dtype=np.float64), np.ascontiguousarray(y, dtype=np.float64)
