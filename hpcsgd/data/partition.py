"""Split the training rows among workers (``data.partition``).

``partition`` returns, for each worker, an int64 array of GLOBAL train row indices;
that array is the worker's local indexing (local index ``i`` is global row
``rows[i]``). Every scheme returns each worker's rows sorted ascending (so a worker
reads its rows from the file in one forward pass); orderings (``order.kind``) then
permute local indices. All schemes but ``replicate`` give disjoint, non-empty parts
whose union is all rows, and depend only on ``(y, n_workers, scheme, seed, alpha)``;
when that is impossible (fewer rows than workers; for ``shards`` fewer than two per
worker) a UserError names ``data.partition``, the worker count and the row count.

Schemes:

* ``iid`` -- a seeded random permutation cut into near-equal parts.
* ``contiguous`` -- file order cut into near-equal ranges (no shuffling).
* ``replicate`` -- every worker holds every row (for methods whose workers compute the
  whole objective's gradient, such as ``async_bcd``).
* ``sorted`` -- rows sorted by label (stable; by target value for regression) cut into
  near-equal contiguous ranges: the strongest label skew, as if a label-sorted file
  were split contiguously.
* ``shards`` -- rows sorted by label (stable; by target value for regression), cut
  into ``2*M`` near-equal shards; worker ``w`` gets shards ``perm[2w]`` and
  ``perm[2w+1]`` of a seeded permutation (the McMahan et al. pathological non-IID
  split). Needs at least ``2*M`` rows.
* ``dirichlet`` -- for each class, proportions ``~ Dirichlet(alpha * 1_M)`` and that
  class's shuffled rows are cut accordingly (small alpha = strong label skew).
  Classification only. If a draw leaves a worker empty, one example is moved to it
  from the currently largest worker (lowest worker id on ties; the moved example is
  that worker's highest row index), repeated until no worker is empty.

Random draws use ``np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, 7)))``
so the partition stream is independent of every other stream derived from the seed.
"""

from __future__ import annotations

import numpy as np

from hpcsgd.errors import UserError

PARTITIONS = ("iid", "contiguous", "sorted", "shards", "dirichlet", "replicate")
_SPAWN_KEY = (0, 7)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=_SPAWN_KEY))


def split_even(n: int, n_workers: int) -> list[np.ndarray]:
    """Contiguous near-equal index ranges of ``range(n)`` (parts may be empty if n < M)."""
    if int(n) < 0 or int(n_workers) < 1:
        raise ValueError(f"split_even needs n >= 0 and n_workers >= 1, got {n}, {n_workers}")
    return [a.astype(np.int64) for a in np.array_split(np.arange(int(n), dtype=np.int64), int(n_workers))]


def _fill_empty(parts: list[list[int]] | list[np.ndarray]) -> list[np.ndarray]:
    parts = [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    while True:
        sizes = np.array([len(p) for p in parts])
        empty = np.flatnonzero(sizes == 0)
        if len(empty) == 0:
            return parts
        donor = int(np.argmax(sizes))  # lowest id among the largest
        target = int(empty[0])
        moved = parts[donor][-1]
        parts[donor] = parts[donor][:-1]
        parts[target] = np.array([moved], dtype=np.int64)


def partition(
    y: np.ndarray,
    n_workers: int,
    scheme: str,
    seed: int,
    alpha: float = 0.5,
    task: str = "multiclass",
) -> list[np.ndarray]:
    """Split train rows ``0..len(y)-1`` among ``n_workers`` workers (see module doc)."""
    if scheme not in PARTITIONS:
        raise UserError(f"data.partition: unknown scheme {scheme!r}; allowed: {', '.join(PARTITIONS)}")
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if isinstance(n_workers, bool) or int(n_workers) != n_workers or n_workers < 1:
        raise UserError(f"data.partition: number of workers must be >= 1, got {n_workers!r}")
    M = int(n_workers)
    n = len(y)
    if scheme == "replicate":
        if n < 1:
            raise UserError("data.partition = 'replicate': the data set has no training rows")
        return [np.arange(n, dtype=np.int64) for _ in range(M)]
    if n < M:
        raise UserError(f"data.partition = {scheme!r}: {n} training rows cannot give each of {M} "
                        f"workers at least one row; use at most {n} workers or a larger data set")
    if scheme == "contiguous":
        return split_even(n, M)
    rng = _rng(seed)
    if scheme == "iid":
        perm = rng.permutation(n).astype(np.int64)
        return [np.sort(p) for p in np.array_split(perm, M)]
    if not np.isfinite(y).all():
        raise UserError(f"data.partition = {scheme!r}: the training labels contain NaN/Inf")
    if scheme == "sorted":
        order = np.argsort(y, kind="stable").astype(np.int64)
        return [np.sort(p) for p in np.array_split(order, M)]
    if scheme == "shards":
        if n < 2 * M:
            raise UserError(f"data.partition = 'shards' needs at least 2 training rows per worker: "
                            f"{n} training rows, {M} workers (at most {n // 2} workers); use fewer "
                            "workers or 'iid'")
        order = np.argsort(y, kind="stable").astype(np.int64)
        shards = np.array_split(order, 2 * M)
        pick = rng.permutation(2 * M)
        return [np.sort(np.concatenate([shards[pick[2 * w]], shards[pick[2 * w + 1]]]))
                for w in range(M)]
    # dirichlet
    if task == "regression":
        raise UserError("data.partition = 'dirichlet' needs class labels; the data set is a "
                        "regression task (use iid, contiguous, sorted or shards)")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)) \
            or not np.isfinite(alpha) or alpha <= 0:
        raise UserError(f"data.alpha must be a finite number > 0, got {alpha!r}")
    if not np.all(y == np.round(y)):
        raise UserError("data.partition = 'dirichlet' needs integer class labels")
    parts: list[list[np.ndarray]] = [[] for _ in range(M)]
    for c in np.unique(y):
        idx = np.flatnonzero(y == c).astype(np.int64)
        idx = idx[rng.permutation(len(idx))]
        props = rng.dirichlet(np.full(M, float(alpha)))
        if not np.isfinite(props).all() or props.sum() <= 0:
            # Older NumPy draws can underflow to 0/0 for tiny alpha: use the limit the
            # draw tends to (all of the class on one worker; equal shares for large alpha).
            props = np.full(M, 1.0 / M) if alpha >= 1 else np.eye(M)[rng.integers(M)]
        cuts = np.floor(np.cumsum(props)[:-1] / props.sum() * len(idx)).astype(np.int64)
        cuts = np.clip(cuts, 0, len(idx))
        for w, chunk in enumerate(np.split(idx, cuts)):
            parts[w].append(chunk)
    merged = [np.concatenate(p) if p else np.empty(0, dtype=np.int64) for p in parts]
    return _fill_empty(merged)
