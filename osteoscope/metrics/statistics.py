"""Uncertainty of metrics: bootstrap CIs (binary, multi-class, multi-label), DeLong's AUC tests, McNemar's test.

Every bootstrap resample is represented as a vector of case multiplicities (how often each case was drawn),
so case, stratified and cluster (group) resampling share one code path and the built-in metrics are computed
for a whole block of replicates with matrix operations instead of a Python loop.

A figure that cannot be estimated is ``None``, never NaN, with a ``reason`` (see :func:`bootstrap_ci`): the
estimate when the metric is undefined on the data (AUC with one class), the interval when it rests on too few
resampling units (:data:`MIN_INTERVAL_UNITS` in all, :data:`MIN_UNITS_PER_CLASS` of each class present) or
when most replicates leave the metric undefined (:data:`MIN_VALID_SHARE`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import binom, chi2, norm, rankdata

from osteoscope.metrics.binary import check_binary_inputs, check_labels, rates_from_counts, roc_auc
from osteoscope.metrics.multiclass import check_multiclass_inputs, multiclass_metrics
from osteoscope.metrics.multilabel import check_multilabel_inputs, multilabel_metrics

__all__ = [
    "MIN_INTERVAL_UNITS",
    "MIN_UNITS_PER_CLASS",
    "MIN_VALID_SHARE",
    "bootstrap_ci",
    "bootstrap_metrics",
    "bootstrap_multiclass",
    "bootstrap_multilabel",
    "bootstrap_roc_band",
    "bootstrap_structured",
    "delong_ci",
    "delong_test",
    "mcnemar_test",
    "paired_bootstrap_test",
]

# Cap on the number of matrix cells (replicates x cases) held in memory at once.
_BLOCK_CELLS = 2_000_000

#: Fewest resampling units (patients, or cases without groups) from which an interval is reported: the
#: bootstrap of fewer has so few distinct resamples that its percentiles say nothing.
MIN_INTERVAL_UNITS = 10
#: Fewest units of each class present (strata, e.g. positive and negative patients) for an interval: a class
#: of one patient is the same patient in every stratified replicate.
MIN_UNITS_PER_CLASS = 2
#: Smallest share of replicates in which the metric must be defined for its interval to be reported.
MIN_VALID_SHARE = 0.5

#: Why each binary metric can be undefined on a set of cases.
_BINARY_UNDEFINED = {
    "auc": "only one class among the cases",
    "sensitivity": "no positive cases",
    "specificity": "no negative cases",
    "precision": "no case called positive",
    "npv": "no case called negative",
    "f1": "no positive cases and none called positive",
    "accuracy": "no cases",
}

_THRESHOLD_METRICS = ("sensitivity", "specificity", "precision", "npv", "f1", "accuracy")


def _check_bootstrap_args(n_boot: int, confidence: float) -> None:
    """Raise ``ValueError`` for a non-positive replicate count or a confidence outside (0, 1)."""
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")


def _units(strata: np.ndarray, groups: ArrayLike | None) -> tuple[np.ndarray, np.ndarray]:
    """Map cases to resampling units (cases themselves, or groups such as patients).

    Args:
        strata: Integer stratum per case (the 0/1 label for binary metrics, the class for multi-class).

    Returns:
        ``(unit_of_case, unit_stratum)``: the unit index of every case and each unit's stratum, which is the
        maximum stratum of its cases (a patient with any positive image counts as positive).
    """
    if groups is None:
        return np.arange(strata.shape[0]), strata.copy()
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != strata.shape[0]:
        raise ValueError(
            f"groups must be one-dimensional with one entry per case ({strata.shape[0]}), got shape {g.shape}"
        )
    _, unit_of_case = np.unique(g, return_inverse=True)
    unit_stratum = np.full(int(unit_of_case.max()) + 1, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(unit_stratum, unit_of_case, strata)
    return unit_of_case, unit_stratum


def _weight_blocks(
    strata: np.ndarray, groups: ArrayLike | None, n_boot: int, stratify: bool, seed: int
) -> Iterator[np.ndarray]:
    """Yield blocks of bootstrap case multiplicities, shape ``(block, n_cases)``, ``n_boot`` rows in total.

    With ``stratify`` the units of each stratum are resampled separately, so every replicate keeps the
    original number of units per stratum (e.g. positive and negative patients).
    """
    unit_of_case, unit_stratum = _units(strata.astype(np.int64), groups)
    n_units = unit_stratum.shape[0]
    if stratify:
        members_of = [np.flatnonzero(unit_stratum == k) for k in np.unique(unit_stratum)]
    else:
        members_of = [np.arange(n_units)]
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_CELLS // max(strata.shape[0], n_units))
    done = 0
    while done < n_boot:
        b = min(block, n_boot - done)
        offsets = (np.arange(b) * n_units)[:, None]
        counts = np.zeros(b * n_units, dtype=np.float64)
        for members in members_of:
            draws = members[rng.integers(0, members.size, size=(b, members.size))]
            counts += np.bincount((draws + offsets).ravel(), minlength=b * n_units)
        yield counts.reshape(b, n_units)[:, unit_of_case]
        done += b


def bootstrap_roc_band(
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    n_boot: int = 500,
    confidence: float = 0.95,
    seed: int = 0,
    points: int = 101,
) -> dict[str, Any]:
    """A pointwise percentile band of the ROC curve: the TPR at fixed FPRs over bootstrap resamples.

    Resamples are stratified by label and resample whole ``groups`` (patients) as the AUC intervals do; each
    replicate's ROC is read at ``points`` equally spaced false positive rates (vertical averaging).

    Returns:
        ``fpr`` (the grid), ``low`` and ``high`` (the band's TPRs) and ``n_boot``.

    Raises:
        ValueError: on malformed input, a missing class, or invalid bootstrap arguments.
    """
    y, s = check_binary_inputs(y_true, y_score)
    _check_bootstrap_args(n_boot, confidence)
    if y.min() == y.max():
        raise ValueError("a ROC band needs both classes in y_true")
    order = np.argsort(-s, kind="mergesort")
    pos = y[order].astype(np.float64)
    level_ends = np.r_[np.flatnonzero(np.diff(s[order]) != 0), len(s) - 1]  # last case of each tied score
    grid = np.linspace(0.0, 1.0, points)
    curves = []
    for w in _weight_blocks(y, groups, n_boot, True, seed):
        ws = w[:, order]
        tp = np.cumsum(ws * pos, axis=1)[:, level_ends]
        fp = np.cumsum(ws * (1.0 - pos), axis=1)[:, level_ends]
        tpr = np.hstack([np.zeros((len(w), 1)), tp / tp[:, -1:]])
        fpr = np.hstack([np.zeros((len(w), 1)), fp / fp[:, -1:]])
        curves += [np.interp(grid, f, t) for f, t in zip(fpr, tpr, strict=True)]
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(np.array(curves), [alpha, 1.0 - alpha], axis=0)
    return {"fpr": grid.tolist(), "low": low.tolist(), "high": high.tolist(), "n_boot": int(n_boot)}


class _WeightedAuc:
    """AUC of many weighted resamples of one dataset, sorting the scores only once."""

    def __init__(self, y: np.ndarray, s: np.ndarray) -> None:
        self.order = np.argsort(s, kind="mergesort")
        s_sorted = s[self.order]
        self.pos = y[self.order].astype(np.float64)
        self.level_starts = np.flatnonzero(np.r_[True, np.diff(s_sorted) != 0])

    def __call__(self, w: np.ndarray) -> np.ndarray:
        """AUC per row of the multiplicity matrix ``w``; NaN for rows lacking a class."""
        ws = w[:, self.order]
        w_pos = np.add.reduceat(ws * self.pos, self.level_starts, axis=1)
        w_neg = np.add.reduceat(ws * (1.0 - self.pos), self.level_starts, axis=1)
        neg_below = np.cumsum(w_neg, axis=1) - w_neg
        wins = np.sum(w_pos * (neg_below + 0.5 * w_neg), axis=1)
        pairs = w_pos.sum(axis=1) * w_neg.sum(axis=1)
        out = np.full(w.shape[0], np.nan)
        np.divide(wins, pairs, out=out, where=pairs > 0)
        return out


def _threshold_rates(w: np.ndarray, y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Threshold metrics per row of the multiplicity matrix ``w``."""
    pred = (s >= threshold).astype(np.float64)
    pos = y.astype(np.float64)
    tp = w @ (pos * pred)
    fp = w @ ((1.0 - pos) * pred)
    fn = w @ (pos * (1.0 - pred))
    tn = w @ ((1.0 - pos) * (1.0 - pred))
    return rates_from_counts(tp, fp, fn, tn)


def too_few_units(strata: ArrayLike, groups: ArrayLike | None) -> str | None:
    """Why no interval can be estimated from these cases, or None: fewer than :data:`MIN_INTERVAL_UNITS`
    resampling units (patients when ``groups`` is given, else cases), or a class present with fewer than
    :data:`MIN_UNITS_PER_CLASS` units (a unit's class is its highest stratum, as in the resampling)."""
    _, unit_stratum = _units(np.asarray(strata).astype(np.int64), groups)
    unit = "patient" if groups is not None else "case"
    n = unit_stratum.shape[0]
    classes, counts = np.unique(unit_stratum, return_counts=True)
    rule = f"an interval needs {MIN_INTERVAL_UNITS} {unit}s, and {MIN_UNITS_PER_CLASS} of each class present"
    if n < MIN_INTERVAL_UNITS:
        return f"too few cases: {n} {unit}{'s' * (n != 1)} ({rule})"
    if counts.min() < MIN_UNITS_PER_CLASS:
        thin = ", ".join(f"class {c}: {k}" for c, k in zip(classes, counts, strict=True) if k < MIN_UNITS_PER_CLASS)
        return f"too few cases: {thin} {unit}(s) ({rule})"
    return None


def _summarise(
    estimate: float, replicates: np.ndarray, confidence: float, too_few: str | None = None, undefined: str = ""
) -> dict:
    """Percentile interval from replicates, dropping (and counting) NaN ones.

    An estimate that is NaN becomes None with the reason ``undefined``; the interval (and SE) becomes None
    with a reason when ``too_few`` says so or fewer than :data:`MIN_VALID_SHARE` of the replicates are valid.
    """
    valid = replicates[~np.isnan(replicates)]
    alpha = 1.0 - confidence
    reason = None
    if np.isnan(estimate):
        reason = undefined or "not defined on these cases"
    elif too_few is not None:
        reason = too_few
    elif valid.size < MIN_VALID_SHARE * replicates.size:
        reason = f"too few cases: defined in only {valid.size} of {replicates.size} bootstrap replicates"
    low = high = se = None
    if reason is None:
        low, high = (float(q) for q in np.quantile(valid, [alpha / 2, 1 - alpha / 2]))
        se = float(valid.std(ddof=1)) if valid.size > 1 else None
    return {
        "estimate": None if np.isnan(estimate) else float(estimate),
        "low": low,
        "high": high,
        "se": se,
        "n_boot": int(replicates.size),
        "n_valid": int(valid.size),
        "reason": reason,
    }


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    n_boot: int = 2000,
    confidence: float = 0.95,
    stratify: bool = True,
    seed: int = 0,
) -> dict:
    """Percentile bootstrap confidence interval of ``metric(y_true, y_score)``.

    Args:
        metric: Function of (labels, scores) returning a float; NaN marks an undefined replicate.
            ``roc_auc`` is recognised and computed vectorised; other callables are called once per replicate.
        y_true: 0/1 labels.
        y_score: Finite scores.
        groups: Optional cluster id per case (e.g. patient id). Whole groups are resampled, because images
            of one patient are not independent and case resampling would give too narrow intervals.
        n_boot: Number of replicates.
        confidence: Coverage of the interval, e.g. 0.95.
        stratify: Resample positive and negative units separately, keeping their counts (a group is
            positive if any of its cases is).
        seed: Seed of the random generator; equal seeds give identical intervals.

    Returns:
        ``estimate`` (metric on the full data), ``low``, ``high``, ``se`` (standard deviation of the valid
        replicates), ``n_boot``, ``n_valid`` (replicates where the metric was not NaN) and ``reason``: None,
        or why ``estimate`` (undefined on the data) or ``low``/``high``/``se`` (too few units, see
        :func:`too_few_units`, or too few valid replicates) are None.
    """
    _check_bootstrap_args(n_boot, confidence)
    y, s = check_binary_inputs(y_true, y_score)
    estimate = float(metric(y, s))
    parts = []
    if metric is roc_auc:
        auc = _WeightedAuc(y, s)
        parts = [auc(w) for w in _weight_blocks(y, groups, n_boot, stratify, seed)]
    else:
        cases = np.arange(y.shape[0])
        for w in _weight_blocks(y, groups, n_boot, stratify, seed):
            values = np.empty(w.shape[0])
            for i, row in enumerate(w.astype(np.int64)):
                idx = np.repeat(cases, row)
                values[i] = float(metric(y[idx], s[idx]))
            parts.append(values)
    too_few = too_few_units(y if stratify else np.zeros_like(y), groups)
    undefined = _BINARY_UNDEFINED["auc"] if metric is roc_auc else ""
    return _summarise(estimate, np.concatenate(parts), confidence, too_few, undefined)


def bootstrap_metrics(
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    threshold: float = 0.5,
    groups: ArrayLike | None = None,
    n_boot: int = 2000,
    confidence: float = 0.95,
    stratify: bool = True,
    seed: int = 0,
) -> dict[str, dict]:
    """Bootstrap CIs for AUC and the threshold metrics of ``binary_metrics``, all from one set of resamples.

    Using the same resamples for every metric keeps the intervals mutually consistent (e.g. sensitivity and
    specificity come from the same replicate). Arguments as in ``bootstrap_ci``.

    Returns:
        Metric name (``auc``, ``sensitivity``, ``specificity``, ``precision``, ``npv``, ``f1``, ``accuracy``)
        mapped to the dictionary returned by ``bootstrap_ci``.
    """
    _check_bootstrap_args(n_boot, confidence)
    y, s = check_binary_inputs(y_true, y_score)
    threshold = float(threshold)
    full = _threshold_rates(np.ones((1, y.shape[0])), y, s, threshold)
    auc = _WeightedAuc(y, s)
    names = ("auc", *_THRESHOLD_METRICS)
    collected: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for w in _weight_blocks(y, groups, n_boot, stratify, seed):
        collected["auc"].append(auc(w))
        for name, values in _threshold_rates(w, y, s, threshold).items():
            collected[name].append(values)
    estimates = {"auc": roc_auc(y, s), **{name: float(full[name][0]) for name in _THRESHOLD_METRICS}}
    too_few = too_few_units(y if stratify else np.zeros_like(y), groups)
    return {
        name: _summarise(estimates[name], np.concatenate(collected[name]), confidence, too_few, _BINARY_UNDEFINED[name])
        for name in names
    }


def _float_leaves(result: Any) -> list[float]:
    """The float values of a nested metric result (dicts and lists), in a fixed traversal order."""
    if isinstance(result, dict):
        return [v for item in result.values() for v in _float_leaves(item)]
    if isinstance(result, list | tuple):
        return [v for item in result for v in _float_leaves(item)]
    if isinstance(result, float | np.floating):
        return [float(result)]
    return []


def _replace_floats(result: Any, summaries: Iterator[dict]) -> Any:
    """``result`` with each float leaf replaced by the next interval from ``summaries`` (same order)."""
    if isinstance(result, dict):
        return {key: _replace_floats(item, summaries) for key, item in result.items()}
    if isinstance(result, list | tuple):
        return [_replace_floats(item, summaries) for item in result]
    if isinstance(result, float | np.floating):
        return next(summaries)
    return result


def bootstrap_structured(
    metric: Callable[[np.ndarray, np.ndarray], Any],
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    strata: ArrayLike | None = None,
    groups: ArrayLike | None = None,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    undefined: str = "",
) -> Any:
    """Bootstrap intervals for every float in a metric function's nested result, from one set of resamples.

    Cases are rows of ``y_true`` and ``y_score`` (any shape beyond the first axis), so this serves
    multi-class (labels ``(N,)``, probabilities ``(N, K)``) and multi-label (``(N, L)`` and ``(N, L)``)
    metrics alike. Every replicate evaluates ``metric`` once; all its float outputs come from the same
    resample and so stay mutually consistent.

    Args:
        metric: Function of (labels, scores) returning floats, possibly inside dicts and lists (such as
            ``multiclass_metrics``). Integers and strings (counts, names, confusion matrices) are passed
            through as computed on the full data; NaN marks an undefined replicate value.
        y_true, y_score: Arrays with one row per case.
        strata: Optional integer stratum per case; units of each stratum are resampled separately, keeping
            their counts. ``None`` resamples all units together.
        groups: Optional cluster id per case (e.g. patient id); whole groups are resampled and a group's
            stratum is the maximum of its cases' strata.
        n_boot, confidence, seed: As in ``bootstrap_ci``.
        undefined: Why a figure may be undefined on the data (the ``reason`` of a NaN estimate).

    Returns:
        ``metric(y_true, y_score)`` with every float replaced by the dictionary of ``bootstrap_ci``
        (``estimate``, ``low``, ``high``, ``se``, ``n_boot``, ``n_valid``, ``reason``).
    """
    _check_bootstrap_args(n_boot, confidence)
    y, s = np.asarray(y_true), np.asarray(y_score)
    if y.ndim == 0 or s.ndim == 0 or y.shape[0] != s.shape[0] or y.shape[0] == 0:
        raise ValueError(f"y_true and y_score need the same, non-zero number of rows, got {y.shape} and {s.shape}")
    if strata is None:
        case_strata = np.zeros(y.shape[0], dtype=np.int64)
    else:
        case_strata = np.asarray(strata)
        if case_strata.shape != (y.shape[0],) or case_strata.dtype.kind not in "iub":
            raise ValueError(f"strata must be one integer per case ({y.shape[0]}), got {case_strata.shape}")
    full = metric(y, s)
    estimates = _float_leaves(full)
    replicates: list[list[float]] = []
    cases = np.arange(y.shape[0])
    for w in _weight_blocks(case_strata, groups, n_boot, strata is not None, seed):
        for row in w.astype(np.int64):
            idx = np.repeat(cases, row)
            replicates.append(_float_leaves(metric(y[idx], s[idx])))
    columns = np.asarray(replicates, dtype=np.float64).reshape(len(replicates), len(estimates))
    too_few = too_few_units(case_strata, groups)
    summaries = (_summarise(est, columns[:, j], confidence, too_few, undefined) for j, est in enumerate(estimates))
    return _replace_floats(full, summaries)


def bootstrap_multiclass(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    *,
    class_names: list[str] | None = None,
    groups: ArrayLike | None = None,
    stratify: bool = True,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """``multiclass_metrics`` with a bootstrap interval on accuracy, macro AUC and every per-class figure.

    With ``stratify`` each true class is resampled separately (by a patient's highest class when
    ``groups`` is given), so every replicate keeps all classes and each one-vs-rest AUC stays defined.
    """
    y, p = check_multiclass_inputs(y_true, y_prob)
    return bootstrap_structured(
        lambda t, q: multiclass_metrics(t, q, class_names),
        y,
        p,
        strata=y if stratify else None,
        groups=groups,
        n_boot=n_boot,
        confidence=confidence,
        seed=seed,
        undefined="a class has no cases among them",
    )


def bootstrap_multilabel(
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    threshold: float = 0.5,
    class_names: list[str] | None = None,
    groups: ArrayLike | None = None,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """``multilabel_metrics`` with a bootstrap interval on every per-label and averaged figure.

    Resampling is not stratified: with L labels there are up to 2^L label sets, most too rare to form
    strata. A replicate that lacks the positives of a label leaves that label's AP undefined (NaN), which
    ``n_valid`` counts; the macro means skip undefined labels as ``multilabel_metrics`` does.
    """
    y, s = check_multilabel_inputs(y_true, y_score)
    result = bootstrap_structured(
        lambda t, q: multilabel_metrics(t, q, threshold, class_names),
        y,
        s,
        groups=groups,
        n_boot=n_boot,
        confidence=confidence,
        seed=seed,
        undefined="a label has no positive cases among them",
    )
    result["threshold"] = float(threshold)
    return result


def paired_bootstrap_test(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y_true: ArrayLike,
    score_a: ArrayLike,
    score_b: ArrayLike,
    *,
    strata: ArrayLike | None = None,
    groups: ArrayLike | None = None,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Paired bootstrap of ``metric(y, a) - metric(y, b)`` for two models scored on the same cases.

    Both models are evaluated on the same resample in every replicate (resampling whole ``groups`` such as
    patients, within ``strata`` when given), so the interval reflects the correlation between them, as
    DeLong's test does for a binary AUC; this serves metrics without such a formula (macro AUROC, mAP).

    Returns:
        ``a``, ``b`` and ``difference`` on the full data, the percentile interval ``ci_low``/``ci_high`` of
        the difference, ``p_value`` (two-sided: twice the smaller share of valid replicates on either side of
        zero, with the +1 correction so it is never 0), ``n_boot``, ``n_valid`` and ``reason``: as in
        :func:`bootstrap_ci`, the interval and p value are None, with the reason, when they cannot be estimated.
    """
    _check_bootstrap_args(n_boot, confidence)
    y, a, b = np.asarray(y_true), np.asarray(score_a), np.asarray(score_b)
    if a.shape != b.shape or a.shape[0] != y.shape[0] or y.shape[0] == 0:
        raise ValueError(f"labels and both score arrays need the same rows, got {y.shape}, {a.shape}, {b.shape}")
    case_strata = np.zeros(y.shape[0], dtype=np.int64) if strata is None else np.asarray(strata, dtype=np.int64)
    cases = np.arange(y.shape[0])
    diffs = []
    for w in _weight_blocks(case_strata, groups, n_boot, strata is not None, seed):
        for row in w.astype(np.int64):
            idx = np.repeat(cases, row)
            diffs.append(metric(y[idx], a[idx]) - metric(y[idx], b[idx]))
    replicates = np.asarray(diffs, dtype=np.float64)
    valid = replicates[~np.isnan(replicates)]
    metric_a, metric_b = float(metric(y, a)), float(metric(y, b))
    summary = _summarise(metric_a - metric_b, replicates, confidence, too_few_units(case_strata, groups))
    p_value = None
    if summary["reason"] is None:
        tail = min(np.sum(valid <= 0), np.sum(valid >= 0))
        p_value = float(min(1.0, 2 * (tail + 1) / (valid.size + 1)))
    return {
        "a": metric_a,
        "b": metric_b,
        "difference": summary["estimate"],
        "ci_low": summary["low"],
        "ci_high": summary["high"],
        "p_value": p_value,
        "n_boot": summary["n_boot"],
        "n_valid": summary["n_valid"],
        "reason": summary["reason"],
    }


def _placements(y: np.ndarray, s: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """DeLong structural components via midranks (Sun & Xu 2014), O(n log n).

    Returns:
        ``(auc, v10, v01)``: ``v10[i]`` is the fraction of negatives a positive beats (ties ½), ``v01[j]`` the
        fraction of positives that beat a negative.
    """
    pos = y == 1
    x, z = s[pos], s[~pos]
    m, n = x.size, z.size
    ranks_all = rankdata(s)
    v10 = (ranks_all[pos] - rankdata(x)) / n
    v01 = 1.0 - (ranks_all[~pos] - rankdata(z)) / m
    return float(v10.mean()), v10, v01


def _enough_for_delong(y: np.ndarray) -> bool:
    """DeLong's variance needs at least two positives and two negatives."""
    n_pos = int(y.sum())
    return n_pos >= 2 and y.shape[0] - n_pos >= 2


def delong_ci(y_true: ArrayLike, y_score: ArrayLike, confidence: float = 0.95) -> dict:
    """AUC with DeLong's (1988) variance and a Wald interval clipped to [0, 1].

    Returns:
        ``estimate``, ``se``, ``low``, ``high``; all NaN when there are fewer than two cases of either class.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    y, s = check_binary_inputs(y_true, y_score)
    if not _enough_for_delong(y):
        nan = float("nan")
        return {"estimate": roc_auc(y, s), "se": nan, "low": nan, "high": nan}
    auc, v10, v01 = _placements(y, s)
    se = math.sqrt(v10.var(ddof=1) / v10.size + v01.var(ddof=1) / v01.size)
    half = norm.ppf(0.5 + confidence / 2) * se
    low, high = float(max(0.0, auc - half)), float(min(1.0, auc + half))
    return {"estimate": auc, "se": se, "low": low, "high": high}


def delong_test(y_true: ArrayLike, score_a: ArrayLike, score_b: ArrayLike, confidence: float = 0.95) -> dict:
    """DeLong's test of two correlated AUCs measured on the same cases (two-sided).

    Returns:
        ``auc_a``, ``auc_b``, ``difference`` (a - b), its ``se``, Wald interval ``ci_low``/``ci_high``,
        ``z`` and ``p_value``. Statistics are NaN with fewer than two cases of either class; identical
        scorers give ``z = 0`` and ``p_value = 1``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    y, a = check_binary_inputs(y_true, score_a)
    _, b = check_binary_inputs(y, score_b)
    if not _enough_for_delong(y):
        auc_a, auc_b = roc_auc(y, a), roc_auc(y, b)
        nan = float("nan")
        return {
            "auc_a": auc_a,
            "auc_b": auc_b,
            "difference": auc_a - auc_b,
            "se": nan,
            "ci_low": nan,
            "ci_high": nan,
            "z": nan,
            "p_value": nan,
        }
    auc_a, v10_a, v01_a = _placements(y, a)
    auc_b, v10_b, v01_b = _placements(y, b)
    s10 = np.cov(np.vstack([v10_a, v10_b]), ddof=1)
    s01 = np.cov(np.vstack([v01_a, v01_b]), ddof=1)
    contrast = np.array([1.0, -1.0])
    var = contrast @ s10 @ contrast / v10_a.size + contrast @ s01 @ contrast / v01_a.size
    se = math.sqrt(max(float(var), 0.0))
    diff = auc_a - auc_b
    # Zero variance (identical or perfectly separating scorers) leaves nothing to scale by.
    z = diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    half = norm.ppf(0.5 + confidence / 2) * se
    return {
        "auc_a": auc_a,
        "auc_b": auc_b,
        "difference": diff,
        "se": se,
        "ci_low": float(diff - half),
        "ci_high": float(diff + half),
        "z": z,
        "p_value": float(2 * norm.sf(abs(z))),
    }


def mcnemar_test(y_true: ArrayLike, pred_a: ArrayLike, pred_b: ArrayLike) -> dict:
    """McNemar's test of two classifiers' accuracy on the same cases, from their 0/1 predictions.

    ``b`` counts cases only A gets right, ``c`` cases only B gets right. With fewer than 25 discordant
    pairs the exact two-sided binomial test is used (``statistic = min(b, c)``), otherwise the chi-square
    statistic with continuity correction ``(|b - c| - 1)^2 / (b + c)`` on one degree of freedom.

    Returns:
        ``b``, ``c``, ``statistic``, ``p_value`` and ``method`` (``"exact"`` or ``"chi2"``).
    """
    y = check_labels(y_true, "y_true")
    pa = check_labels(pred_a, "pred_a")
    pb = check_labels(pred_b, "pred_b")
    if not y.shape == pa.shape == pb.shape:
        raise ValueError(f"y_true, pred_a and pred_b differ in length: {y.shape[0]}, {pa.shape[0]}, {pb.shape[0]}")
    right_a = pa == y
    right_b = pb == y
    b = int(np.sum(right_a & ~right_b))
    c = int(np.sum(~right_a & right_b))
    if b + c < 25:
        statistic = float(min(b, c))
        p_value = 1.0 if b + c == 0 else min(1.0, float(2 * binom.cdf(min(b, c), b + c, 0.5)))
        method = "exact"
    else:
        statistic = max(abs(b - c) - 1, 0) ** 2 / (b + c)
        p_value = float(chi2.sf(statistic, 1))
        method = "chi2"
    return {"b": b, "c": c, "statistic": float(statistic), "p_value": p_value, "method": method}
