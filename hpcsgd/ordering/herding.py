"""The parallel herding bound, CD-GraB's correctness oracle (ALGORITHMS.md section 1)."""

from __future__ import annotations

import numpy as np

from hpcsgd.ordering.base import Ordering


def herding_bound(perms: list[np.ndarray], Z: np.ndarray) -> float:
    """max_k || sum_{t<=k} sum_j (z[j, perm_j[t]] - mean_j) ||_inf for Z [M, n, d]."""
    centred = Z - Z.mean(axis=1, keepdims=True)
    walk = sum(centred[j][p] for j, p in enumerate(perms))  # [n, d], summed over workers
    return float(np.abs(np.cumsum(walk, axis=0)).max())


def herding_rounds(order: Ordering, Z: np.ndarray, rounds: int, batch: int = 2) -> list[float]:
    """Feed the same vectors as "gradients" for ``rounds`` reorder rounds; the bound of
    each round's order (round 1 is the initial random order)."""
    bounds = []
    n = Z.shape[1]
    for _ in range(rounds):
        perms = order.next_epoch()
        bounds.append(herding_bound(perms, Z))
        for start in range(0, n, batch):
            order.step(np.stack([Z[j][p[start:start + batch]] for j, p in enumerate(perms)]))
    return bounds


def unit_vectors(M: int, n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((M, n, d))
    return Z / np.linalg.norm(Z, axis=2, keepdims=True)
