"""Random streams: every rank's generators, derived from ``run.seed`` so that a run is
the same whatever the number of ranks, and checkpointed as JSON (no pickle).

Every stream is ``Generator(PCG64(SeedSequence(run.seed, spawn_key=(rank, purpose))))``:
independent across ranks and purposes.  Rank 0 is the master."""

from __future__ import annotations

import json

import numpy as np

INIT = 0      # the master's initial parameters
ORDER = 1     # a worker's example orders
DELAY = 2     # a worker's injected delays
METHOD = 3    # the method's own choices at the master (async assignment, blocks, ...)
TIMING = 4    # Monte Carlo draws of iteration times (hpcsgd.methods.timing)


def make_stream(seed: int, rank: int, purpose: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(rank, purpose))))


def stream_state(rng: np.random.Generator) -> str:
    return json.dumps(rng.bit_generator.state)


def set_stream_state(rng: np.random.Generator, text: str) -> None:
    rng.bit_generator.state = json.loads(text)
