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
    """Append-only columns with amortised growth; ``arrays()`` gives the filled part."""

    def __init__(self, columns: dict[str, type]):
        self.dtypes = dict(columns)
        self.n = 0
        self.data = {name: np.empty(1024, dtype=dt) for name, dt in self.dtypes.items()}

    def add_column(self, name: str, dtype) -> None:
        """Methods may trace extra columns (e.g. a stage number); earlier rows get 0."""
        if name not in self.dtypes:
            self.dtypes[name] = dtype
            self.data[name] = np.zeros(self.data["update"].size, dtype=dtype)

    def append(self, **row) -> None:
        if self.n == self.data["update"].size:
            for name in self.data:
                grown = np.zeros(2 * self.n, dtype=self.dtypes[name])
                grown[:self.n] = self.data[name][:self.n]
                self.data[name] = grown
        for name, value in row.items():
            if name not in self.dtypes:  # a method's own column, e.g. its stage
                self.add_column(name, np.int32)
        for name in self.dtypes:
            self.data[name][self.n] = row.get(name, 0)
        self.n += 1

    def last(self, name: str):
        return self.data[name][self.n - 1] if self.n else None

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: col[:self.n].copy() for name, col in self.data.items()}

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        for name, col in arrays.items():
            self.add_column(name, col.dtype)
        self.n = 0
        size = max(1024, 2 * max((len(c) for c in arrays.values()), default=0))
        self.data = {name: np.zeros(size, dtype=dt) for name, dt in self.dtypes.items()}
        for name, col in arrays.items():
            self.data[name][:len(col)] = col
        self.n = len(next(iter(arrays.values()))) if arrays else 0
