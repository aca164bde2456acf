"""Models: thin Python wrappers around the Numba kernels in ``hpcsgd.kernels``.

Every model has ONE flat float64 parameter vector ``w`` of length ``model.dim``:

* ``logistic``      (binary, y in {0, 1}): ``w = [weights (p), bias]``, dim = p + 1
* ``softmax``       (C classes):          ``w = [W (C x p row-major), b (C)]``, dim = C (p + 1)
* ``least_squares`` (real y):             ``w = [weights (p), bias]``, loss 0.5 (x.w + b - y)^2
* ``mlp``           (C >= 2 classes):     ``w = [W1 (H x p), b1 (H), W2 (C x H), b2 (C)]``,
  hidden layer of H tanh units then softmax cross-entropy.

Data: ``X`` float64 C-contiguous [n, p]; ``y`` float64 [n] (class ids as floats for
classification); ``idx`` int64 row indices (a batch; repeats allowed).

Regularisation ``R(w) = (l2/2) ||w||^2 + nonconvex * sum_i w_i^2 / (1 + w_i^2)`` is
applied to ALL entries of ``w`` (biases included).  ``loss_sum``/``grad_sum``/
``per_example_grads``/``pair_grads`` are data terms only; ``mean_grad`` adds ``R``.
l1 is applied separately by the proximal step ``prox_l1(w, t)``.
"""

from __future__ import annotations

import math
import weakref

import numpy as np

from hpcsgd.errors import UserError
from hpcsgd.kernels import least_squares as _ls
from hpcsgd.kernels import logistic as _lg
from hpcsgd.kernels import mlp as _mlp
from hpcsgd.kernels import softmax as _sm
from hpcsgd.kernels.regularizers import mean_finish as _mean_finish
from hpcsgd.kernels.regularizers import prox_l1
from hpcsgd.kernels.regularizers import reg_grad_add as _reg_grad_add
from hpcsgd.kernels.regularizers import reg_value as _reg_value

__all__ = [
    "MODEL_KINDS",
    "INIT_KINDS",
    "Model",
    "Logistic",
    "Softmax",
    "LeastSquares",
    "MLP",
    "make_model",
    "prox_l1",
]

MODEL_KINDS = ("logistic", "softmax", "least_squares", "mlp")
INIT_KINDS = ("default", "zeros", "ones", "normal")

_F64 = np.dtype(np.float64)
_I64 = np.dtype(np.int64)


def _as_idx(idx) -> np.ndarray:
    """Return idx as a 1-D C-contiguous int64 array (no copy if it already is one)."""
    if type(idx) is np.ndarray and idx.dtype == _I64 and idx.ndim == 1 and idx.flags.c_contiguous:
        return idx
    a = np.asarray(idx)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
        raise TypeError("idx must be a 1-D array of integer row indices")
    return np.ascontiguousarray(a, dtype=np.int64)


# Weak references to the last two (X, y) pairs that passed _check_data: the engine
# calls the kernels with the same arrays over and over, so the usual check is two
# identity comparisons (and no data set is kept alive by this cache).
_checked: list = [None, None]


def _check_data(X, y) -> None:
    for pair in _checked:
        if pair is not None and pair[0]() is X and pair[1]() is y:
            return
    if type(X) is not np.ndarray or X.dtype != _F64 or X.ndim != 2 or not X.flags.c_contiguous:
        raise TypeError("X must be a C-contiguous float64 array of shape (n, n_features)")
    if type(y) is not np.ndarray or y.dtype != _F64 or y.ndim != 1:
        raise TypeError("y must be a 1-D float64 array")
    _checked[1] = _checked[0]
    _checked[0] = (weakref.ref(X), weakref.ref(y))


class Model:
    """Uniform interface over one model's kernels (see module docstring for layouts).

    Attributes: ``kind``, ``n_features``, ``n_classes`` (2 for logistic, C for
    softmax/mlp, 1 for least_squares), ``dim`` (= len(w)), ``l2``, ``nonconvex``.

    A subclass names its kernel module (``_kernels``, one of ``hpcsgd.kernels``'
    model modules); ``kernel_args`` are the extra trailing arguments its kernels take
    (mlp: the number of hidden units).
    """

    kind: str = ""
    convex: bool = True
    _kernels = None
    # Bound on the loss's second derivative in the margins: the smooth part's Hessian
    # is at most this times A^T A / n, A = [X, 1] (None: no such bound, e.g. the mlp).
    curvature: float | None = None

    def __init__(self, n_features: int, n_classes: int, dim: int, *, l2: float = 0.0, nonconvex: float = 0.0,
                 kernel_args: tuple = ()):
        self.n_features = int(n_features)
        self.n_classes = int(n_classes)
        self.dim = int(dim)
        self.l2 = float(l2)
        self.nonconvex = float(nonconvex)
        self._has_reg = self.l2 != 0.0 or self.nonconvex != 0.0
        self._kargs = tuple(kernel_args)

    def smoothness(self, lam_max: float) -> float:
        """L of the objective given lam_max = the largest eigenvalue of A^T A / n: the
        loss's curvature times lam_max, plus l2, plus 2 lambda for the nonconvex
        regulariser (the largest second derivative of lambda w^2 / (1 + w^2))."""
        return self.curvature * lam_max + self.l2 + 2.0 * self.nonconvex

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_features={self.n_features}, n_classes={self.n_classes}, "
            f"dim={self.dim}, l2={self.l2}, nonconvex={self.nonconvex})"
        )

    # -- parameters ------------------------------------------------------------------
    def init_params(self, rng: np.random.Generator, init: str = "default", scale: float | None = None) -> np.ndarray:
        """Fresh parameter vector of length ``dim``.

        ``init``: "default" (zeros for convex models; mlp: N(0, 1/fan_in) weights per
        layer, zero biases), "zeros", "ones", or "normal" (N(0, scale^2), scale
        defaults to 0.01).  ``scale`` is only used by "normal".
        """
        if init == "zeros" or (init == "default" and self.convex):
            return np.zeros(self.dim)
        if init == "ones":
            return np.ones(self.dim)
        if init == "normal":
            s = 0.01 if scale is None else float(scale)
            if not (math.isfinite(s) and s >= 0.0):
                raise UserError(f"model.init_scale must be a finite number >= 0, got {scale!r}")
            return rng.normal(0.0, s, self.dim)
        if init == "default":
            return self._default_init(rng)
        raise UserError(f"model.init = {init!r} is not allowed (choose from {', '.join(INIT_KINDS)})")

    def _default_init(self, rng: np.random.Generator) -> np.ndarray:  # pragma: no cover - convex models
        return np.zeros(self.dim)

    # -- data terms ------------------------------------------------------------------
    def loss_sum(self, w, X, y, idx) -> float:
        """Sum over idx of per-example data loss (no regulariser)."""
        _check_data(X, y)
        return self._kernels.loss_sum(w, X, y, _as_idx(idx), *self._kargs)

    def grad_sum(self, w, X, y, idx, out) -> float:
        """out[:] = sum over idx of per-example data gradients; returns the loss sum."""
        _check_data(X, y)
        return self._kernels.grad_sum(w, X, y, _as_idx(idx), out, *self._kargs)

    def mean_grad(self, w, X, y, idx, out) -> float:
        """out[:] = mean data gradient over idx + grad R(w); returns mean data loss + R(w)."""
        _check_data(X, y)
        idx = _as_idx(idx)
        n = idx.shape[0]
        if n == 0:
            raise ValueError("mean_grad needs at least one example")
        loss = self._kernels.grad_sum(w, X, y, idx, out, *self._kargs)
        reg = _mean_finish(w, self.l2, self.nonconvex, 1.0 / n, out)
        return loss / n + reg

    def per_example_grads(self, w, X, y, idx, out) -> None:
        """out[q, :] = data gradient of example idx[q]; out is float64 [len(idx), dim]."""
        _check_data(X, y)
        self._kernels.per_example_grads(w, X, y, _as_idx(idx), out, *self._kargs)

    def pair_grads(self, w, X, y, idx, mean_out, diffs_out) -> float:
        """In one pass over idx: mean_out[:] = mean data gradient (zeros for an empty
        idx), diffs_out[q, :] = data gradient of idx[2q] minus that of idx[2q + 1]
        (diffs_out is float64 [len(idx) // 2, dim]; an odd last example counts in the
        mean only); returns the data loss sum.  No per-example matrix is formed."""
        _check_data(X, y)
        return self._kernels.pair_grads(w, X, y, _as_idx(idx), mean_out, diffs_out, *self._kargs)

    def correct_count(self, w, X, y, idx) -> int:
        """Number of correct (argmax) predictions over idx; least_squares returns -1."""
        _check_data(X, y)
        return int(self._kernels.correct_count(w, X, y, _as_idx(idx), *self._kargs))

    def accuracy(self, w, X, y, idx) -> float:
        """Fraction of correct predictions over idx (NaN for least_squares or empty idx)."""
        idx = _as_idx(idx)
        c = self.correct_count(w, X, y, idx)
        if c < 0 or idx.shape[0] == 0:
            return math.nan
        return c / idx.shape[0]

    # -- regulariser -----------------------------------------------------------------
    def reg_value(self, w) -> float:
        """R(w) = (l2/2)||w||^2 + nonconvex * sum w_i^2/(1+w_i^2) over ALL entries."""
        if not self._has_reg:
            return 0.0
        return _reg_value(w, self.l2, self.nonconvex)

    def reg_grad_add(self, w, out, scale: float = 1.0) -> None:
        """out += scale * grad R(w)."""
        if self._has_reg:
            _reg_grad_add(w, self.l2, self.nonconvex, float(scale), out)

    # -- JIT -------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Call every kernel once on tiny arrays (5 rows) so JIT/cache loading happens now."""
        rng = np.random.default_rng(0)
        X = np.ascontiguousarray(rng.standard_normal((5, self.n_features)))
        y = np.zeros(5)
        idx = np.arange(5, dtype=np.int64)
        w = np.zeros(self.dim)
        g = np.empty(self.dim)
        self.loss_sum(w, X, y, idx)
        self.grad_sum(w, X, y, idx, g)
        self.mean_grad(w, X, y, idx, g)
        self.per_example_grads(w, X, y, idx, np.empty((5, self.dim)))
        self.pair_grads(w, X, y, idx, g, np.empty((2, self.dim)))
        self.correct_count(w, X, y, idx)
        _reg_value(w, 1.0, 1.0)
        _reg_value(w, 1.0, 0.0)
        _reg_grad_add(w, 1.0, 1.0, 1.0, g)
        _mean_finish(w, 0.0, 0.0, 1.0, g)
        prox_l1(g, 0.0)


class _OneOutput(Model):
    """A linear model with one output: w = [weights (p), bias]."""

    _n_classes = 0  # what ``n_classes`` reports

    def __init__(self, n_features: int, *, l2: float = 0.0, nonconvex: float = 0.0):
        super().__init__(n_features, self._n_classes, n_features + 1, l2=l2, nonconvex=nonconvex)


class Logistic(_OneOutput):
    """Binary logistic regression, y in {0, 1}; w = [weights (p), bias]."""

    kind = "logistic"
    curvature = 0.25  # sigma'(z) <= 1/4
    _kernels = _lg
    _n_classes = 2


class LeastSquares(_OneOutput):
    """Linear regression, loss 0.5 (x.w + b - y)^2; w = [weights (p), bias]."""

    kind = "least_squares"
    curvature = 1.0
    _kernels = _ls
    _n_classes = 1


class Softmax(Model):
    """Multinomial logistic regression; w = [W (C x p row-major), b (C)]."""

    kind = "softmax"
    curvature = 0.5  # the softmax cross-entropy Hessian in the logits is <= I / 2
    _kernels = _sm

    def __init__(self, n_features: int, n_classes: int, *, l2: float = 0.0, nonconvex: float = 0.0):
        super().__init__(n_features, n_classes, n_classes * (n_features + 1), l2=l2, nonconvex=nonconvex)


class MLP(Model):
    """One hidden layer of H tanh units, softmax over C classes.

    w = [W1 (H x p), b1 (H), W2 (C x H), b2 (C)].
    """

    kind = "mlp"
    convex = False
    _kernels = _mlp

    def __init__(self, n_features: int, n_classes: int, hidden: int, *, l2: float = 0.0, nonconvex: float = 0.0):
        self.hidden = int(hidden)
        dim = hidden * (n_features + 1) + n_classes * (hidden + 1)
        super().__init__(n_features, n_classes, dim, l2=l2, nonconvex=nonconvex, kernel_args=(self.hidden,))

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", hidden={self.hidden})"

    def _default_init(self, rng: np.random.Generator) -> np.ndarray:
        """W1 ~ N(0, 1/p), then W2 ~ N(0, 1/H) (drawn in that order); biases zero."""
        p, H, C = self.n_features, self.hidden, self.n_classes
        w = np.zeros(self.dim)
        w[: H * p] = rng.normal(0.0, 1.0 / math.sqrt(p), H * p)
        o2 = H * (p + 1)
        w[o2 : o2 + C * H] = rng.normal(0.0, 1.0 / math.sqrt(H), C * H)
        return w


def _int_arg(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise UserError(f"{name} must be an integer, got {v!r}")
    return int(v)


def _reg_arg(name: str, v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number >= 0, got {v!r}") from None
    if not (math.isfinite(f) and f >= 0.0):
        raise UserError(f"{name} must be a finite number >= 0, got {v!r}")
    return f


def make_model(
    kind: str,
    n_features: int,
    n_classes: int,
    *,
    hidden: int = 32,
    l2: float = 0.0,
    nonconvex: float = 0.0,
) -> Model:
    """Build a model; raises ``UserError`` (one line) for impossible combinations.

    ``n_classes`` must be 2 for logistic and >= 2 for softmax/mlp; least_squares
    ignores it (its ``n_classes`` is 1).  ``hidden`` is only used by mlp.
    """
    if kind not in MODEL_KINDS:
        raise UserError(f"model.kind = {kind!r} is not allowed (choose from {', '.join(MODEL_KINDS)})")
    p = _int_arg("n_features", n_features)
    if p < 1:
        raise UserError(f"data.source: a model needs >= 1 feature, got {p}")
    C = _int_arg("n_classes", n_classes)
    l2 = _reg_arg("model.l2", l2)
    nonconvex = _reg_arg("model.nonconvex", nonconvex)
    if kind == "logistic":
        if C != 2:
            raise UserError(f"model.kind = 'logistic' is binary and needs 2 classes, got {C} (use 'softmax' or 'mlp')")
        return Logistic(p, l2=l2, nonconvex=nonconvex)
    if kind == "least_squares":
        return LeastSquares(p, l2=l2, nonconvex=nonconvex)
    if C < 2:
        raise UserError(f"model.kind = {kind!r} needs >= 2 classes, got {C}")
    if kind == "softmax":
        return Softmax(p, C, l2=l2, nonconvex=nonconvex)
    H = _int_arg("model.hidden", hidden)
    if H < 1:
        raise UserError(f"model.hidden must be >= 1 for model.kind = 'mlp', got {H}")
    return MLP(p, C, H, l2=l2, nonconvex=nonconvex)
