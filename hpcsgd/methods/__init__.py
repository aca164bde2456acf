"""Update rules run by the master, one small module each.

A method is a policy object the engine drives (``base.Method``):

- ``start(engine)`` returns the first job assignments (``Assignment``s);
- ``on_result(engine, result)`` sees every live result in event order (simulated
  time, or arrival order in the wall clock), may call ``engine.apply(...)`` to update
  the model, and returns the assignments to make next;
- ``observe(job, result)`` (wall clock) sees every reply when it arrives, including
  replies to cancelled jobs, e.g. to measure response times;
- ``flush(engine)`` finishes work the method kept off the critical path; the engine
  calls it right after sending new jobs, and before every checkpoint;
- ``state_dict()`` / ``load_state_dict()`` hold whatever it needs to continue exactly.

The engine owns the model, versions, clocks, traces and checkpoints; a method only
decides what to apply and who computes what next.  Next to its class, each module
registers what the rest of hpcsgd needs to know of it -- its ``method.kind``, config
keys and checks, trace extras, inspect summaries and how to build it
(``hpcsgd.methods.registry``), which config, ``make_method`` and inspect read.
"""

from hpcsgd.methods.registry import make_method, needs_L, trace_extras
from hpcsgd.methods.staged import stage_targets
from hpcsgd.methods.stepsize import step_policy

__all__ = ["make_method", "needs_L", "stage_targets", "step_policy", "trace_extras"]
