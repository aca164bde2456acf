"""Example orderings, usable without MPI.

An ordering serves one or more workers, each with its own local examples
``0..n_j-1``.  It has two verbs, as a sampler library would:

    order = make_ordering("cd_grab", sizes=[100, 100], seed=0)
    for epoch in range(E):
        perms = order.next_epoch()        # one permutation per worker
        for step ...:
            order.step(grads)             # per-example gradients [M, B, d], in visit order
    state = order.state_dict()            # flat: str, int and arrays only
    np.savez("order.npz", **state)        # and back, without pickle:
    with np.load("order.npz", allow_pickle=False) as saved:
        order.load_state_dict(saved)      # refuses (ValueError) a state that does not fit

Kinds: ``rr`` (fresh permutation per worker per epoch), ``so`` (shuffle once),
``grab`` (mean balance with a stale mean, per worker), ``pair`` (PairBalance, per
worker) and ``cd_grab`` (coordinated: one running sum across workers).

The engine gives every worker an ordering for itself alone (``workers=[j]``); a
standalone ordering built for all workers draws exactly the same first-epoch
permutations, because worker j's stream is always derived from (seed, j).

What ``step`` / ``step_pairs`` accept and refuse is listed in ``hpcsgd.ordering.balance``
(the reshuffling orders ignore ``step``); the state layout and what ``load_state_dict``
refuses in ``hpcsgd.ordering.base``.
"""

from __future__ import annotations

from typing import Sequence

from hpcsgd.ordering.balance import CDGraB, GraB, PairBalance
from hpcsgd.ordering.base import EpochCursor, Ordering
from hpcsgd.ordering.shuffle import RandomReshuffling, ShuffleOnce

ORDERINGS = {cls.kind: cls for cls in (RandomReshuffling, ShuffleOnce, GraB, PairBalance, CDGraB)}

__all__ = ["ORDERINGS", "CDGraB", "EpochCursor", "GraB", "Ordering", "PairBalance",
           "RandomReshuffling", "ShuffleOnce", "make_ordering"]


def make_ordering(kind: str, sizes: Sequence[int], seed: int, workers: Sequence[int] | None = None) -> Ordering:
    try:
        cls = ORDERINGS[kind]
    except KeyError:
        raise ValueError(f"unknown ordering {kind!r} (allowed: {', '.join(ORDERINGS)})") from None
    return cls(sizes, seed, workers)
