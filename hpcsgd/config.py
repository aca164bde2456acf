"""Run configuration: one TOML file, six tables, every key typed, bounded and documented.

``load_config(path, overrides)`` returns the *resolved* configuration, a plain dict of
dicts holding every key (defaults filled in); ``load_config_checked`` also returns the
warnings: keys set explicitly that the chosen method, order, clock, model or delay model
does not read (``READ_BY``), and delay parameters that inject almost nothing.  The
resolved config is stored as JSON in every checkpoint, so a resumed run knows exactly
what it was.  Unknown keys, wrong types, non-finite numbers, values outside a key's
range or set, and combinations that cannot run are ``UserError``s that name the key and
what is allowed.  What depends on the workers' shards and the model's size is checked
once those are known, by ``check_layout``.

The ``[method]`` table, what each method reads and checks, comes from the method
registry (``hpcsgd.methods.registry``); the order checks ask the orderings' declared
capabilities (``hpcsgd.ordering.ORDERINGS``).
"""

from __future__ import annotations

import copy
import json
import math
import tomllib
from pathlib import Path
from typing import Any

from hpcsgd.errors import UserError
from hpcsgd.methods import registry
from hpcsgd.ordering import ORDERINGS
# Key, INT_LIMIT and LAYOUT are this module's too (hpcsgd.schema holds them so that the
# method modules can declare keys without importing config).
from hpcsgd.schema import INT_LIMIT, LAYOUT, Key, Reason, all_of, only, types_of, unless  # noqa: F401
from hpcsgd.schema import get as _get
from hpcsgd.schema import show as _show

MAX_SECONDS = 1e9  # clock times and delays (about 32 years): sums of them stay finite
MAX_FACTOR = 1e6   # multipliers of delays: a worker's mean stays far from overflow
POISSON_MAX = 9.2e18  # NumPy's Poisson sampler refuses larger means (lam too large)


# Table -> key -> Key.  This is the single source of truth: validation, defaults,
# `--set` parsing and the README reference all read it.
SCHEMA: dict[str, dict[str, Key]] = {
    "run": {
        "out": Key("", str, "run directory; empty means runs/<config file stem>"),
        "seed": Key(0, int, "master seed; every rank's random streams derive from it", minimum=0),
        "workers": Key(0, int, "workers M (0 = one per worker rank, mpiexec -n M+1); more workers than worker "
                       "ranks are virtual workers, several on a rank, each with its own shard, order, streams and "
                       "queue, the run bit-identical to one rank per worker (needs clock = simulated)", minimum=0),
        "servers": Key(1, int, "parameter servers S: rank 0 and the job's last S - 1 ranks each own a contiguous "
                       "slice of the parameters and of the method's per-parameter state, the run bit-identical "
                       "to S = 1 in the simulated clock unless the cost model charges the servers (mpiexec -n "
                       "R + S for R worker ranks; adaptive_k and adaptive_kb only in the simulated clock)", minimum=1, maximum=1024),
        "clock": Key("wall", str, "wall (real time, real sleeps) or simulated (reproducible event order; "
                     "time advances only by the injected delays)", choices=("wall", "simulated"),
                     does={"simulated": "takes iteration times from the delay model",
                           "wall": "measures iteration times"}),
        "epochs": Key(10, int, "stop after every worker passed this many times over its shard (0 = no limit)",
                      minimum=0),
        "max_updates": Key(0, int, "stop after this many model updates (0 = no limit)", minimum=0),
        "max_seconds": Key(0.0, (int, float), "stop after this much training time on the run's clock "
                           "(simulated or wall seconds; 0 = no limit)", minimum=0, maximum=MAX_SECONDS),
        "checkpoint_every": Key(0, int, "updates between checkpoints (0 = only at the end)", minimum=0),
        "keep_checkpoints": Key(3, int, "how many checkpoint files to keep", minimum=1),
        "eval_every": Key(0, int, "updates between evaluations (0 = about 20 per run)", minimum=0),
        "eval_seconds": Key(0.0, (int, float), "evaluate at the first update after every multiple of this "
                            "many seconds on the run's clock, instead of every eval_every updates (0 = off; "
                            "at least 1 us, so that clock time / eval_seconds stays finite)",
                            minimum=1e-6, maximum=MAX_SECONDS, zero_off=True),
        "progress_every": Key(5.0, (int, float), "seconds between progress lines (0 = never)", minimum=0,
                              maximum=MAX_SECONDS),
        "threads": Key(0, int, "Numba/BLAS threads per rank (0 = SLURM_CPUS_PER_TASK or 1)", minimum=0),
        "worker_timeout": Key(600.0, (int, float), "wall seconds the master waits for a worker it cannot go on "
                              "without (a sync reply, a checkpoint) before it ends the job with exit status 4 "
                              "naming the silent workers (0 = wait forever)", minimum=0, maximum=MAX_SECONDS),
        "stop_timeout": Key(60.0, (int, float), "wall seconds a stop request (signal or STOP file) waits for the "
                            "replies its checkpoint needs; past it the job ends with exit status 4 and the last "
                            "checkpoint intact (keep it below the scheduler's grace period)", minimum=0,
                            maximum=MAX_SECONDS),
    },
    "data": {
        "source": Key("digits", str, "prepared set name (digits, mnist5k, ...) or path to an .h5 file"),
        "dir": Key("data", str, "where prepared set names are looked up"),
        "partition": Key("iid", str, "how training rows are split across workers",
                         choices=("iid", "contiguous", "sorted", "shards", "dirichlet", "replicate")),
        "alpha": Key(0.5, (int, float), "Dirichlet concentration for partition = dirichlet", above=0),
    },
    "model": {
        "kind": Key("softmax", str, "model", choices=("logistic", "softmax", "least_squares", "mlp")),
        "hidden": Key(32, int, "hidden units of the mlp", minimum=1),
        "l2": Key(0.0, (int, float), "l2 regulariser (l2/2)*||w||^2, part of the objective", minimum=0),
        "nonconvex": Key(0.0, (int, float), "nonconvex regulariser lambda*sum w^2/(1+w^2)", minimum=0),
        "l1": Key(0.0, (int, float), "l1 regulariser, applied by a proximal step at the master", minimum=0),
        "init": Key("default", str, "initial parameters", choices=("default", "zeros", "ones", "normal")),
        "init_scale": Key(0.01, (int, float), "standard deviation for init = normal", above=0),
    },
    "method": {},  # the registry's: _load_methods()
    "order": {
        "kind": Key("rr", str, "per-worker example order (cd_grab needs method.kind = sync)",
                    choices=tuple(ORDERINGS)),
        "batch": Key(16, int, "examples per worker per step (B); 0 = the worker's whole shard "
                     "(full local gradients; rr/so only); even or 1 for pair and cd_grab", minimum=0,
                     at_most="n_min"),
        "record_history": Key(False, bool, "store every epoch's orders in /order/history"),
        "pair_dtype": Key("float64", str, "cd_grab: the pair differences' type on the wire (the master's "
                          "running sum stays float64; float32 halves the bytes and may flip a sign whose dot "
                          "is within rounding of 0)", choices=("float64", "float32")),
    },
    "stragglers": {
        "model": Key("none", str, "delay distribution of every job, in seconds: none (no delay), fixed "
                     "(the mean), exp, shifted_exp, gamma, normal (|N|), uniform (U(0, 2 mean)), poisson "
                     "(Poisson(mean) whole seconds: integer counts)",
                     choices=("none", "fixed", "exp", "shifted_exp", "gamma", "normal", "uniform", "poisson"),
                     does={"none": "injects no delay"}),
        "comm_mean": Key(0.0, (int, float), "mean communication time per job, seconds", minimum=0,
                         maximum=MAX_SECONDS),
        "compute_mean": Key(0.0, (int, float), "mean computation time per sample, seconds (a job of b "
                            "samples: b per-sample times)", minimum=0, maximum=MAX_SECONDS),
        "offset": Key(0.0, (int, float), "constant added to every drawn delay, seconds", minimum=0,
                      maximum=MAX_SECONDS),
        "shape": Key(2.0, (int, float), "gamma: shape per sample (Erlang when integer)", minimum=1e-6,
                     maximum=MAX_FACTOR),
        "shift": Key(0.5, (int, float), "shifted_exp: fraction of the mean that is deterministic",
                     minimum=0, maximum=1),
        "cv": Key(1.0, (int, float), "normal: standard deviation / mean", minimum=0, maximum=MAX_FACTOR),
        "speeds": Key("equal", str, "equal, or linear (worker i has i times the base means)",
                      choices=("equal", "linear")),
        "slow_workers": Key([], list, "worker ranks slowed by slow_factor", minimum=1, at_most="M", item=int),
        "slow_factor": Key(1.0, (int, float), "multiplier on the means of slow_workers", above=0,
                           maximum=MAX_FACTOR),
    },
    "cluster": {
        "cost": Key(False, bool, "simulated clock: charge simulated time for the master's work and for every "
                    "message crossing the links (scripts/calibrate measures the master and the workers)",
                    does={False: "charges nothing for the master and the network"}),
        "link_gbit": Key(10.0, (int, float), "every host's link, Gbit/s each way (0 = no transfer time)",
                         minimum=0, maximum=1e6),
        "latency": Key(0.0, (int, float), "seconds every message takes beyond its transfer", minimum=0,
                       maximum=MAX_SECONDS),
        "workers_per_host": Key(1, int, "workers on each worker host, in blocks (the master alone on its own)",
                                minimum=1),
        "servers_beside": Key(True, bool, "run.servers > 1: parameter server s >= 1 on worker host s, beside "
                              "its workers (false: on a host of its own)"),
        "master_update": Key(0.0, (int, float), "master seconds per update, beyond its parameters", minimum=0,
                             maximum=MAX_SECONDS),
        "master_per_param": Key(0.0, (int, float), "master seconds per parameter an update steps", minimum=0,
                                maximum=MAX_SECONDS),
        "master_message": Key(0.0, (int, float), "master seconds per job sent and per result received",
                              minimum=0, maximum=MAX_SECONDS),
        "master_message_per_param": Key(0.0, (int, float), "master seconds per parameter a job or result "
                                        "carries (copies, sums)", minimum=0, maximum=MAX_SECONDS),
        "worker_job": Key(0.0, (int, float), "worker seconds per job beyond its examples (added to the drawn "
                          "delay)", minimum=0, maximum=MAX_SECONDS),
        "worker_per_sample_param": Key(0.0, (int, float), "worker seconds per example and parameter of a job "
                                       "(added to the drawn delay)", minimum=0, maximum=MAX_SECONDS),
    },
}

TABLES = tuple(SCHEMA)


def defaults() -> dict[str, dict[str, Any]]:
    return {t: {k: copy.deepcopy(key.default) for k, key in keys.items()} for t, keys in SCHEMA.items()}


def key_reference() -> str:
    """The README's key reference: one markdown table per config table."""
    out = []
    for table, keys in SCHEMA.items():
        out += [f"**[{table}]**", "", "| key | default | allowed | meaning |", "| --- | --- | --- | --- |"]
        for name, key in keys.items():
            doc = key.doc.replace("|", r"\|")  # a bare | would end the markdown cell
            out.append(f"| `{table}.{name}` | `{json.dumps(key.default)}` | {key.allowed()} | {doc} |")
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------- one value

def _type_name(key: Key) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list"}
    if key.type is list:
        return f"a list of {'integers' if key.item is int else 'values'}"
    if isinstance(key.type, tuple):
        return "a number" if set(key.type) == {int, float} else " or ".join(names[x] for x in key.type)
    return names[key.type]


def _has_type(value: Any, wanted: type | tuple[type, ...]) -> bool:
    wants = types_of(wanted)
    # bool is an int subclass in Python; never accept it for numbers (or vice versa).
    return isinstance(value, wants) and not (isinstance(value, bool) and bool not in wants)


def _check_number(where: str, key: Key, value: int | float, floats: bool) -> int | float:
    """A finite number inside the key's bounds (the layout bound comes later)."""
    kind = "a finite number" if floats else "an integer"
    number = value
    if floats:
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the float range
            number = math.inf
        if not math.isfinite(number):
            raise UserError(f"config: {where} = {_show(value)} is not allowed: must be {kind} in {key.interval()}")
    up = key.upper()
    if key.zero_off and number == 0:
        return number
    if (key.minimum is not None and number < key.minimum) or (key.above is not None and not number > key.above) \
            or (up is not None and (number > up[0] if up[1] else not number < up[0])):
        raise UserError(f"config: {where} = {_show(value)} is not allowed: must be {kind} in {key.interval()}")
    return number


def _check_value(table: str, name: str, value: Any) -> Any:
    key = SCHEMA[table][name]
    where = f"{table}.{name}"
    if not _has_type(value, key.type):
        raise UserError(f"config: {where} must be {_type_name(key)}, got {_show(value)}")
    if key.type is list:
        items = []
        for i, x in enumerate(value):
            if not _has_type(x, key.item):
                raise UserError(f"config: {where}[{i}] must be an integer, got {_show(x)}")
            items.append(_check_number(f"{where}[{i}]", key, x, floats=key.item is float))
        if key.increasing and any(b <= a for a, b in zip(items, items[1:])):
            raise UserError(f"config: {where} = {_show(value)} is not allowed: must be a {key.allowed()}")
        seen, repeated = set(), set()
        for x in items:
            (repeated if x in seen else seen).add(x)
        if repeated:
            raise UserError(f"config: {where} = {_show(value)} repeats {_show(sorted(repeated))}; must be a "
                            f"{key.allowed()}")
        return items
    if key.choices is not None and value not in key.choices:
        allowed = ", ".join(key.choices)
        raise UserError(f"config: {where} = {_show(value)} is not allowed (allowed: {allowed})")
    if isinstance(value, str) and "\0" in value:
        raise UserError(f"config: {where} = {_show(value)} contains a NUL character")
    if key.numeric:
        return _check_number(where, key, value, floats=float in types_of(key.type))
    return value


def _name(text: str) -> str:
    """An unknown table or key name as written, quoted when it is not plain (a newline in
    it must not break the one-line message)."""
    return text if text.replace("_", "a").isalnum() and text.isascii() else _show(text)


def merge(base: dict, table: str, name: str, value: Any) -> None:
    if table not in SCHEMA:
        raise UserError(f"config: unknown table [{_name(table)}] (allowed: {', '.join(TABLES)})")
    if name not in SCHEMA[table]:
        allowed = ", ".join(SCHEMA[table])
        raise UserError(f"config: unknown key {table}.{_name(name)} (allowed in [{table}]: {allowed})")
    base[table][name] = _check_value(table, name, value)


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse ``table.key=value``; the value is read as a TOML literal, else as a string."""
    if "=" not in text:
        raise UserError(f"--set {_show(text)}: expected table.key=value")
    dotted, raw = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise UserError(f"--set {_show(text)}: the key must look like table.key (e.g. run.epochs)")
    try:
        parsed = tomllib.loads(f"v = {raw}")
    except tomllib.TOMLDecodeError:
        parsed = {}
    # one literal, nothing more (a newline in the value could otherwise define other keys)
    value = parsed["v"] if set(parsed) == {"v"} else raw
    return parts[0], parts[1], value


# ---------------------------------------------------------------------- what each choice reads

def _source_is_a_file(cfg: dict) -> str | None:
    from hpcsgd.data.dataset import names_a_file
    source = _get(cfg, "data.source")
    if isinstance(source, str) and names_a_file(source):
        return f"data.source = {_show(source)} is a file path, not a name looked up in data.dir"
    return None


def _time_stays(cfg: dict) -> str | None:
    if _get(cfg, "run.clock") == "simulated" and _get(cfg, "stragglers.model") == "none":
        return "run.clock = 'simulated' with stragglers.model = 'none' keeps simulated time at 0"
    return None


_DELAYS = unless("stragglers.model", "none", why="injects no delay")

# (table, key) -> why the key is not read under this config (None: it is read).  Keys not
# listed are read by every configuration.  This table is the one place that knows which
# choice reads what: the ignored-key warnings, check_layout and `hpcsgd inspect` use it.
# The [method] keys' entries, and the keys of other tables a method decides itself, come
# from the method registry (_load_methods).
READ_BY: dict[tuple[str, str], Reason] = {}
_READ_BY_OWN: dict[tuple[str, str], Reason] = {
    ("run", "max_seconds"): _time_stays,
    ("data", "alpha"): only("data.partition", "dirichlet"),
    ("data", "dir"): _source_is_a_file,
    ("model", "hidden"): only("model.kind", "mlp"),
    ("model", "init_scale"): only("model.init", "normal"),
    ("stragglers", "comm_mean"): _DELAYS,
    ("stragglers", "compute_mean"): _DELAYS,
    ("stragglers", "offset"): _DELAYS,
    ("stragglers", "shape"): only("stragglers.model", "gamma"),
    ("stragglers", "shift"): only("stragglers.model", "shifted_exp"),
    ("stragglers", "cv"): only("stragglers.model", "normal"),
    ("stragglers", "speeds"): _DELAYS,
    ("stragglers", "slow_workers"): _DELAYS,
    ("stragglers", "slow_factor"): all_of(_DELAYS, unless("stragglers.slow_workers", [], why="slows no worker")),
    ("cluster", "cost"): only("run.clock", "simulated", why="measures the master and the network itself"),
    **{("cluster", name): all_of(only("run.clock", "simulated", why="measures the master and the network itself"),
                                 only("cluster.cost", True))
       for name in ("link_gbit", "latency", "workers_per_host", "servers_beside", "master_update", "master_per_param",
                    "master_message", "master_message_per_param", "worker_job",
                    "worker_per_sample_param")},
}


def _ignored_by_method(name: str) -> Reason:
    """A common [method] key: read unless the configured method's spec says why not."""
    def reason(cfg: dict) -> str | None:
        kind = _get(cfg, "method.kind")
        spec = registry.spec(kind)
        why = spec.ignores.get(name) if spec is not None else None
        return f"method.kind = {_show(kind)} {why}" if why else None
    return reason


def _decided_by_method(dotted: str) -> Reason:
    """A key of another table that the configured method may decide itself."""
    def reason(cfg: dict) -> str | None:
        spec = registry.spec(_get(cfg, "method.kind"))
        decides = spec.decides.get(dotted) if spec is not None else None
        return decides(cfg) if decides is not None else None
    return reason


def _load_methods() -> None:
    """The [method] table, method.kind's choices and the READ_BY entries of method keys,
    from the method registry (again whenever a method is registered or removed)."""
    specs = registry.specs()
    table = {"kind": Key("sync", str, "update rule", choices=tuple(s.kind for s in specs),
                         does={s.kind: s.does for s in specs})}
    read_by = dict(_READ_BY_OWN)
    common = {k.name for k in registry.COMMON_KEYS}
    for name, mk in registry.method_keys().items():
        table[name] = mk.key
        if name in common:
            reason = _ignored_by_method(name)
        else:
            reason = only("method.kind", *registry.readers(name))
        read_by[("method", name)] = all_of(reason, mk.when) if mk.when is not None else reason
    for dotted in dict.fromkeys(d for s in specs for d in s.decides):
        where = tuple(dotted.split("."))
        mine = _decided_by_method(dotted)
        read_by[where] = all_of(read_by[where], mine) if where in read_by else mine
    SCHEMA["method"].clear()
    SCHEMA["method"].update(table)
    READ_BY.clear()
    READ_BY.update(read_by)


_load_methods()
registry.on_change(_load_methods)


def ignored_because(cfg: dict, table: str, name: str) -> str | None:
    """Why this config does not read ``table.name`` (None: it does)."""
    reason = READ_BY.get((table, name))
    return reason(cfg) if reason else None


def keys_read(cfg: dict) -> set[tuple[str, str]]:
    """Every (table, key) the configured method, order, clock, model and delay model read."""
    return {(t, k) for t, keys in SCHEMA.items() for k in keys if ignored_because(cfg, t, k) is None}


def _warnings(cfg: dict, explicit: list[tuple[str, str]]) -> list[str]:
    """One line per explicitly set key that is not read, then delay-model warnings."""
    out = []
    for table, name in explicit:
        why = ignored_because(cfg, table, name)
        if why:
            out.append(f"config: {table}.{name} = {_show(cfg[table][name])} is ignored: {why}")
    s = cfg["stragglers"]
    if s["model"] == "poisson":
        for name, per in (("comm_mean", "job"), ("compute_mean", "sample")):
            mean = s[name]
            zeros = math.exp(-mean)
            if mean > 0 and zeros >= 0.5:
                out.append(f"config: stragglers.{name} = {mean:g} with stragglers.model = 'poisson': delays "
                           f"are whole seconds, so {100 * zeros:.1f}% of the draws per {per} are 0 s and the "
                           f"rest 1 s or more (mean still {mean:g} s); for sub-second delays use another model")
    timeout = cfg["run"]["worker_timeout"]
    if cfg["run"]["clock"] == "wall" and s["model"] != "none" and timeout > 0:
        factor = s["slow_factor"] if s["slow_workers"] else 1.0
        job = factor * (s["offset"] + s["comm_mean"] + max(cfg["order"]["batch"], 1) * s["compute_mean"])
        if job >= 0.5 * timeout:
            out.append(f"config: run.worker_timeout = {timeout:g} s is close to the mean injected job time "
                       f"({job:.3g} s, stragglers.*): a slow worker may be taken for a silent one and end "
                       f"the job; raise run.worker_timeout or set it to 0")
    return out


# ---------------------------------------------------------------------- whole configs

def resolve_checked(raw: dict, overrides: list[str] = (), origin: str = "config") -> tuple[dict, list[str]]:
    """Fill defaults, apply ``--set`` overrides and validate; returns the resolved config
    and the warnings (``_warnings``)."""
    cfg = defaults()
    explicit: dict[tuple[str, str], None] = {}  # ordered set
    for table, body in raw.items():
        if table not in SCHEMA:
            raise UserError(f"{origin}: unknown table [{_name(table)}] (allowed tables: {', '.join(TABLES)})")
        if not isinstance(body, dict):
            raise UserError(f"{origin}: {table!r} must be a table like [{table}] "
                            f"(allowed tables: {', '.join(TABLES)})")
        for name, value in body.items():
            merge(cfg, table, name, value)
            explicit[(table, name)] = None
    for text in overrides:
        table, name, value = parse_override(text)
        merge(cfg, table, name, value)
        explicit[(table, name)] = None
    _check_cross(cfg)
    return cfg, _warnings(cfg, list(explicit))


def resolve(raw: dict, overrides: list[str] = (), origin: str = "config") -> dict:
    """``resolve_checked`` without the warnings."""
    return resolve_checked(raw, overrides, origin)[0]


def _check_cross(cfg: dict) -> None:
    """Combinations of keys that cannot run; each value is already valid on its own."""
    m, order, run, s = cfg["method"], cfg["order"], cfg["run"], cfg["stragglers"]
    kind, batch = order["kind"], order["batch"]
    ordering = ORDERINGS[kind]
    if batch == 0 and ordering.per_example:
        plain = " or ".join(k for k, cls in ORDERINGS.items() if not cls.per_example)
        raise UserError(f"config: order.batch = 0 (whole shards) needs order.kind {plain} "
                        f"(got {kind!r}); balancing orders work on batches of examples")
    if ordering.pairs and batch > 1 and batch % 2:
        raise UserError(f"config: order.batch = {batch} is odd; order.kind = {kind!r} balances pairs "
                        f"of examples (use an even batch, or 1 to pair consecutive steps)")
    method = registry.spec(m["kind"])
    if ordering.coordinated and not method.coordinates:
        able = " or ".join(repr(s.kind) for s in registry.specs() if s.coordinates)
        raise UserError(f"config: order.kind = {kind!r} coordinates all workers every step and needs "
                        f"method.kind = {able} (got {m['kind']!r})")
    if method.check is not None:
        method.check(cfg)
    if s["model"] != "none" and not (s["comm_mean"] or s["compute_mean"] or s["offset"]):
        raise UserError(f"config: stragglers.model = {s['model']!r} with stragglers.comm_mean, "
                        f"stragglers.compute_mean and stragglers.offset all 0 injects no delay; give a mean "
                        f"(seconds) or use stragglers.model = 'none'")
    if run["eval_seconds"] and run["eval_every"]:
        raise UserError(f"config: run.eval_every = {run['eval_every']} and run.eval_seconds = "
                        f"{run['eval_seconds']} are both set; evaluations follow one of them (set the other to 0)")
    if run["epochs"] == 0 and run["max_updates"] == 0 and run["max_seconds"] == 0:
        raise UserError("config: run.epochs, run.max_updates and run.max_seconds are all 0; "
                        "set at least one stopping rule")
    frozen = _time_stays(cfg)
    if frozen and run["epochs"] == 0 and run["max_updates"] == 0:
        raise UserError(f"config: run.max_seconds = {run['max_seconds']} is the only stopping rule and is "
                        f"never reached: {frozen}; set run.epochs or run.max_updates, or a stragglers.model")
    if frozen and run["eval_seconds"]:
        raise UserError(f"config: run.eval_seconds = {run['eval_seconds']} never comes due: {frozen}; "
                        f"use run.eval_every, or a stragglers.model")


# ---------------------------------------------------------------------- the layout

def check_world(cfg: dict, n_workers: int) -> None:
    """The world size alone: worth checking before any data is read."""
    if n_workers < 1:
        raise UserError("hpcsgd needs at least 2 MPI ranks (rank 0 is the master, ranks 1..M are "
                        "workers); launch with: mpiexec -n M+1 hpcsgd train CONFIG.toml")


def resolve_servers(cfg: dict, world: int) -> int:
    """The number of parameter servers S; refuses what several servers cannot run yet."""
    S = cfg["run"]["servers"]
    if S == 1:
        return 1
    why = ""
    kind = cfg["method"]["kind"]
    spec = registry.spec(kind)
    if spec is None or not spec.shards:
        names = ", ".join(repr(k) for k in registry.kinds() if registry.spec(k).shards)
        why = (f"cannot run method.kind = {kind!r} yet: its decisions need the whole model "
               f"(servers run {names})")
    elif cfg["run"]["clock"] not in spec.shards:
        why = (f"with method.kind = {kind!r} needs run.clock = 'simulated': in the wall clock it adapts to "
               f"timings that only rank 0 measures")
    elif world - S < 1:
        why = (f"needs at least {S + 1} MPI ranks (rank 0, {S - 1} more servers, a worker rank); "
               f"this job has {world}")
    if why:
        raise UserError(f"config: run.servers = {S} {why}")
    return S


def resolve_workers(cfg: dict, ranks: int) -> int:
    """The number of workers M from ``run.workers`` and the job's ``ranks`` worker
    ranks; the config then names M (so that a resume on other ranks keeps it)."""
    check_world(cfg, ranks)
    M = cfg["run"]["workers"] or ranks
    S = cfg["run"]["servers"]  # rank 0 and S - 1 more ranks are parameter servers
    if M < ranks:
        raise UserError(f"config: run.workers = {M} but the job has {ranks} worker ranks; launch with "
                        f"mpiexec -n {M + S}, or set run.workers >= {ranks}")
    if M > ranks and cfg["run"]["clock"] != "simulated":
        raise UserError(f"config: run.workers = {M} on {ranks} worker ranks needs run.clock = 'simulated' "
                        f"(in the wall clock every worker has a rank of its own: mpiexec -n {M + S})")
    cfg["run"]["workers"] = M
    return M


def check_layout(cfg: dict, n_workers: int, shard_sizes: list[int], dim: int) -> None:
    """Every check that needs the layout: ``n_workers`` workers with these shard sizes
    (after any trimming, e.g. a coordinated order's equal shards) and a model of ``dim``
    parameters.  Each read key with ``Key.at_most`` stays within its LAYOUT quantity, the
    method's own layout checks pass (``MethodSpec.check_layout``: e.g. its stages fit the
    workers) and the delay parameters fit the workers."""
    check_world(cfg, n_workers)
    if len(shard_sizes) != n_workers:
        raise ValueError(f"{len(shard_sizes)} shard sizes for {n_workers} workers")
    for j, n in enumerate(shard_sizes, 1):
        if n < 1:
            raise UserError(f"config: data.partition = {cfg['data']['partition']!r} leaves worker {j} "
                            f"without training rows; use fewer workers or another partition")
    n_min = min(shard_sizes)
    smallest = shard_sizes.index(n_min) + 1
    limits = {"M": n_workers, "d": dim, "n_min": n_min}
    shown = {"M": f"{LAYOUT['M']} = {n_workers}", "d": f"{LAYOUT['d']} = {dim}",
             "n_min": f"{LAYOUT['n_min']}, {n_min} (worker {smallest})"}
    read = keys_read(cfg)
    for table, keys in SCHEMA.items():
        for name, key in keys.items():
            if key.at_most is None or (table, name) not in read:
                continue
            value = cfg[table][name]
            limit = limits[key.at_most]
            if any(x > limit for x in (value if key.type is list else [value])):
                low = key.minimum if key.minimum is not None else key.above
                raise UserError(f"config: {table}.{name} = {_show(value)} exceeds {shown[key.at_most]} "
                                f"(allowed: {low}..{limit})")
    method = registry.spec(cfg["method"]["kind"])
    if method.check_layout is not None:
        method.check_layout(cfg, registry.Layout(n_workers, tuple(shard_sizes), dim, frozenset(read)))
    _check_delay_means(cfg["stragglers"], n_workers)


def _check_delay_means(s: dict, M: int) -> None:
    """The slowest worker's means (base means times its speed factor) fit the sampler."""
    if s["model"] != "poisson":
        return  # the bounds on means and factors keep every other model finite
    linear = s["speeds"] == "linear"
    factor = float(M) if linear else 1.0
    for j in s["slow_workers"]:
        if j <= M:
            factor = max(factor, (j if linear else 1.0) * s["slow_factor"])
    for name in ("comm_mean", "compute_mean"):
        if s[name] * factor > POISSON_MAX:
            raise UserError(f"config: stragglers.{name} = {s[name]} times the slowest worker's factor "
                            f"{factor:g} exceeds {POISSON_MAX:g}, the largest Poisson mean NumPy draws")


# ---------------------------------------------------------------------- files and resume

def load_config_checked(path: str | Path, overrides: list[str] = ()) -> tuple[dict, list[str]]:
    """The resolved config of a TOML file with ``--set`` overrides, and its warnings."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"config file {path} not found") from None
    except OSError as exc:
        raise UserError(f"config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {path}: not UTF-8 text") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path}: invalid TOML: {exc}") from None
    cfg, warnings = resolve_checked(raw, overrides, origin=str(path))
    if not cfg["run"]["out"]:
        cfg["run"]["out"] = str(Path("runs") / path.stem)
    return cfg, warnings


def load_config(path: str | Path, overrides: list[str] = ()) -> dict:
    return load_config_checked(path, overrides)[0]


def to_json(cfg: dict) -> str:
    return json.dumps(cfg, sort_keys=True)


def from_json(text: str) -> dict:
    return json.loads(text)


# Keys that may change when a run is resumed: how long it runs and how it reports.
# Everything else defines the trajectory and must match the checkpoint.
RESUMABLE_KEYS = {
    ("run", "epochs"), ("run", "max_updates"), ("run", "max_seconds"), ("run", "checkpoint_every"),
    ("run", "keep_checkpoints"), ("run", "progress_every"), ("run", "threads"),
    ("run", "worker_timeout"), ("run", "stop_timeout"), ("run", "out"), ("data", "dir"),
    ("run", "servers"),  # the trajectory is the same bits with any number of servers
}


def resume_config_checked(stored: dict, overrides: list[str]) -> tuple[dict, list[str]]:
    """The stored config with ``--set`` overrides limited to RESUMABLE_KEYS, and the
    warnings about those overrides."""
    cfg = defaults()  # keys newer than the checkpoint keep their defaults
    for table, body in stored.items():
        if table in SCHEMA and isinstance(body, dict):
            for name, value in body.items():
                if name in SCHEMA[table]:
                    merge(cfg, table, name, value)
    explicit: dict[tuple[str, str], None] = {}
    for text in overrides:
        table, name, value = parse_override(text)
        if (table, name) not in RESUMABLE_KEYS and table in SCHEMA and name in SCHEMA[table]:
            allowed = ", ".join(f"{t}.{k}" for t, k in sorted(RESUMABLE_KEYS))
            raise UserError(f"--set {table}.{name}: cannot change on resume, it defines the "
                            f"trajectory (changeable: {allowed})")
        merge(cfg, table, name, value)
        explicit[(table, name)] = None
    _check_cross(cfg)
    return cfg, _warnings(cfg, list(explicit))


def resume_config(stored: dict, overrides: list[str]) -> dict:
    return resume_config_checked(stored, overrides)[0]
