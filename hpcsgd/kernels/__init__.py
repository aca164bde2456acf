"""Numba kernels: per-model loss / gradient / per-example gradient / accuracy, and
regularisers.  Pure ``@njit(cache=True)`` functions over NumPy arrays (no MPI, no
Python objects); ``hpcsgd.models`` wraps them behind a uniform interface.

Each model module (``logistic``, ``softmax``, ``least_squares``, ``mlp``) provides
``loss_sum``, ``grad_sum``, ``per_example_grads`` and ``correct_count`` with the
same argument order ``(w, X, y, idx[, out])``; the ``mlp`` kernels take one extra
last argument, ``n_hidden``.  ``regularizers`` provides ``reg_value``,
``reg_grad_add``, ``mean_finish`` and ``prox_l1``.

All kernels use only the fast-math flags ``contract``, ``reassoc`` and ``nsz``
(never ``nnan``/``ninf``), so NaN and Inf propagate to the results.

Developer note: Numba's on-disk cache (``__pycache__/*.nbi|*.nbc``) is keyed on the
file that defines each function, which is why helpers are duplicated rather than
imported across kernel modules.
"""

from . import least_squares, logistic, mlp, regularizers, softmax

__all__ = ["least_squares", "logistic", "mlp", "regularizers", "softmax"]
