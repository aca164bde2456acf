"""The two clocks (SPEC section 2): what time it is, when a job is done, and what an
obsolete job cost.  Both also keep the training wall clock, which leaves out the time
spent evaluating and checkpointing, and never runs backwards.

- ``WallClock``: real time; events are taken in the order results arrive; an obsolete
  job's load is counted when its reply comes.
- ``SimulatedClock``: workers report drawn durations instead of sleeping; a job created
  at simulated time t for worker j starts at max(t, end of j's previous job) and ends a
  duration later, so the order of events never depends on which MPI message arrives
  first (the scheduler takes an event only once nothing still running could end earlier).
"""

from __future__ import annotations

import math
import time
from collections import Counter

import numpy as np

from hpcsgd.placement import even_counts
from hpcsgd.stragglers import samples_done


class Clock:
    simulated = False
    # Policies that only real time allows: drop a cancelled job that was never sent,
    # collect evaluations while training goes on, postpone a checkpoint for a lagging
    # worker, let the method watch reply times.  In simulated time each would make the
    # trajectory depend on timing.
    withdraws_unsent = False
    collects_in_background = False

    def __init__(self, n_workers: int):
        self.offset = 0.0          # training seconds before this job (a resumed run)
        self.t0 = time.perf_counter()
        self.paused = 0.0
        self.floor = 0.0
        self.sim_now = 0.0
        self.worker_end = np.zeros(n_workers + 1)  # simulated: when each worker is free
        self.arrivals = 0                          # wall: results taken so far

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def wall(self) -> float:
        """Training wall seconds: evaluations and checkpoints left out, never backwards."""
        t = self.offset + time.perf_counter() - self.t0 - self.paused
        if t > self.floor:
            self.floor = t
        return self.floor

    def pause(self, seconds: float) -> None:
        self.paused += seconds

    # What the cost model charges (CostClock); nothing in the other clocks.
    def sent(self, jobs: list) -> None:
        pass

    def charge_update(self, n_params: int) -> None:
        pass

    def trace_row(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {"sim_now": self.sim_now, "wall_time": self.wall(), "worker_end": self.worker_end.copy(),
                "arrivals": self.arrivals}

    def load_state_dict(self, state: dict) -> None:
        self.sim_now = float(state["sim_now"])
        self.offset = float(state["wall_time"])
        self.worker_end[:] = state["worker_end"]
        self.arrivals = int(state["arrivals"])


class WallClock(Clock):
    withdraws_unsent = True
    collects_in_background = True

    def now(self) -> float:
        return self.wall()

    def sim_time(self) -> float:
        return math.nan

    def arrived(self, job, result) -> tuple[tuple | None, int, int]:
        """(event key or None for an obsolete job, samples and messages it cost)."""
        job.t_done = self.wall()
        if job.cancelled:
            return None, result.samples, int(result.carries_gradient)
        key = (self.arrivals, job.seq, job.worker)
        self.arrivals += 1
        return key, 0, 0

    def cancelled(self, job, t: float) -> tuple[int, int] | None:
        """Load of a job cancelled at ``t`` to count now, or None: counted on arrival."""
        r = job.result
        return None if r is None else (r.samples, int(r.carries_gradient))

    def earliest_end(self, job) -> float:
        return -math.inf

    def took(self, job) -> None:
        pass

    def stored_key(self, value: float):
        return int(value)


class SimulatedClock(Clock):
    simulated = True

    def now(self) -> float:
        return self.sim_now

    def sim_time(self) -> float:
        return self.sim_now

    def arrived(self, job, result) -> tuple[tuple | None, int, int]:
        w = job.worker
        job.start = max(job.t_assign, self.worker_end[w])
        end = job.start + result.duration
        if job.cancelled:
            end = max(job.start, min(end, job.cancel_time))
        job.t_done = end
        self.worker_end[w] = end
        # an obsolete job's load was counted when it was cancelled
        return (None if job.cancelled else (job.t_done, job.seq, w)), 0, 0

    def cancelled(self, job, t: float) -> tuple[int, int] | None:
        """A job cancelled at t ran from its start until t (or not at all), which is
        known now whether or not its reply has arrived, so its load goes into the trace
        row deterministically.  One whose reply has not come had not started before t:
        the scheduler takes an event only once every job that could end earlier has
        reported (only the final stop cancels jobs still running, and that is not traced)."""
        r = job.result
        if r is None:
            return None
        end = max(job.start, min(job.t_done, t))
        if self.worker_end[job.worker] == job.t_done:
            self.worker_end[job.worker] = end
        return samples_done(job.batch, r.duration - r.delay_comm, t - job.start), 0

    def earliest_end(self, job) -> float:
        """A job still running ends no earlier than it can start."""
        return max(job.t_assign, self.worker_end[job.worker])

    def took(self, job) -> None:
        self.sim_now = job.t_done

    def stored_key(self, value: float):
        return value


class CostClock(SimulatedClock):
    """The simulated clock that also charges for the master and the network
    (``[cluster]``, ``cluster.cost = true``): what a run of this layout would take on a
    cluster with these links and this master, beyond the drawn delays.

    - The master is one server: receiving a result and sending a job cost it
      ``master_message + master_message_per_param * p`` s each (p parameters carried), an
      update ``master_update + master_per_param * n`` s (n parameters stepped).  Work
      queues for it in the order it comes.  With S parameter servers (``run.servers``)
      each is such a server for its slice of the parameters: rank 0 on the master's
      host, server s >= 1 beside the workers of worker host s (``servers_beside``; with
      fewer worker hosts than that, round the hosts again) or on a host of its own.
    - Links: the master's host and every worker host (``workers_per_host`` workers in
      blocks, as hpcsgd.placement puts them) have one full-duplex link of
      ``link_gbit``.  A message of S bytes occupies the sender's outgoing link and the
      receiver's incoming one for S / rate each (cut-through: the second may start when
      the first does), then ``latency`` s; between processes of one host it is free.
      The jobs a server sends together share its link and arrive together, when the
      last of them has crossed (``sent``); a job has arrived when every server's slice
      has.  Results leave when their computations end, one message per server in
      server order, and queue for the links in the order events are taken.
    - A job's computation takes its drawn delay plus ``worker_job + worker_per_sample_param
      * batch * d`` s, and starts once the job has arrived and the worker is free.

    The trace then has ``wait_link`` (from the end of the computation to the result's
    arrival at rank 0: transfer and queueing) and ``wait_master`` (from there until rank
    0 took it) of the result that made each update."""

    def __init__(self, n_workers: int, cost: dict, d: int, result_header: int, job_header: int,
                 servers: int = 1):
        super().__init__(n_workers)
        self.cost = cost
        self.d = d
        rate = cost["link_gbit"] * 1e9 / 8.0
        self.per_byte = 1.0 / rate if rate > 0 else 0.0
        self.latency = cost["latency"]
        self.job_header = job_header
        self.result_header = result_header
        self.sizes = even_counts(d, servers)  # each server's parameters
        per_host = cost["workers_per_host"]
        self.host = [0] + [1 + (j - 1) // per_host for j in range(1, n_workers + 1)]  # host 0: the master's
        worker_hosts = self.host[-1]
        beside = cost["servers_beside"]
        self.server_host = [0] + [1 + (s - 1) % worker_hosts if beside else worker_hosts + s
                                  for s in range(1, servers)]
        hosts = max(worker_hosts, *self.server_host) + 1
        # when each resource is free again: every server, every host's outgoing and incoming link
        self.master_free = np.zeros(servers)
        self.out_free = np.zeros(hosts)
        self.in_free = np.zeros(hosts)
        self.waits = (0.0, 0.0)  # wait_link, wait_master of the last result taken

    def _transfer(self, t: float, size: int, src: int, dst: int) -> float:
        """A message of ``size`` bytes leaves host ``src`` at ``t``: its arrival at ``dst``."""
        if src == dst:
            return t  # shared memory: not on the links
        s = size * self.per_byte
        start = max(t, self.out_free[src])
        self.out_free[src] = start + s
        start = max(start, self.in_free[dst])
        self.in_free[dst] = start + s
        return start + s + self.latency

    def _master(self, t: float, seconds: float, server: int = 0) -> float:
        """Work of ``seconds`` for a server that can start at ``t``: when it is done."""
        self.master_free[server] = max(t, self.master_free[server]) + seconds
        return self.master_free[server]

    def _message(self, params: int) -> float:
        return self.cost["master_message"] + self.cost["master_message_per_param"] * params

    def sent(self, jobs: list) -> None:
        """Jobs created together leave together: each server sends its slices one after
        another, and its link shares its rate among them (TCP flows do; measured here: a
        sync round's parameters reach every worker at about the same time, M * 8d / rate
        after the first left), so every one arrives when the batch's last byte has
        crossed: on the server's link, and on each worker host's for its share."""
        if not jobs:
            return
        arrive = [-math.inf] * len(jobs)
        for server, (src, n) in enumerate(zip(self.server_host, self.sizes)):
            s = 8 * (self.job_header + n) * self.per_byte
            leaves = [self._master(self.sim_now, self._message(n), server) for _ in jobs]
            far = [i for i, job in enumerate(jobs) if self.host[job.worker] != src]
            for i, job in enumerate(jobs):
                if self.host[job.worker] == src:
                    arrive[i] = max(arrive[i], leaves[i])
            if not far:
                continue
            start = max(leaves[0], self.out_free[src])
            end = max(start + s * len(far), leaves[-1] + s)
            self.out_free[src] = end
            share = Counter(self.host[jobs[i].worker] for i in far)  # jobs per destination host
            done = {}
            for h, count in share.items():
                begin = max(start, self.in_free[h])
                done[h] = self.in_free[h] = max(begin + s * count, end)
            for i in far:
                arrive[i] = max(arrive[i], done[self.host[jobs[i].worker]] + self.latency)
        for job, t in zip(jobs, arrive):
            job.t_arrive = t

    def arrived(self, job, result) -> tuple[tuple | None, int, int]:
        w = job.worker
        c = self.cost
        job.start = max(job.t_arrive, self.worker_end[w])
        end = job.start + result.duration + c["worker_job"] + c["worker_per_sample_param"] * job.batch * self.d
        if job.cancelled:
            end = max(job.start, min(end, job.cancel_time))
        job.t_done = end
        self.worker_end[w] = end
        return (None if job.cancelled else (job.t_done, job.seq, w)), 0, 0

    def earliest_end(self, job) -> float:
        return max(job.t_arrive, self.worker_end[job.worker])

    def took(self, job) -> None:
        """The result's slices cross to their servers; rank 0 takes the event once it
        has handled its own (the pair differences come to it alone)."""
        src = self.host[job.worker]
        for server, (dst, n) in enumerate(zip(self.server_host, self.sizes)):
            # the pairs in their wire type (order.pair_dtype), in float64 slots
            params = n + (job.result.pairs.nbytes / 8 if server == 0 else 0)
            here = self._transfer(job.t_done, 8 * (self.result_header + params), src, dst)
            taken = max(here, self.master_free[server])
            done = self._master(here, self._message(params), server)
            if server == 0:
                self.sim_now, self.waits = done, (here - job.t_done, taken - here)

    def charge_update(self, n_params: int) -> None:
        """An update that stepped ``n_params`` of rank 0's parameters: every server steps
        the same share of its own."""
        c = self.cost
        for server, n in enumerate(self.sizes):
            stepped = n_params if server == 0 else round(n_params * n / self.sizes[0])
            done = self._master(self.sim_now, c["master_update"] + c["master_per_param"] * stepped, server)
            if server == 0:
                now = done
        self.sim_now = now

    def trace_row(self) -> dict:
        return {"wait_link": self.waits[0], "wait_master": self.waits[1]}

    def state_dict(self) -> dict:
        return {**super().state_dict(),
                "cost": np.concatenate([self.master_free, self.out_free, self.in_free])}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        cost = np.asarray(state["cost"], dtype=np.float64)
        S, n = self.master_free.size, self.out_free.size
        self.master_free[:] = cost[:S]
        self.out_free[:] = cost[S:S + n]
        self.in_free[:] = cost[S + n:S + 2 * n]


COST_COLUMNS = {"wait_link": float, "wait_master": float}  # the trace columns a CostClock adds
# the [cluster] keys of the master's and the workers' own seconds (scripts/calibrate measures them)
CALIBRATED = ("master_update", "master_per_param", "master_message", "master_message_per_param", "worker_job",
              "worker_per_sample_param")


def make_clock(kind: str, n_workers: int, cost: dict | None = None, d: int = 0, headers: tuple[int, int] = (0, 0),
               servers: int = 1) -> Clock:
    """``cost``: the ``[cluster]`` table when ``cluster.cost`` is on (simulated clock only);
    ``headers``: the result and job header lengths (float64 words); ``servers``: the
    parameter servers (``run.servers``)."""
    if kind == "simulated" and cost is not None and cost.get("cost"):
        return CostClock(n_workers, cost, d, *headers, servers=servers)
    return (SimulatedClock if kind == "simulated" else WallClock)(n_workers)
