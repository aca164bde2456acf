"""Parameter servers (``run.servers = S``) against one server, each layout under its own
mpiexec: the golden runs of four workers that servers can make (tests/golden/M4-*:
every method and order, all but the cost model's run) again with S = 2, 3 and 4
servers, bit for bit (simulated clock; adaptive_k's Pflug test sums the servers'
partial inner products, and decides the same); a run that checkpoints with one S and resumes with
another; and wall-clock runs (one worker: the same bits as S = 1; fastest_k with
stragglers whose jobs are dropped: it ends, and its checkpoint has the whole model)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from golden_runs import BASE, differs_from_recorded, golden_file, runs_with_servers
from hpcsgd.checkpoint import load_checkpoint
from launch import MPIEXEC, ROOT, job_env

M = 4


def differences(got: dict, name: str) -> str:
    return differs_from_recorded(got, M, name)


def mpirun(ranks: int, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpi4py", *args],
                          capture_output=True, text=True, env=job_env(), timeout=timeout)


@pytest.mark.parametrize("servers,worker_ranks", [(2, 2), (3, 1), (4, 2)])
def test_sharded_runs_are_the_recorded_one_server_runs(data_dir, tmp_path, servers, worker_ranks):
    """Four workers (virtual where there are fewer worker ranks), the model and the
    method's per-parameter state in S slices: the same parameters, trace and
    evaluations, bit for bit."""
    p = mpirun(worker_ranks + servers, str(ROOT / "tests" / "golden_runs.py"), str(data_dir), "--workers", str(M),
               "--servers", str(servers), "--out", str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    names = [n for n, sets in runs_with_servers(M).items() if "cluster.cost=true" not in sets]
    assert len(names) == 10  # every golden run but the cost model's: servers change what it charges
    problems = [differences(dict(np.load(tmp_path / golden_file(M, n).name)), n) for n in names]
    assert not any(problems), "\n".join(problems)


def train(ranks: int, config, *sets: str) -> None:
    p = mpirun(ranks, "-m", "hpcsgd", "train", str(config), "--quiet", *[a for s in sets for a in ("--set", s)])
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("name", ["piag-rr-exp-full-l1", "gsgm-so-uniform-dirichlet-mlp"])
def test_a_run_resumes_with_another_number_of_servers(data_dir, tmp_path, name):
    """Checkpoint at update 20 with S = 3 (the PIAG table and GSGM's deferred sums in
    three slices, jobs in flight), resume with S = 2, and end where the recorded run
    ends; the checkpoint itself is the one layout of SPEC section 5."""
    config = tmp_path / "job.toml"
    config.write_text("# every key comes with --set\n")
    out = tmp_path / "run"
    settings = [f"data.dir='{data_dir}'", f"run.out='{out}'", *BASE, *runs_with_servers(M)[name],
                f"run.workers={M}", "run.checkpoint_every=20"]
    train(4, config, *settings, "run.servers=3", "run.max_updates=20")
    _, tree = load_checkpoint(out)
    d = tree["model"]["params"].size
    assert int(tree["update"]) == 20 and tree["state"]["optimizer"]["momentum"].size == d
    p = mpirun(4, "-m", "hpcsgd", "resume", str(out), "--quiet", "--set", "run.max_updates=40",
               "--set", "run.servers=2")
    assert p.returncode == 0, p.stdout + p.stderr
    from golden_runs import flat
    problem = differences(flat(load_checkpoint(out)[1]), name)
    assert not problem, problem


def test_wall_clock_runs_with_servers(data_dir, tmp_path):
    config = tmp_path / "job.toml"
    config.write_text("# every key comes with --set\n")
    base = [f"data.dir='{data_dir}'", "data.source='digits'", "model.kind='softmax'", "run.epochs=0",
            "run.max_updates=30", "run.eval_every=10", "run.progress_every=0", "method.lr=0.5"]
    train(2, config, *base, f"run.out='{tmp_path / 'one'}'")
    train(4, config, *base, f"run.out='{tmp_path / 'three'}'", "run.servers=3")
    one, three = load_checkpoint(tmp_path / "one")[1], load_checkpoint(tmp_path / "three")[1]
    assert np.array_equal(one["model"]["params"], three["model"]["params"])
    assert np.array_equal(one["eval"]["train_loss"], three["eval"]["train_loss"])
    # stragglers: fastest_k cancels the slowest job every round; a preemptible job
    # dropped by its worker answers every server with a bare header
    out = tmp_path / "fk"
    train(5, config, *base, f"run.out='{out}'", "run.servers=2", "method.kind='fastest_k'", "method.k=2",
          "stragglers.model='exp'", "stragglers.compute_mean=0.002")
    tree = load_checkpoint(out)[1]
    assert int(tree["update"]) == 30 and tree["model"]["params"].size == one["model"]["params"].size
    assert np.isfinite(tree["model"]["params"]).all() and (tree["trace"]["k"] == 2).all()


# ---------------------------------------------------------------------------- the pieces, serially

def test_slices_cover_the_model_in_order_and_servers_are_the_last_ranks():
    from hpcsgd.engine.servers import ParamSlices
    s = ParamSlices(10, 3, world=6)
    assert [s.of(i) for i in range(3)] == [slice(0, 4), slice(4, 7), slice(7, 10)]
    assert s.ranks == [0, 4, 5] and s.server_of(4) == 1 and s.server_of(2) is None
    assert list(s.followers()) == [1, 2]


def test_a_checkpoint_cut_into_slices_joins_back_bit_for_bit():
    from hpcsgd import transport as T
    from hpcsgd.engine.servers import ParamSlices, cut_tree, join_trees
    rng = np.random.default_rng(0)
    d, n_workers = 11, 3
    tree = {"update": 7, "model": {"params": rng.normal(size=d)},
            "state": {"optimizer": {"momentum": rng.normal(size=d)},
                      "method": {"table": rng.normal(size=(n_workers, d)), "total": rng.normal(size=d),
                                 "versions": np.arange(n_workers)},
                      "engine": {"version": 7, "inflight": {"jobs": np.zeros((2, 5), dtype=np.int64),
                                                            "results": rng.normal(size=(2, T.RESULT_HEADER + d))}}}}
    keys = ("table", "total")
    slices = ParamSlices(d, 4, world=6)
    parts = [cut_tree(tree, slices.of(s), keys) for s in range(4)]
    assert parts[1]["model"]["params"].size == slices.size(1)
    assert parts[1]["state"]["method"]["table"].shape == (n_workers, slices.size(1))
    assert np.array_equal(parts[2]["state"]["method"]["versions"], tree["state"]["method"]["versions"])
    followers = [{"params": p["model"]["params"], "momentum": p["state"]["optimizer"]["momentum"],
                  "method": p["state"]["method"], "results": p["state"]["engine"]["inflight"]["results"]}
                 for p in parts[1:]]
    joined = join_trees(parts[0], followers, keys)
    for path in (("model", "params"), ("state", "optimizer", "momentum"), ("state", "method", "table"),
                 ("state", "method", "total"), ("state", "engine", "inflight", "results")):
        a, b = joined, tree
        for k in path:
            a, b = a[k], b[k]
        assert np.array_equal(a, b), path


@pytest.mark.parametrize("setting,says", [
    ("method.kind='adaptive_k', run.clock='wall'", "needs run.clock = 'simulated'"),
    ("method.kind='adaptive_kb', run.clock='wall'", "adapts to timings that only rank 0 measures"),
])
def test_what_several_servers_cannot_run_yet_is_refused_by_name(setting, says):
    from hpcsgd.config import resolve, resolve_servers
    from hpcsgd.errors import UserError
    sets = ["run.clock='simulated'", "run.servers=2", *setting.split(", ")]
    with pytest.raises(UserError, match="run.servers = 2") as exc:
        resolve_servers(resolve({}, sets), 4)
    assert says in str(exc.value)


def test_servers_need_a_worker_rank_besides_themselves():
    from hpcsgd.config import resolve, resolve_servers
    from hpcsgd.errors import UserError
    cfg = resolve({}, ["run.clock='simulated'", "run.servers=3"])
    with pytest.raises(UserError, match="needs at least 4 MPI ranks"):
        resolve_servers(cfg, 3)
    assert resolve_servers(cfg, 4) == 3


def test_the_cost_model_with_servers_resumes_exactly_and_keeps_its_servers(data_dir, tmp_path):
    """With cluster.cost the servers change what the run is charged (each sends and takes
    its own slice): a run with S = 2 resumed from update 20 is the uninterrupted run, bit
    for bit, and a resume with another S is refused by name (the queues are per server)."""
    from golden_runs import flat, runs
    config = tmp_path / "job.toml"
    config.write_text("# every key comes with --set\n")
    sets = [f"data.dir='{data_dir}'", *BASE, *runs(M)["async-rr-exp-cost"], f"run.workers={M}", "run.servers=2"]
    train(4, config, *sets, f"run.out='{tmp_path / 'whole'}'")
    out = tmp_path / "halves"
    train(4, config, *sets, f"run.out='{out}'", "run.max_updates=20")
    p = mpirun(4, "-m", "hpcsgd", "resume", str(out), "--quiet", "--set", "run.servers=3")
    assert p.returncode == 2 and "resumes with the same run.servers" in p.stderr, p.stderr
    p = mpirun(4, "-m", "hpcsgd", "resume", str(out), "--quiet", "--set", "run.max_updates=40")
    assert p.returncode == 0, p.stdout + p.stderr
    whole, halves = flat(load_checkpoint(tmp_path / "whole")[1]), flat(load_checkpoint(out)[1])
    assert set(whole) == set(halves)
    assert all(np.array_equal(whole[k], halves[k], equal_nan=True) for k in whole)
    from hpcsgd.inspect import format_summary, summarize
    assert "on 2 worker ranks, 2 parameter servers" in format_summary(summarize(out))
    one = dict(np.load(golden_file(M, "async-rr-exp-cost")))
    assert not np.array_equal(one["trace/sim_time"], whole["trace/sim_time"]), "servers change the charges"


def test_the_servers_pflug_sum_is_the_one_server_sum_to_1e_12(data_dir, tmp_path):
    """adaptive_k's Pflug statistic is a sum of inner products over the whole model:
    with servers, each server's partial product is added in server order, so the sum
    may differ from one server's in its last bits (bound: 1e-12 relative), while every
    decision (the stage switches, so the whole trajectory) is the same."""
    from golden_runs import runs
    config = tmp_path / "job.toml"
    config.write_text("# every key comes with --set\n")
    sets = [f"data.dir='{data_dir}'", *BASE, *runs(M)["adaptive_k-pair-gamma-shards-lsq"], f"run.workers={M}"]
    train(2, config, *sets, f"run.out='{tmp_path / 'one'}'")
    train(5, config, *sets, f"run.out='{tmp_path / 'four'}'", "run.servers=4")
    one, four = load_checkpoint(tmp_path / "one")[1], load_checkpoint(tmp_path / "four")[1]
    s1, s4 = float(one["state"]["method"]["switch"]["S"]), float(four["state"]["method"]["switch"]["S"])
    assert s1 != 0.0 and abs(s4 - s1) <= 1e-12 * abs(s1), (s1, s4)
    assert np.array_equal(one["trace"]["stage"], four["trace"]["stage"])
    assert np.array_equal(one["model"]["params"], four["model"]["params"])


def test_a_layout_error_counts_the_servers_in_the_launch_line():
    from hpcsgd.config import resolve, resolve_workers
    from hpcsgd.errors import UserError
    cfg = resolve({}, ["run.servers=3", "run.workers=2"])
    with pytest.raises(UserError, match=r"run.workers = 2 but the job has 4 worker ranks; launch with mpiexec -n 5"):
        resolve_workers(cfg, 4)
