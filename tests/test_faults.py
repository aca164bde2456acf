"""Faults under mpiexec, each job its own mpiexec on 5 ranks (4 workers), wall clock:

- a worker frozen by SIGSTOP does not stop what can go on without it (fastest-k with
  k = M - 1, adaptive (k, b), asynchronous SGD): updates keep coming during the freeze,
  and a checkpoint that falls due meanwhile is postponed, not waited for;
- where the method needs the frozen worker (synchronous SGD), the watchdog
  (run.worker_timeout) ends the job with exit status 4, naming the worker and its host,
  the last checkpoint intact;
- a stop request while the master waits for a reply that never comes ends the job
  after run.stop_timeout with exit status 4 and the last checkpoint intact.

Figures (update rates before and during the freeze) are printed; run with -s to see them.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from hpcsgd.checkpoint import list_checkpoints, load_checkpoint
from launch import Lines, digits_job, rank_pid, start

FROZEN = 2  # the rank that gets SIGSTOP


def wall_job(base: Path, **method) -> Path:
    """Wall clock, 2 ms per job, progress lines every 0.25 s, a checkpoint every 250
    updates (all kept), about 13 s of training."""
    return digits_job(base, method={"kind": '"fastest_k"', "lr": 0.1, **method},
                      stragglers={"model": '"fixed"', "comm_mean": 0.002}, clock='"wall"',
                      max_updates=0, max_seconds=13, eval_every=400, progress_every=0.25,
                      checkpoint_every=250, keep_checkpoints=50)


def first_checkpoint(out: Path, timeout: float = 60) -> Path:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = list_checkpoints(out) if out.is_dir() else []
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint in {out} after {timeout} s")


def freeze(proc, rank: int) -> int:
    pid = rank_pid(proc.pid, rank)
    os.kill(pid, signal.SIGSTOP)
    return pid


def thaw(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


@pytest.mark.parametrize("method", [
    {"kind": '"fastest_k"', "k": 3},
    {"kind": '"adaptive_kb"', "targets": "[24]", "refresh_every": 10},
    {"kind": '"async"', "assign": '"pure"', "lr": 0.05},
], ids=["fastest_k", "adaptive_kb", "async"])
def test_a_frozen_worker_does_not_stop_what_can_go_on(tmp_path, method):
    cfg = wall_job(tmp_path, **method)
    out = tmp_path / "run"
    lines = Lines(start(cfg, out, n=5))
    lines.wait_for("[hpcsgd] update", timeout=60)
    time.sleep(2.0)
    frozen_at = time.monotonic()
    pid = freeze(lines.proc, FROZEN)
    try:
        time.sleep(6.0)
    finally:
        thawed_at = time.monotonic()
        thaw(pid)
    rc, text = lines.finish(timeout=90)
    assert rc == 0, text
    before = (lines.updates_at(frozen_at) - lines.updates_at(frozen_at - 2.0)) / 2.0
    during = (lines.updates_at(thawed_at) - lines.updates_at(frozen_at + 1.0)) / (thawed_at - frozen_at - 1.0)
    name = method["kind"].strip('"')
    print(f"\n{name}: {before:.0f} updates/s before the freeze, {during:.0f} during it "
          f"({during / before:.2f} of before)")
    assert before > 20, text
    assert during > 0.2 * before, f"updates stalled during the freeze: {before:.0f} -> {during:.0f}/s\n{text}"
    # checkpoints fall due every 250 updates: one came due while the worker was frozen
    line = next((x for x in text.splitlines() if "postponed: no reply from worker 2" in x), None)
    assert line is not None, text
    postponed = int(line.split("checkpoint at update ")[1].split()[0])
    written = sorted(int(p.name[5:14]) for p in list_checkpoints(out))
    assert postponed not in written and any(u > postponed for u in written[:-1]), \
        f"the checkpoint postponed at {postponed} was never taken: {written}"
    load_checkpoint(out)


def until_the_watchdog(cfg: Path, out: Path, settings: tuple[str, ...], signal_after: float | None = None):
    """Start the job on 5 ranks, freeze worker 2 after the first checkpoint (and, with
    ``signal_after``, SIGTERM mpiexec that many seconds later), and wait for it to end
    with exit 4; returns (seconds from the freeze or the signal to the end, the
    checkpoints before, the job's error line)."""
    lines = Lines(start(cfg, out, *settings, n=5))
    lines.wait_for("[hpcsgd] update", timeout=60)
    first_checkpoint(out)
    pid = freeze(lines.proc, FROZEN)
    try:
        if signal_after is not None:
            time.sleep(signal_after)
        before = [p.name for p in list_checkpoints(out)]
        since = time.monotonic()
        if signal_after is not None:
            lines.proc.send_signal(signal.SIGTERM)
        rc, text = lines.finish(timeout=60)
    finally:
        thaw(pid)
    took = time.monotonic() - since
    line = next((x for x in text.splitlines() if x.startswith("hpcsgd: error")), "")
    assert rc == 4 and 3.0 <= took < 15.0, f"exit {rc} after {took:.1f} s:\n{text}"
    return took, before, line


def frozen_sync_job(tmp_path: Path, setting: str, signal_after: float | None = None):
    """A sync job ended by its frozen worker 2: the error line names the worker and the
    intact checkpoint, no checkpoint appeared or vanished; returns (seconds to the end,
    the error line)."""
    out = tmp_path / "run"
    took, before, line = until_the_watchdog(wall_job(tmp_path, kind='"sync"'), out,
                                            (setting, "run.max_seconds=60"), signal_after)
    assert f"no reply from worker {FROZEN} (host {socket.gethostname()}" in line, line
    assert [p.name for p in list_checkpoints(out)] == before, "no checkpoint may appear or vanish"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    file, _ = load_checkpoint(out)
    assert f"the last good checkpoint is {file}" in line and "hpcsgd resume" in line, line
    return took, line


def test_the_watchdog_ends_a_job_that_cannot_go_on_and_names_the_worker(tmp_path):
    took, line = frozen_sync_job(tmp_path, "run.worker_timeout=3")
    print(f"\nwatchdog: exit 4 {took:.1f} s after the freeze (run.worker_timeout = 3)")
    assert "run.worker_timeout" in line, line


def test_a_stop_request_while_the_master_waits_in_vain_ends_with_the_last_checkpoint(tmp_path):
    took, line = frozen_sync_job(tmp_path, "run.stop_timeout=3", signal_after=1.0)
    print(f"\nstop while waiting: exit 4 {took:.1f} s after SIGTERM (run.stop_timeout = 3)")
    assert "stop request (SIGTERM)" in line and "run.stop_timeout" in line, line


def test_an_epochs_rule_that_a_frozen_worker_blocks_ends_at_the_watchdog(tmp_path):
    """fastest_k goes on without the frozen worker, but run.epochs counts the slowest
    worker's passes: with no other stopping rule the run could never end."""
    _, _, line = until_the_watchdog(wall_job(tmp_path, k=3), tmp_path / "run",
                                    ("run.max_seconds=0", "run.epochs=100000", "run.worker_timeout=3"))
    assert f"no reply from worker {FROZEN}" in line and "run.epochs = 100000 is the only stopping rule" in line, line
