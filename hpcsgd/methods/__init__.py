"""Update rules run by the master, one small module each.

A method is a policy object the engine drives:

- ``start(engine)`` returns the first job assignments ``[(worker, batch, flags), ...]``;
- ``on_result(engine, result)`` sees every live result in event order (simulated
  time, or arrival order in the wall clock), may call ``engine.apply(...)`` to update
  the model, and returns the assignments to make next;
- ``flush(engine)`` finishes work the method kept off the critical path; the engine
  calls it right after sending new jobs, and before every checkpoint;
- ``state_dict()`` / ``load_state_dict()`` hold whatever it needs to continue exactly.

The engine owns the model, versions, clocks, traces and checkpoints; a method only
decides what to apply and who computes what next.
"""

from hpcsgd.methods.adaptive_k import AdaptiveK
from hpcsgd.methods.fastest_k import FastestK


def make_method(cfg: dict, n_workers: int):
    kind = cfg["method"]["kind"]
    batch = cfg["order"]["batch"]
    if kind == "sync":
        return FastestK(n_workers, n_workers, batch, name="sync",
                        coordinate=cfg["order"]["kind"] == "cd_grab")
    if kind == "adaptive_k":
        m = cfg["method"]
        return AdaptiveK(m["k0"], m["k_step"], m["burn_in"], n_workers, batch)
    if kind == "fastest_k":
        return FastestK(cfg["method"]["k"] or n_workers, n_workers, batch, name="fastest_k")
    raise AssertionError(f"config validation lets through unknown method {kind!r}")
