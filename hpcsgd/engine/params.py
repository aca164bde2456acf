"""The model's parameters and the optimiser state, in the manner of ``torch.optim``:
``step`` moves them, ``state_dict``/``load_state_dict`` keep them."""

from __future__ import annotations

import numpy as np

from hpcsgd.kernels.optim import heavy_ball_step, sgd_step
from hpcsgd.kernels.regularizers import prox_l1


class ParameterState:
    """w -= lr * scale * g (with momentum beta > 0 the heavy ball m = beta m + scale g,
    w -= lr m), then the l1 prox with threshold lr * l1; with ``block`` only those
    coordinates move (block-coordinate methods hand over the block's gradient)."""

    def __init__(self, dim: int, momentum: float = 0.0, l1: float = 0.0):
        self.params = np.zeros(dim)
        self.momentum = np.zeros(dim)
        self.beta = momentum
        self.l1 = l1

    def step(self, grad: np.ndarray, lr: float, scale: float = 1.0, block: slice | None = None) -> bool:
        """One step; False if the gradient was not finite.  Scaling inside the fused
        kernel saves a pass over d when a method hands over a sum rather than a mean."""
        params = self.params if block is None else self.params[block]
        if self.beta > 0.0:
            momentum = self.momentum if block is None else self.momentum[block]
            finite = heavy_ball_step(params, momentum, grad, lr, self.beta, scale)
        else:
            finite = sgd_step(params, grad, lr, scale)
        if finite and self.l1 > 0.0:
            prox_l1(params, lr * self.l1)
        return finite

    def state_dict(self) -> dict:
        return {"params": self.params.copy(), "momentum": self.momentum.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.params[:] = state["params"]
        self.momentum[:] = state["momentum"]
