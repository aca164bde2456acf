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

What piag and async_bcd share is declared here once for the method registry: the
policy's keys (``STEP_KEYS``), the common keys it replaces (``STEP_IGNORES``), its
checks, ``needs_L`` and inspect's step-versus-fixed summary.
"""

from __future__ import annotations

import math

import numpy as np

from hpcsgd.errors import UserError
from hpcsgd.methods.registry import MethodKey, Summary, column
from hpcsgd.schema import Key, only

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


# ---------------------------------------------------------------------- what piag and async_bcd share

def step_policy(cfg: dict, L: float) -> StepPolicy:
    """piag / async_bcd: the configured policy with gamma' = method.gamma_prime or h / L."""
    m = cfg["method"]
    gamma_prime = m["gamma_prime"] or m["h"] / L
    return StepPolicy(m["stepsize"], gamma_prime, alpha=m["alpha"], tau_max=m["tau_max"])


def needs_L(cfg: dict) -> bool:
    """gamma' is h / L and neither L nor gamma' is given: set-up estimates L."""
    m = cfg["method"]
    return not m["gamma_prime"] and not m["L"]


def check_step_policy(cfg: dict) -> None:
    m = cfg["method"]
    if m["momentum"] > 0:
        raise UserError(f"config: method.momentum = {m['momentum']} is not allowed with method.kind = "
                        f"{m['kind']!r}: its steps are prox steps of the delay-adaptive size (use 0)")
    if not m["gamma_prime"] and m["L"] and not math.isfinite(m["h"] / m["L"]):
        raise UserError(f"config: method.h / method.L = {m['h']} / {m['L']} is not a finite gamma'; "
                        f"give a larger method.L or method.gamma_prime")
    if needs_L(cfg) and cfg["model"]["kind"] == "mlp":
        raise UserError(f"config: method.kind = {m['kind']!r} needs gamma' and cannot estimate the "
                        f"smoothness of model.kind = 'mlp'; give method.L or method.gamma_prime")


_GAMMA_FROM_H = only("method.gamma_prime", 0, why="gives gamma' itself")
STEP_KEYS = (
    MethodKey("stepsize", Key("adaptive2", str, "piag, async_bcd: step-size policy (fixed uses tau_max; the "
                              "adaptive ones keep the steps within any delay window below gamma')",
                              choices=POLICIES,
                              does={"fixed": "steps gamma' / (method.tau_max + 1)",
                                    "adaptive1": "adapts each step to its delay",
                                    "adaptive2": "adapts each step to its delay"}), shown=True),
    MethodKey("h", Key(0.9, (int, float), "piag, async_bcd: gamma' = h / L (h < 1: steps below 1/L)", above=0,
                       below=1), when=_GAMMA_FROM_H),
    MethodKey("L", Key(0.0, (int, float), "piag, async_bcd: smoothness of the objective (0 = estimate by "
                       "power iteration for logistic, softmax and least squares)", minimum=0), when=_GAMMA_FROM_H),
    MethodKey("gamma_prime", Key(0.0, (int, float), "piag, async_bcd: gamma' itself (0 = h / L)", minimum=0)),
    MethodKey("alpha", Key(0.5, (int, float), "piag, async_bcd, adaptive policies: steps are alpha gamma' at most",
                           above=0, maximum=1), when=only("method.stepsize", "adaptive1", "adaptive2")),
    MethodKey("tau_max", Key(0, int, "piag, async_bcd with stepsize = fixed: the delay bound, step "
                             "gamma' / (tau_max + 1)", minimum=0), when=only("method.stepsize", "fixed")),
)
# The common keys the step policy replaces.
STEP_IGNORES = {"lr": "steps by method.stepsize from gamma' (method.gamma_prime, or method.h / method.L)",
                "momentum": "takes prox steps without momentum"}


def _step_vs_fixed(config: dict, trace: dict) -> dict | None:
    """The mean step against the fixed policy's gamma' / (tau_max + 1) with tau_max the
    largest delay of the run (how the paper's baselines were set)."""
    steps, stale = column(trace, "step_size"), column(trace, "staleness")
    m = (config or {}).get("method", {})
    if steps is None or not steps.size or stale is None:
        return None
    gamma_prime = m.get("gamma_prime") or (m["h"] / m["L"] if m.get("L") else None)
    if not gamma_prime:
        return None
    fixed = gamma_prime / (int(stale.max()) + 1)
    return {"gamma_prime": gamma_prime, "tau_max": int(stale.max()), "fixed_step": fixed,
            "mean_step": float(steps.mean()), "ratio": float(steps.mean()) / fixed}


def _step_vs_fixed_lines(vf: dict, fmt) -> list[tuple[str, str]]:
    return [("vs fixed", f"mean step {fmt(vf['mean_step'])} = {fmt(vf['ratio'], 3)} x the fixed step "
                         f"gamma'/(tau_max+1) = {fmt(vf['fixed_step'])} (gamma' {fmt(vf['gamma_prime'])}, "
                         f"tau_max {vf['tau_max']} = largest delay seen)")]


STEP_SUMMARY = Summary("step_vs_fixed", _step_vs_fixed, _step_vs_fixed_lines, after="step_size")
