"""Summaries of k-fold cross-validation: per-fold mean ± SD and metrics on the pooled out-of-fold predictions.

Papers on small bone datasets report either (mean ± SD over folds) or one figure on all out-of-fold
predictions pooled; the two differ (AUC is not additive over folds), so both are offered and kept apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from osteoscope.metrics.binary import binary_metrics, check_binary_inputs

__all__ = ["aggregate_folds", "pooled_binary_metrics"]


def _is_scalar_number(value: Any) -> bool:
    """True for real numbers (including numpy scalars) and None (a figure that could not be estimated), False
    for bools, lists and strings."""
    return value is None or (isinstance(value, Real | np.number) and not isinstance(value, bool | np.bool_))


def aggregate_folds(fold_metrics: Sequence[dict[str, Any]], pooled: dict[str, Any] | None = None) -> dict[str, Any]:
    """Mean, sample SD (ddof=1), min and max of every scalar metric over folds.

    Args:
        fold_metrics: One dict per fold, e.g. :func:`binary_metrics` outputs. Non-scalar entries (confusion
            matrices, names) are left out of the summary; every scalar metric must occur in every fold.
        pooled: Optional metrics on the pooled out-of-fold predictions, passed through as ``"pooled"``.

    Returns:
        ``{metric: {"mean", "sd", "min", "max", "n_folds"}}`` plus ``"pooled"`` when given. Folds where a
        metric is NaN or None (undefined) are skipped for it and ``n_folds`` counts the folds used; SD needs
        two, and a figure no fold defines is NaN.

    Raises:
        ValueError: when there are no folds or a scalar metric is missing from some fold.
    """
    if not fold_metrics:
        raise ValueError("aggregate_folds needs at least one fold")
    names = [k for k, v in fold_metrics[0].items() if _is_scalar_number(v)]
    for i, fold in enumerate(fold_metrics):
        extra = sorted(k for k, v in fold.items() if _is_scalar_number(v) and k not in names)
        missing = sorted(k for k in names if k not in fold or not _is_scalar_number(fold[k]))
        if extra or missing:
            raise ValueError(f"fold {i} has different scalar metrics than fold 0: missing {missing}, extra {extra}")
    summary: dict[str, Any] = {}
    for name in names:
        values = np.array([math.nan if fold[name] is None else float(fold[name]) for fold in fold_metrics])
        values = values[~np.isnan(values)]
        n = int(values.size)
        summary[name] = {
            "mean": float(values.mean()) if n else math.nan,
            "sd": float(values.std(ddof=1)) if n >= 2 else math.nan,
            "min": float(values.min()) if n else math.nan,
            "max": float(values.max()) if n else math.nan,
            "n_folds": n,
        }
    if pooled is not None:
        summary["pooled"] = pooled
    return summary


def pooled_binary_metrics(
    fold_results: Sequence[tuple[ArrayLike, ArrayLike]], threshold: float = 0.5
) -> dict[str, Any]:
    """:func:`binary_metrics` on the concatenated out-of-fold ``(y_true, y_score)`` of all folds.

    Returns:
        The :func:`binary_metrics` dict plus ``n_folds``.

    Raises:
        ValueError: when there are no folds or a fold's inputs are malformed (the message names the fold).
    """
    if not fold_results:
        raise ValueError("pooled_binary_metrics needs at least one fold")
    labels, scores = [], []
    for i, (y_true, y_score) in enumerate(fold_results):
        try:
            y, s = check_binary_inputs(y_true, y_score)
        except ValueError as exc:
            raise ValueError(f"fold {i}: {exc}") from exc
        labels.append(y)
        scores.append(s)
    result = binary_metrics(np.concatenate(labels), np.concatenate(scores), threshold=threshold)
    result["n_folds"] = len(fold_results)
    return result
