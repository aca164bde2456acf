"""The ordering interface and the cursor a worker walks its epoch order with.

An ordering's ``state_dict()`` is flat: every value is a ``str``, an ``int`` or a NumPy
int64/float64 array, so the dict goes unchanged through ``np.savez`` and
``np.load(..., allow_pickle=False)`` (which hands back 0-d arrays for the scalars) and
through the checkpoint's HDF5 tree.  Per-worker entries carry the worker's number j as a
suffix (``rng_{j}``, ``perm_{j}``, ...).  Every kind stores ``kind``, ``epoch``,
``sizes`` (int64 [M], the shard sizes), ``workers`` (int64 [M]) and ``rng_{j}`` (the
JSON of worker j's PCG64 stream).

``load_state_dict`` reads the whole state before it changes anything: a state of
another kind, number of workers, worker numbers, shard sizes or gradient dimension d,
or one with a missing key or a value of the wrong type, shape or range, is refused with
a ``ValueError`` naming the key, and the ordering is left as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Sequence

import numpy as np

from hpcsgd import streams
from hpcsgd.streams import make_stream, set_stream_state, stream_state

_LARGEST = 2**62  # bound for counters that have no natural one (epoch, d)


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    return f"{type(value).__name__} {value!r}"[:80]


class StateReader:
    """One ordering state (a dict, an ``np.load`` archive or a checkpoint tree read back),
    read key by key: a missing key or a value of the wrong type, shape or range is a
    ``ValueError`` naming the key."""

    def __init__(self, state):
        if not isinstance(state, Mapping):
            raise ValueError(f"an ordering state is a mapping of names to values, got {_describe(state)}")
        self.state = state

    def get(self, key: str):
        try:
            return self.state[key]
        except KeyError:
            raise ValueError(f"ordering state has no key {key!r} (damaged, or not written by this "
                             "version's state_dict())") from None

    def text(self, key: str) -> str:
        value = self.get(key)
        if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind == "U":
            value = str(value)
        if not isinstance(value, str):
            raise ValueError(f"ordering state {key!r} must be a string, got {_describe(value)}")
        return value

    def integer(self, key: str, low: int, high: int) -> int:
        value = self.get(key)
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value[()]
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"ordering state {key!r} must be an integer, got {_describe(value)}")
        if not low <= value <= high:
            raise ValueError(f"ordering state {key!r} = {value} is outside {low}..{high}")
        return int(value)

    def array(self, key: str, shape: tuple | None, dtype) -> np.ndarray:
        """A copy as ``dtype`` (int64 or float64) of the array under ``key``, which must
        have that dtype's kind and, unless ``shape`` is None (any 1-D), that shape."""
        value = self.get(key)
        try:
            a = np.asarray(value) if isinstance(value, (np.ndarray, list, tuple)) else None
        except ValueError:  # ragged nested lists
            a = None
        kinds = "iu" if np.dtype(dtype).kind in "iu" else "f"
        if a is None or a.dtype.kind not in kinds or (a.shape != shape if shape is not None else a.ndim != 1):
            want = "int64" if kinds == "iu" else "float64"
            raise ValueError(f"ordering state {key!r} must be a {want} array of shape "
                             f"{shape if shape is not None else '(n,)'}, got {_describe(value)}")
        return a.astype(dtype, copy=True)

    def permutation(self, key: str, n: int) -> np.ndarray:
        p = self.array(key, (n,), np.int64)
        if not np.array_equal(np.sort(p), np.arange(n)):
            raise ValueError(f"ordering state {key!r} is not a permutation of 0..{n - 1}")
        return p

    def stream(self, key: str) -> str:
        text = self.text(key)
        try:
            set_stream_state(np.random.Generator(np.random.PCG64()), text)  # a scratch stream
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"ordering state {key!r} is not a PCG64 stream state ({exc})") from None
        return text


class Ordering:
    kind = ""
    # What the rest of hpcsgd needs to know of an ordering (never its kind's name):
    per_example = False  # needs every visited example's gradient (step(G), G [M, B, d])
    pairs = False        # balances consecutive pairs: a batch must be even (or 1)
    coordinated = False  # one running sum for all workers, signs decided at the master: the
                         # workers step together (method.kind = "sync") on equal shards and
                         # every result carries its pair differences

    @classmethod
    def pair_differences(cls, batch: int) -> int:
        """Pair differences one job's result carries to the master (B/2; one every
        other job when B = 1)."""
        return max(batch // 2, 1) if cls.coordinated else 0

    def __init__(self, sizes: Sequence[int], seed: int, workers: Sequence[int] | None = None):
        self.sizes = [_count(n, "shard size") for n in sizes]
        if not self.sizes:
            raise ValueError("an ordering needs at least one worker (sizes is empty)")
        self.workers = ([_count(j, "worker number") for j in workers] if workers is not None
                        else list(range(1, len(self.sizes) + 1)))
        if len(self.workers) != len(self.sizes):
            raise ValueError(f"one size per worker: {len(self.sizes)} sizes for workers {self.workers}")
        if len(set(self.workers)) != len(self.workers):
            raise ValueError(f"worker numbers must be distinct, got {self.workers}")
        self.rngs = [make_stream(seed, j, streams.ORDER) for j in self.workers]
        self.epoch = 0

    def next_epoch(self) -> list[np.ndarray]:
        """The permutations of the coming epoch, one int64 array per worker."""
        perms = self._orders()
        self.epoch += 1
        return perms

    def _orders(self) -> list[np.ndarray]:
        raise NotImplementedError

    def step(self, grads=None) -> None:
        """Called after every step; reshuffling orders never read gradients, so here
        ``grads`` is ignored and not checked (it may be left out)."""

    def state_dict(self) -> dict:
        """Flat: str, int and int64/float64 arrays only (see the module docstring)."""
        state = {"kind": self.kind, "epoch": self.epoch, "sizes": np.array(self.sizes, dtype=np.int64),
                 "workers": np.array(self.workers, dtype=np.int64)}
        for j, rng in zip(self.workers, self.rngs):
            state[f"rng_{j}"] = stream_state(rng)
        return state

    def load_state_dict(self, state) -> None:
        """Restore a ``state_dict()`` (also after ``np.savez`` / ``np.load``); a state
        that does not fit this ordering is refused and nothing is changed."""
        self._apply_state(self._read_state(StateReader(state)))

    def _read_state(self, r: StateReader) -> dict:
        """Every value of the state, checked against this ordering; changes nothing."""
        kind = r.text("kind")
        if kind != self.kind:
            raise ValueError(f"ordering state is for kind {kind!r}, this ordering is {self.kind!r}")
        sizes = r.array("sizes", None, np.int64).tolist()
        if len(sizes) != len(self.sizes):
            raise ValueError(f"ordering state is for M = {len(sizes)} workers ('sizes' = {sizes}), "
                             f"this ordering has M = {len(self.sizes)} ({self.sizes})")
        if sizes != self.sizes:
            raise ValueError(f"ordering state is for shard sizes {sizes}, this ordering has {self.sizes} "
                             f"('sizes')")
        workers = r.array("workers", (len(self.sizes),), np.int64).tolist()
        if workers != self.workers:
            raise ValueError(f"ordering state is for workers {workers}, this ordering serves {self.workers} "
                             f"('workers')")
        return {"epoch": r.integer("epoch", 0, _LARGEST),
                "rngs": [r.stream(f"rng_{j}") for j in self.workers]}

    def _apply_state(self, values: dict) -> None:
        self.epoch = values["epoch"]
        for rng, text in zip(self.rngs, values["rngs"]):
            set_stream_state(rng, text)


def _count(value, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"a {what} must be a non-negative integer, got {value!r}")
    return int(value)


class EpochCursor:
    """Walks one worker's epoch permutation in batches.

    A batch never crosses an epoch boundary: the last batch of an epoch holds what is
    left (like a data loader with drop_last=False), so every example is visited exactly
    once per epoch whatever the batch size.
    """

    def __init__(self, ordering: Ordering):
        assert len(ordering.sizes) == 1, "a cursor walks one worker's order"
        self.ordering = ordering
        self.n = ordering.sizes[0]
        self.perm = np.empty(0, dtype=np.int64)
        self.pos = 0
        self.epochs_started = 0
        self.history: list[np.ndarray] | None = None

    def next_batch(self, b: int) -> np.ndarray:
        if self.pos >= self.perm.size:
            self.perm = self.ordering.next_epoch()[0]
            self.pos = 0
            self.epochs_started += 1
            if self.history is not None:
                self.history.append(self.perm.copy())
        end = min(self.pos + b, self.perm.size)
        batch = self.perm[self.pos:end]
        self.pos = end
        return batch

    def state_dict(self) -> dict:
        state = {"ordering": self.ordering.state_dict(), "perm": self.perm.copy(), "pos": self.pos,
                 "epochs_started": self.epochs_started}
        if self.history is not None:
            state["history"] = (np.stack(self.history) if self.history
                                else np.empty((0, self.n), dtype=np.int64))
        return state

    def load_state_dict(self, state: dict) -> None:
        self.ordering.load_state_dict(state["ordering"])
        self.perm = np.asarray(state["perm"], dtype=np.int64)
        self.pos = int(state["pos"])
        self.epochs_started = int(state["epochs_started"])
        if self.history is not None and "history" in state:
            self.history = list(np.asarray(state["history"], dtype=np.int64))
