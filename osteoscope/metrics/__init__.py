"""Metrics: binary, multi-class, multi-label, calibration, k-fold; bootstrap, DeLong and McNemar statistics."""

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
from osteoscope.metrics.calibration import expected_calibration_error, reliability_curve
from osteoscope.metrics.kfold import aggregate_folds, pooled_binary_metrics
from osteoscope.metrics.multiclass import check_multiclass_inputs, multiclass_metrics
from osteoscope.metrics.multilabel import (
    average_precision,
    check_multilabel_inputs,
    multilabel_metrics,
    precision_recall_points,
)
from osteoscope.metrics.statistics import (
    bootstrap_ci,
    bootstrap_metrics,
    bootstrap_multiclass,
    bootstrap_multilabel,
    bootstrap_roc_band,
    bootstrap_structured,
    delong_ci,
    delong_test,
    mcnemar_test,
    paired_bootstrap_test,
)

__all__ = [
    "aggregate_folds",
    "average_precision",
    "binary_metrics",
    "bootstrap_ci",
    "bootstrap_metrics",
    "bootstrap_multiclass",
    "bootstrap_multilabel",
    "bootstrap_roc_band",
    "bootstrap_structured",
    "check_binary_inputs",
    "check_multiclass_inputs",
    "check_multilabel_inputs",
    "delong_ci",
    "delong_test",
    "expected_calibration_error",
    "mcnemar_test",
    "multiclass_metrics",
    "multilabel_metrics",
    "paired_bootstrap_test",
    "pooled_binary_metrics",
    "precision_recall_points",
    "reliability_curve",
    "roc_auc",
    "roc_points",
    "sensitivity_at_specificity",
    "specificity_at_sensitivity",
    "youden_threshold",
]
