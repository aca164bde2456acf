"""Prepared data sets: writing (prepare), reading (dataset) and splitting (partition)."""

from hpcsgd.data.dataset import (
    DatasetInfo,
    dataset_fingerprint,
    open_dataset,
    read_labels,
    read_rows,
    resolve_source,
)
from hpcsgd.data.partition import PARTITIONS, partition, split_even
from hpcsgd.data.prepare import PREPARED_NAMES, prepare

__all__ = [
    "DatasetInfo",
    "PARTITIONS",
    "PREPARED_NAMES",
    "dataset_fingerprint",
    "open_dataset",
    "partition",
    "prepare",
    "read_labels",
    "read_rows",
    "resolve_source",
    "split_even",
]
