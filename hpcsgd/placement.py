"""Where the ranks go on several hosts (the master, rank 0, alone on the first host, the
workers in blocks over the others), and which worker rank hosts which worker.

Every worker's messages cross the master's link, and the master's loop is the part
that must never wait for a CPU: a worker beside it steals both.  So the first host runs
rank 0 only and the others take ``per_host`` workers each (default: as even as they
go, the first hosts one more).  One host: every rank on it.

    python -m hpcsgd.placement --ranks 5 [--per-host 2] [--hostfile] HOST...

prints hydra's host list (``h0:1,h1:2,h2:2``, for ``mpiexec -hosts``) or, with
``--hostfile``, one host per rank (for ``SLURM_HOSTFILE`` with ``srun
--distribution=arbitrary``).  The job scripts and ``scripts/cluster`` both use it.
"""

from __future__ import annotations

import argparse
import sys


class PlacementError(ValueError):
    pass


def even_counts(n: int, parts: int) -> list[int]:
    """``n`` things over ``parts`` places as evenly as they go, the first places one more."""
    base, extra = divmod(n, parts)
    return [base + (i < extra) for i in range(parts)]


class WorkerMap:
    """Which worker rank hosts which worker: M workers on R worker ranks (R <= M), rank
    r (1..R) a contiguous block of them, as even as they go.  With R = M every worker is
    its own rank (worker j on rank j); with fewer ranks, a rank hosts several *virtual
    workers*, each with its own shard, order, streams and queue (simulated clock)."""

    def __init__(self, workers: int, ranks: int):
        if not 1 <= ranks <= workers:
            raise PlacementError(f"{workers} workers cannot be hosted on {ranks} worker ranks")
        self.M, self.R = workers, ranks
        self.first = [0, 1]  # first worker of rank r at [r]
        for count in even_counts(workers, ranks):
            self.first.append(self.first[-1] + count)
        self._rank = [0] + [r for r in range(1, ranks + 1) for _ in self.hosted(r)]

    def hosted(self, rank: int) -> range:
        """The workers rank ``rank`` hosts."""
        return range(self.first[rank], self.first[rank + 1])

    def rank(self, worker: int) -> int:
        return self._rank[worker]

    def slot(self, worker: int) -> int:
        """The worker's place among its rank's workers (0, 1, ...)."""
        return worker - self.first[self._rank[worker]]

    def most_hosted(self) -> int:
        return max(len(self.hosted(r)) for r in range(1, self.R + 1))


def master_alone(hosts: list[str], ranks: int, per_host: int | None = None) -> list[tuple[str, int]]:
    """[(host, ranks on it)] in rank order; hosts left without a rank are left out."""
    if ranks < 1:
        raise PlacementError(f"ranks must be >= 1, got {ranks}")
    if not hosts:
        raise PlacementError("no hosts given")
    if len(hosts) == 1:
        return [(hosts[0], ranks)]
    workers, others = ranks - 1, hosts[1:]
    if per_host is not None and per_host < 1:
        raise PlacementError(f"workers per host must be >= 1, got {per_host}")
    if per_host is None:
        counts = even_counts(workers, len(others))
    else:
        if workers > per_host * len(others):
            raise PlacementError(f"{workers} workers do not fit on {len(others)} hosts x {per_host} per host")
        counts = [min(per_host, max(0, workers - i * per_host)) for i in range(len(others))]
    return [(hosts[0], 1)] + [(h, c) for h, c in zip(others, counts) if c > 0]


def hydra_hosts(layout: list[tuple[str, int]]) -> str:
    return ",".join(f"{h}:{c}" for h, c in layout)


def hostfile(layout: list[tuple[str, int]]) -> str:
    return "".join(f"{h}\n" * c for h, c in layout)


def describe(rank_hosts: list[str]) -> str:
    """'n0: master; n1: workers 1-2; n2: workers 3-4' from each rank's host name."""
    runs: list[list] = []  # [host, first rank, last rank] of each stretch of ranks on one host
    for rank, h in enumerate(rank_hosts):
        if runs and runs[-1][0] == h and rank > 1:
            runs[-1][2] = rank
        else:
            runs.append([h, rank, rank])

    def ranks(a: int, b: int) -> str:
        return "master" if a == 0 else f"worker {a}" if a == b else f"workers {a}-{b}"
    return "; ".join(f"{h}: {ranks(a, b)}" for h, a, b in runs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpcsgd.placement", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, required=True, help="world size: master + workers")
    ap.add_argument("--per-host", type=int, help="workers per host after the first (default: spread evenly)")
    ap.add_argument("--hostfile", action="store_true", help="one host per rank instead of hydra's list")
    ap.add_argument("hosts", nargs="+")
    args = ap.parse_args(argv)
    try:
        layout = master_alone(args.hosts, args.ranks, args.per_host)
    except PlacementError as e:
        print(f"hpcsgd.placement: error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(hostfile(layout) if args.hostfile else hydra_hosts(layout) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
