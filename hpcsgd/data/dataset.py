"""Open prepared HDF5 data sets and read the rows a worker needs.

The file layout is written by :mod:`hpcsgd.data.prepare` (see its docstring).
Only plain numeric datasets and attributes are read (no pickle, no object dtype),
so opening a data set cannot run code. Every problem with a file is a
:class:`~hpcsgd.errors.UserError` naming the file.

Data-set identity (:func:`dataset_fingerprint`): the hex sha256 of the file's
contents in this canonical form, fed to the hash in this order::

    b"hpcsgd-dataset-content/1\n"
    b"task=<task>\nn_classes=<n_classes>\n"
    for key in train/X, train/y, test/X, test/y:
        b"<key> <dtype> <shape>\n"     e.g. b"train/X <f8 160,5\n" (dtype as the
                                       little-endian NumPy string, shape comma-joined)
        the array's bytes, C order, little-endian

Names, attributes other than task/n_classes, /meta and the creation time are not
part of it, so the same command twice gives the same fingerprint and another split
(``--seed``, ``--test-fraction``) or any changed value gives another one.
``hpcsgd prepare`` stores it as the root attribute ``content_hash``; files without
that attribute (made by hand) get it computed from the file, slab by slab.
"""

from __future__ import annotations

import hashlib
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
CONTENT_KEYS = ("train/X", "train/y", "test/X", "test/y")
_CONTENT_HEADER = b"hpcsgd-dataset-content/1\n"


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


def format_label(value) -> str:
    """A label or class value for messages: ``3`` (not ``3.0``) when integral, else repr."""
    v = float(value)
    if v.is_integer():
        return str(int(v))
    return repr(v)


def first_line(exc: BaseException) -> str:
    """An exception's message for a one-line error: its first line, or its type name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _rows_per_slab(row_elems: int) -> int:
    return max(1, _BLOCK_ELEMS // max(int(row_elems), 1))


def row_slabs(n_rows: int, row_elems: int):
    """``(lo, hi)`` row ranges of the slabs a [n_rows, row_elems] array is read or written in."""
    step = _rows_per_slab(row_elems)
    for lo in range(0, int(n_rows), step):
        yield lo, min(lo + step, int(n_rows))


class ContentHash:
    """The canonical content hash (module doc), fed one dataset at a time, slab by slab."""

    def __init__(self, task: str, n_classes: int):
        self._sha = hashlib.sha256(_CONTENT_HEADER)
        self._sha.update(f"task={task}\nn_classes={int(n_classes)}\n".encode())
        self._next_key = 0

    def begin(self, key: str, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        if key != CONTENT_KEYS[self._next_key]:
            raise ValueError(f"content hash expects {CONTENT_KEYS[self._next_key]} next, got {key}")
        self._next_key += 1
        self._dtype = np.dtype(dtype).newbyteorder("<")
        self._sha.update(f"{key} {self._dtype.str} {','.join(map(str, shape))}\n".encode())

    def update(self, block: np.ndarray) -> None:
        self._sha.update(np.ascontiguousarray(block, dtype=self._dtype).data)

    def hexdigest(self) -> str:
        if self._next_key != len(CONTENT_KEYS):
            raise ValueError("content hash: not every dataset was fed")
        return self._sha.hexdigest()


def _attr_str(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _attr_str(value.item())
    return str(value)


def names_a_file(source: str) -> bool:
    """``data.source`` is a path (ends in .h5/.hdf5/.hdf or holds a path separator),
    not a prepared set name looked up in ``data.dir``."""
    source = source.strip()
    return source.lower().endswith(_H5_SUFFIXES) or "/" in source or os.sep in source


def resolve_source(source: str, data_dir: Path = Path("data")) -> Path:
    """Map ``data.source`` to a file: a name -> ``data_dir/NAME.h5``; a path -> itself.

    A value is a path when it ends in .h5/.hdf5/.hdf or contains a path separator.
    """
    if not isinstance(source, str) or not source.strip():
        raise UserError(f"data.source must be a prepared data set name (e.g. mnist5k) or a path "
                        f"to an .h5 file, got {source!r}")
    source = source.strip()
    if names_a_file(source):
        path = Path(source).expanduser()
        _refuse_directory(path)
        if not path.is_file():
            raise UserError(f"data.source: {path} not found; create it with: "
                            f"hpcsgd prepare NAME --out {path}")
        return path
    path = Path(data_dir) / f"{source}.h5"
    if not path.is_file():
        _refuse_directory(path)
        from hpcsgd.data.prepare import PREPARED_NAMES

        if Path(source).is_dir() and source not in PREPARED_NAMES:
            raise UserError(f"data.source: {source} is a directory, not a data set file (and "
                            f"{path} does not exist); give a prepared set name (e.g. mnist5k) or "
                            "the path of an .h5 file")
        if source in PREPARED_NAMES:
            hint = f"run: hpcsgd prepare {source}"
        else:
            hint = (f"run: hpcsgd prepare NAME (NAME one of {', '.join(PREPARED_NAMES)}) "
                    "or give a path to an .h5 file")
        raise UserError(f"data.source: {path} not found; {hint}")
    return path


def _refuse_directory(path: Path) -> None:
    if path.is_dir():
        raise UserError(f"data.source: {path} is a directory, not a data set file; give a "
                        "prepared set name (e.g. mnist5k) or the path of an .h5 file")


def _open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise UserError(f"data.source: {path} is not a readable HDF5 file ({first_line(exc)}); "
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
        raise UserError(f"data.source: {path} is corrupt or truncated ({first_line(exc)}); "
                        "re-create it with hpcsgd prepare") from exc
    return DatasetInfo(path=path, name=name, task=task, n_classes=n_classes,
                       n_features=int(shapes["train"][1]), n_train=int(shapes["train"][0]),
                       n_test=int(shapes["test"][0]))


def _read_sorted(dset: h5py.Dataset, uniq: np.ndarray) -> np.ndarray:
    """Read rows ``uniq`` (sorted, unique) of ``dset`` as float64, slab by slab.

    Dense runs are read as one slice (fast, bounded memory); sparse runs use h5py's
    increasing-index selection so a few rows of a large file are read alone.
    """
    block = _rows_per_slab(int(np.prod(dset.shape[1:], dtype=np.int64)))
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
                        f"{format_label(y[j])}; allowed: {allowed} (task {info.task})")


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
        raise UserError(f"data.source: {info.path}: cannot read /{split}/y ({first_line(exc)}); "
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
        raise UserError(f"data.source: {info.path}: cannot read /{split} rows ({first_line(exc)}); "
                        "the file is corrupt or truncated, re-create it with hpcsgd prepare") from exc
    _check_features(info, split, X_u, uniq)
    _check_labels(info, split, y_u, uniq)
    inverse = inverse.reshape(-1)
    if len(uniq) == len(rows) and np.array_equal(uniq, rows):
        X, y = X_u, y_u
    else:
        X, y = X_u[inverse], y_u[inverse]
    return np.ascontiguousarray(X, dtype=np.float64), np.ascontiguousarray(y, dtype=np.float64)


def dataset_fingerprint(info: DatasetInfo) -> str:
    """The data set's identity: hex sha256 of its contents (canonical form in the module doc).

    The file's ``content_hash`` attribute when present (written by ``hpcsgd prepare``),
    else computed from the file slab by slab, so memory stays bounded for any size.
    """
    try:
        with _open_h5(info.path) as f:
            stored = f.attrs.get("content_hash")
            if stored is not None:
                digest = _attr_str(stored)
                if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                    raise UserError(f"data.source: {info.path} has content_hash {digest!r}; it must be "
                                    "64 lower-case hex digits (sha256): delete the attribute to have "
                                    "it computed, or re-create the file with hpcsgd prepare")
                return digest
            content = ContentHash(info.task, info.n_classes)
            for key in CONTENT_KEYS:
                dset = _get_dataset(f, info.path, key)
                content.begin(key, dset.dtype, dset.shape)
                for lo, hi in row_slabs(dset.shape[0], int(np.prod(dset.shape[1:], dtype=np.int64))):
                    content.update(dset[lo:hi])
            return content.hexdigest()
    except UserError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise UserError(f"data.source: {info.path}: cannot read it to compute its fingerprint "
                        f"({first_line(exc)}); "
                        "the file is corrupt or truncated, re-create it with hpcsgd prepare") from exc
