"""The method registry: a method declared in one place (here: a throwaway one, inside the
test) is accepted by the config with its keys, built by make_method, traced with its
declared dtypes, known to keys_read and the warnings, and summarised by inspect; the
registered methods declare exactly what they trace and what they need."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from golden_runs import GOLDEN, runs
from hpcsgd import checkpoint as ck
from hpcsgd import config as C
from hpcsgd import inspect as hin
from hpcsgd.engine.interface import Assignment
from hpcsgd.errors import UserError
from hpcsgd.methods import make_method, needs_L, registry, trace_extras
from hpcsgd.methods.base import Method
from hpcsgd.methods.registry import MethodKey, MethodSpec, Summary
from hpcsgd.ordering import ORDERINGS
from hpcsgd.schema import Key
from hpcsgd.trace import TRACE_COLUMNS, Table


class FakeEngine:
    """Runs a method's jobs round-robin over the workers that have some, steps plain SGD
    (w -= lr * scale * grad on the given block) and traces every update in a Table with
    the standard columns plus the method's declared extras."""

    dot = staticmethod(lambda a, b: float(np.dot(a, b)))

    def __init__(self, method, M: int, dim: int, lr: float = 0.1, extras: dict | None = None, seed: int = 0):
        self.method, self.M, self.lr = method, M, lr
        self.version = 0
        self.rng = np.random.default_rng(seed)
        self.data = np.random.default_rng(seed + 1)
        self.w = np.zeros(dim)
        self.part, self.n_params = slice(0, dim), dim  # the whole model: no parameter servers
        self.trace = Table({**TRACE_COLUMNS, **(extras or {})})
        self.jobs = {j: [] for j in range(1, M + 1)}  # versions of each worker's open jobs
        self.turn = 0
        self.give(method.start(self))

    def give(self, assignments) -> None:
        for a in assignments:
            self.jobs[a.worker].append((self.version, a.batch))

    # --- the Engine protocol
    def apply(self, grad, *, contributors, staleness, batch, step_size=None, scale=1.0, extra=None, block=None):
        lr = self.lr if step_size is None else step_size
        target = self.w if block is None else self.w[block]
        target -= lr * scale * grad
        self.version += 1
        self.trace.append(update=self.version, worker=contributors[0] if len(contributors) == 1 else -1,
                          staleness=staleness, step_size=lr, k=len(contributors), batch=batch, **(extra or {}))

    def cancel_jobs_before(self, version):
        for j in self.jobs:
            self.jobs[j] = [job for job in self.jobs[j] if job[0] >= version]

    def send_signs(self, worker, eps):
        pass

    def keep(self, r):
        pass

    def recycle(self, r):
        pass

    def queued(self, worker):
        return len(self.jobs[worker])

    def at_epoch_end(self):
        return False

    def overdue_seconds(self):
        return [0.0] * self.M

    # --- driving it
    def run(self, results: int) -> list:
        grads = []
        for _ in range(results):
            busy = [j for j in range(1, self.M + 1) if self.jobs[j]]
            j = busy[self.turn % len(busy)]
            self.turn += 1
            version, batch = self.jobs[j].pop(0)
            g = self.data.normal(size=self.w.size)
            grads.append((j, g))
            r = SimpleNamespace(worker=j, version=version, batch=batch, grad=g.copy(), epoch=0,
                                pairs=np.zeros((0, self.w.size)))
            self.give(self.method.on_result(self, r))
        return grads


# ---------------------------------------------------------------------- a method in one place

class Halves(Method):
    """The throwaway rule: apply every gradient as it arrives, scaled by method.scale,
    and give the finisher its next job."""
    name = "halves"

    def __init__(self, n_workers: int, batch: int, scale: float):
        self.n_workers, self.batch, self.scale = n_workers, batch, scale

    def start(self, engine):
        return [Assignment(j, self.batch) for j in range(1, self.n_workers + 1)]

    def on_result(self, engine, r):
        engine.apply(r.grad, contributors=[r.worker], staleness=engine.version - r.version, batch=r.batch,
                     scale=self.scale, extra={"scaled": self.scale})
        return [Assignment(r.worker, self.batch)]

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _check(cfg: dict) -> None:
    if cfg["method"]["scale"] * cfg["method"]["lr"] > 0.5:
        raise UserError(f"config: method.scale x method.lr = {cfg['method']['scale'] * cfg['method']['lr']:g} "
                        f"exceeds 0.5")


def _check_layout(cfg: dict, layout) -> None:
    if layout.workers < 2:
        raise UserError("config: method.kind = 'halves' needs 2 workers or more")


def _summary(config: dict, trace: dict) -> dict | None:
    scaled = registry.column(trace, "scaled")
    return None if scaled is None else {"scale": config["method"]["scale"], "mean": float(scaled.mean())}


HALVES = MethodSpec(
    kind="halves", does="applies every gradient at a fraction of its size", rank=90,
    build=lambda cfg, shard_sizes, dim, L: Halves(len(shard_sizes), cfg["order"]["batch"], cfg["method"]["scale"]),
    keys=(MethodKey("scale", Key(0.5, (int, float), "halves: factor on every gradient", above=0, maximum=1),
                    shown=True),),
    check=_check, check_layout=_check_layout, extras={"scaled": np.float64},
    summaries=(Summary("halves", _summary, lambda s, fmt: [("halves", f"scale {fmt(s['scale'])}, mean applied "
                                                                      f"{fmt(s['mean'])}")]),))


def test_a_method_declared_in_one_place_runs_through_config_engine_trace_and_inspect(tmp_path):
    with registry.registered(HALVES):
        # the config: its kind, its key with its range and doc, its checks
        assert C.SCHEMA["method"]["kind"].choices[-1] == "halves"
        assert list(C.SCHEMA["method"])[-1] == "scale"
        cfg = C.resolve({"method": {"kind": "halves", "scale": 0.25}, "order": {"batch": 4}})
        assert cfg["method"]["scale"] == 0.25
        assert C.defaults()["method"]["scale"] == 0.5
        with pytest.raises(UserError, match=r"^config: method\.scale = 2 is not allowed: must be a finite number "
                                            r"in \(0, 1\]$"):
            C.resolve({"method": {"kind": "halves", "scale": 2}})
        with pytest.raises(UserError, match=r"^config: method\.scale x method\.lr = 0\.9 exceeds 0\.5$"):
            C.resolve({"method": {"kind": "halves", "scale": 0.9, "lr": 1.0}})
        with pytest.raises(UserError, match=r"coordinates all workers every step and needs method\.kind = 'sync' "
                                            r"\(got 'halves'\)"):
            C.resolve({"method": {"kind": "halves"}, "order": {"kind": "cd_grab"}})
        assert "| `method.scale` | `0.5` | number in (0, 1] | halves: factor on every gradient |" in C.key_reference()
        with pytest.raises(UserError, match=r"needs 2 workers or more"):
            C.check_layout(cfg, 1, [50], 3)
        C.check_layout(cfg, 2, [50, 40], 3)

        # what it reads, and the warnings about what it does not
        read = C.keys_read(cfg)
        assert {("method", "scale"), ("method", "lr"), ("method", "momentum")} <= read
        assert ("method", "k") not in read
        assert ("method", "scale") not in C.keys_read(C.resolve({}))
        assert C.resolve_checked({"method": {"kind": "sync", "scale": 0.25}})[1] == [
            "config: method.scale = 0.25 is ignored: method.kind = 'sync' waits for every worker "
            "(read with method.kind = 'halves')"]
        assert C.resolve_checked({"method": {"kind": "halves", "k": 2}})[1] == [
            "config: method.k = 2 is ignored: method.kind = 'halves' applies every gradient at a fraction of its "
            "size (read with method.kind = 'fastest_k')"]

        # built by make_method, stepping as the rule says, traced with its declared dtype
        method = make_method(cfg, [50, 40], 3)
        assert isinstance(method, Halves) and method.scale == 0.25 and not needs_L(cfg)
        assert trace_extras("halves") == {"scaled": np.float64}
        engine = FakeEngine(method, 2, 3, lr=cfg["method"]["lr"], extras=trace_extras("halves"))
        grads = engine.run(7)
        np.testing.assert_allclose(engine.w, -0.1 * 0.25 * sum(g for _, g in grads), rtol=1e-12)
        trace = engine.trace.arrays()
        assert trace["scaled"].dtype == np.float64 and trace["scaled"].tolist() == [0.25] * 7

        # inspect: the config line shows its key, the report its summary
        from test_inspect_plot import fake_tree
        tree = fake_tree()
        tree["config"] = json.dumps({**json.loads(tree["config"]), "method": cfg["method"]})
        tree["method"] = "halves"
        del tree["trace"]["stage"]  # a staged run's column: its summary would come first
        tree["trace"]["scaled"] = np.full(tree["trace"]["update"].size, 0.25)
        ck.save_checkpoint(tmp_path / "run", tree)
        s = hin.summarize(tmp_path / "run")
        assert s["halves"] == {"scale": 0.25, "mean": 0.25}
        text = hin.format_summary(s)
        assert "method.kind=halves method.lr=0.1 method.scale=0.25 order.kind=" in text
        lines = text.splitlines()
        at = next(i for i, line in enumerate(lines) if line.startswith("halves "))
        assert lines[at].split(None, 1)[1] == "scale 0.25, mean applied 0.25"
        assert lines[at - 1].startswith("load ")

    # gone again: nothing of it is left behind
    assert "halves" not in C.SCHEMA["method"]["kind"].choices and "scale" not in C.SCHEMA["method"]
    assert ("method", "scale") not in C.READ_BY and all(x.name != "halves" for x in registry.summaries())
    with pytest.raises(UserError, match=r"method\.kind = 'halves' is not allowed"):
        C.resolve({"method": {"kind": "halves"}})


def test_the_registry_refuses_what_would_be_a_second_declaration():
    k = registry.method_keys()["k"]
    base = dict(does="x", rank=99, build=lambda *a: None)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(MethodSpec(kind="sync", **base))
    with pytest.raises(ValueError, match=r"method\.k is declared again"):
        registry.register(MethodSpec(kind="toy", keys=(MethodKey("k", k.key),), **base))
    with pytest.raises(ValueError, match=r"method\.lr is not a key of its own"):
        registry.register(MethodSpec(kind="toy", keys=(MethodKey("lr", k.key),), **base))
    with pytest.raises(ValueError, match="'staleness' is a standard trace column"):
        registry.register(MethodSpec(kind="toy", extras={"staleness": np.int32}, **base))
    with pytest.raises(ValueError, match="not common keys"):
        registry.register(MethodSpec(kind="toy", ignores={"k": "no"}, **base))
    with registry.registered(MethodSpec(kind="toy", keys=(k,), **base)):  # the same key object: shared
        assert registry.readers("k") == ["fastest_k", "toy"]
    assert "toy" not in registry.kinds()


# ---------------------------------------------------------------------- the registered methods

def _golden_kinds() -> dict[str, tuple[str, bool]]:
    """Golden run name -> its method.kind, and whether it runs the cost model."""
    out = {}
    for name, settings in runs(2).items():
        kind, = [s.split("=", 1)[1].strip("'") for s in settings if s.startswith("method.kind=")]
        out[name] = kind, "cluster.cost=true" in settings
    return out


@pytest.mark.parametrize("name, kind", sorted(_golden_kinds().items()))
def test_declared_extras_are_the_columns_and_dtypes_stored_traces_have(name, kind):
    from hpcsgd.engine.clock import COST_COLUMNS
    kind, costs = kind
    path = GOLDEN / f"M2-{name}.npz"
    with np.load(path, allow_pickle=False) as stored:
        extras = {k.split("/", 1)[1]: stored[k].dtype for k in stored.files
                  if k.startswith("trace/") and k.split("/", 1)[1] not in TRACE_COLUMNS}
    declared = {**trace_extras(kind), **(COST_COLUMNS if costs else {})}  # the cost model adds its own
    assert extras == {col: np.dtype(dt) for col, dt in declared.items()}


def _settings(spec) -> list[str]:
    return [f"method.kind='{spec.kind}'", *spec.requires, "method.gamma_prime=0.1", "method.mc_samples=100",
            "run.clock='simulated'", "stragglers.model='exp'", "stragglers.comm_mean=1.0"]


@pytest.mark.parametrize("kind", registry.kinds())
def test_every_method_traces_exactly_its_declared_extras(kind):
    spec = registry.spec(kind)
    cfg = C.resolve({}, _settings(spec))
    M, dim = 3, 12
    C.check_layout(cfg, M, [40] * M, dim)
    engine = FakeEngine(make_method(cfg, [40] * M, dim, 1.0), M, dim, extras=trace_extras(kind))
    engine.run(40)
    assert engine.trace.n > 0
    rows = [set(row) for row in engine.trace.rows]
    written = set().union(*rows) - set(TRACE_COLUMNS)
    assert written == set(spec.extras), (written, spec.extras)
    assert all(set(spec.extras) <= row for row in rows)  # every row carries every extra


@pytest.mark.parametrize("kind", registry.kinds())
def test_every_method_runs_on_the_defaults_plus_what_it_requires(kind):
    spec = registry.spec(kind)
    cfg, warnings = C.resolve_checked({}, [f"method.kind='{kind}'", *spec.requires])
    assert warnings == [] and cfg["method"]["kind"] == kind
    if spec.requires:
        with pytest.raises(UserError):
            C.resolve({"method": {"kind": kind}})


def test_needs_L_asks_for_the_smoothness_only_when_gamma_prime_comes_from_it():
    replicate = {"data": {"partition": "replicate"}}
    assert needs_L(C.resolve({"method": {"kind": "piag"}}))
    assert needs_L(C.resolve({"method": {"kind": "async_bcd"}, **replicate}))
    assert not needs_L(C.resolve({"method": {"kind": "piag", "gamma_prime": 0.5}}))
    assert not needs_L(C.resolve({"method": {"kind": "async_bcd", "L": 2.0}, **replicate}))
    assert [k for k in registry.kinds() if needs_L(C.resolve({"method": {"kind": k}, **replicate}))] == \
        ["piag", "async_bcd"]


def test_shared_keys_are_one_declaration_listed_by_every_method_that_reads_them():
    from hpcsgd.methods.staged import STAGE_KEYS
    from hpcsgd.methods.stepsize import STEP_KEYS
    assert [registry.readers(k.name) for k in STEP_KEYS] == [["piag", "async_bcd"]] * len(STEP_KEYS)
    assert [registry.readers(k.name) for k in STAGE_KEYS] == [["adaptive_k", "adaptive_kb"]] * len(STAGE_KEYS)
    for name, key in registry.method_keys().items():
        assert C.SCHEMA["method"][name] is key.key


# ---------------------------------------------------------------------- orders by capability

def test_order_checks_follow_the_ordering_capabilities_not_their_names(monkeypatch):
    rr, grab, pair = ORDERINGS["rr"], ORDERINGS["grab"], ORDERINGS["pair"]
    with pytest.raises(UserError, match=r"order\.batch = 0 \(whole shards\) needs order\.kind rr or so"):
        C.resolve({"order": {"kind": "grab", "batch": 0}})
    monkeypatch.setitem(ORDERINGS, "grab", type("Plain", (grab,), {"per_example": False}))
    C.resolve({"order": {"kind": "grab", "batch": 0}})
    C.resolve({"method": {"kind": "adaptive_kb"}, "order": {"kind": "grab"}})
    with pytest.raises(UserError, match=r"needs order\.kind rr or so or grab \(got 'pair'\)"):
        C.resolve({"order": {"kind": "pair", "batch": 0}})
    monkeypatch.setitem(ORDERINGS, "pair", type("Unpaired", (pair,), {"pairs": False}))
    C.resolve({"order": {"kind": "pair", "batch": 3}})
    monkeypatch.setitem(ORDERINGS, "rr", type("Together", (rr,), {"coordinated": True}))
    with pytest.raises(UserError, match=r"^config: order\.kind = 'rr' coordinates all workers every step and "
                                        r"needs method\.kind = 'sync' \(got 'async'\)$"):
        C.resolve({"method": {"kind": "async"}})
