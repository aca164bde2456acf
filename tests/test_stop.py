"""Coordinated stop: SIGUSR1/SIGTERM to mpiexec or to one rank, or a STOP file, stop the
whole job at one update with a checkpoint and exit 0; the resumed run ends bit-identical
to an uninterrupted one (simulated clock); a second signal aborts at once.

Each job runs under its own ``mpiexec`` (these tests are serial pytest tests)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from hpcsgd.stop import StopRequest
from launch import digits_job, finish, load, rank_pid, start, wait_for_line

UPDATES = 20000  # long enough (~2 s here) for a STOP file, polled once a second, to land mid-run


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    base = tmp_path_factory.mktemp("stop")
    cfg = digits_job(base, max_updates=UPDATES)
    whole = base / "whole"
    rc, out = finish(start(cfg, whole, "run.progress_every=0"))
    assert rc == 0, out
    return cfg, whole, base


@pytest.mark.parametrize("how", ["USR1 to mpiexec", "TERM to mpiexec", "USR1 to worker 2", "STOP file"])
def test_a_stop_request_checkpoints_exits_0_and_resumes_exactly(job, how):
    cfg, whole, base = job
    out = base / how.replace(" ", "_")
    proc = start(cfg, out)
    wait_for_line(proc, "[hpcsgd] update")
    asked = time.monotonic()
    if how == "STOP file":
        (out / "STOP").touch()
    elif how.endswith("mpiexec"):
        proc.send_signal(getattr(signal, "SIG" + how.split()[0]))
    else:
        os.kill(rank_pid(proc.pid, 2), signal.SIGUSR1)
    rc, text = finish(proc)
    assert rc == 0, text
    assert time.monotonic() - asked < 30, "the stop must be quick"
    assert "stop requested" in text and "hpcsgd resume" in text, text
    stopped = load(out)
    assert 0 < stopped["update"] < UPDATES, "the request must land mid-run"
    assert not (out / "STOP").exists(), "the STOP file is consumed by the stop"

    rc, text = finish(start(cfg, out, command="resume"))
    assert rc == 0, text
    a, b = load(whole), load(out)
    assert b["update"] == UPDATES
    assert np.array_equal(a["model"]["params"], b["model"]["params"]), "resumed run differs"
    for col in ("worker", "staleness", "sim_time"):
        assert np.array_equal(a["trace"][col], b["trace"][col]), col


def test_a_second_signal_aborts_at_once_and_keeps_the_last_checkpoint(job):
    """Wall clock, 3 s per job: the first signal's stop waits for the jobs in flight, the
    second one (during that wait) aborts the job without writing anything."""
    cfg, _, base = job
    out = base / "abort"
    proc = start(cfg, out, "run.clock='wall'", "method.kind='sync'", "stragglers.model='fixed'",
                 "stragglers.comm_mean=3.0", "run.checkpoint_every=1", "run.max_updates=100")
    wait_for_line(proc, "[hpcsgd] update 1 ")
    before = load(out)["update"]
    proc.send_signal(signal.SIGUSR1)
    time.sleep(0.5)
    asked = time.monotonic()
    proc.send_signal(signal.SIGUSR1)
    rc, text = finish(proc, timeout=30)
    assert rc != 0, text
    assert time.monotonic() - asked < 2.5, "a second signal must not wait for the jobs in flight"
    assert "second signal" in text, text
    assert load(out)["update"] == before, "the last checkpoint must be intact and nothing newer written"


def test_stop_request_object(tmp_path):
    with StopRequest(tmp_path, poll_seconds=0.0) as stop:
        assert stop.check() == ""
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.check() == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) != stop._handle, "handlers are restored on exit"
    stop = StopRequest(tmp_path, poll_seconds=0.0)
    (tmp_path / "STOP").touch()
    assert stop.check() == "STOP file"
    stop.consume_file()
    assert not (tmp_path / "STOP").exists()
    stop.consume_file()  # no file: nothing to do
