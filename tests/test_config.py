"""Configuration: defaults, types, ranges, allowed values, overrides, layout, warnings and resume rules."""

import math
import re
from pathlib import Path

import pytest

from hpcsgd.config import (INT_LIMIT, READ_BY, SCHEMA, check_layout, check_world, key_reference, resolve_workers,
                           keys_read, load_config, load_config_checked, parse_override, resolve, resolve_checked,
                           resume_config, resume_config_checked)
from hpcsgd.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
NUMERIC = [(t, k) for t, keys in SCHEMA.items() for k, key in keys.items() if key.numeric and key.type is not list]
INTEGER = [(t, k) for t, k in NUMERIC if SCHEMA[t][k].type is int]
DELAYS = ["fixed", "exp", "shifted_exp", "gamma", "normal", "uniform", "poisson"]


def write(tmp_path, text):
    p = tmp_path / "job.toml"
    p.write_text(text)
    return p


def test_defaults_and_run_out_from_stem(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg["method"]["kind"] == "sync"
    assert cfg["run"]["out"] == "runs/job"
    assert set(cfg) == set(SCHEMA)


@pytest.mark.parametrize("text, pattern", [
    ("[method]\nkk = 1\n", r"unknown key method\.kk .*allowed in \[method\]: kind, lr"),
    ("[nope]\na = 1\n", r"unknown table \[nope\]"),
    ("nope = 1\n", r"unknown table \[nope\]"),
    ("[method]\nlr = -0.1\n", r"method\.lr = -0\.1 is not allowed: must be a finite number in \(0, inf\)"),
    ("[method]\nlr = 0\n", r"method\.lr = 0 is not allowed: must be a finite number in \(0, inf\)"),
    ("[method]\nlr = \"fast\"\n", r"method\.lr must be a number"),
    ("[run]\nepochs = 2.5\n", r"run\.epochs must be an integer"),
    ("[run]\nepochs = true\n", r"run\.epochs must be an integer"),
    ("[method]\nkind = \"adam\"\n", r"method\.kind = 'adam' is not allowed \(allowed: sync, fastest_k"),
    ("[run]\nclock = \"cpu\"\n", r"allowed: wall, simulated"),
    ("[stragglers]\nslow_workers = [0]\n", r"stragglers\.slow_workers\[0\] = 0 is not allowed: must be an "
                                           r"integer in \[1, M\]"),
    ("[run]\nepochs = 0\n", r"are all 0"),
    ("[run]\neval_every = 5\neval_seconds = 2.0\n", r"run\.eval_every = 5 and run\.eval_seconds = 2\.0 are both set"),
    ("[method]\nschedule = 1\n", r"method\.schedule must be true/false"),
    ("method = 3\n", r"'method' must be a table"),
    ("[run\n", r"invalid TOML"),
    ("[method]\nkind = \"adaptive_kb\"\n[order]\nkind = \"grab\"\n", r"order\.kind must be rr or so"),
    ("[method]\nkind = \"adaptive_kb\"\ntargets = [16, 8]\n", r"method\.targets = \[16, 8\] is not allowed: must be "
                                                             r"a list of strictly increasing integers"),
    ("[method]\nkind = \"adaptive_k\"\ntargets = [4, 0]\n", r"method\.targets\[1\] = 0 is not allowed"),
    ("[method]\nkind = \"adaptive_kb\"\nswitch = \"bound\"\nbound_c = 1.0\n",
     r"needs method\.bound_L, method\.bound_sigma2, method\.bound_gap0 > 0"),
    ("[method]\nkind = \"adaptive_kb\"\nswitch = \"bound\"\nlr = 0.5\nbound_c = 1\nbound_L = 4\n"
     "bound_sigma2 = 1\nbound_gap0 = 1\n", r"method\.lr = 0\.5 exceeds 1/method\.bound_L = 0\.25"),
])
def test_bad_config_names_key(tmp_path, text, pattern):
    with pytest.raises(UserError, match=pattern):
        load_config(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "absent.toml")


def test_overrides_parse_toml_values(tmp_path):
    cfg = load_config(write(tmp_path, ""), ["method.lr=0.5", "run.clock=simulated",
                                            "stragglers.slow_workers=[2, 3]", "order.record_history=true"])
    assert cfg["method"]["lr"] == 0.5
    assert cfg["run"]["clock"] == "simulated"
    assert cfg["stragglers"]["slow_workers"] == [2, 3]
    assert cfg["order"]["record_history"] is True
    assert parse_override("a.b=x=y") == ("a", "b", "x=y")
    with pytest.raises(UserError, match="table.key"):
        parse_override("lr=3")
    with pytest.raises(UserError, match="unknown key run.epoch "):
        load_config(write(tmp_path, ""), ["run.epoch=3"])


def test_an_override_is_one_literal():
    # a newline must not smuggle in more TOML: the whole text is then a (wrong) string
    assert parse_override("method.lr=1\n[run]\nepochs=3") == ("method", "lr", "1\n[run]\nepochs=3")
    with pytest.raises(UserError, match=r"method\.lr must be a number"):
        resolve({}, ["method.lr=1\n[run]\nepochs=3"])


# ---------------------------------------------------------------------- numbers

@pytest.mark.parametrize("table, name", NUMERIC)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_every_number_must_be_finite(table, name, bad):
    where = re.escape(f"{table}.{name}")
    pattern = rf"^config: {where} (= {bad!r} is not allowed: must be|must be an integer)"
    with pytest.raises(UserError, match=pattern):
        resolve({table: {name: bad}})


@pytest.mark.parametrize("table, name", INTEGER)
def test_every_integer_stays_exact_in_float64(table, name):
    with pytest.raises(UserError, match=rf"^config: {table}\.{name} = {INT_LIMIT} is not allowed: must be an "
                                        r"integer in \[\d+, "):
        resolve({table: {name: INT_LIMIT}})
    with pytest.raises(UserError, match=rf"^config: {table}\.{name} = 1000.*\(401 characters\) is not allowed"):
        resolve({table: {name: 10**400}})


@pytest.mark.parametrize("table, name, value, interval", [
    ("method", "momentum", 1.0, "[0, 1)"),
    ("method", "momentum", -0.5, "[0, 1)"),
    ("stragglers", "shift", 1.5, "[0, 1]"),
    ("method", "alpha", 1.5, "(0, 1]"),          # whatever the method (it was checked for piag only)
    ("method", "h", 1.0, "(0, 1)"),
    ("method", "lr", 10**400, "(0, inf)"),       # beyond the float range: an error, not OverflowError
    ("method", "mc_samples", 10**7, "[100, 1000000]"),
    ("stragglers", "comm_mean", 1e10, "[0, 1e+09]"),
    ("stragglers", "shape", 1e-9, "[1e-06, 1e+06]"),
    ("stragglers", "slow_factor", 1e7, "(0, 1e+06]"),
    ("run", "seed", -1, "[0, 2^53)"),
    ("run", "eval_seconds", 1e-300, "[1e-06, 1e+09] (or 0)"),   # clock / eval_seconds would overflow
])
def test_numbers_outside_their_range_name_key_value_and_range(table, name, value, interval):
    with pytest.raises(UserError, match=re.escape(f"config: {table}.{name} = ") + ".* is not allowed: must be .*"
                                        + re.escape(f" in {interval}")):
        resolve({table: {name: value}})


def test_values_inside_the_range_resolve_as_given():
    cfg = resolve({"method": {"momentum": 0.99, "alpha": 1, "h": 0.999}, "stragglers": {"shift": 1}})
    assert cfg["method"]["momentum"] == 0.99 and cfg["method"]["alpha"] == 1.0
    assert isinstance(cfg["method"]["alpha"], float) and cfg["stragglers"]["shift"] == 1.0
    assert resolve({"run": {"seed": INT_LIMIT - 1}})["run"]["seed"] == INT_LIMIT - 1
    assert resolve({"run": {"eval_seconds": 0}})["run"]["eval_seconds"] == 0.0  # off
    assert resolve({"run": {"eval_seconds": 1e-6}})["run"]["eval_seconds"] == 1e-6


def test_gamma_prime_from_h_and_L_must_be_finite():
    with pytest.raises(UserError, match=r"method\.h / method\.L = 0\.9 / 1e-320 is not a finite gamma'"):
        resolve({"method": {"kind": "piag", "L": 1e-320}})
    resolve({"method": {"kind": "piag", "L": 1e-320, "gamma_prime": 0.1}})


def test_bound_constants_must_be_consistent():
    base = {"kind": "adaptive_kb", "switch": "bound", "lr": 0.1, "bound_L": 1.0, "bound_sigma2": 1.0,
            "bound_gap0": 1.0}
    with pytest.raises(UserError, match=r"method\.bound_c = 2\.0 exceeds method\.bound_L = 1\.0"):
        resolve({"method": {**base, "bound_c": 2.0}})
    with pytest.raises(UserError, match=r"method\.bound_sigma2 = 1e\+308 .* non-finite noise floor"):
        resolve({"method": {**base, "bound_c": 1e-10, "bound_sigma2": 1e308}})
    resolve({"method": {**base, "bound_c": 0.5}})


def test_strings_refuse_nul_characters():
    for name in ("out", "source", "dir"):
        table = "run" if name == "out" else "data"
        with pytest.raises(UserError, match=rf"config: {table}\.{name} = 'a\\x00b' contains a NUL character"):
            resolve({table: {name: "a\0b"}})


# ---------------------------------------------------------------------- lists

@pytest.mark.parametrize("value, pattern", [
    ([1, 1], r"stragglers\.slow_workers = \[1, 1\] repeats \[1\]; must be a list of distinct integers in \[1, M\]"),
    ([1, True], r"stragglers\.slow_workers\[1\] must be an integer, got true"),
    ([2.0], r"stragglers\.slow_workers\[0\] must be an integer, got 2\.0"),
    ([[1]], r"stragglers\.slow_workers\[0\] must be an integer, got \[1\]"),
    ([INT_LIMIT], r"stragglers\.slow_workers\[0\] = 9007199254740992 is not allowed"),
])
def test_slow_workers_are_distinct_ranks(value, pattern):
    with pytest.raises(UserError, match=pattern):
        resolve({"stragglers": {"model": "exp", "comm_mean": 1.0, "slow_workers": value}})


def test_targets_are_strictly_increasing_integers():
    for bad in ([16, 16], [16, 8], [16, 2.5], [16, False]):
        with pytest.raises(UserError, match=r"^config: method\.targets"):
            resolve({"method": {"kind": "adaptive_kb", "targets": bad}})
    assert resolve({"method": {"kind": "adaptive_kb", "targets": [8, 64]}})["method"]["targets"] == [8, 64]


# ---------------------------------------------------------------------- stopping, evaluation, delays

SIM = {"clock": "simulated", "epochs": 0}


def test_simulated_time_without_delays_cannot_stop_a_max_seconds_run():
    with pytest.raises(UserError, match=r"run\.max_seconds = 10\.0 is the only stopping rule and is never reached: "
                                        r"run\.clock = 'simulated' with stragglers\.model = 'none'"):
        resolve({"run": {**SIM, "max_seconds": 10}})
    with pytest.raises(UserError, match=r"run\.eval_seconds = 2\.0 never comes due: run\.clock = 'simulated'"):
        resolve({"run": {"clock": "simulated", "eval_seconds": 2}})
    # time advances with delays, or on the wall clock
    resolve({"run": {**SIM, "max_seconds": 10, "eval_seconds": 2}, "stragglers": {"model": "exp", "comm_mean": 1}})
    resolve({"run": {"clock": "wall", "epochs": 0, "max_seconds": 10, "eval_seconds": 2}})
    # another rule stops it: max_seconds is only dead weight, worth a warning
    _, warnings = resolve_checked({"run": {**SIM, "max_updates": 5, "max_seconds": 10}})
    assert warnings == ["config: run.max_seconds = 10.0 is ignored: run.clock = 'simulated' with "
                        "stragglers.model = 'none' keeps simulated time at 0"]


@pytest.mark.parametrize("model", DELAYS)
def test_delay_models_that_inject_nothing_are_refused(model):
    with pytest.raises(UserError, match=rf"stragglers\.model = '{model}' with stragglers\.comm_mean, "
                                        r"stragglers\.compute_mean and stragglers\.offset all 0 injects no delay"):
        resolve({"stragglers": {"model": model}})
    for name in ("comm_mean", "compute_mean", "offset"):
        resolve({"stragglers": {"model": model, name: 0.5}})


def test_poisson_delays_of_mostly_zero_whole_seconds_warn():
    _, warnings = resolve_checked({"stragglers": {"model": "poisson", "comm_mean": 0.002, "compute_mean": 0.5}})
    assert len(warnings) == 2
    assert warnings[0].startswith("config: stragglers.comm_mean = 0.002 with stragglers.model = 'poisson': delays "
                                  "are whole seconds, so 99.8% of the draws per job are 0 s")
    assert "mean still 0.002 s" in warnings[0]
    assert f"{100 * math.exp(-0.5):.1f}% of the draws per sample" in warnings[1]
    assert resolve_checked({"stragglers": {"model": "poisson", "comm_mean": 1.0}})[1] == []  # 37% zeros
    assert resolve_checked({"stragglers": {"model": "exp", "comm_mean": 0.002}})[1] == []


def test_every_delay_model_documents_its_units():
    doc = SCHEMA["stragglers"]["model"].doc
    assert "seconds" in doc and "whole seconds" in doc
    for model in DELAYS:
        assert model in doc
    for name in ("comm_mean", "compute_mean", "offset"):
        assert "seconds" in SCHEMA["stragglers"][name].doc


# ---------------------------------------------------------------------- keys a choice ignores

def test_an_explicit_key_the_method_ignores_warns_once(tmp_path):
    path = write(tmp_path, "[method]\nkind = \"sync\"\nk = 1\n")
    cfg, warnings = load_config_checked(path)
    assert warnings == ["config: method.k = 1 is ignored: method.kind = 'sync' waits for every worker "
                        "(read with method.kind = 'fastest_k')"]
    assert load_config(path) == cfg
    # the same key from --set, once even when given twice
    _, warnings = load_config_checked(write(tmp_path, ""), ["method.k=1", "method.k=2"])
    assert warnings == ["config: method.k = 2 is ignored: method.kind = 'sync' waits for every worker "
                        "(read with method.kind = 'fastest_k')"]
    # defaults never warn, and a key that is read does not either
    assert load_config_checked(write(tmp_path, "[method]\nkind = \"fastest_k\"\nk = 1\n"))[1] == []


@pytest.mark.parametrize("raw, key, because", [
    ({"method": {"kind": "piag", "lr": 0.1}}, "method.lr", "method.kind = 'piag' steps by method.stepsize"),
    ({"method": {"kind": "piag", "gamma_prime": 0.5, "h": 0.5}}, "method.h", "method.gamma_prime = 0.5 gives "
                                                                             "gamma' itself"),
    ({"method": {"kind": "async_bcd", "stepsize": "fixed", "alpha": 0.3}, "data": {"partition": "replicate"}},
     "method.alpha", "method.stepsize = 'fixed' steps gamma' / (method.tau_max + 1)"),
    ({"method": {"kind": "gsgm", "schedule": False, "average": False}}, "method.average",
     "method.schedule = false defers no gradient"),
    ({"method": {"kind": "adaptive_k", "targets": [16, 32], "k0": 2}}, "method.k0",
     "method.targets = [16, 32] lists the stages"),
    ({"method": {"kind": "adaptive_kb", "targets": [16, 32]}, "order": {"batch": 8}}, "order.batch",
     "method.kind = 'adaptive_kb' with method.targets picks every stage's batch"),
    ({"method": {"kind": "adaptive_kb", "burn_in": 3}, "run": {"clock": "simulated"}}, None, None),
    ({"method": {"kind": "adaptive_kb", "refresh_every": 3}, "run": {"clock": "simulated"}}, "method.refresh_every",
     "run.clock = 'simulated' takes iteration times from the delay model"),
    ({"stragglers": {"comm_mean": 1.0}}, "stragglers.comm_mean", "stragglers.model = 'none' injects no delay"),
    ({"stragglers": {"model": "exp", "comm_mean": 1.0, "shape": 3.0}}, "stragglers.shape",
     "stragglers.model = 'exp' does not read it (read with stragglers.model = 'gamma')"),
    ({"stragglers": {"model": "exp", "comm_mean": 1.0, "slow_factor": 3.0}}, "stragglers.slow_factor",
     "stragglers.slow_workers = [] slows no worker"),
    ({"data": {"alpha": 0.1}}, "data.alpha", "data.partition = 'iid' does not read it"),
    ({"model": {"hidden": 8}}, "model.hidden", "model.kind = 'softmax' does not read it"),
    ({"model": {"init_scale": 0.1}}, "model.init_scale", "model.init = 'default' does not read it"),
])
def test_ignored_keys_say_which_choice_ignores_them(raw, key, because):
    _, warnings = resolve_checked(raw)
    if key is None:
        assert warnings == []
        return
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"config: {key} = ") and f"is ignored: {because}" in warnings[0], warnings[0]


def test_keys_read_per_choice():
    read = keys_read(resolve({"method": {"kind": "piag"}}))
    assert {("method", "stepsize"), ("method", "h"), ("method", "L"), ("method", "absorb")} <= read
    assert not {("method", "lr"), ("method", "momentum"), ("method", "k"), ("method", "blocks")} & read
    read = keys_read(resolve({"method": {"kind": "fastest_k"}}))
    assert {("method", "lr"), ("method", "k"), ("method", "momentum")} <= read
    assert ("method", "stepsize") not in read
    # a partial (older) config reads its missing keys at their defaults
    assert keys_read({"method": {"kind": "async"}}) >= {("method", "assign"), ("method", "lr")}
    assert ("run", "seed") in keys_read({"method": {"kind": ["damaged"]}, "stragglers": 3})  # never raises
    assert set(READ_BY) <= {(t, k) for t, keys in SCHEMA.items() for k in keys}


def test_resume_warns_about_its_overrides():
    stored = resolve({"run": {"clock": "simulated"}})
    cfg, warnings = resume_config_checked(stored, ["run.max_seconds=5"])
    assert cfg["run"]["max_seconds"] == 5.0
    assert warnings == ["config: run.max_seconds = 5.0 is ignored: run.clock = 'simulated' with "
                        "stragglers.model = 'none' keeps simulated time at 0"]
    with pytest.raises(UserError, match=r"run\.max_seconds = 5\.0 is the only stopping rule"):
        resume_config(stored, ["run.epochs=0", "run.max_seconds=5"])
    with pytest.raises(UserError, match=r"run\.epochs = nan is not allowed|run\.epochs must be an integer"):
        resume_config(stored, ["run.epochs=nan"])


def test_resume_fills_keys_an_older_checkpoint_lacks():
    stored = resolve({})
    del stored["run"]["eval_seconds"], stored["stragglers"]
    cfg = resume_config(stored, [])
    assert cfg["run"]["eval_seconds"] == 0.0 and cfg["stragglers"]["model"] == "none"


def test_resume_only_changes_resumable_keys():
    stored = resolve({})
    cfg = resume_config(stored, ["run.max_updates=50"])
    assert cfg["run"]["max_updates"] == 50 and stored["run"]["max_updates"] == 0
    with pytest.raises(UserError, match=r"method\.lr: cannot change on resume"):
        resume_config(stored, ["method.lr=1.0"])


# ---------------------------------------------------------------------- layout

def test_world_size():
    with pytest.raises(UserError, match="at least 2 MPI ranks"):
        check_world(resolve({}), 0)
    with pytest.raises(UserError, match="at least 2 MPI ranks"):
        check_layout(resolve({}), 0, [], 10)



def test_run_workers_against_the_worker_ranks():
    cfg = resolve({"run": {"clock": "simulated"}})
    assert resolve_workers(cfg, 3) == 3 and cfg["run"]["workers"] == 3  # 0: one per worker rank
    cfg = resolve({"run": {"clock": "simulated", "workers": 256}})
    assert resolve_workers(cfg, 2) == 256
    with pytest.raises(UserError, match=r"run\.workers = 2 but the job has 4 worker ranks; launch with mpiexec -n 3"):
        resolve_workers(resolve({"run": {"clock": "simulated", "workers": 2}}), 4)
    with pytest.raises(UserError, match=r"run\.workers = 8 on 2 worker ranks needs run\.clock = 'simulated'"):
        resolve_workers(resolve({"run": {"workers": 8}}), 2)
    with pytest.raises(UserError, match="at least 2 MPI ranks"):
        resolve_workers(resolve({"run": {"clock": "simulated", "workers": 8}}), 0)


@pytest.mark.parametrize("raw, M, sizes, d, pattern", [
    ({"method": {"kind": "fastest_k", "k": 5}}, 4, [50] * 4, 10,
     r"method\.k = 5 exceeds the number of workers M = 4 \(allowed: 0\.\.4\)"),
    ({"method": {"kind": "piag", "absorb": 3, "gamma_prime": 0.1}}, 2, [50] * 2, 10,
     r"method\.absorb = 3 exceeds the number of workers M = 2 \(allowed: 1\.\.2\)"),
    ({"method": {"kind": "async_bcd", "blocks": 11, "gamma_prime": 0.1}, "data": {"partition": "replicate"}},
     2, [50] * 2, 10, r"method\.blocks = 11 exceeds the number of model parameters d = 10 \(allowed: 1\.\.10\)"),
    ({"order": {"batch": 33}}, 3, [40, 32, 50], 10,
     r"order\.batch = 33 exceeds the rows of the smallest shard, 32 \(worker 2\) \(allowed: 0\.\.32\)"),
    ({"method": {"kind": "adaptive_k", "k0": 5}}, 4, [50] * 4, 10, r"method\.k0 = 5 exceeds the number of workers"),
    ({"method": {"kind": "adaptive_kb", "k0": 1, "k_step": 4}}, 4, [50] * 4, 10,
     r"method\.k_step = 4 exceeds M - method\.k0 = 3"),
    ({"method": {"kind": "adaptive_k", "targets": [16, 20, 24]}}, 4, [50] * 4, 10,
     r"method\.targets 20 and 24 both wait for k = 2 replies of order\.batch = 16"),
    ({"method": {"kind": "adaptive_k", "targets": [16, 80]}}, 4, [1000] * 4, 10,
     r"adaptive_k keeps order\.batch = 16 .* use adaptive_kb"),
    ({"method": {"kind": "adaptive_kb", "targets": [16, 400]}}, 3, [100] * 3, 10,
     r"reaches 400 samples per update, more than 3 workers x 100 rows"),
    ({"stragglers": {"model": "exp", "comm_mean": 1.0, "slow_workers": [2, 7]}}, 4, [50] * 4, 10,
     r"stragglers\.slow_workers = \[2, 7\] exceeds the number of workers M = 4 \(allowed: 1\.\.4\)"),
    ({"stragglers": {"model": "poisson", "comm_mean": 1e9, "speeds": "linear", "slow_workers": [10**4],
                     "slow_factor": 1e6}}, 10**4, [50] * 10**4, 10,
     r"stragglers\.comm_mean = 1000000000\.0 times the slowest worker's factor 1e\+10 exceeds 9\.2e\+18"),
    ({}, 3, [5, 0, 5], 10, r"data\.partition = 'iid' leaves worker 2 without training rows"),
])
def test_layout_refuses_counts_beyond_what_exists(raw, M, sizes, d, pattern):
    cfg = resolve(raw)
    with pytest.raises(UserError, match=pattern):
        check_layout(cfg, M, sizes, d)


@pytest.mark.parametrize("raw, M, sizes, d", [
    ({"method": {"kind": "fastest_k", "k": 4}}, 4, [50] * 4, 10),
    ({"method": {"kind": "piag", "absorb": 2, "gamma_prime": 0.1}}, 2, [50] * 2, 10),
    ({"method": {"kind": "async_bcd", "blocks": 10, "gamma_prime": 0.1}, "data": {"partition": "replicate"}},
     2, [50] * 2, 10),
    ({"order": {"batch": 32}}, 3, [40, 32, 50], 10),
    ({"order": {"batch": 0}}, 3, [40, 1, 50], 10),       # 0 = whole shard, whatever its size
    ({"method": {"kind": "adaptive_kb", "k0": 1, "k_step": 3}}, 4, [50] * 4, 10),
    ({"method": {"kind": "adaptive_k", "k0": 4, "k_step": 4}}, 4, [50] * 4, 10),   # one stage: k0 = M
    ({"method": {"kind": "adaptive_k", "targets": [16, 80]}, "order": {"batch": 16}}, 5, [1000] * 5, 10),
    ({"method": {"kind": "adaptive_kb", "targets": [16, 400]}}, 4, [100] * 4, 10),
    # keys the configuration does not read are not held to the layout (they warn at resolve)
    ({"method": {"kind": "sync", "k": 9, "absorb": 9, "blocks": 99}}, 4, [50] * 4, 10),
    ({"stragglers": {"slow_workers": [7]}}, 4, [50] * 4, 10),
    ({"method": {"kind": "adaptive_kb", "targets": [8]}, "order": {"batch": 999}}, 2, [50] * 2, 10),
])
def test_layout_accepts_counts_within_what_exists(raw, M, sizes, d):
    check_layout(resolve(raw), M, sizes, d)


# ---------------------------------------------------------------------- shipped files

@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "jobs").rglob("*.toml")))
def test_shipped_job_configs_resolve(path):
    load_config(ROOT / path)


def test_key_reference_shows_every_key_with_its_range():
    ref = key_reference()
    for table, keys in SCHEMA.items():
        assert f"**[{table}]**" in ref
        for name, key in keys.items():
            assert f"| `{table}.{name}` | " in ref and key.allowed() in ref
    assert "| `method.momentum` | `0.0` | number in [0, 1) |" in ref
    assert "| `order.batch` | `16` | integer in [0, n_min] |" in ref
    assert "| `stragglers.slow_workers` | `[]` | list of distinct integers in [1, M] |" in ref


def test_example_config_and_readme_document_every_key():
    example = (ROOT / "jobs/configs/example.toml").read_text()
    readme = (ROOT / "README.md").read_text()
    cfg = load_config(ROOT / "jobs/configs/example.toml")  # must be valid as shipped
    assert cfg["data"]["source"] == "mnist5k"
    for table, keys in SCHEMA.items():
        assert f"[{table}]" in example
        for name in keys:
            # a key the example's own choices do not read may be commented out (it would warn)
            assert re.search(rf"^(# )?{name} = ", example, re.M), f"{table}.{name} missing in example.toml"
            assert f"`{table}.{name}`" in readme, f"{table}.{name} missing in README"


def test_injected_delays_near_the_watchdog_warn():
    from hpcsgd.config import resolve_checked
    slow = {"stragglers": {"model": "fixed", "comm_mean": 1.0, "slow_workers": [2], "slow_factor": 400.0}}
    warnings = resolve_checked(slow)[1]
    assert len(warnings) == 1 and "run.worker_timeout = 600 s is close to the mean injected job time (400 s" \
        in warnings[0], warnings
    assert resolve_checked({**slow, "run": {"worker_timeout": 0}})[1] == []      # watchdog off
    assert resolve_checked({**slow, "run": {"clock": "simulated"}})[1] == []     # nobody sleeps
    assert resolve_checked({"stragglers": {"model": "fixed", "comm_mean": 1.0}})[1] == []


def test_data_dir_next_to_a_file_path_warns():
    from hpcsgd.config import resolve_checked
    warnings = resolve_checked({"data": {"source": "/tmp/x.h5", "dir": "elsewhere"}})[1]
    assert warnings == ["config: data.dir = 'elsewhere' is ignored: data.source = '/tmp/x.h5' is a file path, "
                        "not a name looked up in data.dir"], warnings
    assert resolve_checked({"data": {"source": "digits", "dir": "elsewhere"}})[1] == []


@pytest.mark.parametrize("kind", ["piag", "async_bcd"])
def test_delay_adaptive_mlp_needs_a_step_scale_at_start(kind):
    raw = {"method": {"kind": kind}, "model": {"kind": "mlp"}, "data": {"partition": "replicate"}}
    with pytest.raises(UserError, match=r"smoothness of model.kind = 'mlp'; give method.L or method.gamma_prime"):
        resolve(raw)
    resolve({**raw, "method": {"kind": kind, "gamma_prime": 0.5}})
