"""One job per run directory: an exclusive lock held for the job's life.

The lock is the file ``LOCK`` in the run directory, holding JSON that names its owner
(host, pid, Slurm job id and restart count, start time, command).  It works across
nodes on a shared file system because it relies only on operations that are atomic
there, including NFS: the owner's JSON is written to a private temporary file and
hard-linked to ``LOCK`` (``link`` fails if the name exists; a lost NFS reply is told
apart by the link count), and never on ``fcntl``/``flock`` locks, which many cluster
file systems do not share between nodes.  Where hard links are not supported the
lock falls back to ``O_CREAT | O_EXCL``.

A lock is taken over only when its owner is certainly gone:

* the owner ran on this host and its process no longer exists, or the pid now
  belongs to another process (a different start time in ``/proc/PID/stat``, or a
  different boot);
* it is a Slurm requeue of the same job (same ``SLURM_JOB_ID``, whatever the restart
  count), unless the owner is a live process on this host with the same restart count
  (then it is another step of the same job, running now).

A lock held from another host is never taken over automatically: this host cannot see
whether that process still runs.  The refusal names the owner and says how to clear a
stale lock (remove the file).

Race-free transitions: every lock carries a random ``token``, and whoever replaces or
removes the lock holding token T must first create ``.LOCK.claim-T`` exclusively.  So
of two contenders taking over the same stale lock exactly one wins, and a release
never removes a lock that has just been taken over.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import socket
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from hpcsgd.errors import UserError

LOCK_FILE = "LOCK"
# How long a contender waits for another one's takeover claim to finish (a claim is
# held for a few file operations; one older than this was left by a killed process).
CLAIM_WAIT_SECONDS = 10.0
_POLL_SECONDS = 0.05
# link() unsupported by the file system: fall back to O_CREAT | O_EXCL.
_NO_LINK = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV, errno.EMLINK}


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot, or None (no /proc, no process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[0] if fields else None


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OSError:
        return False
    return _proc_state(pid) not in ("Z", "X")  # a zombie has exited


def owner_record() -> dict:
    """What the lock file says about the process taking it."""
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "job_id": os.environ.get("SLURM_JOB_ID", ""),
        "restart_count": os.environ.get("SLURM_RESTART_COUNT", ""),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(sys.argv),
        "proc_start": _proc_start(pid) or "",
        "boot_id": _boot_id(),
        "token": uuid.uuid4().hex,
    }


def describe(owner: dict) -> str:
    job = f", Slurm job {owner['job_id']}" if owner.get("job_id") else ""
    restart = (f" (restart {owner['restart_count']})"
               if owner.get("job_id") and owner.get("restart_count") not in ("", None) else "")
    return (f"host {owner.get('host', '?')}, pid {owner.get('pid', '?')}{job}{restart}, "
            f"since {owner.get('started', '?')}")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_exclusive(name: Path, source: Path, data: bytes) -> bool:
    """Create ``name`` holding ``data`` only if it does not exist; True if we did.

    ``source`` is a private file already holding ``data``: linking it makes ``name``
    appear complete in one step."""
    try:
        os.link(source, name)
        return True
    except FileExistsError:
        pass
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return True
    # NFS: a retransmitted link whose first attempt succeeded reports EEXIST
    try:
        return os.stat(source).st_nlink >= 2 and os.path.samefile(source, name)
    except OSError:
        return False


def _read_owner(path: Path) -> dict | None:
    """The lock's JSON, None if the file is gone; ValueError if it cannot be read."""
    # With the O_EXCL fallback a lock is briefly empty while its owner writes it.
    for _ in range(10):
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(str(exc)) from None
        try:
            owner = json.loads(text)
        except ValueError:
            owner = None
        if isinstance(owner, dict) and isinstance(owner.get("token"), str):
            return owner
        time.sleep(_POLL_SECONDS)
    raise ValueError("it does not hold an hpcsgd lock record")


class RunLock:
    """Exclusive lock on a run directory for a job's life (see the module docstring).

    ``with RunLock(run_dir): ...`` or ``lock.acquire()`` ... ``lock.release()``.
    ``acquire`` raises :class:`UserError` naming the owner when another job holds the
    directory, and warns on stderr when it takes over a stale lock."""

    def __init__(self, run_dir: Path, claim_wait: float = CLAIM_WAIT_SECONDS):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.claim_wait = claim_wait
        self.owner: dict | None = None  # our record while we hold the lock

    # ------------------------------------------------------------------ public
    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self.owner is not None

    def acquire(self) -> None:
        if self.owner is not None:
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"run.out {self.run_dir}: cannot create ({exc.strerror})") from None
        mine = owner_record()
        data = (json.dumps(mine, indent=1) + "\n").encode()
        private = self.run_dir / f".{LOCK_FILE}.{mine['token']}.tmp"
        try:
            _write_private(private, data)
        except OSError as exc:
            raise UserError(f"run.out {self.run_dir} is not writable ({exc.strerror}): its lock file "
                            f"cannot be created") from None
        try:
            self._acquire(private, data, mine)
        except OSError as exc:
            raise UserError(f"run.out {self.run_dir}: cannot take its lock {self.path} "
                            f"({exc.strerror or exc})") from None
        finally:
            _remove(private)
        self.owner = mine

    def release(self) -> None:
        """Remove the lock file if it is still ours (not taken over meanwhile)."""
        mine, self.owner = self.owner, None
        if mine is None:
            return
        claim = self._claim_path(mine["token"])
        private = self.run_dir / f".{LOCK_FILE}.{mine['token']}.release.tmp"
        data = json.dumps(owner_record()).encode()
        try:
            _write_private(private, data)
            if not _create_exclusive(claim, private, data):
                return  # someone is taking the lock over: it is no longer ours to remove
            try:
                current = _read_owner(self.path)
                if current is not None and current.get("token") == mine["token"]:
                    self.path.unlink()
            finally:
                _remove(claim)
        except (OSError, ValueError) as exc:
            print(f"hpcsgd: warning: could not release the lock {self.path} ({exc})", file=sys.stderr, flush=True)
        finally:
            _remove(private)

    # ------------------------------------------------------------------ internals
    def _claim_path(self, token: str) -> Path:
        return self.run_dir / f".{LOCK_FILE}.claim-{token}"

    def _acquire(self, private: Path, data: bytes, mine: dict) -> None:
        waiting_since = None
        while True:
            if _create_exclusive(self.path, private, data):
                return
            try:
                owner = _read_owner(self.path)
            except ValueError as exc:
                raise UserError(f"run.out {self.run_dir} has a lock file {self.path} that cannot be read "
                                f"({exc}); if no job runs on this directory, remove {self.path}") from None
            if owner is None:
                continue  # released meanwhile: try again
            why = self._stale_reason(owner, mine)
            if why is None:
                raise UserError(
                    f"run.out {self.run_dir} is in use by another job ({describe(owner)}; command "
                    f"{owner.get('command', '?')!r}); if that job is no longer running, remove {self.path}")
            claim = self._claim_path(owner["token"])
            if not _create_exclusive(claim, private, data):
                # another contender is taking over the same stale lock: wait for it
                waiting_since = waiting_since or time.monotonic()
                if time.monotonic() - waiting_since > self.claim_wait:
                    raise UserError(
                        f"run.out {self.run_dir}: a takeover of its stale lock ({describe(owner)}) was "
                        f"left unfinished ({claim} is {self.claim_wait:g} s old); if no job runs on this "
                        f"directory, remove {self.path} and {claim}")
                time.sleep(_POLL_SECONDS)
                continue
            try:
                # Holding the claim on this token, nobody else may move the lock away from
                # it; check it still holds that token, then replace it in one step.
                current = _read_owner(self.path)
                if current is not None and current.get("token") == owner["token"]:
                    tmp = self.run_dir / f".{LOCK_FILE}.{mine['token']}.new.tmp"
                    _write_private(tmp, data)
                    os.replace(tmp, self.path)
                    print(f"hpcsgd: warning: took over the lock of run.out {self.run_dir} from "
                          f"{describe(owner)}: {why}", file=sys.stderr, flush=True)
                    return
            except ValueError:
                pass  # replaced by something unreadable: look again
            finally:
                _remove(claim)

    @staticmethod
    def _stale_reason(owner: dict, mine: dict) -> str | None:
        """Why ``owner``'s lock may be taken over, or None if it may still be in use."""
        same_host = owner.get("host") == mine["host"]
        pid = owner.get("pid")
        alive = None  # unknown (another host)
        if same_host and isinstance(pid, int) and not isinstance(pid, bool):
            if owner.get("boot_id") and mine["boot_id"] and owner["boot_id"] != mine["boot_id"]:
                alive, gone = False, f"this host has rebooted since (pid {pid} is from before)"
            elif not _pid_alive(pid):
                alive, gone = False, f"process {pid} is no longer running"
            elif owner.get("proc_start") and _proc_start(pid) not in (None, owner["proc_start"]):
                alive, gone = False, f"pid {pid} now belongs to another process"
            else:
                alive = True
        job = mine["job_id"]
        if job and owner.get("job_id") == job:
            concurrent_step = alive and str(owner.get("restart_count", "")) == mine["restart_count"]
            if not concurrent_step:
                return f"Slurm requeue of job {job} (restart {mine['restart_count'] or 0})"
        if alive is False:
            return gone
        return None


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        pass  # a leftover hidden temporary file is harmless
