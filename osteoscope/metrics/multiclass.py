"""Metrics of a single-label classifier over K > 2 classes (e.g. normal / atypical / typical femur fracture).

Per-class figures are one-vs-rest: class ``k`` is the positive class and all others are negative. AUCs use
the class probability as score; sensitivity and specificity use the argmax prediction. As in
:mod:`osteoscope.metrics.binary`, undefined values (AUC of a class absent from ``y_true``) are NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from osteoscope.metrics.binary import rates_from_counts, roc_auc

__all__ = ["check_multiclass_inputs", "multiclass_metrics"]

# Tolerance on |row sum - 1| of a probability matrix (softmax outputs saved as float32 are off by ~1e-7).
_ROW_SUM_TOL = 1e-4


def check_multiclass_inputs(y_true: ArrayLike, y_prob: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate integer class labels against an ``(N, K)`` matrix of class probabilities.

    Returns:
        ``(y_true, y_prob)`` as int64 labels in ``0..K-1`` and a float64 matrix.

    Raises:
        ValueError: on shape mismatch, K < 2, labels that are not integers in ``0..K-1``, or probabilities
            that are non-finite, negative or whose rows do not sum to 1.
    """
    y = np.asarray(y_true)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"y_true must be a non-empty one-dimensional array, got shape {y.shape}")
    if y.dtype.kind not in "iuf" or not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
        raise ValueError("y_true must hold integer class indices")
    try:
        p = np.asarray(y_prob, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"y_prob must be numeric: {exc}") from exc
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"y_prob must have shape (n_cases, n_classes >= 2), got {p.shape}")
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"y_true and y_prob differ in length: {y.shape[0]} labels vs {p.shape[0]} rows")
    k = p.shape[1]
    labels = y.astype(np.int64)
    outside = (labels < 0) | (labels >= k)
    if outside.any():
        found = np.unique(labels[outside])[:5].tolist()
        raise ValueError(f"y_true must contain class indices 0..{k - 1}; found {found}")
    if not np.isfinite(p).all():
        raise ValueError(f"y_prob contains {int((~np.isfinite(p)).sum())} NaN or infinite value(s)")
    if (p < 0).any():
        raise ValueError("y_prob must not contain negative probabilities")
    bad_rows = np.flatnonzero(np.abs(p.sum(axis=1) - 1.0) > _ROW_SUM_TOL)
    if bad_rows.size:
        raise ValueError(
            f"each row of y_prob must sum to 1 (apply softmax first); {bad_rows.size} row(s) do not, "
            f"e.g. row {int(bad_rows[0])} sums to {p[bad_rows[0]].sum():.4g}"
        )
    return labels, p


def multiclass_metrics(y_true: ArrayLike, y_prob: ArrayLike, class_names: list[str] | None = None) -> dict[str, Any]:
    """Accuracy, one-vs-rest AUCs and per-class sensitivity/specificity of a K-class classifier.

    Args:
        y_true: Class indices ``0..K-1``.
        y_prob: ``(N, K)`` class probabilities, rows summing to 1.
        class_names: Optional name per class, reported as ``name``; defaults to the index as text.

    Returns:
        ``n``; ``accuracy`` of the argmax prediction; ``macro_auc``, the mean of the defined one-vs-rest
        AUCs; ``per_class``, one dict per class with ``class`` (index), ``name``, ``n`` (true cases), ``auc``,
        ``sensitivity`` and ``specificity``; and ``confusion_matrix`` as a K x K list, rows = true class,
        columns = predicted class.
    """
    y, p = check_multiclass_inputs(y_true, y_prob)
    k = p.shape[1]
    if class_names is not None and len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names given for {k} classes")
    names = list(class_names) if class_names is not None else [str(c) for c in range(k)]
    pred = np.argmax(p, axis=1)
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (y, pred), 1)
    n = int(y.shape[0])
    per_class = []
    for c in range(k):
        tp = int(matrix[c, c])
        fn = int(matrix[c].sum()) - tp
        fp = int(matrix[:, c].sum()) - tp
        tn = n - tp - fn - fp
        rates = rates_from_counts(tp, fp, fn, tn)
        per_class.append(
            {
                "class": c,
                "name": names[c],
                "n": tp + fn,
                "auc": roc_auc((y == c).astype(np.int64), p[:, c]),
                "sensitivity": float(rates["sensitivity"]),
                "specificity": float(rates["specificity"]),
            }
        )
    aucs = [row["auc"] for row in per_class if not np.isnan(row["auc"])]
    return {
        "n": n,
        "accuracy": float(np.trace(matrix) / n),
        "macro_auc": float(np.mean(aucs)) if aucs else float("nan"),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }
