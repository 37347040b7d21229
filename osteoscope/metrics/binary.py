"""Binary classification metrics on numpy arrays.

Convention used throughout: a case is predicted positive when ``score >= threshold``. Values that are
undefined for the data at hand (AUC with a single class, precision with no predicted positives, ...) are
``float('nan')`` rather than exceptions, so that per-subgroup reports never crash on a small subgroup;
malformed inputs (unequal lengths, labels outside {0, 1}, non-finite scores) raise ``ValueError``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import rankdata

__all__ = [
    "binary_metrics",
    "check_binary_inputs",
    "check_labels",
    "rates_from_counts",
    "roc_auc",
    "roc_points",
    "sensitivity_at_specificity",
    "specificity_at_sensitivity",
    "youden_threshold",
]


def check_labels(y: ArrayLike, name: str = "y_true") -> np.ndarray:
    """Return ``y`` as a 1-D int64 array of 0/1 labels, or raise ``ValueError`` saying what is wrong."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must hold numeric 0/1 labels, got dtype {arr.dtype}")
    bad = ~np.isin(arr, (0, 1))
    if bad.any():
        examples = np.unique(arr[bad])[:5].tolist()
        raise ValueError(f"{name} must contain only 0 and 1; found {examples}")
    return arr.astype(np.int64)


def check_binary_inputs(y_true: ArrayLike, y_score: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate a label vector and a score vector of the same length.

    Returns:
        ``(y_true, y_score)`` as int64 0/1 labels and finite float64 scores.

    Raises:
        ValueError: on unequal lengths, labels outside {0, 1}, or NaN/inf/non-numeric scores.
    """
    y = check_labels(y_true, "y_true")
    try:
        s = np.asarray(y_score, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"y_score must be numeric: {exc}") from exc
    if s.ndim != 1:
        raise ValueError(f"y_score must be one-dimensional, got shape {s.shape}")
    if s.shape[0] != y.shape[0]:
        raise ValueError(f"y_true and y_score differ in length: {y.shape[0]} labels vs {s.shape[0]} scores")
    if not np.isfinite(s).all():
        raise ValueError(f"y_score contains {int((~np.isfinite(s)).sum())} NaN or infinite value(s)")
    return y, s


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise ``num / den`` with NaN where ``den == 0``."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def rates_from_counts(tp: ArrayLike, fp: ArrayLike, fn: ArrayLike, tn: ArrayLike) -> dict[str, np.ndarray]:
    """Derive threshold metrics from confusion counts (scalars or arrays, e.g. one per bootstrap replicate).

    Counts may be non-integer weights. F1 is ``2tp / (2tp + fp + fn)``, so it is 0 (not NaN) when positives
    exist but none is found, and NaN only when there are neither positives nor predicted positives.
    """
    tp, fp, fn, tn = (np.asarray(c, dtype=np.float64) for c in (tp, fp, fn, tn))
    return {
        "accuracy": _divide(tp + tn, tp + fp + fn + tn),
        "sensitivity": _divide(tp, tp + fn),
        "specificity": _divide(tn, tn + fp),
        "precision": _divide(tp, tp + fp),
        "npv": _divide(tn, tn + fn),
        "f1": _divide(2 * tp, 2 * tp + fp + fn),
    }


def _auc_checked(y: np.ndarray, s: np.ndarray) -> float:
    """Mann–Whitney AUC (ties count one half) from midranks; NaN with a single class."""
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_auc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Area under the ROC curve, i.e. P(score of a positive > score of a negative) + ½ P(tie).

    Returns NaN when only one class is present.
    """
    y, s = check_binary_inputs(y_true, y_score)
    return _auc_checked(y, s)


def binary_metrics(y_true: ArrayLike, y_score: ArrayLike, threshold: float = 0.5) -> dict[str, Any]:
    """Standard metrics of a binary classifier at one operating point.

    Args:
        y_true: 0/1 labels.
        y_score: Finite scores, higher meaning more likely positive.
        threshold: Cases with ``score >= threshold`` are predicted positive.

    Returns:
        ``n``, ``n_positive``, ``auc``, ``accuracy``, ``sensitivity`` (recall), ``specificity``,
        ``precision`` (PPV), ``npv``, ``f1``, ``threshold`` and ``confusion_matrix`` as
        ``[[tn, fp], [fn, tp]]``. Undefined values are NaN.
    """
    y, s = check_binary_inputs(y_true, y_score)
    threshold = float(threshold)
    if np.isnan(threshold):
        raise ValueError("threshold must not be NaN")
    pred = s >= threshold
    pos = y == 1
    tp = int(np.sum(pred & pos))
    fp = int(np.sum(pred & ~pos))
    fn = int(np.sum(~pred & pos))
    tn = int(np.sum(~pred & ~pos))
    rates = {k: float(v) for k, v in rates_from_counts(tp, fp, fn, tn).items()}
    return {
        "n": int(y.shape[0]),
        "n_positive": int(pos.sum()),
        "auc": _auc_checked(y, s),
        **rates,
        "threshold": threshold,
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }


def _roc_checked(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC vertices for validated inputs containing both classes (one vertex per distinct score)."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    last_of_level = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.shape[0] - 1]
    tps = np.cumsum(y_sorted)[last_of_level]
    fps = last_of_level + 1 - tps
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    thresholds = np.r_[np.inf, s_sorted[last_of_level]]
    return fpr, tpr, thresholds


def _require_both_classes(y: np.ndarray, what: str) -> None:
    """Raise ``ValueError`` unless ``y`` holds at least one positive and one negative."""
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.shape[0]:
        raise ValueError(
            f"{what} needs at least one positive and one negative case; got {n_pos} positives of {y.shape[0]}"
        )


def roc_points(y_true: ArrayLike, y_score: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve vertices, one per distinct score, without dropping collinear points.

    Returns:
        ``(fpr, tpr, thresholds)``; thresholds decrease from ``inf`` (nothing predicted positive) to the
        lowest score, and vertex ``k`` is the operating point of ``score >= thresholds[k]``.

    Raises:
        ValueError: on invalid input or when only one class is present (the curve is undefined).
    """
    y, s = check_binary_inputs(y_true, y_score)
    _require_both_classes(y, "An ROC curve")
    return _roc_checked(y, s)


def youden_threshold(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1.

    The returned value is an observed score, so ``binary_metrics(..., threshold=t)`` reproduces the chosen
    point. Among equally good thresholds the highest (most specific) is returned.

    Raises:
        ValueError: on invalid input or when only one class is present.
    """
    y, s = check_binary_inputs(y_true, y_score)
    _require_both_classes(y, "Youden's threshold")
    fpr, tpr, thresholds = _roc_checked(y, s)
    j = tpr[1:] - fpr[1:]
    return float(thresholds[1:][int(np.argmax(j))])


def _check_fraction(value: float, name: str) -> float:
    """Return ``value`` as float if it lies in [0, 1], else raise ``ValueError``."""
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return value


def _best_at(y_true: ArrayLike, y_score: ArrayLike, target: float, name: str, constrain_specificity: bool) -> float:
    """Best achievable value of one rate among ROC points where the other rate is at least ``target``."""
    target = _check_fraction(target, name)
    y, s = check_binary_inputs(y_true, y_score)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.shape[0]:
        return float("nan")
    fpr, tpr, _ = _roc_checked(y, s)
    specificity = 1.0 - fpr
    constrained, optimised = (specificity, tpr) if constrain_specificity else (tpr, specificity)
    return float(optimised[constrained >= target - 1e-12].max())


def sensitivity_at_specificity(y_true: ArrayLike, y_score: ArrayLike, specificity: float) -> float:
    """Highest sensitivity over thresholds whose specificity is at least ``specificity``.

    Only achievable operating points count (no interpolation). NaN when only one class is present.
    """
    return _best_at(y_true, y_score, specificity, "specificity", constrain_specificity=True)


def specificity_at_sensitivity(y_true: ArrayLike, y_score: ArrayLike, sensitivity: float) -> float:
    """Highest specificity over thresholds whose sensitivity is at least ``sensitivity``.

    Only achievable operating points count (no interpolation). NaN when only one class is present.
    """
    return _best_at(y_true, y_score, sensitivity, "sensitivity", constrain_specificity=False)
