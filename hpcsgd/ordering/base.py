"""The ordering interface and the cursor a worker walks its epoch order with."""

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
