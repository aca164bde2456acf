"""Atomic HDF5 checkpoint I/O with checksums, and validation of the engine's layout.

The engine builds the *content* of a checkpoint as a nested Python tree; this module
writes such a tree to HDF5 safely, reads it back, and refuses a file that is not what
it claims:

* ``dict``           -> HDF5 group
* ``np.ndarray``     -> dataset (under the top-level groups ``trace`` and ``eval``:
                        resizable along axis 0, ``maxshape=(None, ...)``, chunked)
* ``int``, ``float``, ``bool``, ``str`` (and NumPy scalars)
                     -> attributes of the enclosing group
* ``None``           -> omitted (the key is absent when read back)

Anything else (lists, tuples, object/str arrays, bytes) is a ``TypeError``.

No pickle is involved anywhere: only numeric datasets and numeric/UTF-8 attributes.

Checksums (format 2): every dataset carries a CRC-32 of its dtype, shape and raw bytes,
and every group (the root included) a CRC-32 of its attributes (names, types, values)
and of the names and kinds of its members, both as the attribute ``_crc32``.  So a
flipped bit in any dataset or attribute, a changed or deleted attribute, and a deleted
or added dataset or group are all detected.  Files of format 1 (written before
checksums) carry none: they load *unchecked* (``inspect`` says so); a format-2 file
without a checksum somewhere is damaged.

Validation: ``validate_tree`` checks the layout the engine writes and reads back
(``hpcsgd.engine.layout``) against the file's own config and world size;
``load_checkpoint`` turns every way a damaged file can fail while being read into a
one-line reason and, for a run directory, falls back to the next file.

Writing is atomic: the file is built in memory, written to ``.ckpt-<update>.h5.tmp``
in the run directory, fsynced, closed and renamed into place, the directory is fsynced,
and only then is ``latest.h5`` re-pointed (symlink swap via ``os.replace``) and older
checkpoints beyond ``keep`` deleted.  A crash at any instant leaves every previously
completed checkpoint untouched and loadable.
"""

from __future__ import annotations

import json
import os
import re
import sys
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

# what the engine's layout holds: one definition, next to the code that builds it
from hpcsgd.engine.layout import ENGINE_INTS, ENGINE_NUMBERS, INFLIGHT_ARRAYS, MASTER_STREAMS, WORKER_STREAMS
from hpcsgd.errors import UserError
from hpcsgd.trace import EVAL_COLUMNS, TRACE_COLUMNS

FORMAT = "hpcsgd-checkpoint"
# 1: no checksums; 2: a CRC-32 on every dataset and group (see the module docstring)
FORMAT_VERSION = 2
FIRST_CHECKSUMMED_VERSION = 2
REQUIRED_ROOT_ATTRS = (
    "format",
    "format_version",
    "update",
    "epoch",
    "method",
    "world_size",
    "config",
    "created",
)
# Attributes save_checkpoint fills in itself; the caller supplies the others.
_ADDED_BY_SAVE = ("format", "format_version", "created")
# Top-level groups whose datasets are created resizable along axis 0.
RESIZABLE_GROUPS = ("trace", "eval")
LATEST = "latest.h5"
# The attribute holding a dataset's or a group's checksum (a reserved tree key).
CHECKSUM_ATTR = "_crc32"

_CKPT_RE = re.compile(r"^ckpt-(\d+)\.h5$")
_TMP_RE = re.compile(r"^\.ckpt-\d+\.h5\.tmp$")
_LATEST_TMP = ".latest.h5.tmp"
# Library-version bounds: "latest" lets HDF5 switch to dense attribute storage, so a
# group may carry many (large) attributes, e.g. one RNG state per rank.
_LIBVER = ("v108", "latest")

_SCALAR_TYPES = (bool, int, float, str, np.bool_, np.integer, np.floating, np.str_)

# What reading damaged HDF5 content can raise (h5py and NumPy errors, JSON and UTF-8
# decoding, allocations for a garbled shape, deep recursion): each becomes a reason
# for refusing the file, never a traceback.
_DAMAGE_ERRORS = (OSError, ValueError, LookupError, TypeError, RuntimeError, ArithmeticError,
                  MemoryError, UnicodeError)



# ---------------------------------------------------------------------- checksums
def _dataset_crc(arr: np.ndarray) -> int:
    """CRC-32 of a dataset's dtype, shape and raw bytes (as stored and read back)."""
    header = f"{arr.dtype.str} {arr.shape}".encode()
    return zlib.crc32(np.ascontiguousarray(arr), zlib.crc32(header))


def _group_crc(group: h5py.Group) -> int:
    """CRC-32 of a group's attributes (name, type, value) and its members' names and kinds."""
    lines = []
    for name in sorted(group.attrs):
        if name != CHECKSUM_ATTR:
            value = _attr_to_python(group.attrs[name])
            lines.append(f"@{name!r} {type(value).__name__} {value!r}")
    for name in sorted(group):
        item = group.get(name)
        kind = "group" if isinstance(item, h5py.Group) else "dataset" if isinstance(item, h5py.Dataset) else "link"
        lines.append(f"{kind} {name!r}")
    return zlib.crc32("\n".join(lines).encode("utf-8", "surrogatepass"))


@dataclass
class ChecksumReport:
    """What ``read_tree`` found: objects whose checksum matched, differed or was absent."""

    verified: int = 0
    mismatched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def check(self, path: str, stored: Any, actual: int, group: bool = False) -> None:
        if group:
            path += " (attributes or members)"
        if stored is None:
            self.missing.append(path)
        elif isinstance(stored, (int, np.integer)) and not isinstance(stored, (bool, np.bool_)) \
                and int(stored) == actual:
            self.verified += 1
        else:
            self.mismatched.append(path)


def _listed(paths: list[str], most: int = 4) -> str:
    shown = ", ".join(paths[:most])
    return shown + (f" and {len(paths) - most} more" if len(paths) > most else "")


# --------------------------------------------------------------------------- trees
def write_tree(group: h5py.Group, tree: dict) -> None:
    """Write a nested dict into ``group`` (see module docstring for the mapping), with
    a checksum on every dataset and on ``group`` and every group below it."""
    if not isinstance(tree, dict):
        raise TypeError(f"checkpoint tree at {group.name!r} must be a dict, got {type(tree).__name__}")
    for key, value in tree.items():
        if not isinstance(key, str) or not key or "/" in key or key == "." or key == CHECKSUM_ATTR:
            raise ValueError(f"invalid checkpoint key {key!r} in {group.name!r}"
                             + (" (reserved for checksums)" if key == CHECKSUM_ATTR else ""))
        where = f"{group.name.rstrip('/')}/{key}"
        if value is None:
            continue  # "not set": simply absent from the file (read back as missing)
        if isinstance(value, dict):
            write_tree(group.create_group(key), value)
        elif isinstance(value, np.ndarray):
            if value.dtype.kind not in "biuf":
                raise TypeError(
                    f"checkpoint dataset {where!r} has unsupported dtype {value.dtype} "
                    "(only bool/integer/float arrays are stored)"
                )
            if _is_resizable_group_name(where) and value.ndim >= 1:
                n = value.shape[0]
                row = int(np.prod(value.shape[1:], dtype=np.int64)) if value.ndim > 1 else 1
                rows = int(min(max(n, 256), max(1, 16384 // max(row, 1))))
                ds = group.create_dataset(
                    key,
                    data=value,
                    maxshape=(None,) + value.shape[1:],
                    chunks=(max(rows, 1),) + value.shape[1:],
                )
            else:
                ds = group.create_dataset(key, data=value)
            ds.attrs[CHECKSUM_ATTR] = _dataset_crc(np.asarray(value, dtype=ds.dtype))
        elif isinstance(value, _SCALAR_TYPES):
            if isinstance(value, np.str_):
                value = str(value)
            group.attrs[key] = value
        else:
            raise TypeError(
                f"checkpoint entry {where!r} has unsupported type {type(value).__name__} "
                "(use dict, np.ndarray, int, float, bool or str)"
            )
    group.attrs[CHECKSUM_ATTR] = _group_crc(group)


def _is_resizable_group_name(path: str) -> bool:
    parts = [p for p in path.split("/") if p]
    return len(parts) >= 2 and parts[0] in RESIZABLE_GROUPS


def _attr_to_python(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.bytes_):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_tree(group: h5py.Group, checksums: ChecksumReport | None = None) -> dict:
    """Inverse of :func:`write_tree`: datasets are read fully into ``np.ndarray``,
    attributes become Python scalars / ``str``; checksum attributes are not part of
    the tree.  With ``checksums``, every checksum is verified into that report.

    A dataset that claims more bytes than the whole file holds (a garbled shape) is a
    ``ValueError`` before anything is allocated for it."""
    out: dict[str, Any] = {}
    for key, value in group.attrs.items():
        if key != CHECKSUM_ATTR:
            out[key] = _attr_to_python(value)
    if checksums is not None:
        checksums.check(group.name, group.attrs.get(CHECKSUM_ATTR), _group_crc(group), group=True)
    for key, item in group.items():
        if isinstance(item, h5py.Group):
            out[key] = read_tree(item, checksums)
        elif isinstance(item, h5py.Dataset):
            if item.shape is None:  # null dataspace
                out[key] = np.empty(0, dtype=item.dtype)
                continue
            if item.compression is None and item.nbytes > item.file.id.get_filesize():
                raise ValueError(f"dataset {item.name} claims shape {item.shape} ({item.nbytes} bytes), "
                                 f"more than the file holds")
            out[key] = np.asarray(item[...])
            if checksums is not None:
                checksums.check(item.name, item.attrs.get(CHECKSUM_ATTR), _dataset_crc(out[key]))
        # other link kinds (dangling soft/external links) are ignored
    return out


# ---------------------------------------------------------------------- validation
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _group(tree: dict, path: str) -> dict:
    """The sub-dict at ``path`` ("a/b"), or ValueError naming what is missing."""
    node = tree
    for i, part in enumerate(path.split("/")):
        node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            where = "/" + "/".join(path.split("/")[: i + 1])
            raise ValueError(f"missing group {where}")
    return node


def _array(group: dict, path: str, name: str, kind: str, ndim: int | None = None) -> np.ndarray:
    """Dataset ``name`` of ``group`` (at ``path``): present, of dtype kind(s) ``kind``
    ("f", "iu", ...) and ``ndim`` dimensions, else ValueError."""
    arr = group.get(name)
    where = f"/{path}/{name}"
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"missing dataset {where}")
    if arr.dtype.kind not in kind or (ndim is not None and arr.ndim != ndim):
        want = {"f": "float", "iu": "integer", "i": "integer"}.get(kind, kind)
        raise ValueError(f"{where} has shape {arr.shape} and dtype {arr.dtype}, expected {ndim}-D {want}")
    return arr


def _shape_is(arr: np.ndarray, where: str, shape: tuple, meaning: str) -> None:
    if arr.shape != shape:
        raise ValueError(f"{where} has shape {arr.shape}, expected {shape} ({meaning})")


def _json_object(text: Any, where: str) -> dict:
    if not isinstance(text, str):
        raise ValueError(f"{where} is not a JSON string")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{where} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where} is not a JSON object")
    return value


def _validate_root(tree: dict) -> None:
    fmt = tree.get("format")
    if fmt is None:
        raise ValueError("missing root attribute 'format'")
    if fmt != FORMAT:
        raise ValueError(f"format attribute is {fmt!r}, expected {FORMAT!r}")
    missing = [a for a in REQUIRED_ROOT_ATTRS if a not in tree]
    if missing:
        raise ValueError("missing root attribute(s) " + ", ".join(repr(m) for m in missing))
    version = tree["format_version"]
    if not _is_int(version):
        raise ValueError(f"format_version is {version!r}, expected an integer")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"format_version {version} is newer than supported ({FORMAT_VERSION}); "
            "upgrade hpcsgd to read it"
        )
    if version < 1:
        raise ValueError(f"format_version {version} is invalid")
    for name in ("update", "world_size"):
        v = tree[name]
        if not _is_int(v) or v < 0:
            raise ValueError(f"root attribute {name!r} is {v!r}, expected a non-negative integer")
    if tree["world_size"] < 2:
        raise ValueError(f"root attribute 'world_size' is {tree['world_size']}, expected >= 2 (master + workers)")
    if not _is_number(tree["epoch"]):
        raise ValueError(f"root attribute 'epoch' is {tree['epoch']!r}, expected a number")
    if not isinstance(tree["method"], str):
        raise ValueError(f"root attribute 'method' is {tree['method']!r}, expected a string")
    if "test_rows" in tree and not (_is_int(tree["test_rows"]) and tree["test_rows"] >= 0):
        raise ValueError(f"root attribute 'test_rows' is {tree['test_rows']!r}, expected a non-negative integer")


def _validate_config(tree: dict) -> None:
    """The stored config passes the config schema, and the file is the method it names."""
    from hpcsgd.config import resolve

    raw = _json_object(tree["config"], "root attribute 'config'")
    try:
        cfg = resolve(raw, origin="stored config")
    except UserError as exc:
        raise ValueError(f"its config is invalid ({exc})") from None
    kind = cfg["method"]["kind"]
    if tree["method"] != kind:
        raise ValueError(f"root attribute 'method' is {tree['method']!r} but its config has method.kind = {kind!r}")


def _validate_engine_state(tree: dict, M: int, d: int) -> None:
    optimizer = _group(tree, "state/optimizer")
    momentum = _array(optimizer, "state/optimizer", "momentum", "f", 1)
    _shape_is(momentum, "/state/optimizer/momentum", (d,), "one entry per parameter")
    _group(tree, "state/method")
    engine = _group(tree, "state/engine")
    for name in ENGINE_INTS + ENGINE_NUMBERS:
        if name not in engine:
            raise ValueError(f"missing attribute {name!r} of /state/engine")
        ok = _is_int if name in ENGINE_INTS else _is_number
        if not ok(engine[name]):
            raise ValueError(f"/state/engine attribute {name!r} is {engine[name]!r}, expected "
                             + ("an integer" if name in ENGINE_INTS else "a number"))
    if engine["version"] != tree["update"]:
        raise ValueError(f"/state/engine version {engine['version']} differs from the root update {tree['update']}")
    where = "state/engine"
    _shape_is(_array(engine, where, "worker_end", "f", 1), "/state/engine/worker_end", (M + 1,), "one per rank")
    _shape_is(_array(engine, where, "contributions", "iu", 1), "/state/engine/contributions", (M + 1,),
              "one per rank")
    for name in ("mirror_pos", "mirror_started"):
        _shape_is(_array(engine, where, name, "iu", 1), f"/state/engine/{name}", (M,), "one per worker")
    _array(engine, where, "pending", "iu", 2)
    inflight = _group(tree, "state/engine/inflight")
    rows = {name: _array(inflight, "state/engine/inflight", name, "iu" if name == "jobs" else "f", 2).shape[0]
            for name in INFLIGHT_ARRAYS}
    if len(set(rows.values())) > 1:
        raise ValueError("/state/engine/inflight datasets have unequal row counts ("
                         + ", ".join(f"{k}={v}" for k, v in rows.items()) + ")")
    workers = _group(tree, "state/workers")
    for j in range(1, M + 1):
        if not isinstance(workers.get(f"worker_{j}"), dict):
            raise ValueError(f"missing group /state/workers/worker_{j} (world size {M + 1} has {M} workers)")


def _validate_streams(tree: dict, M: int) -> None:
    rng = _group(tree, "rng")
    for owner, streams in [("master", MASTER_STREAMS)] + [(f"worker_{j}", WORKER_STREAMS) for j in range(1, M + 1)]:
        group = rng.get(owner)
        if not isinstance(group, dict):
            raise ValueError(f"missing group /rng/{owner} (world size {M + 1} has {M} workers)")
        for stream in streams:
            if stream not in group:
                raise ValueError(f"missing attribute {stream!r} of /rng/{owner}")
            _json_object(group[stream], f"/rng/{owner} attribute {stream!r}")


def _validate_orders(tree: dict, M: int) -> None:
    order = _group(tree, "order")
    perm = _array(order, "order", "perm", "i", 2)
    if perm.dtype != np.int64 or perm.shape[0] != M:
        raise ValueError(f"/order/perm has shape {perm.shape} and dtype {perm.dtype}, expected int64 [{M}, n]")
    n = perm.shape[1]
    for name in ("pos", "epochs_started"):
        arr = _array(order, "order", name, "i", 1)
        if arr.dtype != np.int64 or arr.shape != (M,):
            raise ValueError(f"/order/{name} has shape {arr.shape} and dtype {arr.dtype}, expected int64 [{M}]")
    stored = [("perm", perm)]
    if "history" in order:
        hist = _array(order, "order", "history", "i", 3)
        if hist.dtype != np.int64 or hist.shape[1:] != (M, n):
            raise ValueError(f"/order/history has shape {hist.shape} and dtype {hist.dtype}, "
                             f"expected int64 [epochs, {M}, {n}]")
        stored.append(("history", hist))
    for name, arr in stored:
        # entries index the worker's rows (-1 pads a shorter shard): out of range would
        # make a resumed worker read past its data
        if arr.size and (arr.min() < -1 or arr.max() >= n):
            raise ValueError(f"/order/{name} holds entries outside [-1, {n}) ({arr.min()}..{arr.max()})")


def _validate_tables(tree: dict) -> None:
    for gname, columns in (("trace", TRACE_COLUMNS), ("eval", EVAL_COLUMNS)):
        grp = _group(tree, gname)
        lengths = {}
        for col, arr in grp.items():
            if not isinstance(arr, np.ndarray):
                continue  # attributes on the group are allowed
            if arr.ndim != 1:
                raise ValueError(f"/{gname}/{col} is not 1-D (shape {arr.shape})")
            lengths[col] = arr.shape[0]
        for col, dtype in columns.items():
            arr = grp.get(col)
            if not isinstance(arr, np.ndarray):
                raise ValueError(f"missing column /{gname}/{col}")
            if arr.dtype != np.dtype(dtype):
                raise ValueError(f"/{gname}/{col} has dtype {arr.dtype}, expected {np.dtype(dtype)}")
        if len(set(lengths.values())) > 1:
            desc = ", ".join(f"{c}={n}" for c, n in sorted(lengths.items()))
            raise ValueError(f"/{gname} columns have unequal lengths ({desc})")


def validate_tree(tree: dict) -> None:
    """Raise ``ValueError(reason)`` unless ``tree`` is a complete checkpoint of the
    engine's layout, consistent with its own config and world size (M = world_size - 1
    workers): root attributes; a config that passes the schema and names the stored
    method; /model/params [d]; /state/optimizer/momentum [d]; /state/method;
    /state/engine with what a resume reads; /state/workers/worker_1..M; /rng/master and
    /rng/worker_1..M; /order/perm [M, n] with /order/pos and /order/epochs_started [M];
    every standard /trace and /eval column, of equal lengths."""
    if not isinstance(tree, dict):
        raise ValueError("not a checkpoint tree")
    _validate_root(tree)
    _validate_config(tree)
    M = tree["world_size"] - 1
    model = _group(tree, "model")
    params = _array(model, "model", "params", "f", 1)
    _validate_engine_state(tree, M, params.size)
    _validate_streams(tree, M)
    _validate_orders(tree, M)
    _validate_tables(tree)


# ---------------------------------------------------------------------------- save
def checkpoint_name(update: int) -> str:
    return f"ckpt-{int(update):09d}.h5"


def _checkpoint_update(path: Path) -> int | None:
    m = _CKPT_RE.match(path.name)
    return int(m.group(1)) if m else None


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not support fsync on directories
    finally:
        os.close(fd)


def _file_image(root: dict) -> bytes:
    """The whole HDF5 file, built in memory (HDF5's core driver, nothing on disk).
    Writing these bytes with plain file I/O turns a full disk or a quota into an
    ``OSError`` at a known point, where HDF5 would fail inside its own close."""
    with h5py.File(f"hpcsgd-checkpoint-{os.getpid()}-{id(root)}.h5", "w", driver="core",
                   backing_store=False, libver=_LIBVER) as f:
        write_tree(f, root)
        f.flush()
        return f.id.get_file_image()


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:  # pragma: no cover - permissions etc.
        print(f"hpcsgd: warning: could not remove {path} ({exc})", file=sys.stderr)


def _point_latest(run_dir: Path, target_name: str) -> None:
    """Atomically point run_dir/latest.h5 at ``target_name`` (relative symlink).

    Falls back to a hard link where symlinks are unsupported; if neither works the
    newest checkpoint is still found by scanning, so this only warns.
    """
    tmp = run_dir / _LATEST_TMP
    _remove_quietly(tmp)
    try:
        os.symlink(target_name, tmp)
    except OSError:
        try:
            os.link(run_dir / target_name, tmp)
        except OSError as exc:
            print(f"hpcsgd: warning: could not update {run_dir / LATEST} ({exc})", file=sys.stderr)
            return
    os.replace(tmp, run_dir / LATEST)


def save_checkpoint(run_dir: Path, tree: dict, keep: int = 3) -> Path:
    """Atomically write ``tree`` as ``run_dir/ckpt-<update>.h5`` and return its path.

    ``tree``'s root must carry the attributes of ``REQUIRED_ROOT_ATTRS`` except
    ``format``, ``format_version`` and ``created``, which are added here.

    Retention: the new file plus the ``keep - 1`` newest checkpoints with a *lower*
    update are kept; older ones are deleted.  Checkpoints with a *higher* update (left
    by an abandoned timeline, e.g. after resuming from an older file) are never
    deleted here; they are overwritten when the run reaches the same update, and
    ``latest.h5`` always names the file written last.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an integer >= 1, got {keep!r}")
    if not isinstance(tree, dict):
        raise TypeError("checkpoint tree must be a dict")
    missing = [a for a in REQUIRED_ROOT_ATTRS if a not in _ADDED_BY_SAVE and a not in tree]
    if missing:
        raise ValueError("checkpoint tree lacks root attribute(s) " + ", ".join(missing))
    update = tree["update"]
    if isinstance(update, bool) or not isinstance(update, (int, np.integer)) or update < 0:
        raise ValueError(f"checkpoint 'update' must be a non-negative integer, got {update!r}")
    update = int(update)

    root = dict(tree)
    root["update"] = update
    root["format"] = FORMAT
    root["format_version"] = FORMAT_VERSION
    root["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if "hpcsgd_version" not in root:
        from hpcsgd import __version__

        root["hpcsgd_version"] = __version__

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(update)
    final = run_dir / name
    tmp = run_dir / f".{name}.tmp"
    _remove_quietly(tmp)  # a stale temp of this very update: never a checkpoint

    image = _file_image(root)
    try:
        with open(tmp, "wb") as fh:
            fh.write(image)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        # A Python-level failure: drop the partial temp file (a hard crash leaves it
        # behind; the next save removes it).  Existing checkpoints were not touched.
        _remove_quietly(tmp)
        raise
    _fsync_dir(run_dir)

    # The new checkpoint is durable: now (and only now) touch anything else.
    _point_latest(run_dir, name)
    _fsync_dir(run_dir)

    for p in run_dir.iterdir():
        if _TMP_RE.match(p.name):
            _remove_quietly(p)
    older = [p for p in list_checkpoints(run_dir) if (_checkpoint_update(p) or 0) < update]
    for p in older[keep - 1 :]:
        _remove_quietly(p)
    return final


# ---------------------------------------------------------------------------- load
def list_checkpoints(path: Path) -> list[Path]:
    """A directory: its ``ckpt-*.h5`` files, highest update first.  A file: ``[file]``."""
    path = Path(path)
    if path.is_dir():
        found = []
        for p in path.iterdir():
            u = _checkpoint_update(p)
            if u is not None and p.is_file():
                found.append((u, p))
        found.sort(key=lambda t: (t[0], t[1].name), reverse=True)
        return [p for _, p in found]
    if path.exists():
        return [path]
    raise UserError(f"checkpoint path {path} does not exist")


def _reason(exc: BaseException) -> str:
    """One line for an exception: our own ValueErrors carry a reason, others their type."""
    lines = str(exc).strip().splitlines()
    text = " ".join(lines[0].split()) if lines else ""
    if type(exc) is ValueError:
        return text or "invalid content"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _read_checkpoint(path: Path, check: Callable[[dict], None] | None = None,
                     checksums: ChecksumReport | None = None) -> dict:
    """Read, verify and validate one file; raise ValueError(one-line reason) on any problem.

    ``check(tree)``, called last, may reject the file by raising ValueError.
    ``checksums`` (optional) receives what the checksum verification found."""
    report = ChecksumReport() if checksums is None else checksums
    try:
        f = h5py.File(path, "r", locking=False)
    except _DAMAGE_ERRORS as exc:
        raise ValueError(f"cannot open as HDF5 ({_reason(exc)})") from None
    try:
        with f:
            tree = read_tree(f, report)
    except _DAMAGE_ERRORS as exc:
        raise ValueError(f"unreadable content ({_reason(exc)})") from None

    # The layout's reason is the more specific one (a deleted dataset also changes its
    # group's checksum); a checksum mismatch alone is damage the layout cannot see.
    problems = []
    try:
        validate_tree(tree)
    except _DAMAGE_ERRORS as exc:
        problems.append(_reason(exc))
    if report.mismatched:
        problems.append(f"the file is damaged: checksum mismatch in {_listed(report.mismatched)}")
    version = tree.get("format_version")
    if report.missing and _is_int(version) and version >= FIRST_CHECKSUMMED_VERSION:
        problems.append(f"no checksum on {_listed(report.missing)} (format {version} checksums everything)")
    if problems:
        raise ValueError("; ".join(problems))
    if check is not None:
        try:
            check(tree)
        except _DAMAGE_ERRORS as exc:
            raise ValueError(_reason(exc)) from None
    return tree


@dataclass
class Loaded:
    """A checkpoint found by :func:`find_checkpoint`: the file, its tree, what its
    checksums said, and the files tried before it and refused (path, reason)."""

    file: Path
    tree: dict
    checksums: ChecksumReport
    skipped: list[tuple[Path, str]]


def _directory_candidates(directory: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Checkpoint files, the one written last first (modification time), and the
    entries refused without reading them (a dangling ``latest.h5``, a ``ckpt-*`` name
    that is not a regular file).  ``latest.h5`` cannot decide the order: a crash
    between a checkpoint's rename and the symlink swap leaves it naming the previous
    file, and a file of an abandoned timeline (after resuming from an older one) can
    carry a higher update than the file written last."""
    refused = []
    latest = directory / LATEST
    if latest.is_symlink() and not latest.exists():
        refused.append((latest, f"a symlink to {os.readlink(latest)}, which does not exist"))
    for p in sorted(directory.iterdir()):
        if _checkpoint_update(p) is not None and not p.is_file():
            what = "a dangling symlink" if p.is_symlink() and not p.exists() else "not a regular file"
            refused.append((p, what))
    cands = list_checkpoints(directory)
    if not cands and latest.is_file():
        return [latest], refused  # hard-link/copy fallback without ckpt-* names

    def written(p: Path) -> tuple[int, int]:
        try:
            return p.stat().st_mtime_ns, _checkpoint_update(p) or 0
        except OSError:
            return -1, -1
    return sorted(cands, key=written, reverse=True), refused


def find_checkpoint(path: Path, check: Callable[[dict], None] | None = None) -> Loaded:
    """Find and load a checkpoint without printing anything (see :func:`load_checkpoint`)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise UserError(f"checkpoint path {path} does not exist")
    if path.is_dir():
        directory = path
    elif path.name == LATEST:
        directory = path.parent
    else:
        if not path.is_file():
            what = (f"a symlink to {os.readlink(path)}, which does not exist" if path.is_symlink()
                    and not path.exists() else "not a regular file")
            raise UserError(f"{path}: not a valid hpcsgd checkpoint ({what})")
        report = ChecksumReport()
        try:
            return Loaded(path, _read_checkpoint(path, check, report), report, [])
        except ValueError as exc:
            raise UserError(f"{path}: not a valid hpcsgd checkpoint ({exc})") from None

    try:
        cands, skipped = _directory_candidates(directory)
    except OSError as exc:
        raise UserError(f"cannot list the run directory {directory} ({exc.strerror or exc})") from None
    if not cands and not skipped:
        raise UserError(f"no checkpoint in {directory} (expected ckpt-<update>.h5 files)")
    for cand in cands:
        report = ChecksumReport()
        try:
            return Loaded(cand, _read_checkpoint(cand, check, report), report, skipped)
        except ValueError as exc:
            skipped.append((cand, str(exc)))
    raise UserError(f"no valid checkpoint in {directory} ("
                    + "; ".join(f"{p.name}: {why}" for p, why in skipped) + ")")


def load_checkpoint(path: Path, check: Callable[[dict], None] | None = None) -> tuple[Path, dict]:
    """Load a checkpoint; return ``(file, tree)`` with the whole tree read.

    ``path`` may be a run directory, its ``latest.h5``, or a specific file.  For a
    directory (or ``latest.h5``) the checkpoint written last is tried first, then the
    others newest first; damaged, incomplete or inconsistent files (see
    :func:`validate_tree`, and checksums) are skipped with a warning on stderr naming
    the file and the reason.  A specific such file is a :class:`UserError`.

    ``check(tree)``, if given, is called on each candidate that passed validation and
    may reject it by raising ``ValueError(reason)`` (the engine's deeper checks), with
    the same effect as damage.
    """
    loaded = find_checkpoint(path, check)
    nexts = [p for p, _ in loaded.skipped[1:]] + [loaded.file]
    for (bad, why), nxt in zip(loaded.skipped, nexts):
        print(f"hpcsgd: warning: skipping corrupt checkpoint {bad} ({why}); falling back to {nxt}",
              file=sys.stderr, flush=True)
    return loaded.file, loaded.tree
