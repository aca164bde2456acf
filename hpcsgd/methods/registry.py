"""The method registry: everything the rest of hpcsgd knows about an update rule, declared
next to its class.

A method module registers one ``MethodSpec`` per ``method.kind`` value it serves::

    register(MethodSpec(kind="toy", does="applies every gradient at half size", rank=90,
                        build=lambda cfg, shard_sizes, dim, L: Toy(...),
                        keys=(MethodKey("scale", Key(0.5, (int, float), "toy: ...")),),
                        extras={"scaled": np.float64}))

and every module of ``hpcsgd/methods`` is imported the first time the registry is read,
so adding a method is one new module (plus its tests and its README row).  From the
specs,

- ``hpcsgd.config`` builds the ``[method]`` table of its schema (``method.kind``'s
  choices and every key, in ``method_keys()`` order), which keys each choice reads
  (``READ_BY``: the ignored-key warnings, ``keys_read``, the layout bounds), the
  cross-checks (``MethodSpec.check``) and the layout checks (``MethodSpec.check_layout``);
- ``make_method`` builds the configured method, ``needs_L`` says whether set-up must
  estimate the smoothness L first, ``trace_extras`` gives the trace columns a method
  adds and their dtypes;
- ``hpcsgd inspect`` prints the summaries (``Summary``) of the checkpoint's method and
  the config keys flagged ``MethodKey.shown``.

Keys several methods read are declared once, as one ``MethodKey`` object, in the module
of the part they share (``COMMON_KEYS`` here: the engine's step and heavy ball;
``stepsize.STEP_KEYS``, ``staged.STAGE_KEYS``), and every spec that reads them lists that
object.  Every common key is read by every method unless its spec says why not
(``MethodSpec.ignores``).
"""

from __future__ import annotations

import importlib
import pkgutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from hpcsgd.schema import Key, Reason
from hpcsgd.trace import TRACE_COLUMNS


@dataclass(frozen=True, eq=False)
class MethodKey:
    """One ``[method]`` key: its name, its ``Key`` (default, type, range, doc), when a
    method that reads it still does not (``when``: e.g. h only without gamma_prime), and
    whether ``hpcsgd inspect``'s config line shows it (when read)."""
    name: str
    key: Key
    when: Reason | None = None
    shown: bool = False


@dataclass(frozen=True)
class Layout:
    """What ``check_layout`` knows: the workers, their shard sizes (after any trimming),
    the number of model parameters and the keys the configuration reads."""
    workers: int
    shard_sizes: tuple[int, ...]
    dim: int
    read: frozenset

    @property
    def n_min(self) -> int:
        return min(self.shard_sizes)


@dataclass(frozen=True, eq=False)
class Summary:
    """What ``hpcsgd inspect`` says about a method's run.  ``compute(config, trace)``
    returns the summary (JSON-able; None or empty: nothing to say) from the stored
    config and trace columns; ``lines(summary, fmt)`` the report's (label, text) rows,
    ``fmt`` being inspect's number format.  It goes under ``name`` in ``--json`` and
    after the report entry ``after`` ("step_size" or "load").  ``any_method``: computed
    for every checkpoint (it judges from the trace alone), not only for the methods that
    list it."""
    name: str
    compute: Callable[[dict, dict], Any]
    lines: Callable[[Any, Callable], list[tuple[str, str]]]
    after: str = "load"
    any_method: bool = False


Build = Callable[[dict, Sequence[int], int, float], Any]


@dataclass(frozen=True, eq=False)
class MethodSpec:
    """One ``method.kind``.

    - ``does``: what it does, in the warning about a key it does not read
      ("method.kind = 'sync' waits for every worker (read with ...)");
    - ``rank``: its place in the registry: its keys come in rank order in the schema (and
      the README's key reference), and ``method.kind`` lists the ``synchronous`` methods
      (every update made of replies at the current model) first, each group by rank;
    - ``build(cfg, shard_sizes, dim, L)``: the method for workers with these shards, a
      model of ``dim`` parameters and smoothness ``L`` (0 unless ``needs_L`` asked for it);
    - ``keys``: the ``[method]`` keys it reads besides the common ones; ``ignores``:
      common keys it does not read, with why ("takes prox steps without momentum");
    - ``decides``: keys of other tables it may set itself, with the reason that says
      when (then they are not read), e.g. ``{"order.batch": ...}``;
    - ``check(cfg)``: combinations it refuses once every value is valid on its own
      (``UserError``); ``check_layout(cfg, layout)``: what it refuses given the layout;
    - ``needs_L(cfg)``: set-up must estimate the objective's smoothness L first;
    - ``coordinates``: it can drive a coordinated ordering (all workers step together,
      the master decides every worker's signs);
    - ``extras``: the trace columns it adds (``engine.apply(extra=...)``) and their dtypes;
    - ``summaries``: what ``hpcsgd inspect`` reports about its runs;
    - ``requires``: ``--set`` settings it needs on top of the defaults to run at all
      (the compatibility matrix starts its rows from them);
    - ``shards``: the clocks in which it runs with parameter servers (``run.servers >
      1``): its arithmetic is elementwise, and what it decides from the model or a
      gradient goes through ``engine.dot``, so every server runs it on its slice and
      decides the same (a method that adapts to measured timings decides alone, so
      only in the simulated clock).
    """
    kind: str
    does: str
    rank: int
    build: Build
    synchronous: bool = False
    keys: tuple[MethodKey, ...] = ()
    ignores: Mapping[str, str] = field(default_factory=dict)
    decides: Mapping[str, Reason] = field(default_factory=dict)
    check: Callable[[dict], None] | None = None
    check_layout: Callable[[dict, Layout], None] | None = None
    needs_L: Callable[[dict], bool] | None = None
    coordinates: bool = False
    extras: Mapping[str, type] = field(default_factory=dict)
    summaries: tuple[Summary, ...] = ()
    requires: tuple[str, ...] = ()
    shards: tuple[str, ...] = ()


# The keys of the engine's step, read by every method unless its spec ignores them.
LR = MethodKey("lr", Key(0.1, (int, float), "step size (not read by piag and async_bcd: see stepsize)", above=0),
               shown=True)
MOMENTUM = MethodKey("momentum", Key(0.0, (int, float), "heavy-ball momentum beta at the master (0 = plain SGD; "
                                     "not with piag, async_bcd)", minimum=0, below=1))
COMMON_KEYS = (LR, MOMENTUM)

_SPECS: dict[str, MethodSpec] = {}
_LISTENERS: list[Callable[[], None]] = []
_discovered = False


def _discover() -> None:
    """Import every module of hpcsgd/methods once: each registers its methods."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    import hpcsgd.methods as package
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        importlib.import_module(f"{package.__name__}.{info.name}")


def _validate(spec: MethodSpec) -> None:
    if spec.kind in _SPECS:
        raise ValueError(f"method.kind {spec.kind!r} is registered twice")
    common = {k.name for k in COMMON_KEYS}
    declared = {k.name: k for s in _SPECS.values() for k in s.keys}
    for k in spec.keys:
        if k.name == "kind" or k.name in common:
            raise ValueError(f"{spec.kind}: method.{k.name} is not a key of its own")
        if declared.get(k.name, k) is not k:
            raise ValueError(f"{spec.kind}: method.{k.name} is declared again; list the one MethodKey "
                             f"the other methods that read it list")
    if len({k.name for k in spec.keys}) != len(spec.keys):
        raise ValueError(f"{spec.kind}: a key is listed twice")
    if not set(spec.ignores) <= common:
        raise ValueError(f"{spec.kind}: ignores {sorted(set(spec.ignores) - common)}, which are not common keys")
    for name, dtype in spec.extras.items():
        if name in TRACE_COLUMNS:
            raise ValueError(f"{spec.kind}: trace extra {name!r} is a standard trace column")
        np.dtype(dtype)  # a NumPy scalar type
    named = {s.name: s for other in _SPECS.values() for s in other.summaries}
    for s in spec.summaries:
        if named.get(s.name, s) is not s:
            raise ValueError(f"{spec.kind}: another summary is named {s.name!r}")


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method; what reads the registry (the config schema) is rebuilt."""
    _validate(spec)
    _SPECS[spec.kind] = spec
    _changed()
    return spec


def unregister(kind: str) -> None:
    del _SPECS[kind]
    _changed()


@contextmanager
def registered(*specs: MethodSpec) -> Iterator[None]:
    """The methods registered for the duration of a ``with`` block (tests)."""
    _discover()
    done = []
    try:
        for spec in specs:
            done.append(register(spec).kind)
        yield
    finally:
        for kind in reversed(done):
            unregister(kind)


def on_change(listener: Callable[[], None]) -> None:
    """Call ``listener`` whenever a method is registered or removed."""
    _LISTENERS.append(listener)


def _changed() -> None:
    for listener in _LISTENERS:
        listener()


def specs() -> list[MethodSpec]:
    """Every method, in the order of ``method.kind``'s choices."""
    _discover()
    return sorted(_SPECS.values(), key=lambda s: (not s.synchronous, s.rank))


def kinds() -> tuple[str, ...]:
    return tuple(s.kind for s in specs())


def spec(kind: Any) -> MethodSpec | None:
    """The method of this ``method.kind`` (None for an unknown or malformed value)."""
    _discover()
    return _SPECS.get(kind) if isinstance(kind, str) else None


def method_keys() -> dict[str, MethodKey]:
    """Every ``[method]`` key but kind, in schema order: the common keys, then each
    method's in rank order."""
    out = {k.name: k for k in COMMON_KEYS}
    for s in sorted(specs(), key=lambda s: s.rank):
        for k in s.keys:
            out.setdefault(k.name, k)
    return out


def readers(name: str) -> list[str]:
    """The kinds that list the key ``method.<name>``, in ``method.kind`` order."""
    return [s.kind for s in specs() if any(k.name == name for k in s.keys)]


def summaries() -> list[Summary]:
    """Every method's summaries, once each, in ``method.kind`` order of first use."""
    out: dict[str, Summary] = {}
    for s in specs():
        for summary in s.summaries:
            out.setdefault(summary.name, summary)
    return list(out.values())


# ---------------------------------------------------------------------- what the engine asks

def make_method(cfg: dict, shard_sizes: Sequence[int], dim: int = 0, L: float = 0.0):
    """The configured method for workers with these shard sizes; ``dim`` is the number of
    parameters and ``L`` the objective's smoothness (for the methods whose ``needs_L``
    asked for it)."""
    kind = cfg["method"]["kind"]
    s = spec(kind)
    if s is None:
        raise AssertionError(f"config validation lets through unknown method {kind!r}")
    return s.build(cfg, list(shard_sizes), dim, L)


def needs_L(cfg: dict) -> bool:
    """The configured method needs the objective's smoothness L and the config does not
    give it: set-up estimates it (into ``method.L``) before ``make_method``."""
    s = spec(cfg["method"]["kind"])
    return bool(s is not None and s.needs_L is not None and s.needs_L(cfg))


def trace_extras(kind: str) -> dict[str, type]:
    """The trace columns method ``kind`` adds to the standard ones, with their dtypes."""
    s = spec(kind)
    return dict(s.extras) if s is not None else {}


def column(table: dict | None, name: str) -> np.ndarray | None:
    """A stored 1-D column of a trace or eval group, if there is one."""
    if not isinstance(table, dict):
        return None
    arr = table.get(name)
    return arr if isinstance(arr, np.ndarray) and arr.ndim == 1 else None
