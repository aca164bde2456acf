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
"""

from __future__ import annotations

import copy
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hpcsgd.errors import UserError

INT_LIMIT = 2**53  # integers travel in float64 message headers, exact only below 2**53
MAX_SECONDS = 1e9  # clock times and delays (about 32 years): sums of them stay finite
MAX_FACTOR = 1e6   # multipliers of delays: a worker's mean stays far from overflow
POISSON_MAX = 9.2e18  # NumPy's Poisson sampler refuses larger means (lam too large)

# The quantities check_layout bounds keys by (Key.at_most).
LAYOUT = {"M": "the number of workers M", "d": "the number of model parameters d",
          "n_min": "the rows of the smallest shard"}


@dataclass(frozen=True)
class Key:
    """One key: default, type, meaning and allowed values.  Numbers are always finite;
    ``minimum``/``maximum`` are inclusive bounds, ``above``/``below`` exclusive ones
    (``zero_off``: 0, meaning off, is allowed below them), integers also stay below
    INT_LIMIT, and ``at_most`` names a LAYOUT quantity the value
    may not exceed (checked by ``check_layout``).  A list holds ``item``-typed elements,
    each within the bounds, none repeated (``increasing``: strictly ascending)."""

    default: Any
    type: type | tuple[type, ...]
    doc: str
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    below: float | None = None
    at_most: str | None = None
    zero_off: bool = False
    item: type | None = None
    increasing: bool = False

    @property
    def numeric(self) -> bool:
        kinds = _kinds(self.item if self.type is list else self.type)
        return int in kinds or float in kinds

    def upper(self) -> tuple[float, bool] | None:
        """(bound, inclusive) of the value known before the layout, if any."""
        if self.maximum is not None:
            return self.maximum, True
        if self.below is not None:
            return self.below, False
        kinds = self.item if self.type is list else self.type
        if kinds is int:
            return INT_LIMIT, False
        return None

    def interval(self) -> str:
        """The allowed range in interval notation, e.g. ``[0, 1)`` or ``[1, M]``."""
        if self.minimum is not None:
            low = f"[{_bound(self.minimum)}"
        elif self.above is not None:
            low = f"({_bound(self.above)}"
        else:
            low = "(-inf"
        if self.at_most is not None:
            high = f"{self.at_most}]"
        else:
            up = self.upper()
            high = "inf)" if up is None else f"{_bound(up[0])}{']' if up[1] else ')'}"
        return f"{low}, {high}" + (" (or 0)" if self.zero_off else "")

    def allowed(self) -> str:
        """What the README's key reference says is allowed."""
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.type is bool:
            return "true or false"
        if self.type is str:
            return "text"
        if self.type is list:
            what = "strictly increasing" if self.increasing else "distinct"
            return f"list of {what} integers in {self.interval()}"
        if self.type is int:
            return f"integer in {self.interval()}"
        return f"number in {self.interval()}"


def _kinds(t: type | tuple[type, ...] | None) -> tuple:
    return t if isinstance(t, tuple) else (t,)


def _bound(x: float) -> str:
    if x == INT_LIMIT:
        return "2^53"
    return str(x) if isinstance(x, int) else f"{x:g}"


# Table -> key -> Key.  This is the single source of truth: validation, defaults,
# `--set` parsing and the README reference all read it.
SCHEMA: dict[str, dict[str, Key]] = {
    "run": {
        "out": Key("", str, "run directory; empty means runs/<config file stem>"),
        "seed": Key(0, int, "master seed; every rank's random streams derive from it", minimum=0),
        "clock": Key("wall", str, "wall (real time, real sleeps) or simulated (reproducible event order; "
                     "time advances only by the injected delays)", choices=("wall", "simulated")),
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
    "method": {
        "kind": Key("sync", str, "update rule",
                    choices=("sync", "fastest_k", "adaptive_k", "adaptive_kb", "async", "gsgm", "piag",
                             "async_bcd")),
        "lr": Key(0.1, (int, float), "step size (not read by piag and async_bcd: see stepsize)", above=0),
        "momentum": Key(0.0, (int, float), "heavy-ball momentum beta at the master (0 = plain SGD; "
                        "not with piag, async_bcd)", minimum=0, below=1),
        "k": Key(0, int, "replies waited for by fastest_k (0 = all workers)", minimum=0, at_most="M"),
        "assign": Key("pure", str, "async: who gets the job created at each update: the finisher "
                      "(pure), a uniform worker (random), a permutation per M updates (shuffle) or one "
                      "permutation forever (shuffle_once)", choices=("pure", "random", "shuffle", "shuffle_once")),
        "schedule": Key(True, bool, "gsgm: white-list rounds, one admitted update per worker per round "
                        "(a worker's early gradients are deferred)"),
        "average": Key(True, bool, "gsgm with schedule: average a worker's deferred gradients into its "
                       "admitted one (false: deferred gradients are dropped)"),
        "stepsize": Key("adaptive2", str, "piag, async_bcd: step-size policy (fixed uses tau_max; the "
                        "adaptive ones keep the steps within any delay window below gamma')",
                        choices=("fixed", "adaptive1", "adaptive2")),
        "h": Key(0.9, (int, float), "piag, async_bcd: gamma' = h / L (h < 1: steps below 1/L)", above=0, below=1),
        "L": Key(0.0, (int, float), "piag, async_bcd: smoothness of the objective (0 = estimate by "
                 "power iteration for logistic, softmax and least squares)", minimum=0),
        "gamma_prime": Key(0.0, (int, float), "piag, async_bcd: gamma' itself (0 = h / L)", minimum=0),
        "alpha": Key(0.5, (int, float), "piag, async_bcd, adaptive policies: steps are alpha gamma' at most",
                     above=0, maximum=1),
        "tau_max": Key(0, int, "piag, async_bcd with stepsize = fixed: the delay bound, step "
                       "gamma' / (tau_max + 1)", minimum=0),
        "absorb": Key(1, int, "piag: arrivals absorbed per update", minimum=1, at_most="M"),
        "blocks": Key(10, int, "async_bcd: coordinate blocks", minimum=1, at_most="d"),
        "k0": Key(1, int, "adaptive_k, adaptive_kb without targets: replies waited for in the first stage",
                  minimum=1, at_most="M"),
        "k_step": Key(1, int, "adaptive_k, adaptive_kb without targets: how much k grows at each stage "
                      "switch (at most M - k0)", minimum=1, at_most="M"),
        "burn_in": Key(20, int, "adaptive_k, adaptive_kb with switch = test: updates in a stage before "
                       "the switching test counts", minimum=0),
        "targets": Key([], list, "adaptive_k, adaptive_kb: effective batches K_1 < K_2 < ... of the "
                       "stages (empty = order.batch x (k0, k0 + k_step, ..., M); at most M x order.batch "
                       "for adaptive_k, M x the smallest shard for adaptive_kb)", minimum=1, item=int,
                       increasing=True),
        "switch": Key("test", str, "adaptive_k, adaptive_kb: next stage when the Pflug-type test fires, or at the "
                      "bound-optimal error level (needs the bound_* keys)", choices=("test", "bound")),
        "bound_c": Key(0.0, (int, float), "switch = bound: strong convexity c of the objective (c <= bound_L)",
                       minimum=0),
        "bound_L": Key(0.0, (int, float), "switch = bound: smoothness L of the objective (lr <= 1/L)", minimum=0),
        "bound_sigma2": Key(0.0, (int, float), "switch = bound: per-sample gradient variance sigma^2",
                            minimum=0),
        "bound_gap0": Key(0.0, (int, float), "switch = bound: initial suboptimality F(w_0) - F*",
                          minimum=0),
        "refresh_every": Key(20, int, "adaptive_k, adaptive_kb, wall clock: updates between re-estimates of the "
                             "iteration time from measured response times", minimum=1),
        "mc_samples": Key(4000, int, "adaptive_k, adaptive_kb: Monte Carlo draws per estimate of mu(k, b) "
                          "(held in memory, samples x M per batch size)", minimum=100, maximum=10**6),
    },
    "order": {
        "kind": Key("rr", str, "per-worker example order (cd_grab needs method.kind = sync)",
                    choices=("rr", "so", "grab", "pair", "cd_grab")),
        "batch": Key(16, int, "examples per worker per step (B); 0 = the worker's whole shard "
                     "(full local gradients; rr/so only); even or 1 for pair and cd_grab", minimum=0,
                     at_most="n_min"),
        "record_history": Key(False, bool, "store every epoch's orders in /order/history"),
    },
    "stragglers": {
        "model": Key("none", str, "delay distribution of every job, in seconds: none (no delay), fixed "
                     "(the mean), exp, shifted_exp, gamma, normal (|N|), uniform (U(0, 2 mean)), poisson "
                     "(Poisson(mean) whole seconds: integer counts)",
                     choices=("none", "fixed", "exp", "shifted_exp", "gamma", "normal", "uniform", "poisson")),
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

def _show(value: Any) -> str:
    """A value for a one-line message, spelled as in TOML where Python differs (true,
    false); huge numbers and long texts shortened."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    if len(text) > 60:
        return f"{text[:40]}... ({len(text)} characters)"
    return text


def _type_name(key: Key) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list"}
    if key.type is list:
        return f"a list of {'integers' if key.item is int else 'values'}"
    if isinstance(key.type, tuple):
        return "a number" if set(key.type) == {int, float} else " or ".join(names[x] for x in key.type)
    return names[key.type]


def _has_type(value: Any, wanted: type | tuple[type, ...]) -> bool:
    wants = _kinds(wanted)
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
        return _check_number(where, key, value, floats=float in _kinds(key.type))
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

def _get(cfg: dict, dotted: str) -> Any:
    """``cfg`` at ``table.key``, the default where a (stored, older) config lacks it."""
    table, name = dotted.split(".")
    body = cfg.get(table)
    if isinstance(body, dict) and name in body:
        return body[name]
    return SCHEMA[table][name].default


# What a choice does, for the warnings about keys it does not read.
_DOES = {
    "method.kind": {"sync": "waits for every worker", "fastest_k": "waits for the first method.k replies",
                    "adaptive_k": "grows k in stages at a fixed order.batch",
                    "adaptive_kb": "picks (k, batch) for each stage", "async": "applies every gradient as it arrives",
                    "gsgm": "admits gradients in white-list rounds",
                    "piag": "takes delay-adaptive prox steps on aggregated gradients",
                    "async_bcd": "takes delay-adaptive block steps"},
    "method.stepsize": {"fixed": "steps gamma' / (method.tau_max + 1)", "adaptive1": "adapts each step to its delay",
                        "adaptive2": "adapts each step to its delay"},
    "method.switch": {"test": "switches stages by the Pflug-type test",
                      "bound": "switches stages at the bound-optimal error level"},
    "run.clock": {"simulated": "takes iteration times from the delay model", "wall": "measures iteration times"},
    "stragglers.model": {"none": "injects no delay"},
}

Reason = Callable[[dict], "str | None"]


def _only(dotted: str, *values: Any, why: str | None = None) -> Reason:
    """Read only while ``dotted`` has one of ``values``."""
    def reason(cfg: dict) -> str | None:
        v = _get(cfg, dotted)
        if v in values:
            return None
        if why is not None:
            return f"{dotted} = {_show(v)} {why}"
        # a stored config read by `hpcsgd inspect` may hold anything, even unhashable values
        does = _DOES.get(dotted, {}).get(v, "does not read it") if isinstance(v, (str, bool)) else "does not read it"
        return f"{dotted} = {_show(v)} {does} (read with {dotted} = {' or '.join(map(repr, values))})"
    return reason


def _unless(dotted: str, *values: Any, why: str) -> Reason:
    """Read except while ``dotted`` has one of ``values``."""
    def reason(cfg: dict) -> str | None:
        v = _get(cfg, dotted)
        return f"{dotted} = {_show(v)} {why}" if v in values else None
    return reason


def _all(*reasons: Reason) -> Reason:
    def reason(cfg: dict) -> str | None:
        return next((r for r in (f(cfg) for f in reasons) if r), None)
    return reason


def _batch_chosen(cfg: dict) -> str | None:
    if _get(cfg, "method.kind") == "adaptive_kb" and _get(cfg, "method.targets"):
        return "method.kind = 'adaptive_kb' with method.targets picks every stage's batch"
    return None


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


_DELAY_LIKE = ("piag", "async_bcd")
_STAGED = ("adaptive_k", "adaptive_kb")
_KIND_DELAY = _only("method.kind", *_DELAY_LIKE)
_KIND_STAGED = _only("method.kind", *_STAGED)
_GAMMA_FROM_H = _all(_KIND_DELAY, _only("method.gamma_prime", 0, why="gives gamma' itself"))
_STAGES_FROM_K = _all(_KIND_STAGED, _only("method.targets", [], why="lists the stages"))
_BOUND = _all(_KIND_STAGED, _only("method.switch", "bound"))
_DELAYS = _unless("stragglers.model", "none", why="injects no delay")

# (table, key) -> why the key is not read under this config (None: it is read).  Keys not
# listed are read by every configuration.  This table is the one place that knows which
# choice reads what: the ignored-key warnings, check_layout and `hpcsgd inspect` use it.
READ_BY: dict[tuple[str, str], Reason] = {
    ("run", "max_seconds"): _time_stays,
    ("data", "alpha"): _only("data.partition", "dirichlet"),
    ("data", "dir"): _source_is_a_file,
    ("model", "hidden"): _only("model.kind", "mlp"),
    ("model", "init_scale"): _only("model.init", "normal"),
    ("method", "lr"): _unless("method.kind", *_DELAY_LIKE, why="steps by method.stepsize from gamma' "
                              "(method.gamma_prime, or method.h / method.L)"),
    ("method", "momentum"): _unless("method.kind", *_DELAY_LIKE, why="takes prox steps without momentum"),
    ("method", "k"): _only("method.kind", "fastest_k"),
    ("method", "assign"): _only("method.kind", "async"),
    ("method", "schedule"): _only("method.kind", "gsgm"),
    ("method", "average"): _all(_only("method.kind", "gsgm"),
                                _only("method.schedule", True, why="defers no gradient")),
    ("method", "stepsize"): _KIND_DELAY,
    ("method", "h"): _GAMMA_FROM_H,
    ("method", "L"): _GAMMA_FROM_H,
    ("method", "gamma_prime"): _KIND_DELAY,
    ("method", "alpha"): _all(_KIND_DELAY, _only("method.stepsize", "adaptive1", "adaptive2")),
    ("method", "tau_max"): _all(_KIND_DELAY, _only("method.stepsize", "fixed")),
    ("method", "absorb"): _only("method.kind", "piag"),
    ("method", "blocks"): _only("method.kind", "async_bcd"),
    ("method", "k0"): _STAGES_FROM_K,
    ("method", "k_step"): _STAGES_FROM_K,
    ("method", "burn_in"): _all(_KIND_STAGED, _only("method.switch", "test")),
    ("method", "targets"): _KIND_STAGED,
    ("method", "switch"): _KIND_STAGED,
    ("method", "bound_c"): _BOUND,
    ("method", "bound_L"): _BOUND,
    ("method", "bound_sigma2"): _BOUND,
    ("method", "bound_gap0"): _BOUND,
    ("method", "refresh_every"): _all(_KIND_STAGED, _only("run.clock", "wall")),
    ("method", "mc_samples"): _KIND_STAGED,
    ("order", "batch"): _batch_chosen,
    ("stragglers", "comm_mean"): _DELAYS,
    ("stragglers", "compute_mean"): _DELAYS,
    ("stragglers", "offset"): _DELAYS,
    ("stragglers", "shape"): _only("stragglers.model", "gamma"),
    ("stragglers", "shift"): _only("stragglers.model", "shifted_exp"),
    ("stragglers", "cv"): _only("stragglers.model", "normal"),
    ("stragglers", "speeds"): _DELAYS,
    ("stragglers", "slow_workers"): _DELAYS,
    ("stragglers", "slow_factor"): _all(_DELAYS, _unless("stragglers.slow_workers", [], why="slows no worker")),
}


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
    if batch == 0 and kind not in ("rr", "so"):
        raise UserError(f"config: order.batch = 0 (whole shards) needs order.kind rr or so "
                        f"(got {kind!r}); balancing orders work on batches of examples")
    if kind in ("pair", "cd_grab") and batch > 1 and batch % 2:
        raise UserError(f"config: order.batch = {batch} is odd; order.kind = {kind!r} balances pairs "
                        f"of examples (use an even batch, or 1 to pair consecutive steps)")
    if kind == "cd_grab" and m["kind"] != "sync":
        raise UserError(f"config: order.kind = 'cd_grab' coordinates all workers every step and needs "
                        f"method.kind = 'sync' (got {m['kind']!r})")
    if m["kind"] in _STAGED:
        _check_staged(cfg)
    if m["kind"] in _DELAY_LIKE:
        if m["momentum"] > 0:
            raise UserError(f"config: method.momentum = {m['momentum']} is not allowed with method.kind = "
                            f"{m['kind']!r}: its steps are prox steps of the delay-adaptive size (use 0)")
        if not m["gamma_prime"] and m["L"] and not math.isfinite(m["h"] / m["L"]):
            raise UserError(f"config: method.h / method.L = {m['h']} / {m['L']} is not a finite gamma'; "
                            f"give a larger method.L or method.gamma_prime")
        if not m["gamma_prime"] and not m["L"] and cfg["model"]["kind"] == "mlp":
            raise UserError(f"config: method.kind = {m['kind']!r} needs gamma' and cannot estimate the "
                            f"smoothness of model.kind = 'mlp'; give method.L or method.gamma_prime")
    if m["kind"] == "async_bcd" and cfg["data"]["partition"] != "replicate":
        raise UserError(f"config: method.kind = 'async_bcd' steps along block gradients of the whole "
                        f"objective, so every worker needs every row: set data.partition = 'replicate' "
                        f"(got {cfg['data']['partition']!r})")
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


def _check_staged(cfg: dict) -> None:
    m, order = cfg["method"], cfg["order"]["kind"]
    if cfg["order"]["batch"] == 0 and not _batch_chosen(cfg):
        raise UserError(f"config: method.kind = {m['kind']!r} needs order.batch >= 1 (the stages are "
                        f"multiples of a per-worker batch); 0 means whole shards")
    if m["kind"] == "adaptive_kb" and order not in ("rr", "so"):
        raise UserError(f"config: method.kind = 'adaptive_kb' changes the per-worker batch between "
                        f"stages; order.kind must be rr or so (got {order!r})")
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


# ---------------------------------------------------------------------- the layout

def check_world(cfg: dict, n_workers: int) -> None:
    """The world size alone: worth checking before any data is read."""
    if n_workers < 1:
        raise UserError("hpcsgd needs at least 2 MPI ranks (rank 0 is the master, ranks 1..M are "
                        "workers); launch with: mpiexec -n M+1 hpcsgd train CONFIG.toml")


def check_layout(cfg: dict, n_workers: int, shard_sizes: list[int], dim: int) -> None:
    """Every check that needs the layout: ``n_workers`` workers with these shard sizes
    (after any trimming, e.g. cd_grab's equal shards) and a model of ``dim`` parameters.
    Each read key with ``Key.at_most`` stays within its LAYOUT quantity; stage and delay
    parameters fit the workers."""
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
    m, batch = cfg["method"], cfg["order"]["batch"]
    if m["kind"] in _STAGED:
        _check_stages(m, n_workers, batch, n_min, read)
    _check_delay_means(cfg["stragglers"], n_workers)


def _check_stages(m: dict, M: int, batch: int, n_min: int, read: set) -> None:
    if ("method", "k_step") in read and m["k0"] < M and m["k_step"] > M - m["k0"]:
        raise UserError(f"config: method.k_step = {m['k_step']} exceeds M - method.k0 = {M - m['k0']} "
                        f"(M = {M} workers): the stages would jump from k0 straight to M")
    t = m["targets"]
    if not t:
        return
    if m["kind"] == "adaptive_k":
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
