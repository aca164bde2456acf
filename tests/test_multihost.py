"""Across hosts: jobs on the namespace cluster of scripts/cluster (3 hosts; the stage in
scripts/test brings it up as root and takes it down).  Every message crosses a veth.

- a run resumed on another host layout ends bit-identical to one run on one host;
- parameter servers beside the workers on other hosts: the same bits as one server, and a
  wall-clock run with servers across hosts ends with the whole model checkpointed;
- a stop signal to mpiexec reaches every host and checkpoints;
- only rank 0 writes files (the run directory is read-only on every other host);
- every host compiles into its own cold Numba cache at once;
- a worker host whose link goes down: a sync job ends at the watchdog naming the host,
  the last checkpoint intact, and resumes on the remaining hosts; fastest-k keeps
  updating while the link is down; a host whose processes are all killed ends the job
  within seconds, and the run resumes from its last checkpoint on the other hosts.
(The MPI tests of the engine and the golden trajectories also run on the cluster: the
stage starts them with ``scripts/cluster run``.)
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hpcsgd.checkpoint import list_checkpoints, load_checkpoint
from launch import ROOT, Lines, digits_job, finish, job_env, start

CLUSTER = [sys.executable, str(ROOT / "scripts" / "cluster")]
_spec = importlib.util.spec_from_loader("cluster", importlib.machinery.SourceFileLoader("cluster", CLUSTER[1]))
cluster_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cluster_script)  # its state file says which hosts are up
_state = cluster_script.load_state() or {}
HOSTS = _state["hosts"] if _state.get("complete") else []
pytestmark = [pytest.mark.multihost,
              pytest.mark.skipif(len(HOSTS) < 3, reason="needs scripts/cluster up 3 (root)")]


def on_cluster(args: list[str], *command: str, **popen) -> subprocess.Popen:
    """``scripts/cluster run ARGS -- python -m hpcsgd COMMAND...``, output merged."""
    cmd = [*CLUSTER, "run", *args, "--", sys.executable, "-m", "hpcsgd", *command]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=job_env(),
                            **popen)


def hpcsgd_job(cfg: Path, out: Path, *settings: str, command: str = "train", cluster: list[str] = (),
               extra: tuple[str, ...] = ()) -> subprocess.Popen:
    target = str(out) if command == "resume" else str(cfg)
    args = [command, target, *[a for s in settings for a in ("--set", s)], *extra]
    if command == "train":
        args += ["--set", f"run.out='{out}'"]
    return on_cluster(list(cluster), *args)


def host_exec(host: str, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLUSTER, "exec", host, "--", *command], capture_output=True, text=True)


def same_run(a: dict, b: dict) -> None:
    assert a["update"] == b["update"]
    assert np.array_equal(a["model"]["params"], b["model"]["params"]), "parameters differ"
    for col in ("worker", "staleness", "sim_time", "samples_computed", "messages"):
        assert np.array_equal(a["trace"][col], b["trace"][col]), col


def test_a_run_resumed_on_another_host_layout_is_the_run_on_one_host(tmp_path):
    cfg = digits_job(tmp_path, max_updates=600, eval_every=100)
    rc, text = finish(start(cfg, tmp_path / "one_host"))  # plain mpiexec, one host, 3 ranks
    assert rc == 0, text
    out = tmp_path / "moved"
    rc, text = finish(hpcsgd_job(cfg, out, "run.max_updates=300"))  # hsg0 | hsg1 | hsg2
    assert rc == 0, text
    # the master moves to hsg2, both workers share hsg0
    rc, text = finish(hpcsgd_job(cfg, out, "run.max_updates=600", command="resume",
                                 cluster=["--hosts", f"{HOSTS[2]}:1,{HOSTS[0]}:2"]))
    assert rc == 0, text
    same_run(load_checkpoint(tmp_path / "one_host")[1], load_checkpoint(out)[1])


def test_servers_on_other_hosts_give_the_one_server_run(tmp_path):
    """Three servers: rank 0 on hsg0 and one beside each worker (hsg1, hsg2), every
    slice of every job and result across a veth."""
    cfg = digits_job(tmp_path, max_updates=300, eval_every=100)
    rc, text = finish(start(cfg, tmp_path / "one_server"))  # plain mpiexec, one host, 3 ranks
    assert rc == 0, text
    hosts = ["--hosts", f"{HOSTS[0]}:1,{HOSTS[1]}:1,{HOSTS[2]}:1,{HOSTS[1]}:1,{HOSTS[2]}:1"]
    out = tmp_path / "servers"
    rc, text = finish(hpcsgd_job(cfg, out, "run.servers=3", cluster=hosts))
    assert rc == 0, text
    same_run(load_checkpoint(tmp_path / "one_server")[1], load_checkpoint(out)[1])
    wall = tmp_path / "wall"
    rc, text = finish(hpcsgd_job(cfg, wall, "run.servers=3", "run.clock='wall'", "method.kind='sync'",
                                 "stragglers.model='none'",
                                 cluster=hosts))
    assert rc == 0, text
    tree = load_checkpoint(wall)[1]
    assert tree["update"] == 300 and np.isfinite(tree["model"]["params"]).all()
    assert tree["model"]["params"].size == load_checkpoint(out)[1]["model"]["params"].size


def test_a_stop_signal_to_mpiexec_reaches_every_host_and_checkpoints(tmp_path):
    cfg = digits_job(tmp_path, max_updates=40000)
    out = tmp_path / "run"
    lines = Lines(hpcsgd_job(cfg, out, cluster=["-n", "5"]))
    lines.wait_for("[hpcsgd] update", timeout=90)
    lines.proc.send_signal(signal.SIGUSR1)
    rc, text = lines.finish(timeout=90)
    assert rc == 0 and "stop requested (SIGUSR1)" in text, text
    tree = load_checkpoint(out)[1]
    assert 0 < tree["update"] < 40000


def test_only_rank_0_writes_files(tmp_path):
    base = tmp_path / "shared"
    base.mkdir()
    probe = subprocess.run([*CLUSTER, "run", "-n", "3", "--readonly", str(base), "--", sys.executable, "-c",
                            "from mpi4py import MPI\n"
                            "from hpcsgd.comm import gather_text\n"
                            "c = MPI.COMM_WORLD\n"
                            "try:\n"
                            f"    open('{base}/x%d' % c.Get_rank(), 'w').close(); got = 'wrote'\n"
                            "except OSError as e:\n"
                            "    got = 'refused %d' % e.errno\n"
                            "got = gather_text(c, got)\n"
                            "if c.Get_rank() == 0: print(got)"],
                           capture_output=True, text=True, env=job_env())
    # the master's host writes; a worker host gets EROFS
    assert probe.stdout.strip() == "['wrote', 'refused 30', 'refused 30']", probe
    cfg = digits_job(base, max_updates=300, checkpoint_every=100)
    rc, text = finish(hpcsgd_job(cfg, base / "run", cluster=["-n", "5", "--readonly", str(base)]))
    assert rc == 0, text
    assert load_checkpoint(base / "run")[1]["update"] == 300


def test_every_host_compiles_into_its_own_cold_cache_at_once(tmp_path):
    cache = tmp_path / "caches"
    cfg = digits_job(tmp_path, max_updates=100)
    rc, text = finish(hpcsgd_job(cfg, tmp_path / "run", cluster=["-n", "5", "--cache", str(cache)]), timeout=300)
    assert rc == 0, text
    for h in HOSTS:
        assert any(cache.glob(f"hpcsgd/numba-*/{h}/*/*.nbi")), f"{h} compiled nothing into its own cache"


def wall_job(base: Path, **method) -> Path:
    return digits_job(base, method={"kind": '"sync"', "lr": 0.1, **method},
                      stragglers={"model": '"fixed"', "comm_mean": 0.002}, clock='"wall"', max_updates=0,
                      max_seconds=20, eval_every=400, progress_every=0.25, checkpoint_every=200)


def link(host: str, state: str) -> None:
    p = host_exec(host, "ip", "link", "set", "eth0", state)
    assert p.returncode == 0, p


def test_a_worker_host_whose_link_goes_down_ends_a_sync_job_naming_it(tmp_path):
    cfg = wall_job(tmp_path)
    out = tmp_path / "run"
    lines = Lines(hpcsgd_job(cfg, out, "run.worker_timeout=4", "run.max_seconds=120"))
    lines.wait_for("[hpcsgd] update", timeout=90)
    while not (out.is_dir() and list_checkpoints(out)):
        time.sleep(0.1)
    link(HOSTS[2], "down")
    cut = time.monotonic()
    try:
        rc, text = lines.finish(timeout=90)
    finally:
        link(HOSTS[2], "up")
    took = time.monotonic() - cut
    line = next((x for x in text.splitlines() if x.startswith("hpcsgd: error")), "")
    print(f"\nlink down: exit {rc} {took:.1f} s after the cut (run.worker_timeout = 4)")
    assert rc == 4 and took < 30, f"exit {rc} after {took:.1f} s:\n{text}"
    assert f"(host {HOSTS[2]}" in line and "last good checkpoint is" in line, line
    file, tree = load_checkpoint(out)
    # the remaining hosts go on from it: master on hsg0, both workers on hsg1
    rc, text = finish(hpcsgd_job(cfg, out, "run.max_seconds=8", command="resume",
                                 cluster=["--hosts", f"{HOSTS[0]}:1,{HOSTS[1]}:2"]))
    assert rc == 0 and f"resuming from {file}" in text, text


def test_fastest_k_keeps_updating_while_a_host_is_cut_off(tmp_path):
    cfg = wall_job(tmp_path, kind='"fastest_k"', k=1)
    lines = Lines(hpcsgd_job(cfg, tmp_path / "run", "run.checkpoint_every=0"))
    lines.wait_for("[hpcsgd] update", timeout=90)
    time.sleep(2.0)
    cut = time.monotonic()
    link(HOSTS[2], "down")
    try:
        time.sleep(5.0)
    finally:
        restored = time.monotonic()
        link(HOSTS[2], "up")
    rc, text = lines.finish(timeout=120)
    assert rc == 0, text
    before = (lines.updates_at(cut) - lines.updates_at(cut - 2.0)) / 2.0
    during = (lines.updates_at(restored) - lines.updates_at(cut + 1.0)) / (restored - cut - 1.0)
    print(f"\nfastest_k k=1 of 2: {before:.0f} updates/s before the cut, {during:.0f} while {HOSTS[2]} is cut off")
    assert before > 20 and during > 0.2 * before, text


def test_killing_every_process_on_a_host_ends_the_job(tmp_path):
    cfg = wall_job(tmp_path)
    out = tmp_path / "run"
    lines = Lines(hpcsgd_job(cfg, out, "run.max_seconds=120"))
    lines.wait_for("[hpcsgd] update", timeout=90)
    while not (out.is_dir() and list_checkpoints(out)):
        time.sleep(0.1)
    pids = subprocess.run(["ip", "netns", "pids", HOSTS[2]], capture_output=True, text=True).stdout.split()
    assert pids
    killed = time.monotonic()
    for pid in pids:  # this job's processes on that host (the namespace is the cluster's)
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    rc, text = lines.finish(timeout=60)
    took = time.monotonic() - killed
    print(f"\nhost killed: exit {rc} {took:.1f} s later")
    assert rc != 0 and took < 15, f"exit {rc} after {took:.1f} s:\n{text}"
    # the checkpoint written before the kill is intact and the run goes on without that host
    file, _ = load_checkpoint(out)
    rc, text = finish(hpcsgd_job(cfg, out, "run.max_seconds=8", command="resume",
                                 cluster=["--hosts", f"{HOSTS[0]}:1,{HOSTS[1]}:2"]))
    assert rc == 0 and f"resuming from {file}" in text, text
