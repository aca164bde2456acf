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
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from hpcsgd.kernels.balance import cd_grab_signs, grab_balance, pair_row_signs, pair_signs, place_pairs
from hpcsgd.ordering.base import Ordering


def _per_worker(batch, n_workers: int) -> list[np.ndarray]:
    rows = list(batch)  # an array [M, B, d] or a sequence of M arrays [b_j, d]
    if len(rows) != n_workers:
        raise ValueError(f"expected gradients for {n_workers} workers, got {len(rows)}")
    return [np.ascontiguousarray(r, dtype=np.float64) for r in rows]


class _Balancing(Ordering):
    """Per-worker bookkeeping shared by all balancing orders."""

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
        for i, nxt in enumerate(self.next):
            if (nxt < 0).any():
                raise ValueError(f"worker {self.workers[i]}: step() saw {self.pos[i]} of "
                                 f"{self.sizes[i]} examples this epoch; feed every visited example")

    def _visit(self, i: int, count: int) -> np.ndarray:
        """The next ``count`` examples of worker i's current order."""
        if not self.perms:
            raise ValueError("call next_epoch() before step()")
        ids = self.perms[i][self.pos[i]:self.pos[i] + count]
        if ids.size != count:
            raise ValueError(f"worker {self.workers[i]}: {count} gradients but only "
                             f"{self.perms[i].size - self.pos[i]} examples left this epoch")
        self.pos[i] += count
        return ids

    def _reset_sums(self) -> None:
        raise NotImplementedError

    def state_dict(self):
        state = super().state_dict()
        state["dim"] = self.dim
        for i, j in enumerate(self.workers):
            w = {"perm": self.perms[i].copy() if self.perms else np.empty(0, dtype=np.int64),
                 "next": self.next[i].copy(), "pos": self.pos[i], "left": self.left[i],
                 "right": self.right[i]}
            w.update(self._worker_state(i))
            state[f"worker_{j}"] = w
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.dim = int(state["dim"])
        perms = []
        for i, j in enumerate(self.workers):
            w = state[f"worker_{j}"]
            perms.append(np.asarray(w["perm"], dtype=np.int64))
            self.next[i] = np.asarray(w["next"], dtype=np.int64).copy()
            self.pos[i], self.left[i], self.right[i] = int(w["pos"]), int(w["left"]), int(w["right"])
            self._load_worker_state(i, w)
        self.perms = perms if all(p.size for p in perms) else []

    def _worker_state(self, i: int) -> dict:
        return {}

    def _load_worker_state(self, i: int, state: dict) -> None:
        pass


class GraB(_Balancing):
    """Mean balance with a stale mean, run independently on every worker (ID-GraB)."""

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

    def _allocate(self, d: int) -> None:
        if not self.s:
            self.dim = d
            M = len(self.sizes)
            self.s, self.mean, self.acc = ([np.zeros(d) for _ in range(M)] for _ in range(3))

    def step(self, grads=None) -> None:
        rows = _per_worker(grads, len(self.sizes))
        self._allocate(rows[0].shape[1])
        for i, g in enumerate(rows):
            ids = self._visit(i, g.shape[0])
            self.left[i], self.right[i] = grab_balance(self.s[i], self.mean[i], self.acc[i], g, ids,
                                                       self.next[i], self.left[i], self.right[i])

    def _worker_state(self, i):
        if not self.s:
            return {}
        return {"s": self.s[i].copy(), "mean": self.mean[i].copy(), "acc": self.acc[i].copy()}

    def _load_worker_state(self, i, state):
        if self.dim:
            self._allocate(self.dim)
            self.s[i][:], self.mean[i][:], self.acc[i][:] = state["s"], state["mean"], state["acc"]


class _Pairs(_Balancing):
    """Pairs consecutive visited examples; an unpaired one waits for the next step."""

    def __init__(self, sizes, seed, workers=None):
        super().__init__(sizes, seed, workers)
        self.pending_id = [-1] * len(self.sizes)
        self.pending_grad: list[np.ndarray | None] = [None] * len(self.sizes)

    def _finish_epoch(self):
        for i in range(len(self.sizes)):
            if self.pending_id[i] >= 0:  # odd shard: the middle slot is the one left
                self.next[i][self.left[i]] = self.pending_id[i]
                self.left[i] += 1
                self.pending_id[i], self.pending_grad[i] = -1, None
        super()._finish_epoch()

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

    def pair_ids(self, i: int, count: int):
        """Visit ``count`` examples given only as pair differences (no odd leftovers)."""
        if count % 2 or self.pending_id[i] >= 0:
            raise ValueError("step_pairs() needs whole pairs; use step() for odd counts")
        ids = self._visit(i, count)
        return ids[0::2], ids[1::2]

    def _place(self, i, first, second, eps):
        self.left[i], self.right[i] = place_pairs(self.next[i], first, second, eps,
                                                  self.left[i], self.right[i])

    def _worker_state(self, i):
        state = {"pending_id": self.pending_id[i]}
        if self.pending_grad[i] is not None:
            state["pending_grad"] = self.pending_grad[i].copy()
        state.update(self._sum_state(i))
        return state

    def _load_worker_state(self, i, state):
        self.pending_id[i] = int(state["pending_id"])
        g = state.get("pending_grad")
        self.pending_grad[i] = None if g is None else np.asarray(g, dtype=np.float64).copy()
        self._load_sum_state(i, state)

    def _sum_state(self, i):
        return {}

    def _load_sum_state(self, i, state):
        pass


class PairBalance(_Pairs):
    """PairBalance run independently on every worker (no mean needed)."""

    kind = "pair"

    def __init__(self, sizes, seed, workers=None):
        super().__init__(sizes, seed, workers)
        self.s: list[np.ndarray] = []

    def _reset_sums(self):
        self.s = [np.zeros(self.dim) for _ in self.sizes] if self.dim else []

    def step(self, grads=None):
        rows = _per_worker(grads, len(self.sizes))
        self._set_dim(rows[0].shape[1])
        for i, g in enumerate(rows):
            # signs straight from the gradient rows: materialising the B/2 differences
            # first would write and re-read B/2 x d floats (out of cache at large d)
            first, second, lead, rest = self._pair_rows(i, g)
            eps = np.empty(first.size, dtype=np.int8)
            if lead is not None:
                pair_row_signs(self.s[i], lead, eps[:1])
            pair_row_signs(self.s[i], rest, eps[first.size - rest.shape[0] // 2:])
            self._place(i, first, second, eps)

    def step_pairs(self, diffs) -> None:
        rows = _per_worker(diffs, len(self.sizes))
        self._set_dim(rows[0].shape[1])
        for i, c in enumerate(rows):
            first, second = self.pair_ids(i, 2 * c.shape[0])
            eps = np.empty(first.size, dtype=np.int8)
            pair_signs(self.s[i], c, eps)
            self._place(i, first, second, eps)

    def _set_dim(self, d):
        if not self.dim:
            self.dim = d
            self._reset_sums()

    def _sum_state(self, i):
        return {"s": self.s[i].copy()} if self.dim else {}

    def _load_sum_state(self, i, state):
        if self.dim:
            if not self.s:
                self._reset_sums()
            self.s[i][:] = state["s"]


class CoordinatedSigns:
    """CD-GraB's shared half: one float64 running sum across all workers, reset every
    epoch.  The standalone ``CDGraB`` owns one; in the engine the master owns it and
    the workers only place their pairs by the signs it returns."""

    def __init__(self):
        self.s = np.zeros(0)
        self.epoch = -1

    def signs(self, diffs: np.ndarray, epoch: int) -> np.ndarray:
        """Signs for pair differences [M, Q, d] of the given epoch, in place order."""
        if epoch != self.epoch or self.s.size != diffs.shape[2]:
            self.s = np.zeros(diffs.shape[2])
            self.epoch = epoch
        eps = np.empty(diffs.shape[:2], dtype=np.int8)
        cd_grab_signs(self.s, np.ascontiguousarray(diffs, dtype=np.float64), eps)
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
    smallest); then every worker's pointers move together.
    """

    kind = "cd_grab"

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
        rows = _per_worker(grads, len(self.sizes))
        pairs = [self._pairs(i, g) for i, g in enumerate(rows)]
        diffs = np.stack([p[2] for p in pairs])
        eps = self.signs(diffs)
        for i, (first, second, _) in enumerate(pairs):
            self._place(i, first, second, eps[i])

    def step_pairs(self, diffs) -> None:
        diffs = np.asarray(diffs)
        eps = self.signs(diffs)
        for i in range(len(self.sizes)):
            first, second = self.pair_ids(i, 2 * diffs.shape[1])
            self._place(i, first, second, eps[i])

    def pairs(self, i: int, grads: np.ndarray):
        """Worker side in the engine: visit a batch, return (first, second, diffs)."""
        return self._pairs(i, np.ascontiguousarray(grads, dtype=np.float64))

    def place(self, i: int, first: np.ndarray, second: np.ndarray, eps: np.ndarray) -> None:
        """Worker side in the engine: place a batch's pairs by the master's signs."""
        self._place(i, first, second, eps)

    def state_dict(self):
        state = super().state_dict()
        state["shared"] = self.shared.state_dict()
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.shared.load_state_dict(state["shared"])
