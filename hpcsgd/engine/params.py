"""The model's parameters and the optimiser state, in the manner of ``torch.optim``:
``step`` moves them, ``state_dict``/``load_state_dict`` keep them."""

from __future__ import annotations

import numpy as np

from hpcsgd.kernels.optim import heavy_ball_step, sgd_step
from hpcsgd.kernels.regularizers import prox_l1


class ParameterState:
    """w -= lr * scale * g (with momentum beta > 0 the heavy ball m = beta m + scale g,
    w -= lr m), then the l1 prox with threshold lr * l1; with ``block`` only those
    coordinates move (block-coordinate methods hand over the block's gradient).

    A step may be taken out of place, ``into`` an array nobody else reads (the payload
    of the next job message): that array becomes ``params`` and the old one is left
    untouched (it may still be on its way to a worker), so the new model is written
    once and never copied to be sent."""

    def __init__(self, dim: int, momentum: float = 0.0, l1: float = 0.0):
        self.params = np.zeros(dim)
        self.momentum = np.zeros(dim)
        self.beta = momentum
        self.l1 = l1

    def step(self, grad: np.ndarray, lr: float, scale: float = 1.0, block: slice | None = None,
             into: np.ndarray | None = None) -> bool:
        """One step; False if the gradient was not finite.  Scaling inside the fused
        kernel saves a pass over d when a method hands over a sum rather than a mean."""
        params, out, momentum = self.params, self.params if into is None else into, self.momentum
        if block is not None:
            if into is not None:
                into[:] = params  # the coordinates outside the block carry over
            params = out = out[block]
            momentum = momentum[block]
        if self.beta > 0.0:
            finite = heavy_ball_step(params, momentum, grad, lr, self.beta, scale, out)
        else:
            finite = sgd_step(params, grad, lr, scale, out)
        if into is not None:
            self.params = into
        if finite and self.l1 > 0.0:
            prox_l1(out, lr * self.l1)
        return finite

    def state_dict(self) -> dict:
        return {"params": self.params.copy(), "momentum": self.momentum.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.params[:] = state["params"]
        self.momentum[:] = state["momentum"]
