"""Growing columnar tables: one row per applied update (/trace) or evaluation (/eval)."""

from __future__ import annotations

import numpy as np

TRACE_COLUMNS = {
    "update": np.int64, "wall_time": np.float64, "sim_time": np.float64, "worker": np.int32,
    "staleness": np.int32, "step_size": np.float64, "k": np.int32, "batch": np.int32,
    "samples_computed": np.int64, "messages": np.int32,
    # slowest worker's measured compute among the results behind this update (wall s)
    "compute_seconds": np.float64,
}
EVAL_COLUMNS = {
    "update": np.int64, "epoch": np.float64, "wall_time": np.float64, "sim_time": np.float64,
    "train_loss": np.float64, "test_loss": np.float64, "test_accuracy": np.float64,
    "grad_norm": np.float64,
}


class Table:
    """Append-only columns.  New rows wait as dicts and move into the NumPy columns a
    block at a time: the master appends one row per update, and storing a dict costs a
    small fraction of writing a dozen NumPy scalars one by one.  A column that a row
    leaves out is 0 there; a column nobody declared is an error, never a silent int32."""

    BLOCK = 1024

    def __init__(self, columns: dict[str, type]):
        self.dtypes = dict(columns)
        self.columns = {name: np.zeros(self.BLOCK, dtype=dt) for name, dt in self.dtypes.items()}
        self.stored = 0          # rows already in self.columns (whose capacity doubles)
        self.rows: list[dict] = []

    @property
    def n(self) -> int:
        return self.stored + len(self.rows)

    def add_column(self, name: str, dtype) -> None:
        """A column of its own dtype (e.g. a method's stage number); earlier rows get 0."""
        if name not in self.dtypes:
            self._store()
            self.dtypes[name] = dtype
            self.columns[name] = np.zeros(self._capacity(), dtype=dtype)

    def append(self, **row) -> None:
        self.append_row(row)

    def append_row(self, row: dict) -> None:
        """Append ``row`` itself (the table keeps the dict until it stores a block).
        Every column is declared with its dtype first (a method's in its MethodSpec)."""
        if not row.keys() <= self.dtypes.keys():
            unknown = ", ".join(sorted(row.keys() - self.dtypes.keys()))
            raise KeyError(f"trace columns {unknown} are not declared (a method declares its own in its "
                           f"MethodSpec.extras)")
        self.rows.append(row)
        if len(self.rows) == self.BLOCK:
            self._store()

    def _store(self) -> None:
        if not self.rows:
            return
        rows, n, start = self.rows, len(self.rows), self.stored
        if start + n > self._capacity():
            size = max(2 * self._capacity(), start + n)
            for name, col in self.columns.items():
                self.columns[name] = np.zeros(size, dtype=col.dtype)
                self.columns[name][:start] = col[:start]
        for name, col in self.columns.items():
            col[start:start + n] = [r.get(name, 0) for r in rows]
        self.stored += n
        self.rows = []

    def _capacity(self) -> int:
        return self.columns["update"].size

    def last(self, name: str):
        if self.rows:
            return self.dtypes[name](self.rows[-1].get(name, 0))
        return self.columns[name][self.stored - 1] if self.stored else None

    def arrays(self) -> dict[str, np.ndarray]:
        self._store()
        return {name: col[:self.stored].copy() for name, col in self.columns.items()}

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        for name, col in arrays.items():
            if name not in self.dtypes:
                self.dtypes[name] = col.dtype.type
        self.rows = []
        self.stored = len(next(iter(arrays.values()))) if arrays else 0
        size = max(self.BLOCK, 2 * self.stored)
        self.columns = {name: np.zeros(size, dtype=dt) for name, dt in self.dtypes.items()}
        for name, col in arrays.items():
            self.columns[name][:self.stored] = col
