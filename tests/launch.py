"""Helpers for serial tests that run whole jobs under their own ``mpiexec``
(stop, crash and disk tests): start a job, read its output, wait for it, load its
newest checkpoint."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

BIN = Path(sys.executable).parent
MPIEXEC = str(BIN / "mpiexec")
ROOT = Path(__file__).resolve().parents[1]


def hpcsgd_command(*args: str, n: int = 3) -> list[str]:
    """``mpiexec -n n python -m hpcsgd args...`` with this interpreter."""
    return [MPIEXEC, "-n", str(n), sys.executable, "-m", "hpcsgd", *args]


def job_env(**extra: str) -> dict:
    """The environment of a test job: this checkout importable, one thread per rank."""
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", **extra)


def start(cfg: Path, out: Path, *settings: str, command: str = "train", env: dict | None = None,
          new_session: bool = False, n: int = 3, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """``hpcsgd train cfg`` into ``out`` (or ``hpcsgd resume out``) on ``n`` ranks; output
    merged into ``proc.stdout``.  ``new_session``: the job gets its own process group,
    so that ``os.killpg`` reaches mpiexec and every rank.  ``extra``: more arguments."""
    target = str(out) if command == "resume" else str(cfg)
    cmd = hpcsgd_command(command, target, *[a for s in settings for a in ("--set", s)], *extra, n=n)
    if command == "train":
        cmd += ["--set", f"run.out='{out}'"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=job_env(**(env or {})), start_new_session=new_session)


def wait_for_line(proc: subprocess.Popen, needle: str, timeout: float = 120) -> list[str]:
    """Read the job's output until a line contains ``needle``."""
    lines, end = [], time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    proc.kill()
    raise AssertionError(f"no line with {needle!r} in:\n{''.join(lines)}")


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, out


def load(run_dir: Path) -> dict:
    from hpcsgd.checkpoint import load_checkpoint
    return load_checkpoint(run_dir)[1]


def digits_job(base: Path, method: dict | None = None, stragglers: dict | None = None, **run: object) -> Path:
    """A small job on digits (prepared into ``base``): by default a simulated-clock
    async job; ``run`` sets [run] keys, ``method`` and ``stragglers`` replace those
    tables (values are TOML literals)."""
    from hpcsgd.data import prepare
    if not (base / "digits.h5").exists():
        prepare("digits", data_dir=base)
    tables = {
        "run": {"clock": '"simulated"', "epochs": 0, "max_updates": 4000, "eval_every": 1000,
                "progress_every": 0.2, **run},
        "data": {"source": '"digits"', "dir": f'"{base}"'},
        "model": {"kind": '"softmax"'},
        "method": method or {"kind": '"async"', "lr": 0.05},
        "order": {"batch": 8},
        "stragglers": stragglers or {"model": '"exp"', "comm_mean": 1.0},
    }
    cfg = base / "job.toml"
    cfg.write_text("".join(f"[{t}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())
                           for t, keys in tables.items()))
    return cfg


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def rank_pid(mpiexec_pid: int, rank: int) -> int:
    """The pid of one MPI rank among mpiexec's descendants (MPICH sets PMI_RANK)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            is_rank = f"PMI_RANK={rank}".encode() in (entry / "environ").read_bytes().split(b"\0")
            pid = int(entry.name)
            while is_rank and pid > 1 and pid != mpiexec_pid:
                pid = parent(pid)
        except OSError:
            continue
        if is_rank and pid == mpiexec_pid:
            return int(entry.name)
    raise AssertionError(f"rank {rank} of mpiexec {mpiexec_pid} not found")


class Lines:
    """A job's output lines as they come, each with the monotonic time it was read
    (a reader thread: the job may go quiet, the test must not block)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.seen: list[tuple[float, str]] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put((time.monotonic(), line))
        self._queue.put(None)

    def _pull(self, timeout: float) -> bool:
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return True
        if item is None:
            return False
        self.seen.append(item)
        return True

    def wait_for(self, needle: str, timeout: float = 120) -> str:
        end = time.monotonic() + timeout
        checked = 0
        while time.monotonic() < end:
            for _, line in self.seen[checked:]:
                if needle in line:
                    return line
            checked = len(self.seen)
            if not self._pull(0.1):
                break
        raise AssertionError(f"no line with {needle!r} in:\n{self.text()}")

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        end = time.monotonic() + timeout
        while self._pull(max(0.0, end - time.monotonic())):
            if time.monotonic() >= end:
                self.proc.kill()
                raise AssertionError(f"job did not end within {timeout} s:\n{self.text()}")
        return self.proc.wait(timeout=10), self.text()

    def text(self) -> str:
        return "".join(line for _, line in self.seen)

    def updates_at(self, t: float) -> int:
        """The update count of the last progress line read before ``t``."""
        last = 0
        for when, line in self.seen:
            if when > t:
                break
            if line.startswith("[hpcsgd] update "):
                last = int(line.split()[2])
        return last
