"""The configuration-space sweep: every configuration either runs to its end with finite
outputs and a loadable checkpoint, or is refused at start with exit status 2 and a
message naming the keys involved -- never a hang, never a traceback.

A point is a list of ``--set`` overrides on top of ``BASE`` (small data, at most 30
updates).  Two sets of points:

- ``full_product()``: method x order x straggler model (without and with its
  parameters) x partition x clock, 8 x 5 x 16 x 6 x 2 = 7,680 points (``scripts/sweep``
  runs them at 3 and 5 ranks);
- ``covering_set()``: the subset CI runs (tests/test_sweep.py): every pair of (method,
  order, clock, stragglers on/off) and every value of every enumerated key of the
  configuration (``config.SCHEMA``'s choices and booleans), each where it is read.

``run_point`` runs one point in-process on every rank and returns its outcome on rank 0.
A point that raises anything but a UserError, or outlives its time limit, leaves the
ranks out of step: ``python -m hpcsgd.sweep`` (under mpiexec) logs it and aborts the
job, and ``scripts/sweep`` starts a new job after it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import shutil
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np

from hpcsgd import comm as C
from hpcsgd.config import SCHEMA
from hpcsgd.errors import UserError
from hpcsgd.methods import registry

METHODS = SCHEMA["method"]["kind"].choices
ORDERS = SCHEMA["order"]["kind"].choices
CLOCKS = SCHEMA["run"]["clock"].choices
DELAYS = SCHEMA["stragglers"]["model"].choices
PARTITIONS = SCHEMA["data"]["partition"].choices

BASE = ("data.source='breast_cancer'", "model.kind='logistic'", "method.lr=0.05", "order.batch=8",
        "run.epochs=0", "run.max_updates=30", "run.checkpoint_every=10", "run.eval_every=10",
        "run.progress_every=0", "run.worker_timeout=60", "run.stop_timeout=20")
# Sub-millisecond delays: the wall clock really sleeps them.
DELAY_PARAMETERS = ("stragglers.comm_mean=0.0005", "stragglers.compute_mean=0.00002")
MODEL_PARAMETERS = {"gamma": ("stragglers.shape=3.0",), "shifted_exp": ("stragglers.shift=0.3",),
                    "normal": ("stragglers.cv=0.5",)}
BOUND = ("method.bound_c=0.1", "method.bound_L=2.0", "method.bound_sigma2=1.0", "method.bound_gap0=1.0")
KEY_NAMED = re.compile(r"\b(" + "|".join(SCHEMA) + r")\.[a-z_0-9]+|--[a-z-]+")
POINT_SECONDS = 60.0


def stragglers(model: str, parameters: bool) -> list[str]:
    out = [f"stragglers.model='{model}'"]
    if parameters:
        out += [*DELAY_PARAMETERS, *MODEL_PARAMETERS.get(model, ())]
    return out


def point(method: str, order: str, delay: str, parameters: bool, partition: str, clock: str,
          *more: str) -> list[str]:
    return [f"method.kind='{method}'", f"order.kind='{order}'", *stragglers(delay, parameters),
            f"data.partition='{partition}'", f"run.clock='{clock}'", *more]


def full_product() -> list[list[str]]:
    return [point(m, o, s, p, part, c) for m, o, s, p, part, c in
            itertools.product(METHODS, ORDERS, DELAYS, (False, True), PARTITIONS, CLOCKS)]


def covering_set() -> list[list[str]]:
    """Every (method, order) pair once; clock and stragglers on/off chosen greedily so
    that every pair among (method, order, clock, stragglers) appears; then every value of
    every other enumerated key, cycled over the points that read it."""
    factors = ("method", "order", "clock", "delays")
    covered: set = set()
    rows = []
    for m, o in itertools.product(METHODS, ORDERS):
        def gain(c, s):
            values = dict(method=m, order=o, clock=c, delays=s)
            return sum((a, values[a], b, values[b]) not in covered
                       for a, b in itertools.combinations(factors, 2))
        c, s = max(itertools.product(CLOCKS, (False, True)), key=lambda cs: gain(*cs))
        values = dict(method=m, order=o, clock=c, delays=s)
        covered.update((a, values[a], b, values[b]) for a, b in itertools.combinations(factors, 2))
        rows.append(values)

    def cycle(key: str, options, where):
        chosen = [r for r in rows if where(r)]
        for r, value in zip(chosen, itertools.cycle(options)):
            r.setdefault("more", []).extend(value if isinstance(value, (list, tuple)) else [value])
        return chosen

    on = [r for r in rows if r["delays"]]
    for r, model in zip(on, itertools.cycle(DELAYS[1:])):
        r["model"] = model
    for r in rows:
        r.setdefault("model", "none")
        # a method that needs settings to run at all (MethodSpec.requires) gets them,
        # except on one point, where its refusal is exercised
        needs = registry.spec(r["method"]).requires
        r["partition"] = None
        if needs and r["order"] == ORDERS[1]:
            r["partition"] = PARTITIONS[0]
        elif needs:
            r.setdefault("more", []).extend(s for s in needs if not s.startswith("data.partition="))
            r["partition"] = next((s.split("=", 1)[1].strip("'") for s in needs
                                   if s.startswith("data.partition=")), None)
    free = [r for r in rows if r["partition"] is None]
    for r, part in zip(free, itertools.cycle(PARTITIONS)):
        r["partition"] = part
    for table, name in enumerated_keys():
        if (table, name) in SEEN_ELSEWHERE:
            continue
        key = SCHEMA[table][name]
        values = key.choices if key.choices else (True, False)
        extra = EXTRA.get((table, name), {})
        cycle(f"{table}.{name}", [[f"{table}.{name}={_literal(v)}", *extra.get(v, ())] for v in values],
              reader(table, name))
    return [point(r["method"], r["order"], r["model"], r["delays"], r["partition"],
                  "wall" if r["clock"] == "wall" else "simulated", *r.get("more", [])) for r in rows]


def enumerated_keys() -> list[tuple[str, str]]:
    return [(t, k) for t, keys in SCHEMA.items() for k, key in keys.items()
            if key.choices or key.type is bool]


def _literal(value) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else f"'{value}'"


# Enumerated keys that the covering set's own factors already vary.
SEEN_ELSEWHERE = {("method", "kind"), ("order", "kind"), ("run", "clock"), ("stragglers", "model"),
                  ("data", "partition")}
def reader(table: str, name: str):
    """Which points read a key, so that each of its values is exercised (not merely
    warned about): a method key by the methods that list it (the registry)."""
    if table == "method":
        kinds = set(registry.readers(name))
        return lambda r: r["method"] in kinds
    if (table, name) == ("stragglers", "speeds"):
        return lambda r: r["delays"]
    return lambda r: True
EXTRA = {("method", "switch"): {"bound": BOUND}}


# ---------------------------------------------------------------------------- running

def run_point(comm, index: int, overrides: list[str], base: Path) -> dict | None:
    """Run one point on every rank of ``comm``; rank 0 returns its outcome:
    ``{"outcome": "ok" | "refused" | "diverged" | "failed", "message": ...}``.
    Anything but a UserError propagates (the caller cannot go on in-process)."""
    from hpcsgd import run
    config = base / "sweep.toml"
    out = base / "runs" / f"p{index:05d}"
    settings = [f"data.dir='{base}'", f"run.out='{out}'", *BASE, *overrides]
    started = time.monotonic()
    try:
        status, message = run.train(comm, str(config), settings, quiet=True), ""
    except UserError as exc:
        status, message = exc.exit_code, str(exc)
    if comm.Get_rank() != 0:
        return None
    result = {"point": index, "settings": overrides, "status": status, "seconds": time.monotonic() - started}
    result.update(judge(status, message, out))
    shutil.rmtree(out, ignore_errors=True)  # thousands of points: keep only the verdicts
    return result


def judge(status: int, message: str, out: Path) -> dict:
    """What a point's ending means: a refusal must name a key and leave no checkpoint; a
    finished run must leave a loadable checkpoint with finite parameters and losses."""
    if status == 2:
        if not KEY_NAMED.search(message):
            return {"outcome": "failed", "message": f"refusal names no key: {message}"}
        if out.is_dir() and any(out.glob("ckpt-*.h5")):
            return {"outcome": "failed", "message": f"refused after writing a checkpoint: {message}"}
        return {"outcome": "refused", "message": message}
    if status == 3:
        return {"outcome": "diverged", "message": "exit 3 (training diverged)"}
    if status != 0:
        return {"outcome": "failed", "message": f"exit status {status}"}
    from hpcsgd.checkpoint import load_checkpoint
    from hpcsgd.run import check_loadable
    try:
        _, tree = load_checkpoint(out, check=check_loadable)
    except (UserError, ValueError) as exc:
        return {"outcome": "failed", "message": f"checkpoint does not load: {exc}"}
    params, loss = tree["model"]["params"], tree["eval"]["train_loss"]
    if not (np.isfinite(params).all() and loss.size and np.isfinite(loss).all()):
        return {"outcome": "failed", "message": "non-finite parameters or training loss"}
    if tree["trace"]["update"].size == 0:
        return {"outcome": "failed", "message": "no update was made"}
    return {"outcome": "ok", "message": ""}


def points(name: str) -> list[list[str]]:
    return {"full": full_product, "covering": covering_set}[name]()


def main(argv: list[str] | None = None) -> int:
    """``mpiexec -n R python -m hpcsgd.sweep full|covering BASE LOG [--start I]``: run the
    points from I on, one JSON line per point appended to LOG by rank 0; on a point that
    cannot be recovered in-process, log it and abort the job (exit 1)."""
    p = argparse.ArgumentParser(prog="python -m hpcsgd.sweep")
    p.add_argument("set", choices=("full", "covering"))
    p.add_argument("base", type=Path, help="directory holding breast_cancer.h5; runs go to BASE/runs")
    p.add_argument("log", type=Path)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--stop", type=int, default=None)
    args = p.parse_args(argv)
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    todo = points(args.set)[args.start:args.stop]
    current = {"index": -1, "since": math.inf}

    def log(entry: dict) -> None:
        with open(args.log, "a") as f:
            f.write(json.dumps({**entry, "ranks": comm.Get_size()}) + "\n")

    def watchdog() -> None:
        while True:
            time.sleep(1.0)
            if time.monotonic() - current["since"] > POINT_SECONDS:
                log({"point": current["index"], "outcome": "failed",
                     "message": f"hang: no end after {POINT_SECONDS:g} s"})
                C.abort(comm, f"sweep: point {current['index']} hangs; aborting", 1)

    if rank == 0:
        (args.base / "sweep.toml").write_text("# the sweep's points set every key they need with --set\n")
        threading.Thread(target=watchdog, daemon=True).start()
    comm.Barrier()
    for offset, overrides in enumerate(todo):
        index = args.start + offset
        current.update(index=index, since=time.monotonic())
        try:
            result = run_point(comm, index, overrides, args.base)
        except BaseException as exc:  # noqa: BLE001 - every other ending is the finding
            detail = "".join(traceback.format_exception(exc))[-2000:]
            entry = {"point": index, "settings": overrides, "outcome": "failed", "rank": rank,
                     "message": f"traceback on rank {rank}: {type(exc).__name__}: {exc}", "traceback": detail}
            log(entry)
            C.abort(comm, f"sweep: point {index} raised on rank {rank}; aborting\n{detail}", 1)
        current["since"] = math.inf
        if rank == 0:
            log(result)
        comm.Barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
