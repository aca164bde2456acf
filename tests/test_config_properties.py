"""Property tests of the configuration: whatever a user writes resolves to a config inside
every key's range, or fails with a UserError that names the key (or the table); whatever
layout an accepted config meets is either refused by name or builds a method that uses
exactly the configured counts."""

import json
import math
import re

import numpy as np
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from hpcsgd.config import (INT_LIMIT, SCHEMA, _name, check_layout, keys_read, parse_override, resolve,
                           resolve_checked)
from hpcsgd.errors import UserError
from hpcsgd.methods import make_method, stage_targets
from hpcsgd.streams import make_stream
from hpcsgd.stragglers import DelayModel

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DOTTED = [f"{t}.{k}" for t, keys in SCHEMA.items() for k in keys]

# Any value TOML or a stored JSON config can hold, including NaN, infinities, integers
# far beyond float64, nested tables and lists of anything.
scalars = (st.none() | st.booleans() | st.integers() | st.integers(-2**1100, 2**1100) | st.floats()
           | st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0, 5e-324, 2**53, 2**53 - 1, -1])
           | st.text(max_size=6))
wild = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=4), inner, max_size=2), max_leaves=5)


NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf, 10**400])


def near(*points: float) -> st.SearchStrategy:
    """Values at and around the given points (bounds, defaults, small counts)."""
    out = []
    for p in points:
        out += [p, p + 1, p - 1, p * 2, p / 2, math.nextafter(p, math.inf), math.nextafter(p, -math.inf)]
    return st.sampled_from([x for x in out if math.isfinite(x)])


def plausible(key) -> st.SearchStrategy:
    """Values of the right type, mostly near the key's bounds: deep enough to reach the
    checks between keys."""
    if key.choices is not None:
        return st.sampled_from(key.choices)
    if key.type is bool:
        return st.booleans()
    if key.type is str:
        return st.sampled_from(["", "x", "runs/a", "digits"]) | st.text(max_size=5)
    if key.type is list:
        ints = st.integers(0, 40) | st.sampled_from([INT_LIMIT, 2, 16])
        return (st.lists(ints, max_size=4) | st.lists(ints, max_size=4, unique=True).map(sorted)
                | st.lists(st.integers(1, 3), max_size=4))
    points = [0, 1, 16, key.default] + [b for b in (key.minimum, key.maximum, key.above, key.below) if b is not None]
    if key.type is int:
        return near(*points).map(lambda x: int(x)) | st.integers(-3, 40)
    return near(*points) | st.floats(-2.0, 2.0) | st.integers(0, 20)


def value_for(key) -> st.SearchStrategy:
    return st.one_of(plausible(key), plausible(key), plausible(key), wild, NON_FINITE)


def table_of(keys) -> st.SearchStrategy:
    known = st.fixed_dictionaries({}, optional={name: value_for(key) for name, key in keys.items()})
    unknown = st.dictionaries(st.sampled_from(["kk", "Kind", "lr ", "x"]), wild, max_size=1)
    return st.one_of(known, known, known, st.builds(lambda a, b: {**a, **b}, known, unknown), wild)


raw_configs = st.builds(
    lambda known, extra: {**known, **extra},
    st.fixed_dictionaries({}, optional={t: table_of(keys) for t, keys in SCHEMA.items()}),
    st.dictionaries(st.sampled_from(["nope", "runs", "Method"]), wild, max_size=1) | st.just({}))


def toml_literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {math.inf: "inf", -math.inf: "-inf"}.get(value, "nan" if math.isnan(value) else repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(x) for x in value) + "]"
    return json.dumps(str(value))


overrides = st.lists(st.sampled_from(DOTTED).flatmap(
    lambda dotted: value_for(SCHEMA[dotted.split(".")[0]][dotted.split(".")[1]]).filter(
        lambda v: not isinstance(v, dict) and v is not None).map(lambda v: f"{dotted}={toml_literal(v)}")),
    max_size=3)


def names_where(message: str, raw: dict, sets: list[str]) -> bool:
    """The message names a full key, or the unknown key or table the input held."""
    if any(re.search(rf"(?<![\w.]){re.escape(d)}(?![\w])", message) for d in DOTTED):
        return True
    for table, body in raw.items():
        if table not in SCHEMA:
            return f"[{table}]" in message or f"[{table!r}]" in message
        if not isinstance(body, dict):
            return repr(table) in message
        if any(f"{table}.{name}" in message or f"{table}.{name!r}" in message
               for name in body if name not in SCHEMA[table]):
            return True
    return any(text.split("=")[0] in message for text in sets)


def assert_within_schema(cfg: dict) -> None:
    """An independent look at a resolved config: exact types, finite, in bounds."""
    for table, keys in SCHEMA.items():
        for name, key in keys.items():
            v = cfg[table][name]
            values = v if key.type is list else [v]
            if key.type is list:
                assert len(set(values)) == len(values) and all(type(x) is int for x in values), (name, v)
                if key.increasing:
                    assert values == sorted(values), (name, v)
            elif key.type is int:
                assert type(v) is int, (name, v)
            elif isinstance(key.type, tuple):
                assert type(v) is float and math.isfinite(v), (name, v)
            else:
                assert type(v) is key.type, (name, v)
            if key.choices is not None:
                assert v in key.choices
            for x in values if key.numeric else []:
                if key.zero_off and x == 0:
                    continue
                assert abs(x) < INT_LIMIT or type(x) is float
                assert key.minimum is None or x >= key.minimum, (name, x)
                assert key.maximum is None or x <= key.maximum, (name, x)
                assert key.above is None or x > key.above, (name, x)
                assert key.below is None or x < key.below, (name, x)


@SETTINGS
@given(raw=raw_configs, sets=overrides)
def test_any_config_resolves_inside_the_schema_or_names_the_key(raw, sets):
    try:
        cfg, warnings = resolve_checked(raw, sets)
    except UserError as exc:
        message = str(exc)
        assert "\n" not in message
        assert names_where(message, raw, sets), message
        event("refused")
        return
    event("resolved")
    assert_within_schema(cfg)
    for line in warnings:
        assert line.startswith("config: ") and "\n" not in line
        assert any(f"{d} = " in line for d in DOTTED), line
    keys_read(cfg)  # total on every resolved config


@SETTINGS
@given(dotted=st.sampled_from(DOTTED), data=st.data())
def test_one_key_on_the_defaults_resolves_or_is_named(dotted, data):
    """With every other key at its default, an error can only be this key's."""
    table, name = dotted.split(".")
    value = data.draw(value_for(SCHEMA[table][name]))
    try:
        cfg = resolve({table: {name: value}})
    except UserError as exc:
        assert re.search(rf"(?<![\w.]){re.escape(dotted)}(?![\w])", str(exc)), (dotted, value, str(exc))
        return
    assert_within_schema(cfg)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=30))
def test_any_override_text_parses_or_fails_as_user_error(text):
    try:
        table, name, _ = parse_override(text)
    except UserError as exc:
        assert str(exc).startswith("--set ")
        return
    try:
        resolve({}, [text])
    except UserError as exc:
        # the message names the table or key, quoted when it is not plain (hpcsgd.config._name)
        named = (f"{table}.{name}", f"[{table}]", f"[{_name(table)}]", _name(name))
        assert any(n in str(exc) for n in named), str(exc)


# ---------------------------------------------------------------------- layout

counts = st.integers(1, 8)
layout_configs = st.sampled_from(SCHEMA["method"]["kind"].choices).flatmap(lambda kind: st.fixed_dictionaries({
    "method": st.fixed_dictionaries({"kind": st.just(kind), "gamma_prime": st.just(0.1)}, optional={
        "k": st.integers(0, 8), "absorb": counts, "blocks": st.integers(1, 45), "k0": counts, "k_step": counts,
        "targets": st.lists(st.integers(1, 300), max_size=4, unique=True).map(sorted)}),
    "order": st.fixed_dictionaries({"kind": st.sampled_from(["rr", "so", "grab", "pair"]),
                                    "batch": st.integers(1, 45) | st.sampled_from([0, 1, 2, 4, 16])}),
    "run": st.fixed_dictionaries({"clock": st.sampled_from(["wall", "simulated"])}),
    "data": st.just({"partition": "replicate" if kind == "async_bcd" else "iid"}),
    "stragglers": st.fixed_dictionaries({"model": st.sampled_from(SCHEMA["stragglers"]["model"].choices),
                                         "comm_mean": st.sampled_from([0.0, 0.002, 1.0, 1e9])}, optional={
        "compute_mean": st.sampled_from([0.0, 0.001, 1e9]), "speeds": st.sampled_from(["equal", "linear"]),
        "slow_workers": st.lists(st.integers(1, 8), max_size=3, unique=True),
        "slow_factor": st.sampled_from([0.5, 4.0, 1e6])}),
}))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(raw=layout_configs, M=st.integers(1, 6), data=st.data(), dim=st.integers(1, 40))
def test_layout_refuses_by_name_or_the_method_uses_the_configured_counts(raw, M, data, dim):
    try:
        cfg = resolve(raw)
    except UserError as exc:
        event("unresolved: " + str(exc)[:40])
        assume(False)
    cfg["method"]["mc_samples"] = 100  # keep the Monte Carlo estimates cheap
    sizes = data.draw(st.lists(st.integers(1, 80), min_size=M, max_size=M))
    try:
        check_layout(cfg, M, sizes, dim)
    except UserError as exc:
        message = str(exc)
        assert any(d in message for d in DOTTED) or "MPI ranks" in message, message
        event("refused: " + (message.split(" = ")[0] if " = " in message else message[:30]))
        return
    event(f"accepted {cfg['method']['kind']}")
    m, batch, read = cfg["method"], cfg["order"]["batch"], keys_read(cfg)
    assert M >= 1 and min(sizes) >= 1
    if ("order", "batch") in read:
        assert batch <= min(sizes)  # a job's batch is never cut short by its shard
    method = make_method(cfg, sizes, dim, 1.0)
    kind = m["kind"]
    if kind == "fastest_k":
        assert 1 <= method.k <= M
    if kind == "piag":
        assert method.absorb <= M  # an update never waits for more arrivals than workers
    if kind == "async_bcd":
        assert len(method.blocks) == m["blocks"] and all(b.stop > b.start for b in method.blocks)
    if kind in ("adaptive_k", "adaptive_kb"):
        targets = stage_targets(cfg, M)
        assert targets == sorted(set(targets))
        method.informed = True  # every stage's (k, b) is feasible once times are measured
        chosen = [method._choose(s) for s in range(len(targets))]
        assert all(1 <= k <= M and 1 <= b <= min(sizes) for k, b in chosen), chosen
        if kind == "adaptive_k":
            assert [k for k, _ in chosen] == sorted(set(k for k, _ in chosen))  # every switch changes k
    for j in range(1, M + 1):
        delay = DelayModel(cfg["stragglers"], j, make_stream(0, j, 2))
        seconds = [sum(delay.draw(max(batch, 1))) for _ in range(3)]
        assert all(math.isfinite(x) and x >= 0 for x in seconds), seconds
    if cfg["stragglers"]["model"] != "none":
        means = np.array([cfg["stragglers"][k] for k in ("comm_mean", "compute_mean", "offset")])
        assert means.any()


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(["adaptive_k", "adaptive_kb"]), clock=st.sampled_from(["wall", "simulated"]),
       batch=st.integers(1, 40), k0=st.integers(1, 7), k_step=st.integers(1, 7), M=st.integers(1, 6),
       data=st.data())
def test_staged_layouts_are_refused_or_every_stage_is_feasible_and_distinct(kind, clock, batch, k0, k_step, M,
                                                                              data):
    # targets mostly within reach (M x batch), so that the accepted ones are many
    targets = data.draw(st.lists(st.integers(1, M * batch + 2), max_size=4, unique=True).map(sorted))
    cfg = resolve({"method": {"kind": kind, "targets": targets, "k0": k0, "k_step": k_step, "mc_samples": 100},
                   "order": {"batch": batch}, "run": {"clock": clock},
                   "stragglers": {"model": "exp", "comm_mean": 1.0, "compute_mean": 0.01}})
    sizes = data.draw(st.lists(st.integers(1, 60), min_size=M, max_size=M))
    try:
        check_layout(cfg, M, sizes, 10)
    except UserError as exc:
        assert re.search(r"order\.batch|method\.(targets|k0|k_step)", str(exc)), str(exc)
        event("refused")
        return
    event("accepted")
    method = make_method(cfg, sizes, 10, 1.0)
    method.informed = True
    chosen = [method._choose(s) for s in range(len(stage_targets(cfg, M)))]
    assert all(1 <= k <= M and 1 <= b <= min(sizes) for k, b in chosen), chosen
    if kind == "adaptive_k":
        ks = [k for k, _ in chosen]
        assert ks == sorted(set(ks)), (targets, batch, ks)  # every stage switch changes k
