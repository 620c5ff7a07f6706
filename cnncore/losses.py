"""Losses: softmax cross-entropy on class scores, mean squared error on any output."""

from __future__ import annotations

from typing import Any

import numpy as np

from .checks import as_float_array
from .errors import DtypeError, ParameterError, ShapeError


def softmax_cross_entropy(scores: Any, y: Any) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy over the batch, and its gradient.

    ``loss = mean_i(log(sum_j exp(scores[i, j])) - scores[i, y[i]])``, computed with
    the maximum of each row subtracted first (log-sum-exp), so large scores do
    not overflow.

    Parameters
    ----------
    scores : array_like, shape (N, C)
        float32 or float64 (kept); integer or bool (converted to float64).
    y : array_like of int, shape (N,)
        Class labels, ``0 <= y[i] < C``. Booleans and floats are rejected.

    Returns
    -------
    loss : float
    dscores : ndarray, shape (N, C)
        ``(softmax(scores) - onehot(y)) / N``, same dtype as ``scores``.

    Raises
    ------
    cnncore.DtypeError
        If ``scores`` is not real numeric, or ``y`` is not an integer array.
    cnncore.ShapeError
        If ``scores`` is not 2-D with non-empty dimensions or ``y`` is not ``(N,)``.
    cnncore.ParameterError
        If a label is outside ``[0, C)``.
    """
    scores = as_float_array(scores, "scores", ndim=2)
    n, c = scores.shape
    if n == 0 or c == 0:
        raise ShapeError(f"scores has an empty dimension: shape {scores.shape}", arg="scores")
    y = check_labels(y, n, c)
    log_probs = log_softmax(scores)
    rows = np.arange(n)
    loss = 0.0 - float(np.mean(log_probs[rows, y]))  # 0.0 - x: a perfect score is 0.0, not -0.0
    dscores = np.exp(log_probs)
    dscores[rows, y] -= 1
    dscores /= n
    return loss, dscores


def log_softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise ``log(softmax(scores))``, with each row's maximum subtracted first.

    Parameters
    ----------
    scores : ndarray, shape (N, C)
        float32 or float64.

    Returns
    -------
    ndarray, shape (N, C)
        Same dtype as ``scores``; ``exp`` of it is the softmax (rows sum to 1).
    """
    shifted = scores - scores.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def mse_loss(pred: Any, target: Any) -> tuple[float, np.ndarray]:
    """Mean squared error over all elements, and its gradient.

    ``loss = mean((pred - target) ** 2)``, the mean over every element (batch and
    features alike), so ``dpred = 2 * (pred - target) / pred.size``.

    Parameters
    ----------
    pred : array_like, any shape with at least one dimension
        float32 or float64 (kept); integer or bool (converted to float64).
    target : array_like, shape of ``pred``

    Returns
    -------
    loss : float
    dpred : ndarray, shape of ``pred``
        Same dtype as ``pred``.

    Raises
    ------
    cnncore.DtypeError
        If an array is not real numeric.
    cnncore.ShapeError
        If ``target``'s shape differs from ``pred``'s.
    """
    pred = as_float_array(pred, "pred")
    target = as_float_array(target, "target")
    if target.shape != pred.shape:
        raise ShapeError(
            f"target has shape {target.shape} but the prediction has shape {pred.shape}",
            arg="target",
        )
    diff = pred - target.astype(pred.dtype, copy=False)
    loss = float(np.mean(np.square(diff)))
    return loss, diff * pred.dtype.type(2 / diff.size)


def check_labels(y: Any, n: int, c: int) -> np.ndarray:
    y = np.asarray(y)
    if y.dtype.kind not in "iu":
        raise DtypeError(f"y must hold integer class labels, got dtype {y.dtype}", arg="y")
    if y.shape != (n,):
        raise ShapeError(f"y must have shape ({n},) to match scores, got {y.shape}", arg="y")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= c:
        bad = low if low < 0 else high
        raise ParameterError(f"y has label {bad} but scores has {c} classes (0..{c - 1})", arg="y")
    return y
