"""When a staged fastest-k method moves to its next stage (ALGORITHMS.md section 2).

Two rules with one verb, ``fires(total, scale, dot)``, called once per update with the
applied gradient ``scale * total`` and the engine's inner product over the whole model
(``Engine.dot``: with parameter servers each holds a slice of both vectors):

- ``PflugTest``: after ``burn_in`` updates in the stage, S += <g_t, g_{t-1}> over
  consecutive applied gradients; S < 0 means the iterates bounce around the noise floor.
- ``BoundSwitch``: follow the error bound E_J = a_s + (1 - eta c)^J (E_0 - a_s) update
  by update and switch once it reaches the bound-optimal level
  e*_s = (mu_{s+1} a_s - mu_s a_{s+1}) / (mu_{s+1} - mu_s), where the next stage's
  bound starts falling faster per second than this stage's.
"""

from __future__ import annotations

import math

import numpy as np


class PflugTest:
    def __init__(self, burn_in: int):
        self.burn_in = burn_in
        self.in_stage = 0  # updates applied in the current stage
        self.S = 0.0
        self.prev = None   # previous applied gradient

    def enter(self, *_) -> None:
        self.in_stage, self.S = 0, 0.0

    def fires(self, total: np.ndarray, scale: float, dot=np.dot) -> bool:
        self.in_stage += 1
        if self.in_stage > self.burn_in and self.prev is not None:
            self.S += scale * float(dot(total, self.prev))
        if self.prev is None:
            self.prev = np.empty_like(total)
        np.multiply(total, scale, out=self.prev)
        return self.S < 0.0

    def state_dict(self) -> dict:
        state = {"in_stage": self.in_stage, "S": self.S}
        if self.prev is not None:
            state["prev"] = self.prev.copy()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.in_stage, self.S = int(state["in_stage"]), float(state["S"])
        self.prev = np.asarray(state["prev"], dtype=np.float64).copy() if "prev" in state else None


def noise_floor(lr: float, c: float, L: float, sigma2: float, batch: int) -> float:
    """a(k, b) = eta L sigma^2 / (2 c k b), with batch = k * b."""
    return lr * L * sigma2 / (2.0 * c * batch)


def switch_level(mu_s: float, a_s: float, mu_next: float, a_next: float) -> float:
    """e*_s: below this error the next stage's bound falls faster per second.  When the
    next stage is no slower per iteration it is better at once (+inf)."""
    if mu_next <= mu_s:
        return math.inf
    return (mu_next * a_s - mu_s * a_next) / (mu_next - mu_s)


class BoundSwitch:
    def __init__(self, lr: float, c: float, gap0: float):
        self.rho = 1.0 - lr * c
        self.error = gap0  # the bound's prediction of F(w) - F* now
        self.floor = 0.0
        self.level = -math.inf

    def enter(self, floor: float, level: float) -> None:
        self.floor, self.level = floor, level

    def fires(self, total: np.ndarray, scale: float, dot=None) -> bool:
        self.error = self.floor + self.rho * (self.error - self.floor)
        return self.error <= self.level

    def state_dict(self) -> dict:
        return {"error": self.error}

    def load_state_dict(self, state: dict) -> None:
        self.error = float(state["error"])
