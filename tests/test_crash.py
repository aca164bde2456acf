"""Crash safety: SIGKILL to the whole job at random moments and in the middle of
checkpoint writes, then resume, 20 times in a row; a full or read-only run directory.

Each job runs under its own ``mpiexec`` (serial pytest tests)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from launch import digits_job, finish, load, start

UPDATES = 40000  # enough that the job is still running at the last kill (updates got faster)
TRIALS = 20


def complete_checkpoints(run_dir: Path) -> int:
    """The newest update among finished checkpoint files (their final names appear only
    after the data is on disk); -1 if none."""
    ups = [int(p.name[5:-3]) for p in run_dir.glob("ckpt-*.h5")]
    return max(ups, default=-1)


def job_processes(marker: str) -> list[int]:
    """Live processes started with HPCSGD_CRASH_MARKER=marker in their environment."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"HPCSGD_CRASH_MARKER={marker}".encode() in (entry / "environ").read_bytes():
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    if stat[0] != "Z":
                        found.append(int(entry.name))
            except OSError:
                pass
    return found


def kill_job(proc: subprocess.Popen, marker: str) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    end = time.monotonic() + 20
    while job_processes(marker) and time.monotonic() < end:
        time.sleep(0.05)
    assert not job_processes(marker), "every rank must be gone after the kill"


def test_sigkill_at_any_moment_never_costs_more_than_the_last_checkpoint(tmp_path):
    cfg = digits_job(tmp_path, max_updates=UPDATES, checkpoint_every=50, keep_checkpoints=2,
                     progress_every=0)
    rc, out = finish(start(cfg, tmp_path / "reference"), timeout=300)
    assert rc == 0, out
    run = tmp_path / "run"
    rng = random.Random(0)
    during_write = 0
    for trial in range(TRIALS):
        marker = uuid.uuid4().hex
        command = "resume" if complete_checkpoints(run) >= 0 else "train"
        proc = start(cfg, run, command=command, env={"HPCSGD_CRASH_MARKER": marker}, new_session=True)
        if trial % 5 == 4:
            time.sleep(rng.uniform(0.0, 4.0))  # any moment, start-up included
        else:
            # once the job made progress (a new checkpoint) ...
            first, end = complete_checkpoints(run), time.monotonic() + 120
            while complete_checkpoints(run) <= first and time.monotonic() < end and proc.poll() is None:
                time.sleep(0.001)
            if trial % 2:
                # ... in the middle of the next checkpoint write: as soon as its temporary file shows up
                while not list(run.glob(".ckpt-*.tmp")) and time.monotonic() < end and proc.poll() is None:
                    time.sleep(0.0005)
            else:
                time.sleep(rng.uniform(0.0, 0.5))  # ... at a random moment of training
        before = complete_checkpoints(run)
        writing = bool(list(run.glob(".ckpt-*.tmp")))
        assert proc.poll() is None, f"trial {trial}: the job ended before the kill:\n{proc.stdout.read()}"
        kill_job(proc, marker)
        during_write += writing
        if before >= 0:
            update = load(run)["update"]  # raises if no valid checkpoint is found
            assert update >= before, f"trial {trial}: checkpoint {before} was lost (found {update})"
    assert during_write >= TRIALS // 4, f"only {during_write} kills landed during a checkpoint write"

    rc, out = finish(start(cfg, run, command="resume"), timeout=300)
    assert rc == 0, out
    a, b = load(tmp_path / "reference"), load(run)
    assert b["update"] == UPDATES
    assert np.array_equal(a["model"]["params"], b["model"]["params"]), "the resumed run differs"
    for col in ("worker", "staleness", "sim_time"):
        assert np.array_equal(a["trace"][col], b["trace"][col]), col


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs (root only)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(directory: Path, leave: int) -> None:
    """Fill the file system of ``directory`` up to ``leave`` free bytes."""
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    (directory / "filler").write_bytes(b"\0" * max(free - leave, 0))


def test_full_and_read_only_run_directories_give_clear_errors_and_keep_the_checkpoint(tmp_path, small_fs):
    cfg = digits_job(tmp_path, max_updates=200, progress_every=0)
    run = small_fs / "run"
    rc, out = finish(start(cfg, run))
    assert rc == 0, out
    size = (run / "ckpt-000000200.h5").stat().st_size

    # disk full: the start-up probe passes, the next checkpoint does not fit
    fill(small_fs, leave=size // 4)
    rc, out = finish(start(cfg, run, "run.max_updates=400", command="resume"), timeout=120)
    assert rc == 2, out
    assert "cannot write a checkpoint into" in out and "No space left on device" in out, out
    assert "last good checkpoint" in out
    assert load(run)["update"] == 200, "the last checkpoint must be intact"
    assert not list(run.glob(".ckpt-*.tmp")), "no partial file may be left behind"

    (small_fs / "filler").unlink()
    rc, out = finish(start(cfg, run, "run.max_updates=400", command="resume"))
    assert rc == 0 and load(run)["update"] == 400, out

    # read-only: refused at start, before any training
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    rc, out = finish(start(cfg, run, "run.max_updates=600", command="resume"))
    assert rc == 2, out
    assert f"run.out {run} is not writable (Read-only file system)" in out, out
    assert load(run)["update"] == 400
