"""Calibration of predicted probabilities: reliability curves and expected calibration error (ECE).

A model is calibrated when, among cases given probability p, a fraction p is truly positive. Discrimination
metrics (AUC) ignore this, yet a clinician reading "80 % fracture" relies on it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from osteoscope.metrics.binary import check_binary_inputs

__all__ = ["expected_calibration_error", "reliability_curve"]

_STRATEGIES = ("uniform", "quantile")


def _check_probabilities(y_true: ArrayLike, y_prob: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate 0/1 labels and probabilities in [0, 1]."""
    y, p = check_binary_inputs(y_true, y_prob)
    if (p < 0).any() or (p > 1).any():
        raise ValueError(f"y_prob must be probabilities in [0, 1]; found values in [{p.min():.4g}, {p.max():.4g}]")
    return y, p


def reliability_curve(
    y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 10, strategy: str = "uniform"
) -> dict[str, Any]:
    """Bin predicted probabilities and compare each bin's mean prediction with its observed positive rate.

    Args:
        y_true: 0/1 labels.
        y_prob: Predicted probabilities of the positive class, in [0, 1].
        n_bins: Number of bins.
        strategy: ``"uniform"`` (equal-width bins on [0, 1]) or ``"quantile"`` (bins holding about equally
            many cases; edges are quantiles of ``y_prob``, so ties can leave bins empty).

    Returns:
        ``bin_edges`` (``n_bins + 1`` floats), and per bin ``mean_predicted``, ``observed_frequency`` (NaN for
        empty bins) and ``counts``. Bin ``i`` holds ``edges[i] <= p < edges[i + 1]``; the last bin also
        holds its right edge.

    Raises:
        ValueError: on invalid labels or probabilities, ``n_bins < 1`` or an unknown strategy.
    """
    y, p = _check_probabilities(y_true, y_prob)
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    n_bins = int(n_bins)
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        edges = np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1))
    else:
        raise ValueError(f"strategy must be one of {_STRATEGIES}, got {strategy!r}")
    bin_of_case = np.searchsorted(edges[1:-1], p, side="right")
    counts = np.bincount(bin_of_case, minlength=n_bins)
    sum_prob = np.bincount(bin_of_case, weights=p, minlength=n_bins)
    sum_pos = np.bincount(bin_of_case, weights=y.astype(np.float64), minlength=n_bins)
    mean_predicted = np.full(n_bins, np.nan)
    observed = np.full(n_bins, np.nan)
    filled = counts > 0
    mean_predicted[filled] = sum_prob[filled] / counts[filled]
    observed[filled] = sum_pos[filled] / counts[filled]
    return {
        "bin_edges": edges.tolist(),
        "mean_predicted": mean_predicted.tolist(),
        "observed_frequency": observed.tolist(),
        "counts": counts.astype(int).tolist(),
    }


def expected_calibration_error(
    y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 10, strategy: str = "uniform"
) -> float:
    """ECE = sum over bins of (bin count / N) · |mean predicted - observed frequency|.

    Bins are those of :func:`reliability_curve`; empty bins contribute nothing. 0 means perfectly calibrated
    at this binning; the value depends on ``n_bins``, so report it alongside.
    """
    curve = reliability_curve(y_true, y_prob, n_bins=n_bins, strategy=strategy)
    counts = np.asarray(curve["counts"], dtype=np.float64)
    filled = counts > 0
    gap = np.abs(np.asarray(curve["mean_predicted"])[filled] - np.asarray(curve["observed_frequency"])[filled])
    return float(np.sum(counts[filled] * gap) / counts.sum())
