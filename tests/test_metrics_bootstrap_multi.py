"""Tests for bootstrap intervals of nested (multi-class, multi-label) metric results."""

from __future__ import annotations

import numpy as np
import pytest

from osteoscope.metrics import (
    binary_metrics,
    bootstrap_metrics,
    bootstrap_multiclass,
    bootstrap_multilabel,
    bootstrap_structured,
    multiclass_metrics,
    multilabel_metrics,
)


def _multiclass(n: int, k: int, signal: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax probabilities where the true class gets ``signal`` extra logit."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += signal
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


def _multilabel(n: int, labels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, labels)) < 0.4).astype(np.int64)
    return y, 0.6 * y + 0.7 * rng.random((n, labels))


def test_structured_bootstrap_reproduces_the_vectorised_binary_intervals() -> None:
    # Same strata, groups and seed -> the same resamples, so both code paths must agree to rounding.
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 150)
    s = y + rng.normal(size=150)
    groups = np.arange(150) // 2
    fast = bootstrap_metrics(y, s, threshold=0.5, groups=groups, n_boot=300, seed=4)
    nested = bootstrap_structured(
        lambda t, q: binary_metrics(t, q, 0.5), y, s, strata=y, groups=groups, n_boot=300, seed=4
    )
    for name, ci in fast.items():
        for key in ("estimate", "low", "high", "se"):
            assert nested[name][key] == pytest.approx(ci[key], abs=1e-12), (name, key)
    assert nested["confusion_matrix"] == binary_metrics(y, s, 0.5)["confusion_matrix"]  # ints pass through
    assert nested["threshold"]["low"] == nested["threshold"]["high"] == 0.5


def test_multiclass_intervals_wrap_the_point_metrics() -> None:
    y, p = _multiclass(240, 4, 1.5, seed=0)
    names = ["I", "II", "III", "IV"]
    point = multiclass_metrics(y, p, names)
    boot = bootstrap_multiclass(y, p, class_names=names, n_boot=400, seed=1)
    assert boot["n"] == point["n"] and boot["confusion_matrix"] == point["confusion_matrix"]
    for key in ("accuracy", "macro_auc"):
        assert boot[key]["estimate"] == pytest.approx(point[key])
        assert boot[key]["low"] < point[key] < boot[key]["high"]
    for got, want in zip(boot["per_class"], point["per_class"], strict=True):
        assert got["name"] == want["name"] and got["n"] == want["n"]
        for key in ("auc", "sensitivity", "specificity"):
            assert got[key]["estimate"] == pytest.approx(want[key])
            assert got[key]["low"] <= want[key] <= got[key]["high"]
            assert got[key]["n_valid"] == 400
    # A per-class AUC rests on ~60 positives, the macro mean on all four: its interval must be narrower.
    class_width = boot["per_class"][0]["auc"]["high"] - boot["per_class"][0]["auc"]["low"]
    assert boot["macro_auc"]["high"] - boot["macro_auc"]["low"] < class_width


def test_multiclass_interval_narrows_with_more_cases() -> None:
    small = bootstrap_multiclass(*_multiclass(80, 3, 1.0, seed=2), n_boot=300)
    large = bootstrap_multiclass(*_multiclass(800, 3, 1.0, seed=2), n_boot=300)
    # Width scales like 1/sqrt(n): expect about 0.32x.
    assert large["macro_auc"]["high"] - large["macro_auc"]["low"] < 0.6 * (
        small["macro_auc"]["high"] - small["macro_auc"]["low"]
    )


def test_stratified_multiclass_resampling_keeps_class_counts_of_patients() -> None:
    y, p = _multiclass(60, 3, 1.0, seed=5)
    groups = np.arange(60) // 3  # a patient's cases may differ in class: stratum = highest class
    patient_class = np.array([y[groups == g].max() for g in range(20)])
    seen: list[tuple[int, ...]] = []

    # Match rows back to cases by their probability vectors (all distinct here).
    def record_patients(t: np.ndarray, q: np.ndarray) -> float:
        index = np.array([int(np.flatnonzero(np.all(p == row, axis=1))[0]) for row in q])
        _, counts = np.unique(groups[index], return_counts=True)
        assert np.all(counts % 3 == 0), "a patient was split"
        seen.append(tuple(np.bincount(patient_class[groups[index]], minlength=3) // 3))
        return 0.0

    bootstrap_structured(record_patients, y, p, strata=y, groups=groups, n_boot=40, seed=0)
    assert set(seen) == {tuple(np.bincount(patient_class, minlength=3))}
    seen.clear()
    bootstrap_structured(record_patients, y, p, groups=groups, n_boot=40, seed=0)
    assert len(set(seen)) > 1


def test_multilabel_intervals_and_undefined_replicates() -> None:
    y, s = _multilabel(120, 6, seed=7)
    y[:, 5] = 0
    y[0, 5] = 1  # one positive of label 5: a replicate that misses it has no AP for that label
    point = multilabel_metrics(y, s, 0.6)
    boot = bootstrap_multilabel(y, s, threshold=0.6, n_boot=300, seed=2)
    assert boot["threshold"] == 0.6
    for key in ("map", "f1_c", "f1_o", "exact_match", "p_o", "r_c"):
        assert boot[key]["estimate"] == pytest.approx(point[key])
        assert boot[key]["low"] <= point[key] <= boot[key]["high"]
    rare = boot["per_class"][5]["ap"]
    # P(the single positive is not drawn) = (1 - 1/120)^120 ~ 0.37.
    assert 0.25 * 300 < rare["n_boot"] - rare["n_valid"] < 0.5 * 300
    assert boot["per_class"][0]["ap"]["n_valid"] == 300


def test_structured_bootstrap_rejects_bad_input() -> None:
    y, p = _multiclass(20, 3, 1.0, seed=0)
    with pytest.raises(ValueError, match="rows"):
        bootstrap_structured(multiclass_metrics, y, p[:10], n_boot=10)
    with pytest.raises(ValueError, match="strata"):
        bootstrap_structured(multiclass_metrics, y, p, strata=y[:5], n_boot=10)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_multiclass(y, p, n_boot=0)
    with pytest.raises(ValueError, match="sum to 1"):
        bootstrap_multiclass(y, p * 2, n_boot=10)
