"""Update rules run by the master, one small module each.

A method is a policy object the engine drives (``base.Method``):

- ``start(engine)`` returns the first job assignments ``[(worker, batch, flags), ...]``;
- ``on_result(engine, result)`` sees every live result in event order (simulated
  time, or arrival order in the wall clock), may call ``engine.apply(...)`` to update
  the model, and returns the assignments to make next;
- ``observe(job, result)`` (wall clock) sees every reply when it arrives, including
  replies to cancelled jobs, e.g. to measure response times;
- ``flush(engine)`` finishes work the method kept off the critical path; the engine
  calls it right after sending new jobs, and before every checkpoint;
- ``state_dict()`` / ``load_state_dict()`` hold whatever it needs to continue exactly.

The engine owns the model, versions, clocks, traces and checkpoints; a method only
decides what to apply and who computes what next.
"""

import numpy as np

from hpcsgd.ordering import ORDERINGS

from hpcsgd.methods.async_bcd import AsyncBCD
from hpcsgd.methods.async_sgd import AsyncSGD
from hpcsgd.methods.fastest_k import FastestK
from hpcsgd.methods.gsgm import GSGM
from hpcsgd.methods.piag import PIAG
from hpcsgd.methods.staged import StagedFastestK
from hpcsgd.methods.stepsize import StepPolicy
from hpcsgd.methods.switching import BoundSwitch, PflugTest
from hpcsgd.methods.timing import IterationTimeModel, MeasuredTimeModel


def stage_targets(cfg: dict, n_workers: int) -> list[int]:
    """The stages' effective batches: method.targets, or by default
    (k0, k0 + k_step, ..., M) x order.batch, adaptive k-sync's stages."""
    m, batch = cfg["method"], cfg["order"]["batch"]
    if m["targets"]:
        return list(m["targets"])
    ks = list(range(min(m["k0"], n_workers), n_workers, m["k_step"])) + [n_workers]
    return [k * batch for k in ks]


def step_policy(cfg: dict, L: float) -> StepPolicy:
    """piag / async_bcd: the configured policy with gamma' = method.gamma_prime or h / L."""
    m = cfg["method"]
    gamma_prime = m["gamma_prime"] or m["h"] / L
    return StepPolicy(m["stepsize"], gamma_prime, alpha=m["alpha"], tau_max=m["tau_max"])


def make_method(cfg: dict, shard_sizes: list[int], dim: int = 0, L: float = 0.0):
    """The configured method for workers with these shard sizes; ``dim`` is the number of
    parameters and ``L`` the objective's smoothness (needed by piag and async_bcd)."""
    kind = cfg["method"]["kind"]
    batch = cfg["order"]["batch"]
    m = cfg["method"]
    n_workers, max_batch = len(shard_sizes), min(shard_sizes)
    if kind == "piag":
        weights = np.asarray(shard_sizes, dtype=np.float64) / sum(shard_sizes)
        return PIAG(n_workers, batch, step_policy(cfg, L), weights, dim, absorb=m["absorb"])
    if kind == "async_bcd":
        return AsyncBCD(n_workers, batch, step_policy(cfg, L), dim, m["blocks"])
    if kind == "sync":
        return FastestK(n_workers, n_workers, batch, name="sync",
                        coordinate=ORDERINGS[cfg["order"]["kind"]].coordinated)
    if kind == "async":
        return AsyncSGD(n_workers, batch, m["assign"])
    if kind == "gsgm":
        return GSGM(n_workers, batch, dim, schedule=m["schedule"], average=m["average"])
    if kind == "fastest_k":
        return FastestK(m["k"] or n_workers, n_workers, batch, name="fastest_k")
    if kind in ("adaptive_k", "adaptive_kb"):
        seed = cfg["run"]["seed"]
        if cfg["run"]["clock"] == "simulated":
            times = IterationTimeModel(cfg["stragglers"], n_workers, seed, samples=m["mc_samples"])
        else:
            times = MeasuredTimeModel(n_workers, seed, samples=m["mc_samples"])
        bound = None
        if m["switch"] == "bound":
            bound = {"lr": m["lr"], "c": m["bound_c"], "L": m["bound_L"], "sigma2": m["bound_sigma2"]}
            switch = BoundSwitch(m["lr"], m["bound_c"], m["bound_gap0"])
        else:
            switch = PflugTest(m["burn_in"])
        return StagedFastestK(kind, stage_targets(cfg, n_workers), n_workers, times, switch=switch,
                              fixed_batch=batch if kind == "adaptive_k" else 0, max_batch=max_batch,
                              bound=bound, refresh_every=m["refresh_every"])
    raise AssertionError(f"config validation lets through unknown method {kind!r}")
