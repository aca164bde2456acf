"""What a run leaves behind: one trace row per update (/trace), one row per evaluation
(/eval) and when the next evaluation is due, and the progress lines on stdout.

The load of the current row (samples computed, messages, the slowest compute) is
counted as it happens -- jobs taken, jobs dropped, jobs withdrawn -- and flushed into
the row of the next update."""

from __future__ import annotations

import math
import time

from hpcsgd.trace import EVAL_COLUMNS, TRACE_COLUMNS, Table


class Recorder:
    def __init__(self, run_cfg: dict, clock, extras: dict | None = None, quiet: bool = False):
        self.clock = clock
        self.trace = Table(TRACE_COLUMNS)
        for name, dtype in (extras or {}).items():
            self.trace.add_column(name, dtype)
        self.evals = Table(EVAL_COLUMNS)
        # the current row's load
        self.samples = 0
        self.messages = 0
        self.compute = 0.0
        # evaluations
        self.eval_every = run_cfg["eval_every"]
        self.eval_seconds = run_cfg["eval_seconds"]
        self.next_eval_at = 0.0  # eval_seconds: the clock time that makes the next one due
        # progress
        self.quiet = quiet
        self.progress_every = run_cfg["progress_every"]
        self.last_progress = time.perf_counter()
        self.progress_updates = 0

    # ---------------------------------------------------------------- load and rows
    def count(self, samples: int, messages: int) -> None:
        """Load that goes into the current row: samples computed (dropped work included)
        and messages (parameter vectors sent and gradients received, not bare
        acknowledgements)."""
        self.samples += samples
        self.messages += messages

    def took(self, batch: int, compute_seconds: float) -> None:
        """A result was taken as an event: its reply, its samples, its compute time."""
        self.messages += 1
        self.samples += batch
        if compute_seconds > self.compute:
            self.compute = compute_seconds

    def update(self, row: dict) -> None:
        """The row of one applied update (kept as given), with the load counted since
        the last one."""
        row["samples_computed"], row["messages"], row["compute_seconds"] = self.samples, self.messages, self.compute
        self.trace.append_row(row)
        self.samples = 0
        self.messages = 0
        self.compute = 0.0
        self.progress_updates += 1

    # ---------------------------------------------------------------- evaluations
    def add_eval(self, row: dict) -> None:
        self.evals.append(**row)
        self._schedule_eval()

    def _schedule_eval(self) -> None:
        """eval_seconds: the next evaluation is due at the first multiple of eval_seconds
        after the last one's clock time (derived from /eval, so a resumed run keeps it)."""
        if self.eval_seconds and self.evals.n:
            last = self.evals.last("sim_time" if self.clock.simulated else "wall_time")
            self.next_eval_at = (math.floor(last / self.eval_seconds) + 1) * self.eval_seconds

    def eval_due(self, version: int) -> bool:
        if self.eval_every:
            return version % self.eval_every == 0
        return bool(self.eval_seconds) and self.clock.now() >= self.next_eval_at

    # ---------------------------------------------------------------- progress
    def progress_due(self) -> bool:
        return bool(not self.quiet and self.progress_every
                    and time.perf_counter() - self.last_progress >= self.progress_every)

    def progress(self, version: int, epoch: float, fraction: float, force: bool = False) -> None:
        """A progress line every run.progress_every seconds; ``fraction`` of the run done."""
        if self.quiet or not self.progress_every:
            return
        now = time.perf_counter()
        if not force and now - self.last_progress < self.progress_every:
            return
        rate = self.progress_updates / max(now - self.last_progress, 1e-9)
        self.last_progress, self.progress_updates = now, 0
        elapsed = self.clock.wall()
        eta = elapsed * (1 - fraction) / fraction if 0 < fraction < 1 else 0.0
        loss = self.evals.last("train_loss")
        acc = self.evals.last("test_accuracy")
        sim = f" sim {self.clock.sim_now:.3g}s" if self.clock.simulated else ""
        print(f"[hpcsgd] update {version} epoch {epoch:.2f} loss {loss:.4g} acc {acc:.4f} {rate:.0f} upd/s "
              f"elapsed {elapsed:.1f}s{sim} eta {eta:.0f}s", flush=True)

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"row_samples": self.samples, "row_messages": self.messages, "row_compute": self.compute,
                "trace": self.trace.arrays(), "eval": self.evals.arrays()}

    def load_state_dict(self, state: dict) -> None:
        self.samples = int(state["row_samples"])
        self.messages = int(state["row_messages"])
        self.compute = float(state["row_compute"])
        self.trace.load(state["trace"])
        self.evals.load(state["eval"])
        self._schedule_eval()
