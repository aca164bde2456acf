"""hpcsgd: distributed SGD methods from recent papers on one MPI master/worker engine."""

__version__ = "0.1.0"
