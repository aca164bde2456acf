"""Numba kernels: per-model loss / gradient / per-example gradient / accuracy, and
regularisers.  Pure ``@njit(cache=True)`` functions over NumPy arrays (no MPI, no
Python objects); ``hpcsgd.models`` wraps them behind a uniform interface.

Each model module (``logistic``, ``softmax``, ``least_squares``, ``mlp``) provides
``loss_sum``, ``grad_sum``, ``per_example_grads`` and ``correct_count`` with the
same argument order ``(w, X, y, idx[, out])``; the ``mlp`` kernels take one extra
last argument, ``n_hidden``.  The batched loops live once: in ``linear`` for the
one-output models (logistic and least squares pass their link/loss) and in ``dense``
for a layer with C outputs (softmax, and the mlp's first layer, pass their per-row
functions).  ``regularizers`` provides ``reg_value``, ``reg_grad_add``,
``mean_finish`` and ``prox_l1``; ``optim`` the master's update steps; ``balance`` the
gradient-balancing kernels of the GraB-type orderings.

All kernels use only the fast-math flags ``contract``, ``reassoc`` and ``nsz``
(never ``nnan``/``ninf``), so NaN and Inf propagate to the results.

Why the cache directory is set here: Numba's on-disk cache (``cache=True``) decides
whether cached machine code is still valid from the source file of the cached
function alone, yet that code has every njit function it calls compiled into it.  A
kernel that calls a helper from another file (every model calls ``linear`` or
``dense``) would keep running the old helper after an edit to it.  So, before any
kernel module is imported (the ``@njit(cache=True)`` decorators pick their cache
directory when they run), ``numba.config.CACHE_DIR`` is pointed at a directory named
after a hash of the bytes of ALL files in this package and the host name:
``$XDG_CACHE_HOME/hpcsgd/numba-<hash>/<host>`` (default ``~/.cache/hpcsgd/...``; a
private directory under the temp dir if that is not writable).  Per host, because on a
cluster the home directory is shared: every node compiles into a directory of its own
(its CPU may differ) instead of all nodes renaming files into one over NFS.  Any edit to any kernel file
thus starts from a fresh cache; directories of older hashes are never read again and
may be deleted.  A ``NUMBA_CACHE_DIR`` set by the user is respected (then keeping it
fresh is the user's business).  MPI ranks that compile into the same directory at
once are safe: Numba writes each cache file under a temporary name and renames it
into place.
"""

import hashlib
import os
import socket
import tempfile
from pathlib import Path


def source_hash(folder: Path) -> str:
    """First 16 hex digits of the sha256 of the names and bytes of folder/*.py."""
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _usable_dir(d: Path) -> bool:
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        return os.access(d, os.W_OK | os.X_OK)
    except OSError:
        return False


def numba_cache_dir() -> str:
    """This host's cache directory for this exact kernel source ("" if none is writable)."""
    name = Path(f"numba-{source_hash(Path(__file__).resolve().parent)}") / (socket.gethostname() or "host")
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    try:
        user_cache = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    except RuntimeError:  # no home directory
        user_cache = None
    if user_cache is not None and _usable_dir(user_cache / "hpcsgd" / name):
        return str(user_cache / "hpcsgd" / name)
    # fallback: a directory of our own under the shared temp dir
    uid = os.getuid() if hasattr(os, "getuid") else 0
    private = Path(tempfile.gettempdir()) / f"hpcsgd-{uid}"
    try:
        private.mkdir(mode=0o700, exist_ok=True)
        if private.is_symlink() or private.stat().st_uid != uid:
            return ""
    except OSError:
        return ""
    return str(private / name) if _usable_dir(private / name) else ""


if not os.environ.get("NUMBA_CACHE_DIR"):
    from numba.core import config as _numba_config

    # "" (nothing writable) leaves Numba's default: __pycache__ next to the sources.
    _numba_config.CACHE_DIR = numba_cache_dir()

# every kernel module, now: each one's decorators must run while CACHE_DIR is set
from . import balance, dense, least_squares, linear, logistic, mlp, optim, regularizers, softmax  # noqa: E402

__all__ = ["balance", "dense", "least_squares", "linear", "logistic", "mlp", "optim", "regularizers", "softmax"]
