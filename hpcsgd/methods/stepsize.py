"""Delay-adaptive step sizes (ALGORITHMS.md section 4, seed 002).

The principle: the steps taken while an update's information was in flight add up to
at most gamma' = h / L,

    sum_{t = k - tau_k}^{k} gamma_t <= gamma'.

With S_k = sum_{t = k - tau_k}^{k-1} gamma_t (the steps already taken inside the
window), the policies are

- ``fixed``:     gamma = gamma' / (tau_max + 1) for a delay bound tau_max (the baseline);
- ``adaptive1``: gamma_k = alpha gamma' if S_k <= (1 - alpha) gamma', else 0;
- ``adaptive2``: gamma_k = max(0, min(alpha gamma', gamma' - S_k)).

(The exact Adaptive 1/2 formulas are a reconstruction; the principle is the paper's.)
S_k costs O(1): a ring buffer holds the prefix sums P_t = sum_{u < t} gamma_u of the
last ``capacity`` updates, S_k = P_k - P_{k - tau_k}, and the buffer doubles when a
delay reaches past it.  The fixed policy keeps the same buffer so that every policy
can report its window sums.
"""

from __future__ import annotations

import numpy as np

POLICIES = ("fixed", "adaptive1", "adaptive2")


class StepPolicy:
    def __init__(self, kind: str, gamma_prime: float, alpha: float = 0.5, tau_max: int = 0,
                 capacity: int = 64):
        if kind not in POLICIES:
            raise ValueError(f"unknown step-size policy {kind!r}")
        self.kind = kind
        self.gamma_prime = gamma_prime
        self.alpha = alpha
        self.tau_max = tau_max
        self.k = 0                           # updates so far
        self.prefix = np.zeros(capacity)     # prefix[t % capacity] = P_t for t in (k - capacity, k]
        self.total = 0.0                     # P_k

    def window_sum(self, tau: int) -> float:
        """S_k = sum of the steps of updates k - tau .. k - 1 (fewer at the start)."""
        tau = min(tau, self.k)
        if tau >= self.prefix.size:
            self._grow(tau + 1)
        return self.total - self.prefix[(self.k - tau) % self.prefix.size]

    def step(self, tau: int) -> float:
        """gamma_k for an update whose oldest information is ``tau`` updates old."""
        g, a = self.gamma_prime, self.alpha
        if self.kind == "fixed":
            gamma = g / (self.tau_max + 1)
            self.window_sum(tau)  # keeps the buffer long enough to audit any window
        else:
            s = self.window_sum(tau)
            if self.kind == "adaptive1":
                gamma = a * g if s <= (1.0 - a) * g else 0.0
            else:
                gamma = max(0.0, min(a * g, g - s))
        self.k += 1
        self.total += gamma
        self.prefix[self.k % self.prefix.size] = self.total
        return gamma

    def _grow(self, need: int) -> None:
        cap = self.prefix.size
        new = max(2 * cap, need + 1)
        buf = np.zeros(new)
        for t in range(max(0, self.k - cap + 1), self.k + 1):
            buf[t % new] = self.prefix[t % cap]
        self.prefix = buf

    def state_dict(self) -> dict:
        return {"k": self.k, "total": self.total, "prefix": self.prefix.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.k, self.total = int(state["k"]), float(state["total"])
        self.prefix = np.asarray(state["prefix"], dtype=np.float64).copy()
