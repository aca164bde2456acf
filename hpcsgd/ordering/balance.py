"""Balancing orders (ALGORITHMS.md section 1): GraB, PairBalance and CD-GraB.

Each epoch's order is built while the previous order is visited: every visited example
(GraB) or pair of consecutive examples (PairBalance, CD-GraB) is sent to the front or
the back of the next order by the sign of its (centred or paired) gradient against a
running sum.  The first epoch is a uniform permutation from the worker's own stream.

Feed ``step(grads)`` the per-example gradients of the examples just visited, in visit
order: an array [M, B, d] or a list of M arrays [b_j, d].  Pair orders also take
``step_pairs(diffs)`` with the pair differences [M, Q, d] directly.

Pairs are formed from consecutive visited examples, across step boundaries when a step
has an odd count (so B = 1 pairs two consecutive steps).  With an odd shard size the
last example of the epoch has no partner; it goes to the middle slot of the next order,
which is the one place left, so every example is still visited every epoch.

Input checks, O(1) per worker and call (shapes and counters, never the values), all
made before anything changes, so a refused call leaves the ordering exactly as it was
(each a ValueError naming the expected and the given shape):

* ``grads`` / ``diffs`` is a 3-D array [M, B, d] (a [B, d] array for one worker is
  refused: the worker axis is not guessed, pass ``G[None]``) or a list or tuple of M
  2-D arrays [b_j, d]; M is the ordering's number of workers; d >= 1 and equal to the
  d of every earlier step (the first step fixes d; ``state_dict`` stores it).
* Each worker's rows fit in what is left of its epoch (every example once per epoch);
  before the first ``next_epoch()`` there is no epoch to step in.
* ``cd_grab`` moves all workers together: every worker's batch has the same size.
* ``step_pairs`` needs whole pairs: no example may be waiting from an odd ``step``.
* Real dtypes (float, integer, bool) are converted to float64 and non-contiguous input
  is copied to C order (exact: float64 holds every float32 and every integer up to
  2**53); complex, object and other dtypes are refused.  Pass float64 C-contiguous
  rows to avoid the copy.
* The engine-side calls for one worker (``pairs``, ``pair_ids``, ``place``) check the
  same; ``place`` also refuses more signs than pairs visited and not yet placed, and
  ``next_epoch`` refuses while an example of the epoch is unvisited or a pair unplaced.
* Values are not checked (that would be a second pass over every gradient): a NaN or
  inf gradient keeps every order a permutation, but the running sum turns NaN or inf,
  so the later signs of that epoch balance nothing (a NaN sum gives -1 throughout) and
  the next order is not balanced (GraB: the next epoch's stale mean is NaN too).  With
  finite gradients again, pair orders build a balanced order in the very next epoch,
  GraB in the one after.  The engine stops such a run at that update (the mean
  gradient is non-finite too) and keeps the last good checkpoint.

The kernels check the shapes they are given as well (O(1)) and never index past an
array's end.
"""

from __future__ import annotations

import numpy as np

from hpcsgd.kernels.balance import cd_grab_signs, grab_balance, pair_row_signs, pair_signs, place_pairs
from hpcsgd.ordering.base import _LARGEST, Ordering, StateReader, _describe

_FLOAT64 = np.dtype(np.float64)
_WHOLE_PAIRS = "step_pairs() needs whole pairs; use step() for odd counts"


def _as_float64(a: np.ndarray, what: str) -> np.ndarray:
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{what} must be real numbers (a float, integer or bool dtype), got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float64)


class _Balancing(Ordering):
    """Per-worker bookkeeping shared by all balancing orders."""

    per_example = True

    def __init__(self, sizes, seed, workers=None):
        super().__init__(sizes, seed, workers)
        self.perms: list[np.ndarray] = []
        self.next: list[np.ndarray] = [np.full(n, -1, dtype=np.int64) for n in self.sizes]
        self.pos = [0] * len(self.sizes)
        self.left = [0] * len(self.sizes)
        self.right = [n - 1 for n in self.sizes]
        self.dim = 0  # gradient dimension, known at the first step

    def _orders(self):
        if self.epoch == 0:
            self.perms = [rng.permutation(n).astype(np.int64) for rng, n in zip(self.rngs, self.sizes)]
        else:
            self._finish_epoch()
            self.perms = [p.copy() for p in self.next]
        for i, n in enumerate(self.sizes):
            self.next[i] = np.full(n, -1, dtype=np.int64)
            self.pos[i], self.left[i], self.right[i] = 0, 0, n - 1
        self._reset_sums()
        return [p.copy() for p in self.perms]

    def _finish_epoch(self) -> None:
        """Check that the next order is complete (subclasses finish it afterwards)."""
        for i, n in enumerate(self.sizes):
            if self.pos[i] != n:
                raise ValueError(f"worker {self.workers[i]}: step() saw {self.pos[i]} of "
                                 f"{n} examples this epoch; feed every visited example")

    # ------------------------------------------------------------------ input checks
    def _batch(self, batch, what: str, axis: str, pairs: bool = False):
        """Each worker's rows [b_j, d] of ``batch`` (an array [M, B, d] or M arrays
        [b_j, d]) as float64 C arrays (the array itself when it is one), once M, d and
        what is left of the epoch are checked; raises ValueError and changes nothing,
        except that the first accepted batch fixes d.  ``pairs``: rows are pair
        differences (two examples each) and no example may be waiting from a step."""
        M = len(self.sizes)
        if isinstance(batch, np.ndarray):
            shape = batch.shape
            if len(shape) != 3 or shape[0] != M or not shape[2] or (self.dim and shape[2] != self.dim):
                hint = "; is the worker axis missing? (pass G[None] for one worker)" if len(shape) == 2 \
                    else ""
                raise ValueError(self._shape_error(what, axis, f"an array of shape {shape}") + hint)
            if batch.dtype is not _FLOAT64:
                batch = _as_float64(batch, what)
            elif not batch.flags.c_contiguous:  # its rows may still be
                batch = [g if g.flags.c_contiguous else np.ascontiguousarray(g) for g in batch]
            counts, d = [shape[1]] * M, shape[2]
        elif isinstance(batch, (list, tuple)):
            if len(batch) != M:
                raise ValueError(self._shape_error(what, axis, f"a {type(batch).__name__} of {len(batch)}"))
            batch = [self._worker_rows(i, g, what, axis) for i, g in enumerate(batch)]
            counts, d = [g.shape[0] for g in batch], batch[0].shape[1]
            for i, g in enumerate(batch):
                if g.shape[1] != d:
                    raise ValueError(f"{self.kind}: worker {self.workers[i]}'s {what} have shape {g.shape}, "
                                     f"expected [{axis}_j, {d}] (d = {d} as worker {self.workers[0]}'s)")
            if self.coordinated and len(set(counts)) > 1:  # every worker's batch the same size
                raise ValueError(f"{self.kind} moves all workers together: every worker's {what} need the "
                                 f"same number of rows, got shapes {[g.shape for g in batch]}")
        else:
            raise ValueError(self._shape_error(what, axis, _describe(batch)))
        per_row = 2 if pairs else 1
        for i, b in enumerate(counts):
            if not self.perms or per_row * b > self.sizes[i] - self.pos[i]:
                raise ValueError(self._room_error(i, per_row * b, f"{what} of shape {batch[i].shape}"))
            if pairs and self.pending_id[i] >= 0:
                raise ValueError(_WHOLE_PAIRS)
        self._set_dim(d)
        return batch

    def _worker_rows(self, i: int, rows, what: str, axis: str) -> np.ndarray:
        """One worker's rows [b, d] as a float64 C array, shape checked against d."""
        try:
            g = rows if isinstance(rows, np.ndarray) else np.asarray(rows)
        except ValueError:  # ragged nested lists
            raise ValueError(f"{self.kind}: worker {self.workers[i]}'s {what} must be a 2-D array "
                             f"[{axis}, {self._d_text()}], got {_describe(rows)}") from None
        if g.ndim != 2 or not g.shape[1] or (self.dim and g.shape[1] != self.dim):
            raise ValueError(f"{self.kind}: worker {self.workers[i]}'s {what} must have shape "
                             f"[{axis}, {self._d_text()}], got shape {g.shape}")
        if g.dtype is not _FLOAT64:
            return _as_float64(g, what)
        return g if g.flags.c_contiguous else np.ascontiguousarray(g)

    def _d_text(self) -> str:
        return f"{self.dim}" if self.dim else "d"

    def _shape_error(self, what: str, axis: str, got: str) -> str:
        M, d = len(self.sizes), self._d_text()
        known = f", d = {self.dim} as in the earlier steps" if self.dim else ", d >= 1"
        return (f"{self.kind}: expected {what} of shape [M, {axis}, d] = [{M}, {axis}, {d}]{known} "
                f"(or a list of {M} arrays [{axis}_j, {d}]), got {got}")

    def _room_error(self, i: int, count: int, given: str) -> str:
        if not self.perms:
            return "call next_epoch() before step()"
        left = self.sizes[i] - self.pos[i]
        return (f"{self.kind}: worker {self.workers[i]}: {given} visit {count} examples, but {left} of "
                f"the epoch's {self.sizes[i]} are left (call next_epoch() to start the next epoch)")

    def _set_dim(self, d: int) -> None:
        if not self.dim:
            self.dim = d
            self._start_sums()

    def _start_sums(self) -> None:
        """Allocate the running sums once d is known."""

    def _visit(self, i: int, count: int) -> np.ndarray:
        """The next ``count`` examples of worker i's current order (the caller has
        checked that they are left)."""
        ids = self.perms[i][self.pos[i]:self.pos[i] + count]
        self.pos[i] += count
        return ids

    def _reset_sums(self) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ state
    def state_dict(self):
        state = super().state_dict()
        state["dim"] = self.dim
        for i, j in enumerate(self.workers):
            w = {"perm": self.perms[i].copy() if self.perms else np.empty(0, dtype=np.int64),
                 "next": self.next[i].copy(), "pos": self.pos[i], "left": self.left[i],
                 "right": self.right[i], **self._worker_state(i)}
            state.update((f"{name}_{j}", value) for name, value in w.items())
        return state

    def _read_state(self, r: StateReader) -> dict:
        values = super()._read_state(r)
        dim = r.integer("dim", 0, _LARGEST)
        if self.dim and dim and dim != self.dim:
            raise ValueError(f"ordering state is for gradients of d = {dim}, this ordering has "
                             f"taken d = {self.dim}")
        values["dim"] = dim
        values["per_worker"] = [self._read_worker(r, i, values) for i in range(len(self.sizes))]
        return values

    def _read_worker(self, r: StateReader, i: int, values: dict) -> dict:
        j, n, epoch = self.workers[i], self.sizes[i], values["epoch"]
        key = lambda name: f"{name}_{j}"  # noqa: E731
        w = {"perm": r.permutation(key("perm"), n) if epoch else r.array(key("perm"), (0,), np.int64),
             "next": r.array(key("next"), (n,), np.int64), "pos": r.integer(key("pos"), 0, n if epoch else 0),
             "left": r.integer(key("left"), 0, n), "right": r.integer(key("right"), -1, n - 1)}
        nxt, left, right = w["next"], w["left"], w["right"]
        placed = np.concatenate((nxt[:left], nxt[right + 1:]))
        if left > right + 1 or (nxt[left:right + 1] != -1).any() or (placed < 0).any() or \
                (placed >= n).any() or np.unique(placed).size != placed.size:
            raise ValueError(f"ordering state {key('next')!r}, {key('left')!r} = {left} and "
                             f"{key('right')!r} = {right} do not describe a partly built order (distinct "
                             f"examples in slots 0..left-1 and right+1..n-1, -1 between)")
        w.update(self._read_worker_sums(r, key, w, values["dim"]))
        return w

    def _apply_state(self, values):
        super()._apply_state(values)
        self.dim = values["dim"]
        per_worker = values["per_worker"]
        self.perms = [w["perm"] for w in per_worker] if values["epoch"] else []
        for i, w in enumerate(per_worker):
            self.next[i] = w["next"]
            self.pos[i], self.left[i], self.right[i] = w["pos"], w["left"], w["right"]
        self._apply_worker_sums(per_worker)

    def _worker_state(self, i: int) -> dict:
        return {}

    def _read_worker_sums(self, r: StateReader, key, w: dict, dim: int) -> dict:
        return {}

    def _apply_worker_sums(self, per_worker: list[dict]) -> None:
        pass


class GraB(_Balancing):
    """Mean balance with a stale mean, run independently on every worker (ID-GraB).

    Epoch e + 1 centres every gradient by the mean of the raw gradients of epoch e.  In
    the first epoch no mean is known yet, so the stale mean is zero: the order of epoch
    2 balances the raw, uncentred gradients of epoch 1; centring starts with epoch 2.
    """

    kind = "grab"

    def __init__(self, sizes, seed, workers=None):
        super().__init__(sizes, seed, workers)
        self.s: list[np.ndarray] = []
        self.mean: list[np.ndarray] = []
        self.acc: list[np.ndarray] = []

    def _reset_sums(self):
        # The stale mean for the coming epoch is the mean of the RAW gradients of the
        # epoch just finished (accumulating centred ones would cancel the centring).
        for i, n in enumerate(self.sizes[:len(self.s)]):
            np.divide(self.acc[i], n, out=self.mean[i])
            self.acc[i][:] = 0.0
            self.s[i][:] = 0.0

    def _start_sums(self):
        M, d = len(self.sizes), self.dim
        self.s, self.mean, self.acc = ([np.zeros(d) for _ in range(M)] for _ in range(3))  # mean 0: see above

    def step(self, grads=None) -> None:
        for i, g in enumerate(self._batch(grads, "gradients", "B")):
            ids = self._visit(i, g.shape[0])
            self.left[i], self.right[i] = grab_balance(self.s[i], self.mean[i], self.acc[i], g, ids,
                                                       self.next[i], self.left[i], self.right[i])

    def _worker_state(self, i):
        if not self.dim:
            return {name: np.zeros(0) for name in ("s", "mean", "acc")}
        return {"s": self.s[i].copy(), "mean": self.mean[i].copy(), "acc": self.acc[i].copy()}

    def _read_worker_sums(self, r, key, w, dim):
        if w["pos"] and not dim:
            raise ValueError(f"ordering state {key('pos')!r} = {w['pos']} but 'dim' = 0 (no step taken)")
        if w["left"] + w["next"].size - 1 - w["right"] != w["pos"]:
            raise ValueError(f"ordering state {key('pos')!r} = {w['pos']} differs from the {key('next')!r} "
                             f"slots filled (GraB places every visited example)")
        return {name: r.array(key(name), (dim,), np.float64) for name in ("s", "mean", "acc")}

    def _apply_worker_sums(self, per_worker):
        self.s, self.mean, self.acc = ([w[name] for w in per_worker] if self.dim else []
                                       for name in ("s", "mean", "acc"))


class _Pairs(_Balancing):
    """Pairs consecutive visited examples; an unpaired one waits for the next step."""

    pairs = True

    def __init__(self, sizes, seed, workers=None):
        super().__init__(sizes, seed, workers)
        self.pending_id = [-1] * len(self.sizes)
        self.pending_grad: list[np.ndarray | None] = [None] * len(self.sizes)

    def _finish_epoch(self):
        super()._finish_epoch()
        for i in range(len(self.sizes)):
            waiting = self._unplaced(i)
            if waiting:
                raise ValueError(f"worker {self.workers[i]}: {waiting} visited pairs still wait for "
                                 f"place(); place every pair before next_epoch()")
        for i in range(len(self.sizes)):
            if self.pending_id[i] >= 0:  # odd shard: the middle slot is the one left
                self.next[i][self.left[i]] = self.pending_id[i]
                self.left[i] += 1
                self.pending_id[i], self.pending_grad[i] = -1, None

    def _unplaced(self, i: int) -> int:
        """Pairs visited this epoch whose signs have not been placed yet."""
        return (self.pos[i] - (self.pending_id[i] >= 0)) // 2 - self.left[i]

    def _pair_rows(self, i: int, grads: np.ndarray):
        """Visit a batch for worker i: pair ids (first, second) and the pairs' gradient
        rows as ``lead`` then ``rest``, [2, d] and [2m, d], pairing rows 2r and 2r + 1.
        ``lead`` holds the example pending from the previous step and grads[0] (None if
        none was pending); ``rest`` is a view of the batch, so only ``lead`` is copied."""
        ids = self._visit(i, grads.shape[0])
        held = self.pending_grad[i] if self.pending_id[i] >= 0 else None
        if held is not None:
            ids = np.concatenate(([self.pending_id[i]], ids))
        self.pending_id[i], self.pending_grad[i] = -1, None
        q = ids.size // 2
        if ids.size % 2:
            # a copy: the caller may reuse the batch's buffer before the next step
            self.pending_id[i] = int(ids[-1])
            self.pending_grad[i] = grads[-1].copy() if grads.shape[0] else held
        first, second = ids[0:2 * q:2], ids[1:2 * q:2]
        if held is None or q == 0:
            return first, second, None, grads[0:2 * q]
        return first, second, np.stack((held, grads[0])), grads[1:2 * q - 1]

    def _pairs(self, i: int, grads: np.ndarray):
        """Pair ids (first, second) and differences g_first - g_second for worker i."""
        first, second, lead, rest = self._pair_rows(i, grads)
        diffs = rest[0::2] - rest[1::2]
        if lead is not None:
            diffs = np.concatenate((lead[0:1] - lead[1:2], diffs))
        return first, second, diffs

    def whole_pairs(self, i: int, count: int) -> bool:
        """``count`` examples of worker i make whole pairs: no example is waiting for a
        partner and ``count`` is even (then ``pair_ids`` may be used)."""
        return count % 2 == 0 and self.pending_id[i] < 0

    def pair_ids(self, i: int, count: int):
        """Visit ``count`` examples given only as pair differences (no odd leftovers)."""
        if count % 2 or self.pending_id[i] >= 0:
            raise ValueError(_WHOLE_PAIRS)
        if not self.perms or not 0 <= count <= self.sizes[i] - self.pos[i]:
            raise ValueError(self._room_error(i, count, "pair_ids()"))
        ids = self._visit(i, count)
        return ids[0::2], ids[1::2]

    def _place(self, i, first, second, eps):
        self.left[i], self.right[i] = place_pairs(self.next[i], first, second, eps,
                                                  self.left[i], self.right[i])

    def _worker_state(self, i):
        g = self.pending_grad[i]
        return {"pending_id": self.pending_id[i],
                "pending_grad": g.copy() if g is not None else np.zeros(self.dim)}

    def _read_worker_sums(self, r, key, w, dim):
        n, pos, left = w["next"].size, w["pos"], w["left"]
        pending = r.integer(key("pending_id"), -1, n - 1)
        if pending >= 0 and (dim == 0 or pos == 0 or pending != w["perm"][pos - 1]):
            raise ValueError(f"ordering state {key('pending_id')!r} = {pending} is not the last visited "
                             f"example of a step (visited {pos})")
        paired = pos - (pending >= 0)
        if left != n - 1 - w["right"] or paired % 2 or 2 * left > paired:
            raise ValueError(f"ordering state {key('left')!r} = {left}, {key('right')!r} = {w['right']} and "
                             f"{key('pos')!r} = {pos} disagree (pairs fill both ends alike)")
        return {"pending_id": pending, "pending_grad": r.array(key("pending_grad"), (dim,), np.float64)}

    def _apply_worker_sums(self, per_worker):
        self.pending_id = [w["pending_id"] for w in per_worker]
        self.pending_grad = [w["pending_grad"] if w["pending_id"] >= 0 else None for w in per_worker]


class PairBalance(_Pairs):
    """PairBalance run independently on every worker (no mean needed)."""

    kind = "pair"

    def __init__(self, sizes, seed, workers=None):
        super().__init__(sizes, seed, workers)
        self.s: list[np.ndarray] = []

    def _reset_sums(self):
        self.s = [np.zeros(self.dim) for _ in self.sizes] if self.dim else []

    _start_sums = _reset_sums

    def step(self, grads=None):
        for i, g in enumerate(self._batch(grads, "gradients", "B")):
            # signs straight from the gradient rows: materialising the B/2 differences
            # first would write and re-read B/2 x d floats (out of cache at large d)
            first, second, lead, rest = self._pair_rows(i, g)
            eps = np.empty(first.size, dtype=np.int8)
            if lead is not None:
                pair_row_signs(self.s[i], lead, eps[:1])
            pair_row_signs(self.s[i], rest, eps[first.size - rest.shape[0] // 2:])
            self._place(i, first, second, eps)

    def step_pairs(self, diffs) -> None:
        for i, c in enumerate(self._batch(diffs, "pair differences", "Q", pairs=True)):
            first, second = self.pair_ids(i, 2 * c.shape[0])
            eps = np.empty(first.size, dtype=np.int8)
            pair_signs(self.s[i], c, eps)
            self._place(i, first, second, eps)

    def _worker_state(self, i):
        return {**super()._worker_state(i), "s": self.s[i].copy() if self.dim else np.zeros(0)}

    def _read_worker_sums(self, r, key, w, dim):
        return {**super()._read_worker_sums(r, key, w, dim), "s": r.array(key("s"), (dim,), np.float64)}

    def _apply_worker_sums(self, per_worker):
        super()._apply_worker_sums(per_worker)
        self.s = [w["s"] for w in per_worker] if self.dim else []


class CoordinatedSigns:
    """CD-GraB's shared half: one float64 running sum across all workers, reset every
    epoch.  The standalone ``CDGraB`` owns one; in the engine the master owns it and
    the workers only place their pairs by the signs it returns."""

    def __init__(self):
        self.s = np.zeros(0)
        self.epoch = -1

    def signs(self, diffs, epoch: int) -> np.ndarray:
        """Signs for the pair differences of the given epoch, in place order: one
        [M, Q, d] array, or a tuple of M [Q, d] arrays (float64 or float32, read where
        they are: the master passes its result buffers)."""
        if isinstance(diffs, np.ndarray):
            if diffs.ndim != 3:
                raise ValueError(f"cd_grab signs need pair differences [M, Q, d], got shape {diffs.shape}")
            rows = diffs if diffs.dtype in (np.float32, np.float64) else diffs.astype(np.float64)
            rows = np.ascontiguousarray(rows)
        else:
            rows = tuple(np.ascontiguousarray(a) for a in diffs)
            if len({(a.shape, a.dtype) for a in rows}) != 1 or rows[0].ndim != 2 \
                    or rows[0].dtype not in (np.float32, np.float64):
                raise ValueError(f"cd_grab signs need M float arrays [Q, d] of one shape and type, got "
                                 f"{[(a.shape, str(a.dtype)) for a in rows]}")
        M, Q, d = len(rows), rows[0].shape[0], rows[0].shape[1]
        if epoch != self.epoch or self.s.size != d:
            self.s = np.zeros(d)
            self.epoch = epoch
        eps = np.empty((M, Q), dtype=np.int8)
        cd_grab_signs(self.s, rows, eps)
        return eps

    def state_dict(self) -> dict:
        return {"s": self.s.copy(), "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.s = np.asarray(state["s"], dtype=np.float64).copy()
        self.epoch = int(state["epoch"])


class CDGraB(_Pairs):
    """Coordinated distributed GraB: one running sum and one pair of pointers shared by
    all workers; signs decided pair index outer, worker rank inner.

    All workers must hold the same number of examples (the engine trims shards to the
    smallest); then every worker's pointers move together.  The shared sum is stored
    as ``shared_s`` / ``shared_epoch`` in the state.
    """

    kind = "cd_grab"
    coordinated = True

    def __init__(self, sizes, seed, workers=None):
        super().__init__(sizes, seed, workers)
        if len(set(self.sizes)) > 1:
            raise ValueError(f"cd_grab needs equal shard sizes, got {self.sizes}")
        self.shared = CoordinatedSigns()

    def _reset_sums(self):
        pass  # the shared sum resets itself when the epoch number changes

    def signs(self, diffs: np.ndarray) -> np.ndarray:
        """The coordinated signs for pair differences [M, Q, d]; updates the shared sum."""
        return self.shared.signs(np.asarray(diffs), self.epoch)

    def step(self, grads=None):
        rows = self._batch(grads, "gradients", "B")
        pairs = [self._pairs(i, g) for i, g in enumerate(rows)]
        diffs = np.stack([p[2] for p in pairs])
        eps = self.signs(diffs)
        for i, (first, second, _) in enumerate(pairs):
            self._place(i, first, second, eps[i])

    def step_pairs(self, diffs) -> None:
        rows = self._batch(diffs, "pair differences", "Q", pairs=True)
        eps = self.signs(rows if isinstance(rows, np.ndarray) else np.stack(rows))
        for i in range(len(self.sizes)):
            first, second = self.pair_ids(i, 2 * eps.shape[1])
            self._place(i, first, second, eps[i])

    def visit_pairs(self, i: int, grads: np.ndarray):
        """Worker side in the engine: visit a batch [b, d], return (first, second, diffs)."""
        g = self._worker_rows(i, grads, "gradients", "b")
        if not self.perms or g.shape[0] > self.sizes[i] - self.pos[i]:
            raise ValueError(self._room_error(i, g.shape[0], f"gradients of shape {g.shape}"))
        self._set_dim(g.shape[1])
        return self._pairs(i, g)

    def place(self, i: int, first: np.ndarray, second: np.ndarray, eps: np.ndarray) -> None:
        """Worker side in the engine: place a batch's pairs by the master's signs (1-D
        arrays of one length, checked by the kernel with the free slots)."""
        if len(eps) > self._unplaced(i):  # signs for pairs never visited would corrupt the order
            raise ValueError(f"worker {self.workers[i]}: place() got {len(eps)} signs, but "
                             f"{self._unplaced(i)} visited pairs wait to be placed")
        self._place(i, first, second, eps)

    def state_dict(self):
        state = super().state_dict()
        state.update((f"shared_{name}", value) for name, value in self.shared.state_dict().items())
        return state

    def _read_state(self, r):
        values = super()._read_state(r)
        s = r.array("shared_s", None, np.float64)
        if s.size not in (0, values["dim"]):  # empty until the first signs of an epoch
            raise ValueError(f"ordering state 'shared_s' has shape {s.shape}, expected (0,) or "
                             f"({values['dim']},)")
        values["shared"] = {"s": s, "epoch": r.integer("shared_epoch", -1, values["epoch"])}
        return values

    def _apply_state(self, values):
        super()._apply_state(values)
        self.shared.load_state_dict(values["shared"])
