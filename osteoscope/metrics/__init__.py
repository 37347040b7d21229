"""Classification metrics and their statistics (bootstrap CIs, DeLong, McNemar) on numpy arrays."""

from __future__ import annotations

from osteoscope.metrics.binary import (
    binary_metrics,
    check_binary_inputs,
    roc_auc,
    roc_points,
    sensitivity_at_specificity,
    specificity_at_sensitivity,
    youden_threshold,
)
from osteoscope.metrics.statistics import (
    bootstrap_ci,
    bootstrap_metrics,
    delong_ci,
    delong_test,
    mcnemar_test,
)

__all__ = [
    "binary_metrics",
    "bootstrap_ci",
    "bootstrap_metrics",
    "check_binary_inputs",
    "delong_ci",
    "delong_test",
    "mcnemar_test",
    "roc_auc",
    "roc_points",
    "sensitivity_at_specificity",
    "specificity_at_sensitivity",
    "youden_threshold",
]
