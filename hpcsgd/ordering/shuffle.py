"""Reshuffling orders: RR (fresh permutation every epoch) and SO (shuffle once)."""

from __future__ import annotations

import numpy as np

from hpcsgd.ordering.base import Ordering


class RandomReshuffling(Ordering):
    """RR / D-RR: a fresh uniform permutation every epoch from each worker's own stream."""

    kind = "rr"

    def _orders(self):
        return [rng.permutation(n).astype(np.int64) for rng, n in zip(self.rngs, self.sizes)]


class ShuffleOnce(Ordering):
    """SO: one permutation per worker, drawn at the first epoch and reused."""

    kind = "so"

    def __init__(self, sizes, seed, workers=None):
        super().__init__(sizes, seed, workers)
        self.perms = [rng.permutation(n).astype(np.int64) for rng, n in zip(self.rngs, self.sizes)]

    def _orders(self):
        return [p.copy() for p in self.perms]

    def state_dict(self):
        state = super().state_dict()
        for j, p in zip(self.workers, self.perms):
            state[f"perm_{j}"] = p.copy()
        return state

    def _read_state(self, r):
        values = super()._read_state(r)
        values["perms"] = [r.permutation(f"perm_{j}", n) for j, n in zip(self.workers, self.sizes)]
        return values

    def _apply_state(self, values):
        super()._apply_state(values)
        self.perms = values["perms"]
