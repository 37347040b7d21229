"""Tests for osteoscope.metrics: hand-computed examples, sklearn agreement and statistical behaviour."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from osteoscope.metrics import (
    binary_metrics,
    bootstrap_ci,
    bootstrap_metrics,
    delong_ci,
    delong_test,
    mcnemar_test,
    roc_auc,
    roc_points,
    sensitivity_at_specificity,
    specificity_at_sensitivity,
    youden_threshold,
)


def _synthetic(n: int, separation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced-ish labels with Gaussian scores shifted by ``separation`` for positives."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, rng.normal(separation * y, 1.0)


# ----------------------------------------------------------------------------- AUC and ROC


def test_auc_hand_example_with_tie() -> None:
    # Positives 0.9, 0.6, 0.4; negatives 0.6, 0.3, 0.2. Mann–Whitney over the 9 pairs (tie = 1/2):
    #   0.9 beats 0.6, 0.3, 0.2                  -> 3
    #   0.6 ties 0.6, beats 0.3, 0.2             -> 2.5
    #   0.4 loses to 0.6, beats 0.3, 0.2         -> 2
    # AUC = 7.5 / 9 = 0.8333...
    y = [1, 1, 1, 0, 0, 0]
    s = [0.9, 0.6, 0.4, 0.6, 0.3, 0.2]
    assert roc_auc(y, s) == pytest.approx(7.5 / 9)
    assert binary_metrics(y, s)["auc"] == pytest.approx(7.5 / 9)


def test_auc_and_roc_match_sklearn_with_ties() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(y * 0.8, 1.0), 1)  # rounding creates many ties
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, thr = roc_points(y, s)
    ref_fpr, ref_tpr, ref_thr = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    np.testing.assert_allclose(thr[1:], ref_thr[1:])
    assert np.isinf(thr[0])
    # Vertex k is the operating point of score >= thresholds[k].
    k = len(thr) // 2
    m = binary_metrics(y, s, threshold=thr[k])
    assert m["sensitivity"] == pytest.approx(tpr[k])
    assert 1 - m["specificity"] == pytest.approx(fpr[k])


# ----------------------------------------------------------------------------- threshold metrics


def test_confusion_and_rates_hand_example() -> None:
    # threshold 0.5, score >= 0.5 is positive.
    # positives 0.9 0.8 0.5 0.2 -> tp 3 (0.5 counts), fn 1
    # negatives 0.7 0.4 0.3 0.1 0.0 0.6 -> fp 2, tn 4
    y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    s = [0.9, 0.8, 0.5, 0.2, 0.7, 0.4, 0.3, 0.1, 0.0, 0.6]
    m = binary_metrics(y, s, threshold=0.5)
    assert m["confusion_matrix"] == [[4, 2], [1, 3]]
    assert all(isinstance(v, int) for row in m["confusion_matrix"] for v in row)
    assert m["n"] == 10 and m["n_positive"] == 4
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["npv"] == pytest.approx(4 / 5)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))  # = 2/3, harmonic mean of 3/5 and 3/4
    assert m["threshold"] == 0.5


def test_single_class_gives_nan_not_exception() -> None:
    y = [0, 0, 0, 0]
    s = [0.1, 0.2, 0.3, 0.4]
    m = binary_metrics(y, s, threshold=0.9)  # nothing predicted positive either
    for key in ("auc", "sensitivity", "precision", "f1"):
        assert math.isnan(m[key]), key
    assert m["specificity"] == 1.0 and m["npv"] == 1.0 and m["accuracy"] == 1.0
    assert math.isnan(sensitivity_at_specificity(y, s, 0.9))
    assert math.isnan(specificity_at_sensitivity(y, s, 0.9))
    assert math.isnan(delong_ci(y, s)["se"])
    with pytest.raises(ValueError, match="positive and one negative"):
        roc_points(y, s)
    with pytest.raises(ValueError, match="positive and one negative"):
        youden_threshold(y, s)


def test_f1_is_zero_when_positives_are_all_missed() -> None:
    m = binary_metrics([1, 0], [0.1, 0.2], threshold=0.5)
    assert m["f1"] == 0.0 and m["sensitivity"] == 0.0
    assert math.isnan(m["precision"])


@pytest.mark.parametrize(
    ("y", "s", "message"),
    [
        ([0, 1, 1], [0.1, 0.2], "differ in length"),
        ([0, 2, 1], [0.1, 0.2, 0.3], "only 0 and 1"),
        ([0, 1, 1], [0.1, float("nan"), 0.3], "NaN or infinite"),
        ([0, 1, 1], [0.1, float("inf"), 0.3], "NaN or infinite"),
        (["a", "b"], [0.1, 0.2], "numeric 0/1"),
        ([[0, 1]], [[0.1, 0.2]], "one-dimensional"),
        ([], [], "empty"),
        ([0, 1], ["x", "y"], "numeric"),
    ],
)
def test_invalid_inputs_raise_value_error(y: list, s: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        binary_metrics(y, s)


def test_youden_threshold_on_separable_data() -> None:
    y = [0, 0, 0, 1, 1, 1]
    s = [0.1, 0.2, 0.35, 0.4, 0.7, 0.8]
    t = youden_threshold(y, s)
    assert t == pytest.approx(0.4)  # lowest positive score: the only threshold with J = 1
    m = binary_metrics(y, s, threshold=t)
    assert m["sensitivity"] == 1.0 and m["specificity"] == 1.0


def test_sensitivity_and_specificity_at_target_hand_example() -> None:
    # positives 0.9 0.8 0.55 0.3, negatives 0.85 0.6 0.5 0.4 0.2; operating points (threshold: sens, spec):
    # inf: 0, 1 | 0.9: .25, 1 | 0.85: .25, .8 | 0.8: .5, .8 | 0.6: .5, .6 | 0.55: .75, .6 | 0.5: .75, .4
    # 0.4: .75, .2 | 0.3: 1, .2 | 0.2: 1, 0
    y = [1, 1, 1, 1, 0, 0, 0, 0, 0]
    s = [0.9, 0.8, 0.55, 0.3, 0.85, 0.6, 0.5, 0.4, 0.2]
    assert sensitivity_at_specificity(y, s, 1.0) == pytest.approx(0.25)
    assert sensitivity_at_specificity(y, s, 0.8) == pytest.approx(0.5)
    assert sensitivity_at_specificity(y, s, 0.7) == pytest.approx(0.5)
    assert sensitivity_at_specificity(y, s, 0.6) == pytest.approx(0.75)
    assert specificity_at_sensitivity(y, s, 0.5) == pytest.approx(0.8)
    assert specificity_at_sensitivity(y, s, 0.75) == pytest.approx(0.6)
    assert specificity_at_sensitivity(y, s, 1.0) == pytest.approx(0.2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sensitivity_at_specificity(y, s, 90)


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_estimate_and_is_reproducible() -> None:
    y, s = _synthetic(200, 1.0, seed=0)
    a = bootstrap_ci(roc_auc, y, s, n_boot=500, seed=7)
    b = bootstrap_ci(roc_auc, y, s, n_boot=500, seed=7)
    c = bootstrap_ci(roc_auc, y, s, n_boot=500, seed=8)
    assert a == b
    assert a["low"] != c["low"]
    assert a["low"] < a["estimate"] < a["high"]
    assert a["estimate"] == pytest.approx(roc_auc_score(y, s))
    assert a["n_boot"] == a["n_valid"] == 500


def test_bootstrap_ci_narrows_with_more_data() -> None:
    small = bootstrap_ci(roc_auc, *_synthetic(100, 1.0, seed=1), n_boot=500)
    large = bootstrap_ci(roc_auc, *_synthetic(1000, 1.0, seed=1), n_boot=500)
    # Width scales like 1/sqrt(n): expect about 0.32x.
    assert (large["high"] - large["low"]) < 0.6 * (small["high"] - small["low"])


def test_bootstrap_auc_is_fast() -> None:
    y, s = _synthetic(200, 1.0, seed=2)
    start = time.perf_counter()
    bootstrap_ci(roc_auc, y, s, n_boot=2000)
    assert time.perf_counter() - start < 1.0


def test_vectorised_auc_matches_loop_over_replicates() -> None:
    y, s = _synthetic(60, 0.7, seed=4)
    s = np.round(s, 1)  # ties
    fast = bootstrap_ci(roc_auc, y, s, n_boot=300, seed=5)
    slow = bootstrap_ci(lambda t, p: roc_auc_score(t, p), y, s, n_boot=300, seed=5)
    for key in ("low", "high", "se"):
        assert fast[key] == pytest.approx(slow[key], abs=1e-12)


def test_stratified_bootstrap_keeps_class_counts() -> None:
    y, s = _synthetic(40, 1.0, seed=6)
    seen: list[int] = []

    def count_positives(t: np.ndarray, p: np.ndarray) -> float:
        seen.append(int(t.sum()))
        return float(t.mean())

    bootstrap_ci(count_positives, y, s, n_boot=50, stratify=True)
    assert set(seen) == {int(y.sum())}
    seen.clear()
    bootstrap_ci(count_positives, y, s, n_boot=50, stratify=False)
    assert len(set(seen)) > 1


def test_unstratified_bootstrap_drops_and_counts_nan_replicates() -> None:
    y = np.array([1] + [0] * 9)
    s = np.linspace(0, 1, 10)
    r = bootstrap_ci(roc_auc, y, s, n_boot=400, stratify=False, seed=0)
    # P(no positive drawn) = 0.9^10 ~ 0.35, so roughly 140 replicates are undefined.
    assert 60 < r["n_boot"] - r["n_valid"] < 240
    assert np.isfinite(r["low"]) and np.isfinite(r["high"])


def test_group_bootstrap_resamples_whole_groups() -> None:
    y, s = _synthetic(80, 1.0, seed=9)
    copies = 5
    y5, s5 = np.repeat(y, copies), np.repeat(s, copies)
    groups = np.repeat(np.arange(80), copies)

    def check_whole_groups(t: np.ndarray, p: np.ndarray) -> float:
        _, counts = np.unique(p, return_counts=True)
        assert np.all(counts % copies == 0), "a group was split"
        return roc_auc(t, p)

    bootstrap_ci(check_whole_groups, y5, s5, groups=groups, n_boot=30)

    naive = bootstrap_ci(roc_auc, y5, s5, n_boot=1000)
    grouped = bootstrap_ci(roc_auc, y5, s5, groups=groups, n_boot=1000)
    original = bootstrap_ci(roc_auc, y, s, n_boot=1000)
    naive_width = naive["high"] - naive["low"]
    grouped_width = grouped["high"] - grouped["low"]
    assert grouped_width > 1.7 * naive_width  # duplicates fake sqrt(5) ~ 2.2x more precision
    # Resampling 80 groups of 5 identical copies is the same experiment as resampling the 80 originals.
    assert grouped_width == pytest.approx(original["high"] - original["low"], rel=1e-9)


def test_group_bootstrap_with_string_ids_and_bad_shape() -> None:
    y = np.array([1, 0, 1, 0, 0, 1])
    s = np.array([0.9, 0.1, 0.8, 0.3, 0.2, 0.7])
    r = bootstrap_ci(roc_auc, y, s, groups=["p1", "p1", "p2", "p2", "p3", "p3"], n_boot=50)
    assert r["n_valid"] == 50
    with pytest.raises(ValueError, match="groups"):
        bootstrap_ci(roc_auc, y, s, groups=["p1", "p2"], n_boot=10)


def test_bootstrap_metrics_share_resamples_and_match_bootstrap_ci() -> None:
    y, s = _synthetic(120, 1.0, seed=10)
    result = bootstrap_metrics(y, s, threshold=0.4, n_boot=300, seed=3)
    assert set(result) == {"auc", "sensitivity", "specificity", "precision", "npv", "f1", "accuracy"}
    point = binary_metrics(y, s, threshold=0.4)
    for name, ci in result.items():
        assert ci["estimate"] == pytest.approx(point[name])
        assert ci["low"] <= ci["estimate"] <= ci["high"]
    assert result["auc"] == bootstrap_ci(roc_auc, y, s, n_boot=300, seed=3)
    for name in ("sensitivity", "npv"):
        looped = bootstrap_ci(lambda t, p, k=name: binary_metrics(t, p, 0.4)[k], y, s, n_boot=300, seed=3)
        assert result[name]["low"] == pytest.approx(looped["low"])
        assert result[name]["high"] == pytest.approx(looped["high"])


def test_bootstrap_argument_validation() -> None:
    y, s = _synthetic(20, 1.0, seed=0)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(roc_auc, y, s, n_boot=0)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_metrics(y, s, n_boot=10, confidence=95)


# ----------------------------------------------------------------------------- DeLong


def test_delong_hand_example() -> None:
    # Cases: y = 1 1 1 0 0 0; scorer A = .9 .8 .4 | .7 .4 .2; scorer B = .6 .3 .8 | .5 .1 .7
    # psi(x, z) = 1 if x > z, 1/2 if tie, 0 otherwise; m = n = 3.
    # A, positive placements V10 (share of negatives beaten): .9 -> 3/3, .8 -> 3/3, .4 -> (0 + .5 + 1)/3 = 1/2
    #    negative placements V01 (share of positives above): .7 -> 2/3, .4 -> 2.5/3 = 5/6, .2 -> 3/3
    #    AUC_A = mean V10 = 5/6;  S10 = var([1, 1, 1/2], ddof=1) = (1/36 + 1/36 + 4/36) / 2 = 1/12
    #    S01 = var([2/3, 5/6, 1], ddof=1) = (1/36 + 0 + 1/36) / 2 = 1/36
    #    Var(AUC_A) = S10/m + S01/n = 1/36 + 1/108 = 1/27
    # B, V10: .6 -> 2/3, .3 -> 1/3, .8 -> 1;  V01: .5 -> 2/3, .1 -> 1, .7 -> 1/3;  AUC_B = 2/3
    #    S10_BB = (0 + 1/9 + 1/9) / 2 = 1/9;  S01_BB = 1/9
    #    cov10(A, B) = ((1/6)(0) + (1/6)(-1/3) + (-1/3)(1/3)) / 2 = -1/12
    #    cov01(A, B) = ((-1/6)(0) + (0)(1/3) + (1/6)(-1/3)) / 2 = -1/36
    #    Var(A - B) = (1/12 + 1/9 + 2/12)/3 + (1/36 + 1/9 + 2/36)/3 = (13/36 + 7/36)/3 = 5/27
    y = [1, 1, 1, 0, 0, 0]
    a = [0.9, 0.8, 0.4, 0.7, 0.4, 0.2]
    b = [0.6, 0.3, 0.8, 0.5, 0.1, 0.7]
    single = delong_ci(y, a)
    assert single["estimate"] == pytest.approx(5 / 6)
    assert single["se"] == pytest.approx(math.sqrt(1 / 27))
    assert single["high"] == 1.0  # Wald interval clipped
    assert single["low"] == pytest.approx(5 / 6 - 1.959964 * math.sqrt(1 / 27), abs=1e-6)

    test = delong_test(y, a, b)
    se = math.sqrt(5 / 27)
    z = (1 / 6) / se
    assert test["auc_a"] == pytest.approx(5 / 6) and test["auc_b"] == pytest.approx(2 / 3)
    assert test["difference"] == pytest.approx(1 / 6)
    assert test["se"] == pytest.approx(se)
    assert test["z"] == pytest.approx(z)
    assert test["p_value"] == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert test["ci_low"] < 1 / 6 < test["ci_high"]


def test_delong_placements_match_brute_force_with_ties() -> None:
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, 70)
    s = np.round(rng.normal(y, 1.0), 1)
    x, z = s[y == 1], s[y == 0]
    psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    expected = math.sqrt(v10.var(ddof=1) / x.size + v01.var(ddof=1) / z.size)
    assert delong_ci(y, s)["se"] == pytest.approx(expected)
    # Against a constant scorer (AUC 1/2, no variance) the difference's SE is the single-AUC SE.
    assert delong_test(y, s, np.zeros_like(s))["se"] == pytest.approx(expected)


def test_delong_se_agrees_with_bootstrap_se() -> None:
    y, s = _synthetic(300, 1.0, seed=12)
    delong_se = delong_ci(y, s)["se"]
    boot_se = bootstrap_ci(roc_auc, y, s, n_boot=2000, seed=1)["se"]
    assert boot_se == pytest.approx(delong_se, rel=0.15)


def test_delong_test_power_and_null() -> None:
    rng = np.random.default_rng(13)
    y = rng.integers(0, 2, 300)
    better = rng.normal(1.5 * y, 1.0)
    worse = rng.normal(0.5 * y, 1.0)
    assert delong_test(y, better, worse)["p_value"] < 0.01
    # Two scorers with the same distribution (under this null about 5% of seeds give p < 0.05).
    rng = np.random.default_rng(21)
    y = rng.integers(0, 2, 300)
    twin_a = rng.normal(1.0 * y, 1.0)
    twin_b = rng.normal(1.0 * y, 1.0)
    assert delong_test(y, twin_a, twin_b)["p_value"] > 0.05
    same = delong_test(y, twin_a, twin_a)
    assert same["difference"] == 0.0 and same["z"] == 0.0 and same["p_value"] == 1.0


def test_delong_test_validates_lengths() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        delong_test([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2])


# ----------------------------------------------------------------------------- McNemar


def _mcnemar_case(n_a_only: int, n_b_only: int, n_both: int, n_neither: int) -> tuple[list, list, list]:
    """All-positive labels with given counts of who is right (A only, B only, both, neither)."""
    pred_a = [1] * n_a_only + [0] * n_b_only + [1] * n_both + [0] * n_neither
    pred_b = [0] * n_a_only + [1] * n_b_only + [1] * n_both + [0] * n_neither
    return [1] * len(pred_a), pred_a, pred_b


def test_mcnemar_exact_branch_hand_example() -> None:
    # b = 1, c = 6: two-sided exact p = 2 * P(X <= 1 | n=7, p=1/2) = 2 * (1 + 7) / 128 = 0.125
    r = mcnemar_test(*_mcnemar_case(1, 6, 5, 3))
    assert (r["b"], r["c"], r["method"]) == (1, 6, "exact")
    assert r["statistic"] == 1.0
    assert r["p_value"] == pytest.approx(0.125)


def test_mcnemar_chi_square_branch_hand_example() -> None:
    # b = 10, c = 20 (30 discordant >= 25): chi2 = (|10 - 20| - 1)^2 / 30 = 81 / 30 = 2.7,
    # p = P(chi2_1 > 2.7) = erfc(sqrt(2.7 / 2)) ~ 0.1003
    r = mcnemar_test(*_mcnemar_case(10, 20, 7, 2))
    assert (r["b"], r["c"], r["method"]) == (10, 20, "chi2")
    assert r["statistic"] == pytest.approx(2.7)
    assert r["p_value"] == pytest.approx(math.erfc(math.sqrt(2.7 / 2)))


def test_mcnemar_no_discordance_and_validation() -> None:
    r = mcnemar_test([0, 1, 1], [0, 1, 0], [0, 1, 0])
    assert r["b"] == r["c"] == 0 and r["p_value"] == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        mcnemar_test([0, 1, 1], [0, 1], [0, 1, 0])
    with pytest.raises(ValueError, match="only 0 and 1"):
        mcnemar_test([0, 1, 1], [0, 0.7, 1], [0, 1, 0])
