"""Many short training runs inside one MPI job (used by the experiment scripts).

Start-up (interpreter, imports, Numba cache, MPI) costs seconds per `mpiexec`, more than
a small run itself; so an experiment writes a plan (a JSON list of {"out", "config",
"settings"}) and `launch` starts one `mpiexec` whose ranks all call `driver`, which runs
every planned run in order through `hpcsgd.run.train` — the engine exactly as the CLI
runs it.  A run whose directory holds a `done` file is skipped, so an interrupted grid
resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv" / "bin"
PY = VENV / "python"


def use_venv(script: str) -> None:
    """Re-run ``script`` with the project's .venv interpreter unless already in it (an
    experiment started as ``scripts/experiments/NAME`` from any shell)."""
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve() and PY.exists() \
            and "HPCSGD_EXPERIMENT_REEXEC" not in os.environ:
        os.environ["HPCSGD_EXPERIMENT_REEXEC"] = "1"
        os.execv(str(PY), [str(PY), script, *sys.argv[1:]])


def driver(plan_path: str) -> int:
    """On every rank: run each planned run in this MPI world, in order."""
    from mpi4py import MPI
    from hpcsgd import run
    from hpcsgd.comm import bcast_text
    comm = MPI.COMM_WORLD
    for item in json.loads(Path(plan_path).read_text()):
        out = Path(item["out"])
        # rank 0 decides, so that every rank skips or runs together
        done = bcast_text(comm, "1" if comm.Get_rank() > 0 or (out / "done").exists() else "")
        if done:
            continue
        status = run.train(comm, item["config"], item["settings"], quiet=True)
        if comm.Get_rank() == 0:
            (out / "done").write_text(str(status))
    return 0


def launch(script: str, plan: list[dict], tag: str, runs: Path, ranks: int) -> None:
    """Run the plan's unfinished runs in one `mpiexec -n ranks` job of ``script --driver``."""
    todo = [p for p in plan if not (Path(p["out"]) / "done").exists()]
    if not todo:
        return
    for p in todo:
        if Path(p["out"]).exists():
            shutil.rmtree(p["out"])  # an interrupted run starts again
    path = runs / f"plan-{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(todo))
    cmd = [str(VENV / "mpiexec"), "-n", str(ranks), str(VENV / "python"), "-m", "mpi4py", script,
           "--driver", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    print(f"[{Path(script).name}] {tag}: {len(todo)} runs", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], flush=True)
        raise SystemExit(f"[{Path(script).name}] {tag}: mpiexec exited {proc.returncode}")
