"""The interface every update rule implements (see ``hpcsgd.methods``)."""

from __future__ import annotations


class Method:
    name = ""

    def start(self, engine) -> list[tuple[int, int, int]]:
        """The first job assignments, ``[(worker, batch, flags), ...]``."""
        raise NotImplementedError

    def on_result(self, engine, r) -> list[tuple[int, int, int]]:
        """See one live result; may ``engine.apply``; return the jobs to hand out next."""
        raise NotImplementedError

    def observe(self, job, r) -> None:
        """Wall clock: every reply as it arrives, cancelled jobs' included."""

    def flush(self, engine) -> None:
        """Finish work kept off the critical path (called after sending jobs and before
        every checkpoint)."""

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError
