"""Errors that carry a user-facing message.

A ``UserError`` is a mistake in what the user gave us (config, data, checkpoint).
The CLI prints its message as one line and exits with status 2 on every rank.
"""


class UserError(Exception):
    """Bad user input: one clear line, exit status 2, no traceback.

    ``shared``: every rank of the job raised this same error (a collective check), so
    rank 0 alone prints it: one line per job, not one per rank."""

    exit_code = 2
    shared = False


class DivergenceError(Exception):
    """Training produced a non-finite loss or gradient."""

    exit_code = 3


class CheckpointWriteError(UserError):
    """The run directory cannot take a checkpoint (disk full, read-only, quota)."""


class WorkerSilentError(Exception):
    """A worker the job cannot go on without has not answered (run.worker_timeout), or a
    stop request could not gather the replies its checkpoint needs (run.stop_timeout)."""

    exit_code = 4

    def __init__(self, workers: list[int], why: str):
        super().__init__(why)
        self.workers = workers
