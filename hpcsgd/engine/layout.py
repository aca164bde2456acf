"""The checkpoint's layout (SPEC section 5), in one place: the tree the engine writes,
assembled from its parts' state dicts and every worker's, and taken apart again on
resume.  hpcsgd.checkpoint writes and validates such trees; hpcsgd.run checks that one
loads (``check_loadable``) with the same functions.

    /model/params                      ParameterState
    /state/optimizer/momentum          ParameterState
    /state/method/...                  the method's state_dict
    /state/engine/...                  version, contributions, pending jobs, busy/wait
                                       seconds + Clock + Scheduler (mirror_*, inflight)
                                       + Recorder row counters
    /state/workers/worker_j/...        worker j's ordering state (without its stream)
    /rng/master/method, /rng/worker_j/{order,delay}
    /order/perm, pos, epochs_started, history
    /trace/..., /eval/...              Recorder
"""

from __future__ import annotations

import numpy as np

from hpcsgd import __version__
from hpcsgd.config import to_json
from hpcsgd.engine.interface import Assignment
from hpcsgd.streams import set_stream_state, stream_state

# What /state/engine and /rng hold, for hpcsgd.checkpoint's validation of a file's layout.
ENGINE_INTS = ("version", "seq", "arrivals", "row_samples", "row_messages")
ENGINE_NUMBERS = ("sim_now", "wall_time", "row_compute", "busy_seconds", "wait_seconds")
INFLIGHT_ARRAYS = ("jobs", "times", "results")
MASTER_STREAMS = ("method",)           # JSON bit-generator states a resume restores
WORKER_STREAMS = ("order", "delay")


# ---------------------------------------------------------------------------- a worker's part

def worker_state(cursor, delay_rng, rank: int) -> dict:
    """What a worker sends for a checkpoint: its order, its two streams and its
    ordering's state without the order stream (that one is kept under /rng)."""
    cur = cursor.state_dict()
    ordering = dict(cur["ordering"])
    order_rng = ordering.pop(f"rng_{rank}")
    order = {"perm": cur["perm"], "pos": cur["pos"], "epochs_started": cur["epochs_started"]}
    if "history" in cur:
        order["history"] = cur["history"]
    return {"rng": {"order": order_rng, "delay": stream_state(delay_rng)}, "order": order, "ordering": ordering}


def load_worker_state(cursor, delay_rng, rank: int, state: dict) -> None:
    """Put a worker's saved state (``worker_state``) into its cursor and delay stream."""
    ordering = dict(state["ordering"])
    ordering[f"rng_{rank}"] = state["rng"]["order"]
    cur = dict(state["order"])
    cur["ordering"] = ordering
    cursor.load_state_dict(cur)
    set_stream_state(delay_rng, state["rng"]["delay"])


def worker_states(tree: dict, sizes: list[int]) -> dict[int, dict]:
    """Each worker's ``worker_state`` out of a checkpoint tree, for these shard sizes."""
    order = tree["order"]
    states = {}
    for j, n in enumerate(sizes, start=1):
        st = {"rng": tree["rng"][f"worker_{j}"], "ordering": tree["state"]["workers"][f"worker_{j}"],
              "order": {"perm": order["perm"][j - 1][order["perm"][j - 1] >= 0][:n].copy(),
                        "pos": int(order["pos"][j - 1]),
                        "epochs_started": int(order["epochs_started"][j - 1])}}
        if "history" in order:
            h = order["history"][:, j - 1, :n]
            st["order"]["history"] = h[(h >= 0).all(axis=1)].copy()
        states[j] = st
    return states


def shard_sizes(tree: dict) -> list[int]:
    """The workers' shard sizes a checkpoint was written for."""
    eng = tree["state"]["engine"]
    if "mirror_sizes" in eng:
        return [int(n) for n in eng["mirror_sizes"]]
    # written before shard sizes were kept: what the stored orders show
    return [int(np.count_nonzero(row >= 0)) for row in tree["order"]["perm"]]


def _orders(worker_trees: dict[int, dict], sizes: list[int]) -> tuple[dict, dict, dict]:
    """/order, /rng/worker_j and /state/workers from every worker's state."""
    M, nmax = len(sizes), max(sizes)
    perm = np.full((M, nmax), -1, dtype=np.int64)
    order = {"perm": perm, "pos": np.zeros(M, dtype=np.int64), "epochs_started": np.zeros(M, dtype=np.int64)}
    rng, workers, histories = {}, {}, {}
    for j, st in worker_trees.items():
        p = st["order"]["perm"]
        perm[j - 1, :p.size] = p
        order["pos"][j - 1] = st["order"]["pos"]
        order["epochs_started"][j - 1] = st["order"]["epochs_started"]
        if "history" in st["order"]:
            histories[j] = st["order"]["history"]
        rng[f"worker_{j}"] = st["rng"]
        workers[f"worker_{j}"] = st["ordering"]
    if histories:
        epochs = max(h.shape[0] for h in histories.values())
        hist = np.full((epochs, M, nmax), -1, dtype=np.int64)
        for j, h in histories.items():
            hist[:h.shape[0], j - 1, :h.shape[1]] = h
        order["history"] = hist
    return order, rng, workers


# ---------------------------------------------------------------------------- the whole tree

def pending_array(pending: list[Assignment]) -> np.ndarray:
    return np.array([(a.worker, a.batch, int(a.preemptible)) for a in pending], dtype=np.int64).reshape(-1, 3)


def pending_list(array: np.ndarray) -> list[Assignment]:
    return [Assignment(int(w), int(b), bool(p)) for w, b, p in array]


def checkpoint_tree(*, root: dict, params: dict, method: dict, engine: dict, clock: dict, scheduler: dict,
                    recorder: dict, master_rng: str, worker_trees: dict[int, dict]) -> dict:
    """The checkpoint tree from the parts' state dicts (``root``: the root attributes)."""
    mirror = scheduler["mirror"]
    order, rng, workers = _orders(worker_trees, [int(n) for n in mirror["sizes"]])
    return {
        **root,
        "model": {"params": params["params"]},
        "state": {
            "optimizer": {"momentum": params["momentum"]},
            "method": method,
            "engine": {"version": engine["version"], "seq": scheduler["seq"], "sim_now": clock["sim_now"],
                       "wall_time": clock["wall_time"], "worker_end": clock["worker_end"],
                       "contributions": engine["contributions"],
                       "mirror_pos": mirror["pos"], "mirror_started": mirror["started"],
                       "mirror_sizes": mirror["sizes"],
                       "pending": engine["pending"], "arrivals": clock["arrivals"],
                       "inflight": {k: scheduler[k] for k in ("jobs", "times", "results")},
                       "row_samples": recorder["row_samples"], "row_messages": recorder["row_messages"],
                       "row_compute": recorder["row_compute"],
                       "busy_seconds": engine["busy_seconds"], "wait_seconds": engine["wait_seconds"],
                       **({"cost": clock["cost"]} if "cost" in clock else {})},  # the cost model's queues
            "workers": workers,
        },
        "rng": {"master": {"method": master_rng}, **rng},
        "order": order,
        "trace": recorder["trace"],
        "eval": recorder["eval"],
    }


def parts(tree: dict) -> dict:
    """A checkpoint tree taken apart: the state dict of each part (``checkpoint_tree``'s
    arguments), and the workers' states."""
    eng = tree["state"]["engine"]
    return {
        "params": {"params": tree["model"]["params"], "momentum": tree["state"]["optimizer"]["momentum"]},
        "method": tree["state"]["method"],
        "engine": {"version": int(eng["version"]), "contributions": eng["contributions"],
                   "pending": eng["pending"], "busy_seconds": eng["busy_seconds"],
                   "wait_seconds": eng["wait_seconds"]},
        "clock": {"sim_now": eng["sim_now"], "wall_time": eng["wall_time"], "worker_end": eng["worker_end"],
                  "arrivals": eng["arrivals"], **({"cost": eng["cost"]} if "cost" in eng else {})},
        "scheduler": {"seq": eng["seq"],
                      "mirror": {"pos": eng["mirror_pos"], "started": eng["mirror_started"]},
                      **eng["inflight"]},
        "recorder": {"row_samples": eng["row_samples"], "row_messages": eng["row_messages"],
                     "row_compute": eng["row_compute"], "trace": tree["trace"], "eval": tree["eval"]},
        "master_rng": tree["rng"]["master"]["method"],
    }


# ---------------------------------------------------------------------------- the engine's parts

def engine_tree(engine, worker_trees: dict[int, dict]) -> dict:
    """An engine's checkpoint: its parts' state dicts and every worker's state."""
    root = {"update": engine.version, "epoch": engine.scheduler.epoch(), "method": engine.method.name,
            "world_size": engine.M + 1, "ranks": engine.comm.Get_size(), "config": to_json(engine.cfg), "clock": engine.cfg["run"]["clock"],
            "hpcsgd_version": __version__, "stop_reason": engine.stop_reason or "", **engine.root}
    own = {"version": engine.version, "contributions": np.array(engine.contributions, dtype=np.int64),
           "pending": pending_array(engine.pending), "busy_seconds": engine.busy_seconds,
           "wait_seconds": engine.wait_seconds}
    return checkpoint_tree(
        root=root, params=engine.state.state_dict(), method=engine.method.state_dict(), engine=own,
        clock=engine.clock.state_dict(), recorder=engine.recorder.state_dict(),
        scheduler=engine.scheduler.state_dict(engine.link.result_row, engine.link.row_width),
        master_rng=stream_state(engine.rng), worker_trees=worker_trees)


def restore_engine(engine, tree: dict) -> dict[int, dict]:
    """Load every part of ``engine`` from a checkpoint tree; returns each worker's state."""
    p = parts(tree)
    engine.state.load_state_dict(p["params"])
    engine.method.load_state_dict(p["method"])
    own = p["engine"]
    engine.version = own["version"]
    engine.contributions = [int(c) for c in own["contributions"]]
    engine.pending = pending_list(own["pending"])
    engine.busy_seconds, engine.wait_seconds = float(own["busy_seconds"]), float(own["wait_seconds"])
    engine.clock.load_state_dict(p["clock"])
    engine.scheduler.load_state_dict(p["scheduler"], engine.link.result_from_row)
    engine.recorder.load_state_dict(p["recorder"])
    set_stream_state(engine.rng, p["master_rng"])
    return worker_states(tree, engine.scheduler.mirror.sizes)
