"""Multi-label metrics (several findings per image, e.g. calcaneus fracture subtypes) and average precision.

Definitions follow the MSRT calcaneus paper (Mu et al.), checked against its Tables 1-2:

* per label: ``acc`` = (TP + TN) / N and ``f1`` = 2TP / (2TP + FP + FN) at ``score >= threshold``;
  ``ap`` = average precision of the label's scores.
* ``exact_match``: fraction of cases whose whole predicted label set equals the true set.
* ``p_c``, ``r_c``, ``f1_c`` (per-Class, macro): means over labels of per-label precision, recall and F1.
  The paper's F1-C is the mean of per-label F1 (not the harmonic mean of P-C and R-C): for MSRT the
  per-label F1s of Table 1 average to 80.79, its Table 2 F1-C, while 2·P-C·R-C/(P-C+R-C) gives 80.82
  (EfficientNet-B3: 77.32 listed, mean of F1s 77.32, harmonic mean 77.68).
* ``p_o``, ``r_o``, ``f1_o`` (Overall, micro): TP, FP and FN pooled over all labels first.
* ``map``: mean over labels of ``ap``.
* ``mean_acc``: mean of per-label ``acc`` (the "Overall" ACC row of the paper's Table 1).

Macro means skip labels where a value is undefined (NaN), e.g. precision of a label never predicted
positive or AP of a label with no positive case; a mean with no defined value is NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from osteoscope.metrics.binary import check_binary_inputs, check_labels, rates_from_counts

__all__ = ["average_precision", "check_multilabel_inputs", "multilabel_metrics", "precision_recall_points"]


def _pr_checked(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and threshold at each distinct score (descending) for inputs with a positive."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    last_of_level = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.shape[0] - 1]
    tps = np.cumsum(y[order])[last_of_level]
    predicted = last_of_level + 1
    return tps / predicted, tps / tps[-1], s_sorted[last_of_level]


def precision_recall_points(y_true: ArrayLike, y_score: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve vertices, one per distinct score.

    Returns:
        ``(precision, recall, thresholds)`` with thresholds decreasing; vertex ``k`` is the operating point
        of ``score >= thresholds[k]``, so recall is non-decreasing.

    Raises:
        ValueError: on invalid input or when there is no positive case (recall is undefined).
    """
    y, s = check_binary_inputs(y_true, y_score)
    if not y.any():
        raise ValueError("a precision-recall curve needs at least one positive case")
    return _pr_checked(y, s)


def average_precision(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Average precision, sum over thresholds of (R_k - R_{k-1}) · P_k (no interpolation).

    This is the step-wise area under the precision-recall curve (the definition scikit-learn uses).
    Returns NaN when there is no positive case.
    """
    y, s = check_binary_inputs(y_true, y_score)
    if not y.any():
        return float("nan")
    precision, recall, _ = _pr_checked(y, s)
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def _mean_defined(values: np.ndarray) -> float:
    """Mean of the non-NaN entries, NaN when there are none (without numpy's empty-slice warning)."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def check_multilabel_inputs(y_true: ArrayLike, y_score: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate an ``(N, L)`` 0/1 label matrix and a same-shaped finite score matrix."""
    y = np.asarray(y_true)
    if y.ndim != 2 or y.shape[0] == 0 or y.shape[1] == 0:
        raise ValueError(f"y_true must have shape (n_cases, n_labels), got {y.shape}")
    y = check_labels(y.ravel(), "y_true").reshape(y.shape)
    try:
        s = np.asarray(y_score, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"y_score must be numeric: {exc}") from exc
    if s.shape != y.shape:
        raise ValueError(f"y_true and y_score differ in shape: {y.shape} vs {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"y_score contains {int((~np.isfinite(s)).sum())} NaN or infinite value(s)")
    return y, s


def multilabel_metrics(
    y_true: ArrayLike, y_score: ArrayLike, threshold: float = 0.5, class_names: list[str] | None = None
) -> dict[str, Any]:
    """Per-label and averaged metrics of a multi-label classifier (see the module docstring for definitions).

    Args:
        y_true: ``(N, L)`` 0/1 matrix, one column per label.
        y_score: ``(N, L)`` finite scores; a label is predicted present when ``score >= threshold``.
        threshold: Decision threshold shared by all labels.
        class_names: Optional name per label; defaults to the column index as text.

    Returns:
        ``n``, ``n_labels``, ``threshold``, ``per_class`` (list of dicts with ``name``, ``n_positive``,
        ``acc``, ``precision``, ``recall``, ``f1``, ``ap``), ``exact_match``, ``mean_acc``, ``p_c``, ``r_c``,
        ``f1_c``, ``p_o``, ``r_o``, ``f1_o`` and ``map``.

    Raises:
        ValueError: on malformed inputs, a NaN threshold or a wrong number of class names.
    """
    y, s = check_multilabel_inputs(y_true, y_score)
    threshold = float(threshold)
    if np.isnan(threshold):
        raise ValueError("threshold must not be NaN")
    n, n_labels = y.shape
    if class_names is not None and len(class_names) != n_labels:
        raise ValueError(f"{len(class_names)} class names given for {n_labels} labels")
    names = list(class_names) if class_names is not None else [str(j) for j in range(n_labels)]
    pred = s >= threshold
    pos = y == 1
    tp = np.sum(pred & pos, axis=0)
    fp = np.sum(pred & ~pos, axis=0)
    fn = np.sum(~pred & pos, axis=0)
    tn = np.sum(~pred & ~pos, axis=0)
    rates = rates_from_counts(tp, fp, fn, tn)
    ap = np.array([average_precision(y[:, j], s[:, j]) for j in range(n_labels)])
    per_class = [
        {
            "name": names[j],
            "n_positive": int(pos[:, j].sum()),
            "acc": float(rates["accuracy"][j]),
            "precision": float(rates["precision"][j]),
            "recall": float(rates["sensitivity"][j]),
            "f1": float(rates["f1"][j]),
            "ap": float(ap[j]),
        }
        for j in range(n_labels)
    ]
    overall = {k: float(v) for k, v in rates_from_counts(tp.sum(), fp.sum(), fn.sum(), tn.sum()).items()}
    return {
        "n": int(n),
        "n_labels": int(n_labels),
        "threshold": threshold,
        "per_class": per_class,
        "exact_match": float(np.mean(np.all(pred == pos, axis=1))),
        "mean_acc": _mean_defined(rates["accuracy"]),
        "p_c": _mean_defined(rates["precision"]),
        "r_c": _mean_defined(rates["sensitivity"]),
        "f1_c": _mean_defined(rates["f1"]),
        "p_o": overall["precision"],
        "r_o": overall["sensitivity"],
        "f1_o": overall["f1"],
        "map": _mean_defined(ap),
    }
