"""Tests for multi-class, multi-label, calibration and k-fold metrics: hand examples and sklearn agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

from osteoscope.metrics import (
    aggregate_folds,
    average_precision,
    binary_metrics,
    expected_calibration_error,
    multiclass_metrics,
    multilabel_metrics,
    pooled_binary_metrics,
    precision_recall_points,
    reliability_curve,
)

# ----------------------------------------------------------------------------- multi-class

# Six cases, three classes. Argmax predictions: 0, 1, 1, 1, 2, 0.
MC_TRUE = [0, 0, 1, 1, 2, 2]
MC_PROB = [
    [0.7, 0.2, 0.1],
    [0.3, 0.5, 0.2],
    [0.1, 0.8, 0.1],
    [0.2, 0.7, 0.1],
    [0.1, 0.1, 0.8],
    [0.6, 0.2, 0.2],
]


def test_multiclass_hand_example() -> None:
    # Confusion (rows true): [[1, 1, 0], [0, 2, 0], [1, 0, 1]].
    #   class 0: tp 1, fn 1, fp 1 (case 5), tn 3 -> sens 1/2, spec 3/4
    #   class 1: tp 2, fn 0, fp 1 (case 1), tn 3 -> sens 1,   spec 3/4
    #   class 2: tp 1, fn 1, fp 0,          tn 4 -> sens 1/2, spec 1
    # AUC of class 2: positives score 0.8, 0.2; negatives 0.1, 0.2, 0.1, 0.1.
    #   0.8 beats all 4 -> 4; 0.2 beats three 0.1 and ties one 0.2 -> 3.5; (4 + 3.5) / 8 = 0.9375
    m = multiclass_metrics(MC_TRUE, MC_PROB, class_names=["normal", "AFF", "NFF"])
    assert m["n"] == 6
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    sens = [row["sensitivity"] for row in m["per_class"]]
    spec = [row["specificity"] for row in m["per_class"]]
    assert sens == pytest.approx([0.5, 1.0, 0.5])
    assert spec == pytest.approx([0.75, 0.75, 1.0])
    assert [row["n"] for row in m["per_class"]] == [2, 2, 2]
    assert [row["name"] for row in m["per_class"]] == ["normal", "AFF", "NFF"]
    assert m["per_class"][2]["auc"] == pytest.approx(0.9375)
    assert m["macro_auc"] == pytest.approx(roc_auc_score(MC_TRUE, MC_PROB, multi_class="ovr", average="macro"))


def test_multiclass_macro_auc_matches_sklearn_random() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 80)
    logits = rng.normal(size=(80, 4)) + 1.5 * np.eye(4)[y]
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    m = multiclass_metrics(y, prob)
    assert m["macro_auc"] == pytest.approx(roc_auc_score(y, prob, multi_class="ovr", average="macro"), abs=1e-12)
    assert m["accuracy"] == pytest.approx(np.mean(prob.argmax(axis=1) == y))
    assert np.sum(m["confusion_matrix"]) == 80


def test_multiclass_absent_class_gives_nan_auc_and_mean_of_rest() -> None:
    y = [0, 1, 0, 1]
    prob = [[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.4, 0.5, 0.1]]
    m = multiclass_metrics(y, prob)
    assert math.isnan(m["per_class"][2]["auc"])
    assert m["per_class"][2]["n"] == 0
    assert m["macro_auc"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("y", "prob", "message"),
    [
        ([0, 1], [[0.5, 0.6], [0.5, 0.5]], "sum to 1"),
        ([0, 1], [[1.2, -0.2], [0.5, 0.5]], "negative"),
        ([0, 3], [[0.5, 0.5], [0.5, 0.5]], "class indices 0..1"),
        ([0, 1, 1], [[0.5, 0.5], [0.5, 0.5]], "differ in length"),
        ([0, 1], [0.5, 0.5], "shape"),
        ([0.5, 1], [[0.5, 0.5], [0.5, 0.5]], "integer"),
        ([0, 1], [[np.nan, 0.5], [0.5, 0.5]], "NaN"),
    ],
)
def test_multiclass_rejects_bad_input(y: list, prob: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        multiclass_metrics(y, prob)


# ----------------------------------------------------------------------------- multi-label

# Four cases, three labels, threshold 0.5 (predicted present when score >= 0.5).
ML_TRUE = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
ML_SCORE = np.array(
    [
        [0.9, 0.2, 0.6],  # pred [1, 0, 1]  exact match
        [0.6, 0.7, 0.5],  # pred [1, 1, 1]  (0.5 counts as positive)
        [0.8, 0.4, 0.3],  # pred [1, 0, 0]
        [0.1, 0.3, 0.55],  # pred [0, 0, 1]  exact match
    ]
)


def test_multilabel_hand_example() -> None:
    # Label 0: true [1,0,1,0] pred [1,1,1,0] -> tp 2 fp 1 fn 0 tn 1: acc 3/4, P 2/3, R 1,   F1 4/5
    # Label 1: true [0,1,1,0] pred [0,1,0,0] -> tp 1 fp 0 fn 1 tn 2: acc 3/4, P 1,   R 1/2, F1 2/3
    # Label 2: true [1,0,0,1] pred [1,1,0,1] -> tp 2 fp 1 fn 0 tn 1: acc 3/4, P 2/3, R 1,   F1 4/5
    # Exact match: cases 0 and 3 -> 2/4.
    # P-C = (2/3 + 1 + 2/3) / 3 = 7/9;  R-C = (1 + 1/2 + 1) / 3 = 5/6;  F1-C = (4/5 + 2/3 + 4/5) / 3 = 34/45
    #   (the harmonic mean of P-C and R-C would be 0.8046, so this also checks F1-C is a mean of F1s).
    # Overall: TP 5, FP 2, FN 1 -> P-O = 5/7, R-O = 5/6, F1-O = 10/13.
    # AP: every label ranks all its positives first -> AP 1 each, mAP 1.
    m = multilabel_metrics(ML_TRUE, ML_SCORE, class_names=["tuberosity", "primary line", "body"])
    assert [c["name"] for c in m["per_class"]] == ["tuberosity", "primary line", "body"]
    assert [c["acc"] for c in m["per_class"]] == pytest.approx([0.75, 0.75, 0.75])
    assert [c["f1"] for c in m["per_class"]] == pytest.approx([0.8, 2 / 3, 0.8])
    assert [c["ap"] for c in m["per_class"]] == pytest.approx([1.0, 1.0, 1.0])
    assert m["exact_match"] == pytest.approx(0.5)
    assert m["mean_acc"] == pytest.approx(0.75)
    assert m["p_c"] == pytest.approx(7 / 9)
    assert m["r_c"] == pytest.approx(5 / 6)
    assert m["f1_c"] == pytest.approx(34 / 45)
    assert m["p_o"] == pytest.approx(5 / 7)
    assert m["r_o"] == pytest.approx(5 / 6)
    assert m["f1_o"] == pytest.approx(10 / 13)
    assert m["map"] == pytest.approx(1.0)
    # The same figures from sklearn's macro / micro averages.
    pred = (ML_SCORE >= 0.5).astype(int)
    assert m["p_c"] == pytest.approx(precision_score(ML_TRUE, pred, average="macro"))
    assert m["f1_c"] == pytest.approx(f1_score(ML_TRUE, pred, average="macro"))
    assert m["r_o"] == pytest.approx(recall_score(ML_TRUE, pred, average="micro"))
    assert m["f1_o"] == pytest.approx(f1_score(ML_TRUE, pred, average="micro"))


def test_multilabel_map_matches_sklearn_and_threshold_matters() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, (30, 5))
    y[0] = 1  # every label has a positive
    score = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    m = multilabel_metrics(y, score)
    assert m["map"] == pytest.approx(average_precision_score(y, score, average="macro"), abs=1e-12)
    strict = multilabel_metrics(y, score, threshold=0.9)
    assert strict["map"] == m["map"]  # ranking metric, threshold-free
    assert strict["r_o"] < m["r_o"]


def test_multilabel_undefined_values_are_skipped_in_macro_means() -> None:
    # Label 1 has no positives and is never predicted: precision, recall, F1 and AP are undefined.
    y = [[1, 0], [0, 0], [1, 0]]
    s = [[0.9, 0.1], [0.2, 0.2], [0.4, 0.3]]
    m = multilabel_metrics(y, s)
    assert math.isnan(m["per_class"][1]["ap"])
    assert math.isnan(m["per_class"][1]["f1"])
    assert m["per_class"][1]["acc"] == 1.0
    assert m["p_c"] == pytest.approx(1.0)  # label 0: tp 1, fp 0
    assert m["r_c"] == pytest.approx(0.5)
    assert m["map"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("y", "s", "message"),
    [
        ([[1, 0]], [[0.5, 0.5, 0.5]], "differ in shape"),
        ([1, 0], [0.5, 0.5], "shape"),
        ([[1, 2]], [[0.5, 0.5]], "only 0 and 1"),
        ([[1, 0]], [[np.inf, 0.5]], "infinite"),
    ],
)
def test_multilabel_rejects_bad_input(y: list, s: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        multilabel_metrics(y, s)
    with pytest.raises(ValueError, match="class names"):
        multilabel_metrics([[1, 0]], [[0.5, 0.5]], class_names=["a"])


def test_average_precision_hand_example_with_tie() -> None:
    # Scores 0.9 (+), 0.8 (-), 0.7 (+), 0.7 (-), 0.2 (+); one vertex per distinct score:
    #   >= 0.9: P 1/1, R 1/3;  >= 0.8: P 1/2, R 1/3;  >= 0.7: P 2/4, R 2/3;  >= 0.2: P 3/5, R 1
    #   AP = 1/3 * 1 + 0 * 1/2 + 1/3 * 1/2 + 1/3 * 3/5 = 0.7
    y = [1, 0, 1, 0, 1]
    s = [0.9, 0.8, 0.7, 0.7, 0.2]
    precision, recall, thresholds = precision_recall_points(y, s)
    assert precision == pytest.approx([1, 0.5, 0.5, 0.6])
    assert recall == pytest.approx([1 / 3, 1 / 3, 2 / 3, 1])
    assert thresholds == pytest.approx([0.9, 0.8, 0.7, 0.2])
    assert average_precision(y, s) == pytest.approx(0.7)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s))
    assert math.isnan(average_precision([0, 0], [0.1, 0.2]))
    with pytest.raises(ValueError, match="positive case"):
        precision_recall_points([0, 0], [0.1, 0.2])


# ----------------------------------------------------------------------------- calibration


def test_ece_hand_example_two_bins() -> None:
    # Bin [0, 0.5): predictions 0.1, 0.2, 0.3 (mean 0.2), labels 0, 0, 1 (observed 1/3) -> gap 2/15
    # Bin [0.5, 1]: predictions 0.7, 0.8, 0.9 (mean 0.8), labels 1, 1, 0 (observed 2/3) -> gap 2/15
    # ECE = 3/6 * 2/15 + 3/6 * 2/15 = 2/15
    y = [0, 0, 1, 1, 1, 0]
    p = [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]
    curve = reliability_curve(y, p, n_bins=2)
    assert curve["bin_edges"] == pytest.approx([0.0, 0.5, 1.0])
    assert curve["counts"] == [3, 3]
    assert curve["mean_predicted"] == pytest.approx([0.2, 0.8])
    assert curve["observed_frequency"] == pytest.approx([1 / 3, 2 / 3])
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(2 / 15)


def test_ece_zero_when_each_bin_is_calibrated() -> None:
    # 0.25 given to four cases of which one is positive; 0.75 to four of which three are.
    y = [1, 0, 0, 0, 1, 1, 1, 0]
    p = [0.25] * 4 + [0.75] * 4
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.0, abs=1e-15)
    assert expected_calibration_error(y, p, n_bins=10) == pytest.approx(0.0, abs=1e-15)
    # Flipping the probabilities makes it badly calibrated: every bin is off by 0.5.
    assert expected_calibration_error(y, [1 - v for v in p], n_bins=2) == pytest.approx(0.5)


def test_reliability_edges_empty_bins_and_sklearn_agreement() -> None:
    # 0.5 belongs to the upper bin, 1.0 to the last bin; the middle of three bins is empty.
    curve = reliability_curve([0, 1, 1], [0.0, 1.0, 0.9], n_bins=3)
    assert curve["counts"] == [1, 0, 2]
    assert math.isnan(curve["mean_predicted"][1]) and math.isnan(curve["observed_frequency"][1])
    assert reliability_curve([1], [0.5], n_bins=2)["counts"] == [0, 1]

    rng = np.random.default_rng(3)
    p = rng.uniform(0, 1, 200)
    y = (rng.uniform(0, 1, 200) < p).astype(int)
    curve = reliability_curve(y, p, n_bins=5)
    observed, predicted = calibration_curve(y, p, n_bins=5, strategy="uniform")
    filled = np.asarray(curve["counts"]) > 0
    assert np.asarray(curve["observed_frequency"])[filled] == pytest.approx(observed)
    assert np.asarray(curve["mean_predicted"])[filled] == pytest.approx(predicted)

    quantile = reliability_curve(y, p, n_bins=4, strategy="quantile")
    assert quantile["counts"] == [50, 50, 50, 50]
    assert sum(quantile["counts"]) == 200


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"y_prob": [0.2, 1.3]}, r"in \[0, 1\]"),
        ({"y_prob": [0.2, 0.3], "n_bins": 0}, "n_bins"),
        ({"y_prob": [0.2, 0.3], "strategy": "kmeans"}, "strategy"),
        ({"y_prob": [0.2]}, "differ in length"),
    ],
)
def test_calibration_rejects_bad_input(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        reliability_curve([0, 1], **kwargs)


# ----------------------------------------------------------------------------- k-fold


def test_aggregate_folds_hand_example() -> None:
    # AUC over folds 0.8, 0.9, 0.7: mean 0.8, SD sqrt((0 + 0.01 + 0.01) / 2) = 0.1.
    # Sensitivity undefined in fold 1: summarised over folds 0 and 2 only (mean 0.6).
    folds = [
        {"auc": 0.8, "sensitivity": 0.5, "n": 10, "confusion_matrix": [[1, 2], [3, 4]]},
        {"auc": 0.9, "sensitivity": float("nan"), "n": 12, "confusion_matrix": [[1, 2], [3, 4]]},
        {"auc": 0.7, "sensitivity": 0.7, "n": 11, "confusion_matrix": [[1, 2], [3, 4]]},
    ]
    pooled = {"auc": 0.79}
    summary = aggregate_folds(folds, pooled=pooled)
    assert set(summary) == {"auc", "sensitivity", "n", "pooled"}
    assert summary["auc"]["mean"] == pytest.approx(0.8)
    assert summary["auc"]["sd"] == pytest.approx(0.1)
    assert summary["auc"]["min"] == pytest.approx(0.7)
    assert summary["auc"]["max"] == pytest.approx(0.9)
    assert summary["auc"]["n_folds"] == 3
    assert summary["sensitivity"]["mean"] == pytest.approx(0.6)
    assert summary["sensitivity"]["n_folds"] == 2
    assert summary["n"]["mean"] == pytest.approx(11.0)
    assert summary["pooled"] == pooled
    single = aggregate_folds([{"auc": 0.8}])
    assert single["auc"]["mean"] == 0.8 and math.isnan(single["auc"]["sd"])
    assert "pooled" not in single


def test_aggregate_folds_rejects_inconsistent_folds() -> None:
    with pytest.raises(ValueError, match="at least one fold"):
        aggregate_folds([])
    with pytest.raises(ValueError, match=r"fold 1 .*missing \['auc'\]"):
        aggregate_folds([{"auc": 0.8, "f1": 0.5}, {"f1": 0.6}])
    with pytest.raises(ValueError, match=r"extra \['f1'\]"):
        aggregate_folds([{"auc": 0.8}, {"auc": 0.7, "f1": 0.6}])


def test_pooled_binary_metrics_concatenates_out_of_fold_predictions() -> None:
    rng = np.random.default_rng(4)
    folds = []
    for shift in (0.0, 1.0, 2.0):  # fold-specific score offsets: pooled AUC differs from mean fold AUC
        y = rng.integers(0, 2, 40)
        folds.append((y, rng.normal(1.2 * y + shift, 1.0)))
    pooled = pooled_binary_metrics(folds, threshold=1.0)
    direct = binary_metrics(np.concatenate([f[0] for f in folds]), np.concatenate([f[1] for f in folds]), 1.0)
    assert pooled["n_folds"] == 3
    assert pooled["n"] == 120
    assert pooled["auc"] == pytest.approx(direct["auc"])
    assert pooled["confusion_matrix"] == direct["confusion_matrix"]
    per_fold = aggregate_folds([binary_metrics(y, s, 1.0) for y, s in folds], pooled=pooled)
    assert per_fold["auc"]["mean"] != pytest.approx(pooled["auc"], abs=1e-3)
    with pytest.raises(ValueError, match="fold 1: y_true and y_score differ in length"):
        pooled_binary_metrics([([0, 1], [0.1, 0.9]), ([0, 1], [0.3])])
    with pytest.raises(ValueError, match="at least one fold"):
        pooled_binary_metrics([])
