"""Generic, atomic HDF5 checkpoint I/O.

The engine builds the *content* of a checkpoint as a nested Python tree; this module
only knows how to write such a tree to HDF5 safely and read it back:

* ``dict``           -> HDF5 group
* ``np.ndarray``     -> dataset (under the top-level groups ``trace`` and ``eval``:
                        resizable along axis 0, ``maxshape=(None, ...)``, chunked)
* ``int``, ``float``, ``bool``, ``str`` (and NumPy scalars)
                     -> attributes of the enclosing group
* ``None``           -> omitted (the key is absent when read back)

Anything else (lists, tuples, object/str arrays, bytes) is a ``TypeError``.

No pickle is involved anywhere: only numeric datasets and numeric/UTF-8 attributes.

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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcsgd.errors import UserError

FORMAT = "hpcsgd-checkpoint"
FORMAT_VERSION = 1
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

_CKPT_RE = re.compile(r"^ckpt-(\d+)\.h5$")
_TMP_RE = re.compile(r"^\.ckpt-\d+\.h5\.tmp$")
_LATEST_TMP = ".latest.h5.tmp"
# Library-version bounds: "latest" lets HDF5 switch to dense attribute storage, so a
# group may carry many (large) attributes, e.g. one RNG state per rank.
_LIBVER = ("v108", "latest")

_SCALAR_TYPES = (bool, int, float, str, np.bool_, np.integer, np.floating, np.str_)


# --------------------------------------------------------------------------- trees
def write_tree(group: h5py.Group, tree: dict) -> None:
    """Write a nested dict into ``group`` (see module docstring for the mapping)."""
    if not isinstance(tree, dict):
        raise TypeError(f"checkpoint tree at {group.name!r} must be a dict, got {type(tree).__name__}")
    for key, value in tree.items():
        if not isinstance(key, str) or not key or "/" in key or key == ".":
            raise ValueError(f"invalid checkpoint key {key!r} in {group.name!r}")
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
                group.create_dataset(
                    key,
                    data=value,
                    maxshape=(None,) + value.shape[1:],
                    chunks=(max(rows, 1),) + value.shape[1:],
                )
            else:
                group.create_dataset(key, data=value)
        elif isinstance(value, _SCALAR_TYPES):
            if isinstance(value, np.str_):
                value = str(value)
            group.attrs[key] = value
        else:
            raise TypeError(
                f"checkpoint entry {where!r} has unsupported type {type(value).__name__} "
                "(use dict, np.ndarray, int, float, bool or str)"
            )


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


def read_tree(group: h5py.Group) -> dict:
    """Inverse of :func:`write_tree`: datasets are read fully into ``np.ndarray``,
    attributes become Python scalars / ``str``."""
    out: dict[str, Any] = {}
    for key, value in group.attrs.items():
        out[key] = _attr_to_python(value)
    for key, item in group.items():
        if isinstance(item, h5py.Group):
            out[key] = read_tree(item)
        elif isinstance(item, h5py.Dataset):
            if item.shape is None:  # null dataspace
                out[key] = np.empty(0, dtype=item.dtype)
            else:
                out[key] = np.asarray(item[...])
        # other link kinds (dangling soft/external links) are ignored
    return out


# ---------------------------------------------------------------------- validation
def validate_tree(tree: dict) -> None:
    """Raise ``ValueError(reason)`` if ``tree`` is not a complete, supported checkpoint."""
    if not isinstance(tree, dict):
        raise ValueError("not a checkpoint tree")
    fmt = tree.get("format")
    if fmt is None:
        raise ValueError("missing root attribute 'format'")
    if fmt != FORMAT:
        raise ValueError(f"format attribute is {fmt!r}, expected {FORMAT!r}")
    missing = [a for a in REQUIRED_ROOT_ATTRS if a not in tree]
    if missing:
        raise ValueError("missing root attribute(s) " + ", ".join(repr(m) for m in missing))
    version = tree["format_version"]
    if isinstance(version, bool) or not isinstance(version, int):
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
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"root attribute {name!r} is {v!r}, expected a non-negative integer")
    if not isinstance(tree["config"], str):
        raise ValueError("root attribute 'config' is not a JSON string")
    try:
        json.loads(tree["config"])
    except ValueError as exc:
        raise ValueError(f"root attribute 'config' is not valid JSON ({exc})") from None
    model = tree.get("model")
    if not isinstance(model, dict):
        raise ValueError("missing group /model")
    params = model.get("params")
    if not isinstance(params, np.ndarray):
        raise ValueError("missing dataset /model/params")
    if params.ndim != 1 or params.dtype.kind != "f":
        raise ValueError(f"/model/params has shape {params.shape} and dtype {params.dtype}, expected float [d]")
    for gname in RESIZABLE_GROUPS:
        if gname not in tree:
            continue
        grp = tree[gname]
        if not isinstance(grp, dict):
            raise ValueError(f"/{gname} is not a group")
        lengths = {}
        for col, arr in grp.items():
            if not isinstance(arr, np.ndarray):
                continue  # attributes on the group are allowed
            if arr.ndim != 1:
                raise ValueError(f"/{gname}/{col} is not 1-D (shape {arr.shape})")
            lengths[col] = arr.shape[0]
        if len(set(lengths.values())) > 1:
            desc = ", ".join(f"{c}={n}" for c, n in sorted(lengths.items()))
            raise ValueError(f"/{gname} columns have unequal lengths ({desc})")


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


def _read_checkpoint(path: Path) -> dict:
    """Read and validate one file; raise ValueError(short reason) on any problem."""
    try:
        f = h5py.File(path, "r", locking=False)
    except (OSError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"cannot open as HDF5: {msg}") from None
    try:
        with f:
            tree = read_tree(f)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"unreadable content: {msg}") from None
    validate_tree(tree)
    return tree


def _directory_candidates(directory: Path) -> list[Path]:
    """Checkpoint files, the one written last first (modification time).  ``latest.h5``
    cannot decide: a crash between a checkpoint's rename and the symlink swap leaves it
    naming the previous file, and a file of an abandoned timeline (after resuming from
    an older one) can carry a higher update than the file written last."""
    cands = list_checkpoints(directory)
    if not cands and (directory / LATEST).is_file():
        return [directory / LATEST]  # hard-link/copy fallback without ckpt-* names

    def written(p: Path) -> tuple[int, int]:
        try:
            return p.stat().st_mtime_ns, _checkpoint_update(p) or 0
        except OSError:
            return -1, -1
    return sorted(cands, key=written, reverse=True)


def load_checkpoint(path: Path) -> tuple[Path, dict]:
    """Load a checkpoint; return ``(file, tree)`` with the whole tree read.

    ``path`` may be a run directory, its ``latest.h5``, or a specific file.  For a
    directory (or ``latest.h5``) the checkpoint written last is tried first, then the
    others newest first; corrupt or incomplete files are skipped with a warning on
    stderr.  A specific corrupt file is a :class:`UserError`.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise UserError(f"checkpoint path {path} does not exist")
    if path.is_dir():
        directory = path
    elif path.name == LATEST:
        directory = path.parent
    else:
        try:
            return path, _read_checkpoint(path)
        except ValueError as exc:
            raise UserError(f"{path}: not a valid hpcsgd checkpoint ({exc})") from None

    cands = _directory_candidates(directory)
    if not cands:
        raise UserError(f"no checkpoint in {directory} (expected ckpt-<update>.h5 files)")
    problems = []
    for i, cand in enumerate(cands):
        try:
            return cand, _read_checkpoint(cand)
        except ValueError as exc:
            problems.append(f"{cand.name}: {exc}")
            nxt = cands[i + 1] if i + 1 < len(cands) else None
            if nxt is not None:
                print(
                    f"hpcsgd: warning: skipping corrupt checkpoint {cand} ({exc}); "
                    f"falling back to {nxt}",
                    file=sys.stderr,
                    flush=True,
                )
    raise UserError(f"no valid checkpoint in {directory} ({'; '.join(problems)})")
