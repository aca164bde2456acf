"""The run-directory lock: one job per run directory, stale locks taken over only when
their owner is certainly gone, race-free between contenders."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from hpcsgd import lock as L
from hpcsgd.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
HOST = socket.gethostname()

# Takes the lock, says so, then dies without releasing ("die") or holds it until a line
# arrives on stdin and releases it ("hold").
HOLDER = """
import os, sys
from hpcsgd.lock import RunLock
lock = RunLock(sys.argv[1])
lock.acquire()
print("locked", os.getpid(), flush=True)
if sys.argv[2] == "die":
    os._exit(0)
sys.stdin.readline()
lock.release()
print("released", flush=True)
"""


def _env(**slurm: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return dict(env, PYTHONPATH=str(ROOT), **slurm)


def holder(run_dir: Path, mode: str = "hold", **slurm: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(**slurm))
    line = proc.stdout.readline()
    assert line.startswith("locked"), (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


def release(proc: subprocess.Popen) -> None:
    out, err = proc.communicate("\n", timeout=60)
    assert proc.returncode == 0 and "released" in out, err


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    return int(proc.stdout)


def write_lock(run_dir: Path, **fields) -> dict:
    """A lock record as another job would have left it."""
    record = {"host": HOST, "pid": dead_pid(), "job_id": "", "restart_count": "",
              "started": "2026-01-02T03:04:05+00:00", "command": "hpcsgd train other.toml",
              "proc_start": "", "boot_id": L._boot_id(), "token": uuid.uuid4().hex, **fields}
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "lock.tmp"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, run_dir / L.LOCK_FILE)
    return record


def read_lock(run_dir: Path) -> dict:
    return json.loads((run_dir / L.LOCK_FILE).read_text())


@pytest.fixture(autouse=True)
def no_slurm(monkeypatch):
    for var in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(var, raising=False)


# ------------------------------------------------------------------------ basics
def test_lock_file_names_its_owner_and_release_removes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    run_dir = tmp_path / "new" / "run"  # created by the lock
    with L.RunLock(run_dir) as lock:
        assert lock.held
        rec = read_lock(run_dir)
        assert rec["host"] == HOST and rec["pid"] == os.getpid()
        assert rec["job_id"] == "123" and rec["restart_count"] == "2"
        assert abs(datetime.fromisoformat(rec["started"]).timestamp() - time.time()) < 3600
        assert rec["command"] == " ".join(sys.argv) or "pytest" in rec["command"]
        assert rec["token"] == lock.owner["token"]
        if Path("/proc/self/stat").exists():
            assert rec["proc_start"] == L._proc_start(os.getpid()) != ""
        # nothing but the lock is left in the run directory
        assert sorted(p.name for p in run_dir.iterdir()) == [L.LOCK_FILE]
    assert not lock.held and list(run_dir.iterdir()) == []
    lock.release()  # a second release is harmless
    lock.acquire()  # and the lock can be taken again
    lock.acquire()  # re-entrant for its holder
    assert read_lock(run_dir)["token"] == lock.owner["token"]
    lock.release()
    assert not (run_dir / L.LOCK_FILE).exists()


def test_a_second_job_is_refused_while_the_owner_runs(tmp_path):
    run_dir = tmp_path / "run"
    owner = holder(run_dir)
    try:
        before = (run_dir / L.LOCK_FILE).read_bytes()
        with pytest.raises(UserError) as exc:
            L.RunLock(run_dir).acquire()
        msg = str(exc.value)
        assert "\n" not in msg
        assert msg.startswith(f"run.out {run_dir} is in use by another job (host {HOST}, pid {owner.pid}, since ")
        assert f"if that job is no longer running, remove {run_dir / L.LOCK_FILE}" in msg
        assert (run_dir / L.LOCK_FILE).read_bytes() == before
    finally:
        release(owner)
    assert not (run_dir / L.LOCK_FILE).exists()
    with L.RunLock(run_dir):
        pass


def test_the_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path, capsys):
    run_dir = tmp_path / "run"
    proc = holder(run_dir, "die")
    proc.wait(timeout=60)
    stale = read_lock(run_dir)
    assert stale["pid"] == proc.pid
    with L.RunLock(run_dir) as lock:
        assert read_lock(run_dir)["token"] == lock.owner["token"] != stale["token"]
    err = capsys.readouterr().err
    assert err == (f"hpcsgd: warning: took over the lock of run.out {run_dir} from host {HOST}, "
                   f"pid {proc.pid}, since {stale['started']}: process {proc.pid} is no longer running\n")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_an_exited_but_unreaped_owner_counts_as_dead(tmp_path, capsys):
    run_dir = tmp_path / "run"
    proc = holder(run_dir, "die")
    for _ in range(2000):  # the owner has exited; nobody has waited for it yet
        if L._proc_state(proc.pid) == "Z":
            break
        time.sleep(0.005)
    assert L._proc_state(proc.pid) == "Z"
    with L.RunLock(run_dir):
        assert f"process {proc.pid} is no longer running" in capsys.readouterr().err
    proc.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_pid_reused_by_another_process_is_taken_over(tmp_path, capsys):
    run_dir = tmp_path / "run"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # the record's process started at another time than the one now holding the pid
        write_lock(run_dir, pid=other.pid, proc_start="1")
        with L.RunLock(run_dir):
            assert f"pid {other.pid} now belongs to another process" in capsys.readouterr().err
        # with the right start time it is that process, alive: refused
        write_lock(run_dir, pid=other.pid, proc_start=L._proc_start(other.pid))
        with pytest.raises(UserError, match=f"in use by another job .host {HOST}, pid {other.pid},"):
            L.RunLock(run_dir).acquire()
        # a record from before this host's last boot names no process of this boot
        write_lock(run_dir, pid=other.pid, proc_start=L._proc_start(other.pid), boot_id="another-boot")
        if L._boot_id():
            with L.RunLock(run_dir):
                assert "rebooted" in capsys.readouterr().err
    finally:
        other.kill()
        other.wait()


def test_a_lock_from_another_host_is_never_taken_over(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    rec = write_lock(run_dir, host="node-elsewhere-17", job_id="999", started="2026-03-04T05:06:07+00:00")
    before = (run_dir / L.LOCK_FILE).read_bytes()
    for job in (None, "1000"):  # outside Slurm, and in another Slurm job
        if job:
            monkeypatch.setenv("SLURM_JOB_ID", job)
        with pytest.raises(UserError) as exc:
            L.RunLock(run_dir).acquire()
        assert (f"is in use by another job (host node-elsewhere-17, pid {rec['pid']}, Slurm job 999, "
                f"since 2026-03-04T05:06:07+00:00; command 'hpcsgd train other.toml'); if that job is no "
                f"longer running, remove {run_dir / L.LOCK_FILE}") in str(exc.value)
        assert (run_dir / L.LOCK_FILE).read_bytes() == before


def test_a_slurm_requeue_of_the_same_job_takes_the_lock_over(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    # the first run of the job, on another node (it cannot be checked from here)
    write_lock(run_dir, host="node-elsewhere-17", job_id="4242")
    with L.RunLock(run_dir):
        assert "Slurm requeue of job 4242 (restart 1)" in capsys.readouterr().err
    # the same restart count on another node: still this job's lock, taken over
    write_lock(run_dir, host="node-elsewhere-17", job_id="4242", restart_count="1")
    with L.RunLock(run_dir):
        assert "Slurm requeue of job 4242" in capsys.readouterr().err


def test_same_slurm_job_on_this_host(tmp_path, monkeypatch, capsys):
    """A requeue (another restart count) takes over even from a process that still
    lingers; a live process of the same job incarnation is a concurrent step: refused."""
    run_dir = tmp_path / "run"
    first = holder(run_dir, SLURM_JOB_ID="77")
    try:
        monkeypatch.setenv("SLURM_JOB_ID", "77")
        with pytest.raises(UserError, match=f"pid {first.pid}, Slurm job 77, since"):
            L.RunLock(run_dir).acquire()
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
        with L.RunLock(run_dir) as lock:
            assert "Slurm requeue of job 77 (restart 1)" in capsys.readouterr().err
            release(first)  # the old incarnation's release leaves the new lock alone
            assert read_lock(run_dir)["token"] == lock.owner["token"]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def test_release_removes_the_file_only_if_it_is_still_ours(tmp_path):
    run_dir = tmp_path / "run"
    lock = L.RunLock(run_dir)
    lock.acquire()
    other = write_lock(run_dir, host="node-elsewhere-17")  # taken over meanwhile
    lock.release()
    assert read_lock(run_dir) == other
    (run_dir / L.LOCK_FILE).unlink()
    lock.acquire()
    (run_dir / L.LOCK_FILE).unlink()  # removed by hand: release does not fail
    lock.release()
    assert not lock.held


def test_an_unreadable_lock_or_an_unfinished_takeover_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / L.LOCK_FILE).write_text("not json")
    with pytest.raises(UserError, match=f"lock file {run_dir / L.LOCK_FILE} that cannot be read .*remove"):
        L.RunLock(run_dir).acquire()
    stale = write_lock(run_dir)
    claim = run_dir / f".LOCK.claim-{stale['token']}"
    claim.write_text("{}")  # a contender killed in the middle of its takeover
    with pytest.raises(UserError, match=f"takeover of its stale lock .* was left unfinished .*remove {run_dir}"):
        L.RunLock(run_dir, claim_wait=0.2).acquire()
    assert read_lock(run_dir) == stale


def test_without_hard_links_the_lock_uses_exclusive_create(tmp_path, monkeypatch):
    def no_link(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    run_dir = tmp_path / "run"
    with L.RunLock(run_dir) as lock:
        assert read_lock(run_dir)["token"] == lock.owner["token"]
        with pytest.raises(UserError, match=f"pid {os.getpid()},"):
            L.RunLock(run_dir).acquire()
    assert not (run_dir / L.LOCK_FILE).exists()


def test_a_link_reported_failed_after_it_succeeded_is_ours(tmp_path, monkeypatch):
    """NFS: a retransmitted link() whose first attempt went through returns EEXIST."""
    real = os.link

    def lost_reply(src, dst):
        real(src, dst)
        raise FileExistsError(errno.EEXIST, "File exists")

    monkeypatch.setattr(os, "link", lost_reply)
    run_dir = tmp_path / "run"
    with L.RunLock(run_dir) as lock:
        assert read_lock(run_dir)["token"] == lock.owner["token"]


# ---------------------------------------------------------------------- the race
RACER = """
import os, sys, time
from pathlib import Path
from hpcsgd import lock as L
from hpcsgd.errors import UserError
run_dir, rounds, widen = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
if widen:
    # both contenders read the stale record before either can replace it
    real_read = L._read_owner
    def slow_read(path):
        owner = real_read(path)
        time.sleep(0.01)
        return owner
    L._read_owner = slow_read
for r in range(rounds):
    go = run_dir.parent / f"go-{r}"
    while not go.exists():
        time.sleep(0.0002)
    try:
        L.RunLock(run_dir).acquire()
        print(r, "won", flush=True)
    except UserError as exc:
        print(r, "lost", exc, flush=True)
    (run_dir.parent / f"done-{r}-{os.getpid()}").touch()
while not (run_dir.parent / "quit").exists():  # a winner that exited would leave a stale lock
    time.sleep(0.001)
"""


@pytest.mark.parametrize("widen", [False, True], ids=["plain", "both-read-the-stale-lock-first"])
def test_two_contenders_for_a_stale_lock_exactly_one_wins(tmp_path, widen):
    run_dir = tmp_path / "run"
    rounds = 12
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(run_dir), str(rounds), "1" if widen else "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
              for _ in range(2)]
    dead = dead_pid()
    try:
        for r in range(rounds):
            write_lock(run_dir, pid=dead)
            (tmp_path / f"go-{r}").touch()
            end = time.monotonic() + 60
            while len(list(tmp_path.glob(f"done-{r}-*"))) < 2:
                assert time.monotonic() < end and all(p.poll() in (None, 0) for p in racers), "a racer failed"
                time.sleep(0.002)
            assert not list(run_dir.glob(".LOCK.claim-*"))
        winner_record = read_lock(run_dir)
        (tmp_path / "quit").touch()
        outs = [p.communicate(timeout=60) for p in racers]
    finally:
        for p in racers:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = {}
    for proc, (out, err) in zip(racers, outs):
        assert proc.returncode == 0, err
        for line in out.splitlines():
            r, verdict, *rest = line.split(" ", 2)
            results.setdefault(int(r), []).append((proc.pid, verdict, rest[0] if rest else ""))
    for r in range(rounds):
        verdicts = sorted(v for _, v, _ in results[r])
        assert verdicts == ["lost", "won"], (r, results[r])
        winner = next(pid for pid, v, _ in results[r] if v == "won")
        loss = next(msg for _, v, msg in results[r] if v == "lost")
        # the loser names the winner, a live process, as the owner
        assert f"is in use by another job (host {HOST}, pid {winner}," in loss, loss
    assert winner_record["pid"] == winner
