"""Configuration: defaults, types, allowed values, overrides and resume rules."""

import re
from pathlib import Path

import pytest

from hpcsgd.config import (SCHEMA, check_shards, check_world, load_config, parse_override, resolve,
                           resume_config)
from hpcsgd.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


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
    ("[method]\nlr = -0.1\n", r"method\.lr = -0\.1 must be > 0"),
    ("[method]\nlr = 0\n", r"method\.lr = 0 must be > 0"),
    ("[method]\nlr = \"fast\"\n", r"method\.lr must be a number"),
    ("[run]\nepochs = 2.5\n", r"run\.epochs must be an integer"),
    ("[run]\nepochs = true\n", r"run\.epochs must be an integer"),
    ("[method]\nkind = \"adam\"\n", r"method\.kind = 'adam' is not allowed \(allowed: sync, fastest_k"),
    ("[run]\nclock = \"cpu\"\n", r"allowed: wall, simulated"),
    ("[stragglers]\nslow_workers = [0]\n", r"slow_workers must list worker ranks >= 1"),
    ("[run]\nepochs = 0\n", r"are all 0"),
    ("[run]\neval_every = 5\neval_seconds = 2.0\n", r"run\.eval_every = 5 and run\.eval_seconds = 2\.0 are both set"),
    ("[method]\nschedule = 1\n", r"method\.schedule must be true/false"),
    ("method = 3\n", r"'method' must be a table"),
    ("[run\n", r"invalid TOML"),
    ("[method]\nkind = \"adaptive_kb\"\n[order]\nkind = \"grab\"\n", r"order\.kind must be rr or so"),
    ("[method]\nkind = \"adaptive_kb\"\ntargets = [16, 8]\n", r"method\.targets must be increasing"),
    ("[method]\nkind = \"adaptive_k\"\ntargets = [4, 0]\n", r"method\.targets must be increasing"),
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


def test_world_checks():
    cfg = resolve({"method": {"kind": "fastest_k", "k": 5}})
    with pytest.raises(UserError, match=r"method\.k = 5 exceeds the number of workers M = 4"):
        check_world(cfg, 4)
    check_world(cfg, 5)
    with pytest.raises(UserError, match="at least 2 MPI ranks"):
        check_world(resolve({}), 0)
    with pytest.raises(UserError, match=r"slow_workers \[7\]"):
        check_world(resolve({"stragglers": {"slow_workers": [7]}}), 4)


def test_shard_checks_for_staged_methods():
    kb = resolve({"method": {"kind": "adaptive_kb", "targets": [16, 400]}})
    check_shards(kb, 4, 100)
    with pytest.raises(UserError, match=r"reaches 400 samples per update, more than 3 workers x 100 rows"):
        check_shards(kb, 3, 100)
    k = resolve({"method": {"kind": "adaptive_k", "targets": [16, 80]}, "order": {"batch": 16}})
    check_shards(k, 5, 1000)
    with pytest.raises(UserError, match=r"adaptive_k keeps order\.batch = 16 .* use adaptive_kb"):
        check_shards(k, 4, 1000)


def test_resume_only_changes_resumable_keys():
    stored = resolve({})
    cfg = resume_config(stored, ["run.max_updates=50"])
    assert cfg["run"]["max_updates"] == 50 and stored["run"]["max_updates"] == 0
    with pytest.raises(UserError, match=r"method\.lr: cannot change on resume"):
        resume_config(stored, ["method.lr=1.0"])


def test_example_config_and_readme_document_every_key():
    example = (ROOT / "jobs/configs/example.toml").read_text()
    readme = (ROOT / "README.md").read_text()
    cfg = load_config(ROOT / "jobs/configs/example.toml")  # must be valid as shipped
    assert cfg["data"]["source"] == "mnist5k"
    for table, keys in SCHEMA.items():
        assert f"[{table}]" in example
        for name in keys:
            assert re.search(rf"^{name} = ", example, re.M), f"{table}.{name} missing in example.toml"
            assert f"`{table}.{name}`" in readme, f"{table}.{name} missing in README"
