"""Run configuration: one TOML file, six tables, every key typed and documented.

``load_config(path, overrides)`` returns the *resolved* configuration, a plain dict of
dicts holding every key (defaults filled in).  It is stored as JSON in every checkpoint,
so a resumed run knows exactly what it was.  Unknown keys, wrong types and values
outside the allowed set are ``UserError``s that name the key and what is allowed.
"""

from __future__ import annotations

import copy
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcsgd.errors import UserError


@dataclass(frozen=True)
class Key:
    default: Any
    type: type | tuple[type, ...]
    doc: str
    choices: tuple | None = None
    minimum: float | None = None
    positive: bool = False


# Table -> key -> Key.  This is the single source of truth: validation, defaults,
# `--set` parsing and the README reference all read it.
SCHEMA: dict[str, dict[str, Key]] = {
    "run": {
        "out": Key("", str, "run directory; empty means runs/<config file stem>"),
        "seed": Key(0, int, "master seed; every rank's random streams derive from it", minimum=0),
        "clock": Key("wall", str, "wall (real time, real sleeps) or simulated (reproducible event order)",
                     choices=("wall", "simulated")),
        "epochs": Key(10, int, "stop after every worker passed this many times over its shard (0 = no limit)",
                      minimum=0),
        "max_updates": Key(0, int, "stop after this many model updates (0 = no limit)", minimum=0),
        "max_seconds": Key(0.0, (int, float), "stop after this much training time on the run's clock "
                           "(simulated or wall seconds; 0 = no limit)", minimum=0),
        "checkpoint_every": Key(0, int, "updates between checkpoints (0 = only at the end)", minimum=0),
        "keep_checkpoints": Key(3, int, "how many checkpoint files to keep", minimum=1),
        "eval_every": Key(0, int, "updates between evaluations (0 = about 20 per run)", minimum=0),
        "eval_seconds": Key(0.0, (int, float), "evaluate at the first update after every multiple of this "
                            "many seconds on the run's clock, instead of every eval_every updates (0 = off)",
                            minimum=0),
        "progress_every": Key(5.0, (int, float), "seconds between progress lines (0 = never)", minimum=0),
        "threads": Key(0, int, "Numba/BLAS threads per rank (0 = SLURM_CPUS_PER_TASK or 1)", minimum=0),
    },
    "data": {
        "source": Key("digits", str, "prepared set name (digits, mnist5k, ...) or path to an .h5 file"),
        "dir": Key("data", str, "where prepared set names are looked up"),
        "partition": Key("iid", str, "how training rows are split across workers",
                         choices=("iid", "contiguous", "sorted", "shards", "dirichlet", "replicate")),
        "alpha": Key(0.5, (int, float), "Dirichlet concentration for partition = dirichlet", positive=True),
    },
    "model": {
        "kind": Key("softmax", str, "model", choices=("logistic", "softmax", "least_squares", "mlp")),
        "hidden": Key(32, int, "hidden units of the mlp", minimum=1),
        "l2": Key(0.0, (int, float), "l2 regulariser (l2/2)*||w||^2, part of the objective", minimum=0),
        "nonconvex": Key(0.0, (int, float), "nonconvex regulariser lambda*sum w^2/(1+w^2)", minimum=0),
        "l1": Key(0.0, (int, float), "l1 regulariser, applied by a proximal step at the master", minimum=0),
        "init": Key("default", str, "initial parameters", choices=("default", "zeros", "ones", "normal")),
        "init_scale": Key(0.01, (int, float), "standard deviation for init = normal", positive=True),
    },
    "method": {
        "kind": Key("sync", str, "update rule",
                    choices=("sync", "fastest_k", "adaptive_k", "adaptive_kb", "async", "gsgm", "piag",
                             "async_bcd")),
        "lr": Key(0.1, (int, float), "step size", positive=True),
        "momentum": Key(0.0, (int, float), "heavy-ball momentum at the master (0 = plain SGD)", minimum=0),
        "k": Key(0, int, "replies waited for by fastest_k (0 = all workers)", minimum=0),
        "assign": Key("pure", str, "async: who gets the job created at each update: the finisher "
                      "(pure), a uniform worker (random), a permutation per M updates (shuffle) or one "
                      "permutation forever (shuffle_once)", choices=("pure", "random", "shuffle", "shuffle_once")),
        "schedule": Key(True, bool, "gsgm: white-list rounds, one admitted update per worker per round "
                        "(a worker's early gradients are deferred)"),
        "average": Key(True, bool, "gsgm: average a worker's deferred gradients into its admitted one "
                       "(false: deferred gradients are dropped)"),
        "stepsize": Key("adaptive2", str, "piag, async_bcd: step-size policy (fixed uses tau_max; the "
                        "adaptive ones keep the steps within any delay window below gamma')",
                        choices=("fixed", "adaptive1", "adaptive2")),
        "h": Key(0.9, (int, float), "piag, async_bcd: gamma' = h / L", positive=True),
        "L": Key(0.0, (int, float), "piag, async_bcd: smoothness of the objective (0 = estimate by "
                 "power iteration for logistic, softmax and least squares)", minimum=0),
        "gamma_prime": Key(0.0, (int, float), "piag, async_bcd: gamma' itself (0 = h / L)", minimum=0),
        "alpha": Key(0.5, (int, float), "piag, async_bcd: adaptive policies step alpha gamma' at most",
                     positive=True),
        "tau_max": Key(0, int, "piag, async_bcd with stepsize = fixed: the delay bound, step "
                       "gamma' / (tau_max + 1)", minimum=0),
        "absorb": Key(1, int, "piag: arrivals absorbed per update", minimum=1),
        "blocks": Key(10, int, "async_bcd: coordinate blocks", minimum=1),
        "k0": Key(1, int, "adaptive_k: replies waited for in the first stage", minimum=1),
        "k_step": Key(1, int, "adaptive_k: how much k grows at each stage switch", minimum=1),
        "burn_in": Key(20, int, "adaptive_k, adaptive_kb: updates in a stage before the switching "
                       "test counts", minimum=0),
        "targets": Key([], list, "adaptive_k, adaptive_kb: effective batches K_1 < K_2 < ... of the "
                       "stages (empty = order.batch x (k0, k0 + k_step, ..., M))"),
        "switch": Key("test", str, "adaptive_k, adaptive_kb: next stage when the Pflug-type test fires, or at the "
                      "bound-optimal error level (needs the bound_* keys)", choices=("test", "bound")),
        "bound_c": Key(0.0, (int, float), "switch = bound: strong convexity c of the objective",
                       minimum=0),
        "bound_L": Key(0.0, (int, float), "switch = bound: smoothness L of the objective", minimum=0),
        "bound_sigma2": Key(0.0, (int, float), "switch = bound: per-sample gradient variance sigma^2",
                            minimum=0),
        "bound_gap0": Key(0.0, (int, float), "switch = bound: initial suboptimality F(w_0) - F*",
                          minimum=0),
        "refresh_every": Key(20, int, "adaptive_k, adaptive_kb, wall clock: updates between re-estimates of the "
                             "iteration time from measured response times", minimum=1),
        "mc_samples": Key(4000, int, "adaptive_k, adaptive_kb: Monte Carlo draws per estimate of mu(k, b)",
                          minimum=100),
    },
    "order": {
        "kind": Key("rr", str, "per-worker example order", choices=("rr", "so", "grab", "pair", "cd_grab")),
        "batch": Key(16, int, "examples per worker per step (B); 0 = the worker's whole shard "
                     "(full local gradients)", minimum=0),
        "record_history": Key(False, bool, "store every epoch's orders in /order/history"),
    },
    "stragglers": {
        "model": Key("none", str, "delay distribution",
                     choices=("none", "fixed", "exp", "shifted_exp", "gamma", "normal", "uniform", "poisson")),
        "comm_mean": Key(0.0, (int, float), "mean communication time per job, seconds", minimum=0),
        "compute_mean": Key(0.0, (int, float), "mean computation time per sample, seconds", minimum=0),
        "offset": Key(0.0, (int, float), "constant added to every drawn delay, seconds", minimum=0),
        "shape": Key(2.0, (int, float), "gamma shape per sample (Erlang when integer)", positive=True),
        "shift": Key(0.5, (int, float), "shifted_exp: fraction of the mean that is deterministic",
                     minimum=0),
        "cv": Key(1.0, (int, float), "normal: standard deviation / mean", minimum=0),
        "speeds": Key("equal", str, "equal, or linear (worker i has i times the base means)",
                      choices=("equal", "linear")),
        "slow_workers": Key([], list, "worker ranks (1..M) slowed by slow_factor"),
        "slow_factor": Key(1.0, (int, float), "multiplier on the means of slow_workers", positive=True),
    },
}

TABLES = tuple(SCHEMA)


def defaults() -> dict[str, dict[str, Any]]:
    return {t: {k: copy.deepcopy(key.default) for k, key in keys.items()} for t, keys in SCHEMA.items()}


def _type_name(t) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list"}
    if isinstance(t, tuple):
        return "a number" if set(t) == {int, float} else " or ".join(names[x] for x in t)
    return names[t]


def _check_value(table: str, name: str, value: Any) -> Any:
    key = SCHEMA[table][name]
    where = f"{table}.{name}"
    # bool is an int subclass in Python; never accept it for numbers (or vice versa).
    wants = key.type if isinstance(key.type, tuple) else (key.type,)
    ok = isinstance(value, wants) and not (isinstance(value, bool) and bool not in wants)
    if not ok:
        raise UserError(f"config: {where} must be {_type_name(key.type)}, got {value!r}")
    if key.choices is not None and value not in key.choices:
        allowed = ", ".join(key.choices)
        raise UserError(f"config: {where} = {value!r} is not allowed (allowed: {allowed})")
    if key.minimum is not None and value < key.minimum:
        raise UserError(f"config: {where} = {value!r} must be >= {key.minimum}")
    if key.positive and not value > 0:
        raise UserError(f"config: {where} = {value!r} must be > 0")
    if float in wants and isinstance(value, int):
        value = float(value)
    return value


def merge(base: dict, table: str, name: str, value: Any) -> None:
    if table not in SCHEMA:
        raise UserError(f"config: unknown table [{table}] (allowed: {', '.join(TABLES)})")
    if name not in SCHEMA[table]:
        allowed = ", ".join(SCHEMA[table])
        raise UserError(f"config: unknown key {table}.{name} (allowed in [{table}]: {allowed})")
    base[table][name] = _check_value(table, name, value)


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse ``table.key=value``; the value is read as a TOML literal, else as a string."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected table.key=value")
    dotted, raw = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise UserError(f"--set {text!r}: the key must look like table.key (e.g. run.epochs)")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return parts[0], parts[1], value


def resolve(raw: dict, overrides: list[str] = (), origin: str = "config") -> dict:
    """Fill defaults, apply ``--set`` overrides and validate; returns the resolved config."""
    cfg = defaults()
    for table, body in raw.items():
        if not isinstance(body, dict):
            raise UserError(f"{origin}: {table!r} must be a table like [{table}] "
                            f"(allowed tables: {', '.join(TABLES)})")
        for name, value in body.items():
            merge(cfg, table, name, value)
    for text in overrides:
        merge(cfg, *parse_override(text))
    _check_cross(cfg)
    return cfg


def _check_cross(cfg: dict) -> None:
    slow = cfg["stragglers"]["slow_workers"]
    if not all(isinstance(j, int) and not isinstance(j, bool) and j >= 1 for j in slow):
        raise UserError(f"config: stragglers.slow_workers must list worker ranks >= 1, got {slow!r}")
    order, batch = cfg["order"]["kind"], cfg["order"]["batch"]
    if batch == 0 and order not in ("rr", "so"):
        raise UserError(f"config: order.batch = 0 (whole shards) needs order.kind rr or so "
                        f"(got {order!r}); balancing orders work on batches of examples")
    if order in ("pair", "cd_grab") and batch > 1 and batch % 2:
        raise UserError(f"config: order.batch = {batch} is odd; order.kind = {order!r} balances pairs "
                        f"of examples (use an even batch, or 1 to pair consecutive steps)")
    if order == "cd_grab" and cfg["method"]["kind"] != "sync":
        raise UserError(f"config: order.kind = 'cd_grab' coordinates all workers every step and needs "
                        f"method.kind = 'sync' (got {cfg['method']['kind']!r})")
    if cfg["method"]["kind"] in ("adaptive_k", "adaptive_kb"):
        _check_staged(cfg)
    if cfg["method"]["kind"] in ("piag", "async_bcd"):
        m = cfg["method"]
        if m["momentum"] > 0:
            raise UserError(f"config: method.momentum = {m['momentum']} is not allowed with method.kind = "
                            f"{m['kind']!r}: its steps are prox steps of the delay-adaptive size (use 0)")
        if m["alpha"] > 1.0:
            raise UserError(f"config: method.alpha = {m['alpha']} must be in (0, 1]")
        if not m["h"] < 1.0 and not m["gamma_prime"]:
            raise UserError(f"config: method.h = {m['h']} must be in (0, 1) (gamma' = h / L)")
    if cfg["method"]["kind"] == "async_bcd" and cfg["data"]["partition"] != "replicate":
        raise UserError(f"config: method.kind = 'async_bcd' steps along block gradients of the whole "
                        f"objective, so every worker needs every row: set data.partition = 'replicate' "
                        f"(got {cfg['data']['partition']!r})")
    run = cfg["run"]
    if run["eval_seconds"] and run["eval_every"]:
        raise UserError(f"config: run.eval_every = {run['eval_every']} and run.eval_seconds = "
                        f"{run['eval_seconds']} are both set; evaluations follow one of them (set the other to 0)")
    if run["epochs"] == 0 and run["max_updates"] == 0 and run["max_seconds"] == 0:
        raise UserError("config: run.epochs, run.max_updates and run.max_seconds are all 0; "
                        "set at least one stopping rule")


def _check_staged(cfg: dict) -> None:
    m, order = cfg["method"], cfg["order"]["kind"]
    if cfg["order"]["batch"] == 0:
        raise UserError(f"config: method.kind = {m['kind']!r} needs order.batch >= 1 (the stages are "
                        f"multiples of a per-worker batch); 0 means whole shards")
    if m["kind"] == "adaptive_kb" and order not in ("rr", "so"):
        raise UserError(f"config: method.kind = 'adaptive_kb' changes the per-worker batch between "
                        f"stages; order.kind must be rr or so (got {order!r})")
    t = m["targets"]
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in t) or \
            any(b <= a for a, b in zip(t, t[1:])):
        raise UserError(f"config: method.targets must be increasing positive integers "
                        f"(effective batches K_1 < K_2 < ...), got {t!r}")
    if m["switch"] == "bound":
        missing = [f"method.{k}" for k in ("bound_c", "bound_L", "bound_sigma2", "bound_gap0") if not m[k] > 0]
        if missing:
            raise UserError(f"config: method.switch = 'bound' needs {', '.join(missing)} > 0 "
                            f"(the constants of the error bound)")
        if m["lr"] * m["bound_L"] > 1.0:
            raise UserError(f"config: method.lr = {m['lr']} exceeds 1/method.bound_L = "
                            f"{1.0 / m['bound_L']:.6g}; the error bound behind switch = 'bound' "
                            f"needs lr <= 1/L")


def check_shards(cfg: dict, n_workers: int, smallest_shard: int) -> None:
    """Checks that need the workers' shard sizes."""
    if cfg["method"]["kind"] in ("adaptive_k", "adaptive_kb") and cfg["method"]["targets"]:
        top = cfg["method"]["targets"][-1]
        batch = cfg["order"]["batch"]
        if cfg["method"]["kind"] == "adaptive_k" and top > n_workers * batch:
            raise UserError(f"config: method.targets reaches {top} samples per update, but adaptive_k "
                            f"keeps order.batch = {batch} and has {n_workers} workers (at most "
                            f"{n_workers * batch}); use adaptive_kb to grow the batch")
        if top > n_workers * smallest_shard:
            raise UserError(f"config: method.targets reaches {top} samples per update, more than "
                            f"{n_workers} workers x {smallest_shard} rows (the smallest shard) hold")


def check_world(cfg: dict, n_workers: int) -> None:
    """Checks that need the number of workers (world size - 1)."""
    if n_workers < 1:
        raise UserError("hpcsgd needs at least 2 MPI ranks (rank 0 is the master, ranks 1..M are "
                        "workers); launch with: mpiexec -n M+1 hpcsgd train CONFIG.toml")
    k = cfg["method"]["k"]
    if k > n_workers:
        raise UserError(f"config: method.k = {k} exceeds the number of workers M = {n_workers} "
                        f"(allowed: 1..{n_workers}, or 0 for all)")
    if cfg["method"]["kind"] in ("adaptive_k", "adaptive_kb") and cfg["method"]["k0"] > n_workers:
        raise UserError(f"config: method.k0 = {cfg['method']['k0']} exceeds the number of workers "
                        f"M = {n_workers} (allowed: 1..{n_workers})")
    bad = [j for j in cfg["stragglers"]["slow_workers"] if j > n_workers]
    if bad:
        raise UserError(f"config: stragglers.slow_workers {bad} are not worker ranks "
                        f"(allowed: 1..{n_workers})")


def load_config(path: str | Path, overrides: list[str] = ()) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"config file {path} not found") from None
    except OSError as exc:
        raise UserError(f"config file {path}: {exc.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path}: invalid TOML: {exc}") from None
    cfg = resolve(raw, overrides, origin=str(path))
    if not cfg["run"]["out"]:
        cfg["run"]["out"] = str(Path("runs") / path.stem)
    return cfg


def to_json(cfg: dict) -> str:
    return json.dumps(cfg, sort_keys=True)


def from_json(text: str) -> dict:
    return json.loads(text)


# Keys that may change when a run is resumed: how long it runs and how it reports.
# Everything else defines the trajectory and must match the checkpoint.
RESUMABLE_KEYS = {
    ("run", "epochs"), ("run", "max_updates"), ("run", "max_seconds"), ("run", "checkpoint_every"),
    ("run", "keep_checkpoints"), ("run", "progress_every"), ("run", "threads"),
    ("run", "out"), ("data", "dir"),
}


def resume_config(stored: dict, overrides: list[str]) -> dict:
    """The stored config with ``--set`` overrides limited to RESUMABLE_KEYS."""
    cfg = copy.deepcopy(stored)
    for text in overrides:
        table, name, value = parse_override(text)
        if (table, name) not in RESUMABLE_KEYS and table in SCHEMA and name in SCHEMA[table]:
            allowed = ", ".join(f"{t}.{k}" for t, k in sorted(RESUMABLE_KEYS))
            raise UserError(f"--set {table}.{name}: cannot change on resume, it defines the "
                            f"trajectory (changeable: {allowed})")
        merge(cfg, table, name, value)
    _check_cross(cfg)
    return cfg
