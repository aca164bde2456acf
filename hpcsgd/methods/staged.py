"""Staged fastest-k SGD (ALGORITHMS.md section 2): adaptive k-sync and adaptive (k, b).

Both run through stages of target effective batch K_1 < K_2 < ... (the noise floor
a ~ 1/(k b) falls stage by stage) and differ in how a stage's (k, b) is chosen:

- ``adaptive_k`` (the baseline): a fixed per-worker batch b and k = K_s / b, so the
  stages are k = k0, k0 + step, ..., M;
- ``adaptive_kb`` (seed 001's policy, reconstructed): (k_s, b_s) = argmin over k of
  mu(k, ceil(K_s / k)), the expected iteration time.  Where per-sample times add up,
  many workers with small batches beat a few with big ones: total computation (M b per
  iteration) drops, replies per update (k) rise.

The next stage starts when the switching rule fires (the Pflug-type test, or the
bound-optimal level of ``switching.BoundSwitch``).  mu comes from the configured delay
model in the simulated clock and from measured response times in the wall clock, where
the estimates (and adaptive_kb's (k, b)) are renewed every ``refresh_every`` updates;
until every worker has reported twice, adaptive_kb waits for all M workers so that all
get measured.

Both kinds register here with the stage keys they share (``STAGE_KEYS``), their checks
and inspect's per-stage summary.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from hpcsgd.errors import UserError
from hpcsgd.methods.fastest_k import FastestK
from hpcsgd.methods.registry import Layout, MethodKey, MethodSpec, Summary, column, register
from hpcsgd.methods.switching import BoundSwitch, PflugTest, noise_floor, switch_level
from hpcsgd.methods.timing import IterationTimeModel, MeasuredTimeModel
from hpcsgd.ordering import ORDERINGS
from hpcsgd.schema import Key, get, only

MIN_MEASURED = 2  # jobs per worker before measured times are trusted


class StagedFastestK(FastestK):
    def __init__(self, name: str, targets: list[int], n_workers: int, times, *,
                 switch: PflugTest | BoundSwitch, fixed_batch: int = 0, max_batch: int | None = None,
                 bound: dict | None = None, refresh_every: int = 20):
        super().__init__(n_workers, n_workers, 1, name=name)
        self.targets = list(targets)
        self.times = times
        self.measured = isinstance(times, MeasuredTimeModel)
        self.informed = not self.measured  # measured times trusted yet?
        self.fixed_batch = fixed_batch
        self.max_batch = max_batch
        self.switch = switch
        self.bound = bound  # {"lr", "c", "L", "sigma2"} for the bound-optimal switch
        self.refresh_every = refresh_every
        self.since_refresh = 0
        self.stage = 0
        self.last_overhead = np.zeros(n_workers + 1)  # measured transfer time per worker
        self.k, self.batch = self._choose(0)
        self.switch.enter(*self._levels())

    def _choose(self, stage: int) -> tuple[int, int]:
        target = self.targets[stage]
        if self.fixed_batch:
            return min(math.ceil(target / self.fixed_batch), self.n_workers), self.fixed_batch
        if not self.informed:
            return self.n_workers, math.ceil(target / self.n_workers)
        return self.times.best_kb(target, self.max_batch)

    def _floor(self, k: int, b: int) -> float:
        p = self.bound
        return noise_floor(p["lr"], p["c"], p["L"], p["sigma2"], k * b)

    def _levels(self) -> tuple[float, ...]:
        """BoundSwitch: (floor of this stage, error level at which to leave it)."""
        if self.bound is None:
            return ()
        floor = self._floor(self.k, self.batch)
        if self.stage + 1 == len(self.targets) or not self.informed:
            return floor, -math.inf
        kn, bn = self._choose(self.stage + 1)
        return floor, switch_level(self.times.mu(self.k, self.batch), floor,
                                   self.times.mu(kn, bn), self._floor(kn, bn))

    def trace_extra(self) -> dict:
        return {"stage": self.stage}

    def observe(self, job, r) -> None:
        """Wall clock: record the job's communication time and compute time per sample.
        A worker's own times (real compute plus injected delays, in full even when the
        job was abandoned) make every job a sample, stragglers included."""
        if not self.measured or r.compute_seconds == 0.0:
            return  # skipped unseen (obsolete before it started): nothing was measured
        busy = r.compute_seconds + r.duration
        if not job.cancelled:
            self.last_overhead[r.worker] = max(0.0, job.t_done - job.t_assign - busy)
        per_sample = (r.compute_seconds + r.duration - r.delay_comm) / r.batch
        self.times.observe(r.worker, r.delay_comm + self.last_overhead[r.worker], per_sample)

    def after_update(self, engine, total: np.ndarray, scale: float) -> None:
        if self.switch.fires(total, scale, engine.dot) and self.stage + 1 < len(self.targets):
            self.stage += 1
            self.k, self.batch = self._choose(self.stage)
            self.switch.enter(*self._levels())
            return
        if not self.measured:
            return
        self.since_refresh += 1
        if self.informed:
            due = self.since_refresh >= self.refresh_every
        else:
            due = self.times.seen() >= MIN_MEASURED
        if due:
            self.informed = True
            self.since_refresh = 0
            # a job out for t seconds says its worker takes at least t: a frozen worker
            # is seen as slow at once, not only after it answers
            self.times.refresh(overdue=engine.overdue_seconds())
            self.k, self.batch = self._choose(self.stage)
            if self.bound is not None:
                self.switch.enter(*self._levels())

    def state_dict(self) -> dict:
        state = {**super().state_dict(), "stage": self.stage, "switch": self.switch.state_dict(),
                 "since_refresh": self.since_refresh, "informed": int(self.informed)}
        if self.measured:
            state["times"] = self.times.state_dict()
            state["last_overhead"] = self.last_overhead.copy()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.stage = int(state["stage"])
        self.since_refresh = int(state["since_refresh"])
        self.informed = bool(state["informed"])
        if self.measured:
            self.times.load_state_dict(state["times"])
            self.last_overhead[:] = state["last_overhead"]
        self.switch.load_state_dict(state["switch"])
        if self.bound is not None:
            self.switch.enter(*self._levels())


# ---------------------------------------------------------------------- registry: adaptive_k, adaptive_kb

def stage_targets(cfg: dict, n_workers: int) -> list[int]:
    """The stages' effective batches: method.targets, or by default
    (k0, k0 + k_step, ..., M) x order.batch, adaptive k-sync's stages."""
    m, batch = cfg["method"], cfg["order"]["batch"]
    if m["targets"]:
        return list(m["targets"])
    ks = list(range(min(m["k0"], n_workers), n_workers, m["k_step"])) + [n_workers]
    return [k * batch for k in ks]


def _build(cfg: dict, shard_sizes: list[int], dim: int, L: float, grows_batch: bool) -> StagedFastestK:
    m, run = cfg["method"], cfg["run"]
    n_workers = len(shard_sizes)
    if run["clock"] == "simulated":
        times = IterationTimeModel(cfg["stragglers"], n_workers, run["seed"], samples=m["mc_samples"])
    else:
        times = MeasuredTimeModel(n_workers, run["seed"], samples=m["mc_samples"])
    bound = None
    if m["switch"] == "bound":
        bound = {"lr": m["lr"], "c": m["bound_c"], "L": m["bound_L"], "sigma2": m["bound_sigma2"]}
        switch = BoundSwitch(m["lr"], m["bound_c"], m["bound_gap0"])
    else:
        switch = PflugTest(m["burn_in"])
    return StagedFastestK(m["kind"], stage_targets(cfg, n_workers), n_workers, times, switch=switch,
                          fixed_batch=0 if grows_batch else cfg["order"]["batch"], max_batch=min(shard_sizes),
                          bound=bound, refresh_every=m["refresh_every"])


def _picks_batch(cfg: dict) -> str | None:
    """adaptive_kb with targets: every stage's batch is chosen, order.batch is not read."""
    if get(cfg, "method.targets"):
        return "method.kind = 'adaptive_kb' with method.targets picks every stage's batch"
    return None


def _check(cfg: dict, grows_batch: bool) -> None:
    m, order = cfg["method"], cfg["order"]["kind"]
    if cfg["order"]["batch"] == 0 and not (grows_batch and _picks_batch(cfg)):
        raise UserError(f"config: method.kind = {m['kind']!r} needs order.batch >= 1 (the stages are "
                        f"multiples of a per-worker batch); 0 means whole shards")
    if grows_batch and ORDERINGS[order].per_example:
        plain = " or ".join(kind for kind, cls in ORDERINGS.items() if not cls.per_example)
        raise UserError(f"config: method.kind = {m['kind']!r} changes the per-worker batch between "
                        f"stages; order.kind must be {plain} (got {order!r})")
    if m["switch"] == "bound":
        missing = [f"method.{k}" for k in ("bound_c", "bound_L", "bound_sigma2", "bound_gap0") if not m[k] > 0]
        if missing:
            raise UserError(f"config: method.switch = 'bound' needs {', '.join(missing)} > 0 "
                            f"(the constants of the error bound)")
        if m["lr"] * m["bound_L"] > 1.0:
            raise UserError(f"config: method.lr = {m['lr']} exceeds 1/method.bound_L = "
                            f"{1.0 / m['bound_L']:.6g}; the error bound behind switch = 'bound' "
                            f"needs lr <= 1/L")
        if m["bound_c"] > m["bound_L"]:
            raise UserError(f"config: method.bound_c = {m['bound_c']} exceeds method.bound_L = {m['bound_L']}; "
                            f"strong convexity c is at most the smoothness L")
        floor = m["lr"] * m["bound_L"] * m["bound_sigma2"] / (2.0 * m["bound_c"])
        if not math.isfinite(floor):
            raise UserError(f"config: method.bound_sigma2 = {m['bound_sigma2']} with method.bound_c = "
                            f"{m['bound_c']} gives a non-finite noise floor lr L sigma^2 / (2 c)")


def _check_layout(cfg: dict, layout: Layout, grows_batch: bool) -> None:
    m, M, batch, n_min = cfg["method"], layout.workers, cfg["order"]["batch"], layout.n_min
    if ("method", "k_step") in layout.read and m["k0"] < M and m["k_step"] > M - m["k0"]:
        raise UserError(f"config: method.k_step = {m['k_step']} exceeds M - method.k0 = {M - m['k0']} "
                        f"(M = {M} workers): the stages would jump from k0 straight to M")
    t = m["targets"]
    if not t:
        return
    if not grows_batch:
        if t[-1] > M * batch:
            raise UserError(f"config: method.targets reaches {t[-1]} samples per update, but adaptive_k "
                            f"keeps order.batch = {batch} and has {M} workers (at most "
                            f"{M * batch}); use adaptive_kb to grow the batch")
        ks = [-(-x // batch) for x in t]
        same = next((i for i in range(1, len(ks)) if ks[i] == ks[i - 1]), None)
        if same is not None:
            raise UserError(f"config: method.targets {t[same - 1]} and {t[same]} both wait for k = {ks[same]} "
                            f"replies of order.batch = {batch} (adaptive_k keeps the batch): the stage "
                            f"switch would change nothing")
    elif t[-1] > M * n_min:
        raise UserError(f"config: method.targets reaches {t[-1]} samples per update, more than "
                        f"{M} workers x {n_min} rows (the smallest shard) hold")


def _stages(config: dict, trace: dict) -> list[dict] | None:
    """Per stage, its (k, b), updates and the load spent in it."""
    stage = column(trace, "stage")
    if stage is None or not stage.size:
        return None
    time_col = column(trace, "sim_time")
    if time_col is None or not np.isfinite(time_col).any():
        time_col = column(trace, "wall_time")
    rows = []
    for s in np.unique(stage):
        idx = np.flatnonzero(stage == s)
        first = int(idx[0])
        row = {"stage": int(s), "updates": int(idx.size), "first_update": first + 1}
        for name in ("k", "batch"):
            col = column(trace, name)
            if col is not None:
                vals = np.unique(col[idx])
                row[name] = int(vals[0]) if vals.size == 1 else [int(v) for v in vals]
        for name, key in (("samples_computed", "samples"), ("messages", "messages")):
            col = column(trace, name)
            if col is not None:
                row[key] = int(col[idx].sum(dtype=np.int64))
        if time_col is not None:
            row["start_time"] = float(time_col[first - 1]) if first else 0.0
        rows.append(row)
    return rows


def _stage_lines(stages: list[dict], fmt) -> list[tuple[str, str]]:
    out = []
    for st in stages:
        kb = "  ".join(f"{n} {st[n]}" for n in ("k", "batch") if n in st)
        load = "  ".join(f"{n} {st[n]}" for n in ("samples", "messages") if n in st)
        start = f"  from t = {fmt(st['start_time'], 4)} s" if "start_time" in st else ""
        out.append((f"stage {st['stage']}", f"{kb}  updates {st['updates']} (from {st['first_update']}){start}  {load}"))
    return out


# A trace with a stage column is summarised whatever its config says.
STAGES = Summary("stages", _stages, _stage_lines, any_method=True)

_BOUND = only("method.switch", "bound")
_STAGES_FROM_K = only("method.targets", [], why="lists the stages")
STAGE_KEYS = (
    MethodKey("k0", Key(1, int, "adaptive_k, adaptive_kb without targets: replies waited for in the first stage",
                        minimum=1, at_most="M"), when=_STAGES_FROM_K),
    MethodKey("k_step", Key(1, int, "adaptive_k, adaptive_kb without targets: how much k grows at each stage "
                            "switch (at most M - k0)", minimum=1, at_most="M"), when=_STAGES_FROM_K),
    MethodKey("burn_in", Key(20, int, "adaptive_k, adaptive_kb with switch = test: updates in a stage before "
                             "the switching test counts", minimum=0), when=only("method.switch", "test")),
    MethodKey("targets", Key([], list, "adaptive_k, adaptive_kb: effective batches K_1 < K_2 < ... of the "
                             "stages (empty = order.batch x (k0, k0 + k_step, ..., M); at most M x order.batch "
                             "for adaptive_k, M x the smallest shard for adaptive_kb)", minimum=1, item=int,
                             increasing=True), shown=True),
    MethodKey("switch", Key("test", str, "adaptive_k, adaptive_kb: next stage when the Pflug-type test fires, or "
                            "at the bound-optimal error level (needs the bound_* keys)", choices=("test", "bound"),
                            does={"test": "switches stages by the Pflug-type test",
                                  "bound": "switches stages at the bound-optimal error level"}), shown=True),
    MethodKey("bound_c", Key(0.0, (int, float), "switch = bound: strong convexity c of the objective "
                             "(c <= bound_L)", minimum=0), when=_BOUND),
    MethodKey("bound_L", Key(0.0, (int, float), "switch = bound: smoothness L of the objective (lr <= 1/L)",
                             minimum=0), when=_BOUND),
    MethodKey("bound_sigma2", Key(0.0, (int, float), "switch = bound: per-sample gradient variance sigma^2",
                                  minimum=0), when=_BOUND),
    MethodKey("bound_gap0", Key(0.0, (int, float), "switch = bound: initial suboptimality F(w_0) - F*",
                                minimum=0), when=_BOUND),
    MethodKey("refresh_every", Key(20, int, "adaptive_k, adaptive_kb, wall clock: updates between re-estimates of "
                                   "the iteration time from measured response times", minimum=1),
              when=only("run.clock", "wall")),
    MethodKey("mc_samples", Key(4000, int, "adaptive_k, adaptive_kb: Monte Carlo draws per estimate of mu(k, b) "
                                "(held in memory, samples x M per batch size)", minimum=100, maximum=10**6)),
)


def _spec(kind: str, does: str, rank: int, grows_batch: bool, **more) -> MethodSpec:
    return MethodSpec(kind=kind, does=does, rank=rank, synchronous=True, keys=STAGE_KEYS,
                      build=functools.partial(_build, grows_batch=grows_batch),
                      check=functools.partial(_check, grows_batch=grows_batch),
                      check_layout=functools.partial(_check_layout, grows_batch=grows_batch),
                      extras={"stage": np.int32}, summaries=(STAGES,), shards=("simulated",), **more)


register(_spec("adaptive_k", "grows k in stages at a fixed order.batch", 70, grows_batch=False))
register(_spec("adaptive_kb", "picks (k, batch) for each stage", 80, grows_batch=True,
               decides={"order.batch": _picks_batch}))
