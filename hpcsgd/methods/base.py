"""The interface every update rule implements (see ``hpcsgd.methods``); the engine it
drives is ``hpcsgd.engine.interface.Engine``."""

from __future__ import annotations

from hpcsgd.engine.interface import Assignment, Engine, JobTimes, Result


class Method:
    name = ""
    # state_dict entries whose last axis is the parameters': with parameter servers
    # each server keeps its slice of them (hpcsgd.engine.servers)
    per_parameter: tuple[str, ...] = ()

    def start(self, engine: Engine) -> list[Assignment]:
        """The first jobs to create."""
        raise NotImplementedError

    def on_result(self, engine: Engine, r: Result) -> list[Assignment]:
        """See one live result; may ``engine.apply``; return the jobs to create next."""
        raise NotImplementedError

    def observe(self, job: JobTimes, r: Result) -> None:
        """Wall clock: every reply as it arrives, cancelled jobs' included."""

    @property
    def watches_replies(self) -> bool:
        """It overrides ``observe`` (the engine calls it only then)."""
        return type(self).observe is not Method.observe

    def flush(self, engine: Engine) -> None:
        """Finish work kept off the critical path (called after sending jobs and before
        every checkpoint)."""

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError
