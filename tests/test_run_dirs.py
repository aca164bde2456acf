"""Run directories and data end to end, each job its own mpiexec (3 ranks): one job per
run directory (the lock), a resume never writes into another run's directory, a resume
refuses data that changed under its checkpoint, and a damaged newest checkpoint is
skipped for the intact older one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from hpcsgd.checkpoint import list_checkpoints, load_checkpoint
from hpcsgd.data import prepare
from launch import Lines, digits_job, finish, job_env, rank_pid, start


@pytest.fixture
def job(tmp_path):
    return digits_job(tmp_path, max_updates=600, checkpoint_every=200), tmp_path


def snapshot(run_dir):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(run_dir.glob("ckpt-*.h5"))}


def test_one_job_per_run_directory(job):
    cfg, base = job
    out = base / "run"
    first = Lines(start(cfg, out, "run.max_updates=200000", "run.checkpoint_every=500"))
    first.wait_for("[hpcsgd] update")
    while not list_checkpoints(out):  # a resume needs one to start from
        time.sleep(0.1)
    for command in ("train", "resume"):
        rc, text = finish(start(cfg, out, command=command))
        assert rc == 2, text
        line = next(x for x in text.splitlines() if x.startswith("hpcsgd: error"))
        owner = rank_pid(first.proc.pid, 0)  # the master holds the lock
        assert "is in use by another job" in line and f"host {socket.gethostname()}, pid {owner}," in line, line
        assert text.count("hpcsgd: error") == 1, text
    first.proc.send_signal(signal.SIGTERM)  # the owner stops normally, with a checkpoint
    rc, text = first.finish()
    assert rc == 0, text
    assert not (out / "LOCK").exists(), "the lock goes with its job"
    # a job killed outright leaves its lock behind; the next one on this host takes it over
    killed = start(cfg, out, command="resume", new_session=True)
    Lines(killed).wait_for("[hpcsgd] update")
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert (out / "LOCK").exists()
    rc, text = finish(start(cfg, out, "run.max_updates=1000", command="resume"))
    assert rc == 0 and "took over the lock" in text, text


def test_a_resume_never_writes_into_another_runs_directory(job):
    cfg, base = job
    a, b = base / "a", base / "b"
    for out in (a, b):
        assert finish(start(cfg, out))[0] == 0
    before = snapshot(b)
    rc, text = finish(start(cfg, a, f"run.out='{b}'", "run.max_updates=800", command="resume"))
    assert rc == 2 and "never in another run's" in text, text
    assert snapshot(b) == before
    fresh = base / "c"
    assert finish(start(cfg, a, f"run.out='{fresh}'", "run.max_updates=800", command="resume"))[0] == 0
    assert load_checkpoint(fresh)[1]["update"] == 800 and snapshot(b) == before


def test_a_resume_refuses_data_that_changed(job):
    cfg, base = job
    out = base / "run"
    assert finish(start(cfg, out))[0] == 0
    before = snapshot(out)
    prepare("digits", data_dir=base, seed=1)  # the same name, another train/test split
    rc, text = finish(start(cfg, out, "run.max_updates=800", command="resume"))
    assert rc == 2 and "content hash" in text and "--allow-data-change" in text, text
    assert snapshot(out) == before
    rc, text = finish(start(cfg, out, "run.max_updates=800", command="resume", extra=("--allow-data-change",)))
    assert rc == 0, text
    prepare("breast_cancer", out=base / "digits.h5")  # another d: never resumable
    rc, text = finish(start(cfg, out, "run.max_updates=1000", command="resume",
                            extra=("--allow-data-change",)))
    assert rc == 2 and "parameters" in text and "Traceback" not in text, text


def shorten(f):
    data = f["trace/update"][...]
    del f["trace/update"]
    f["trace/update"] = data[:-3]


def drop_method_state(f):
    del f["state/method"]


def bogus_method(f):
    f.attrs["method"] = "sgd_plus"


def flip_a_bit(f):
    params = f["model/params"]
    raw = params[...].view(np.uint64)
    raw[0] ^= np.uint64(1 << 20)
    params[...] = raw.view(np.float64)


@pytest.mark.parametrize("damage", [shorten, drop_method_state, bogus_method, flip_a_bit],
                         ids=lambda f: f.__name__)
def test_a_damaged_newest_checkpoint_is_skipped_for_the_older_one(job, damage):
    cfg, base = job
    out = base / "run"
    assert finish(start(cfg, out))[0] == 0
    newest, older = list_checkpoints(out)[:2]
    with h5py.File(newest, "r+") as f:
        damage(f)
    inspect = subprocess.run([sys.executable, "-m", "hpcsgd", "inspect", str(out)], env=job_env(),
                             capture_output=True, text=True)
    assert inspect.returncode == 0 and newest.name in inspect.stdout + inspect.stderr, inspect
    rc, text = finish(start(cfg, out, "run.max_updates=800", command="resume"))
    assert rc == 0, text
    assert f"skipping corrupt checkpoint {newest}" in text and f"resuming from {older}" in text, text
    assert load_checkpoint(out)[1]["update"] == 800
