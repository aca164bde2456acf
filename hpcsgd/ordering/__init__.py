"""Example orderings, usable without MPI.

An ordering serves one or more workers, each with its own local examples
``0..n_j-1``.  It has two verbs, as a sampler library would:

    order = make_ordering("rr", sizes=[100, 100], seed=0)
    for epoch in range(E):
        perms = order.next_epoch()        # one permutation per worker
        for step ...:
            order.step(grads)             # balancing orders learn from gradients
    state = order.state_dict()            # plain arrays and strings: checkpointable

The engine gives every worker an ordering for itself alone (``workers=[j]``); a
standalone ordering built for all workers draws exactly the same permutations,
because worker j's stream is always derived from (seed, j).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from hpcsgd.stragglers import STREAM_ORDER, make_stream, set_stream_state, stream_state


class Ordering:
    kind = ""

    def __init__(self, sizes: Sequence[int], seed: int, workers: Sequence[int] | None = None):
        self.sizes = [int(n) for n in sizes]
        self.workers = list(workers) if workers is not None else list(range(1, len(self.sizes) + 1))
        if len(self.workers) != len(self.sizes):
            raise ValueError("one size per worker")
        self.rngs = [make_stream(seed, j, STREAM_ORDER) for j in self.workers]
        self.epoch = 0

    def next_epoch(self) -> list[np.ndarray]:
        """The permutations of the coming epoch, one int64 array per worker."""
        perms = self._orders()
        self.epoch += 1
        return perms

    def _orders(self) -> list[np.ndarray]:
        raise NotImplementedError

    def step(self, grads=None) -> None:
        """Called after every step; reshuffling orders ignore gradients."""

    def state_dict(self) -> dict:
        state = {"kind": self.kind, "epoch": self.epoch}
        for j, rng in zip(self.workers, self.rngs):
            state[f"rng_{j}"] = stream_state(rng)
        return state

    def load_state_dict(self, state: dict) -> None:
        if state["kind"] != self.kind:
            raise ValueError(f"ordering state is for {state['kind']!r}, not {self.kind!r}")
        self.epoch = int(state["epoch"])
        for j, rng in zip(self.workers, self.rngs):
            set_stream_state(rng, state[f"rng_{j}"])


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

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.perms = [np.asarray(state[f"perm_{j}"], dtype=np.int64) for j in self.workers]


ORDERINGS = {cls.kind: cls for cls in (RandomReshuffling, ShuffleOnce)}


def make_ordering(kind: str, sizes: Sequence[int], seed: int, workers: Sequence[int] | None = None) -> Ordering:
    try:
        cls = ORDERINGS[kind]
    except KeyError:
        raise ValueError(f"unknown ordering {kind!r} (allowed: {', '.join(ORDERINGS)})") from None
    return cls(sizes, seed, workers)


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
