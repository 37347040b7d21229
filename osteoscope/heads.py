"""Heads: what a task predicts, and everything the engine derives from that.

A task names one head: ``binary`` (one logit), ``multiclass`` (K named classes), ``multilabel`` (L named
labels) or ``pretext`` (an image, for a self-supervised stage such as MR -> CT translation). From the head
come the activation, the default loss, the validation score that selects the best epoch (with its
direction), the metrics with 95% patient-level bootstrap intervals, the paired tests between two models, the
plots, the report tables and the columns of ``predictions.csv``. The engine calls these methods and so
never needs to know which kind of target it is training.

Metric results are nested dicts in which every estimated figure is an interval dict
``{"estimate", "low", "high", "se", "n_boot", "n_valid", "reason"}`` (see :func:`osteoscope.metrics.bootstrap_ci`);
a figure that cannot be estimated has None there and a ``reason``, and is shown as ``n/a (...)`` by
:func:`interval`. Counts, names and confusion matrices stay plain.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from osteoscope.errors import ConfigError
from osteoscope.losses import BinaryLoss, ImageLoss, MulticlassLoss, MultilabelLoss
from osteoscope.metrics import (
    binary_metrics,
    bootstrap_metrics,
    bootstrap_multiclass,
    bootstrap_multilabel,
    bootstrap_structured,
    delong_test,
    mcnemar_test,
    multiclass_metrics,
    multilabel_metrics,
    paired_bootstrap_test,
    roc_auc,
    youden_threshold,
)

Curves = Mapping[str, tuple[np.ndarray, np.ndarray]]


NOT_ESTIMABLE = "n/a (too few cases)"


def interval(value: Mapping[str, Any]) -> str:
    """``0.912 [0.871, 0.948]`` for an interval dict; ``n/a (reason)`` for an undefined estimate, and
    :data:`NOT_ESTIMABLE` for an interval from too few cases (never a degenerate number)."""
    if value["estimate"] is None:
        return f"n/a ({value['reason']})"
    if value["low"] is None or value["high"] is None:
        return NOT_ESTIMABLE
    return f"{value['estimate']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"


def not_estimable(result: Any, where: str = "") -> list[str]:
    """``"name: reason"`` for every interval dict in a nested metric result that could not be estimated, so
    an evaluation can say so in its log (the per-class entries are named by their ``name``)."""
    if isinstance(result, Mapping):
        if "estimate" in result and "reason" in result:
            return [f"{where}: {result['reason']}"] if result["reason"] else []
        return [line for key, item in result.items() for line in not_estimable(item, f"{where}.{key}".strip("."))]
    if isinstance(result, list | tuple):
        return [
            line
            for i, item in enumerate(result)
            for line in not_estimable(item, f"{where}[{item.get('name', i) if isinstance(item, Mapping) else i}]")
        ]
    return []


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table from a header and rows of cells (already formatted)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def figures(result: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """The top-level estimated figures of a head result with their interval bounds, as flat numbers for
    experiment tracking: ``{prefix}_auc``, ``{prefix}_auc_low``, ``{prefix}_auc_high``, ... (undefined ones
    are left out)."""
    out: dict[str, float] = {}
    for name, value in result.items():
        if isinstance(value, Mapping) and "estimate" in value:
            for key, suffix in (("estimate", ""), ("low", "_low"), ("high", "_high")):
                if isinstance(value.get(key), int | float) and np.isfinite(value[key]):
                    out[f"{prefix}_{name}{suffix}"] = float(value[key])
    if isinstance(result.get("n"), int):
        out[f"{prefix}_n"] = float(result["n"])
    return out


def _most(order_by: np.ndarray, chosen: np.ndarray, k: int, descending: bool) -> list[int]:
    """Up to ``k`` indices of the chosen cases with the highest (or lowest) ``order_by``."""
    index = np.flatnonzero(chosen)
    ranked = index[np.argsort(-order_by[index] if descending else order_by[index], kind="stable")]
    return ranked[:k].tolist()


def paired(metric: str, test: str, result: Mapping[str, float], mcnemar: dict | None = None) -> dict[str, Any]:
    """A paired comparison as the heads report it: the difference (A - B) of ``metric`` with its 95% interval
    and p value from ``test``, and McNemar's test at the decision rules where there is one."""
    out = {"metric": metric, "test": test, **{k: result[k] for k in ("difference", "ci_low", "ci_high", "p_value")}}
    return out if mcnemar is None else {**out, "mcnemar": mcnemar}


@dataclass(frozen=True)
class NoOptions:
    """A loss or builder that takes no options."""


@dataclass(frozen=True)
class WeightedLossOptions:
    """Options of the binary and multi-label cross-entropy.

    Attributes:
        pos_weight: Weight of positive targets (e.g. negatives / positives), or None for 1.
    """

    pos_weight: float | None = None


@dataclass(frozen=True)
class MulticlassLossOptions:
    """Options of the multi-class cross-entropy.

    Attributes:
        label_smoothing: Share of the target mass spread over all classes.
        class_weights: One weight per class, or None.
    """

    label_smoothing: float = 0.0
    class_weights: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ImageLossOptions:
    """Options of a pretext stage's image loss.

    Attributes:
        kind: ``l1`` or ``l2``.
    """

    kind: str = "l1"


class Head(ABC):
    """What a task predicts. Subclasses define one kind of target.

    Args:
        names: Class names (multi-class), label names (multi-label), or the negative and positive class
            names (binary), as shown in reports.
    """

    kind: ClassVar[str]
    monitor: ClassVar[str]  # name of the validation score that selects the best epoch
    mode: ClassVar[str]  # "max" or "min": the direction in which the monitor improves
    headline: ClassVar[str]  # the metric quoted first in logs and comparisons
    diagnostic: ClassVar[bool] = True  # False for a pretext stage, which predicts no diagnosis
    # whether a train or val split lacking one class is an error: True where classes exclude each other (the
    # monitor, or that class's training signal, is gone); a multi-label monitor averages the labels present
    every_class_needed: ClassVar[bool] = True
    LossOptions: ClassVar[type] = NoOptions

    def __init__(self, names: Sequence[str] = ()) -> None:
        self.names = tuple(names)

    def __repr__(self) -> str:
        return f"{self.kind} head ({', '.join(self.names)})" if self.names else f"{self.kind} head"

    @property
    def outputs(self) -> int:
        """Number of logits per case."""
        return len(self.names)

    def model_kwargs(self) -> dict[str, int]:
        """What a model of this head is built with: ``num_classes`` (1 for binary, K, or L)."""
        return {"num_classes": self.outputs}

    def logits(self, raw: Any, model: str, task: str) -> torch.Tensor:
        """The model's ``logits`` checked against the head's shape (B, outputs); a mismatch names both."""
        if not isinstance(raw, torch.Tensor) or raw.ndim != 2 or raw.shape[1] != self.outputs:
            shape = tuple(raw.shape) if isinstance(raw, torch.Tensor) else type(raw).__name__
            raise ConfigError(
                f"model {model} returns logits of shape {shape}, but task {task} has a {self!r} "
                f"that needs (batch, {self.outputs})"
            )
        return raw

    @abstractmethod
    def make_loss(self, options: Any) -> nn.Module:
        """The default loss of this head kind, from its :attr:`LossOptions`."""

    @abstractmethod
    def case_values(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """What inference keeps per case: probabilities, or the error of a pretext stage."""

    def case_targets(self, target: torch.Tensor) -> torch.Tensor:
        """What inference keeps of the targets: the labels themselves (an image target is not kept)."""
        return target

    @abstractmethod
    def score(self, targets: np.ndarray, values: np.ndarray) -> float:
        """The monitored validation score (NaN when undefined, e.g. a single class)."""

    def known(self, targets: np.ndarray) -> np.ndarray:
        """Cases whose target is known (rows with a NaN or -1 target are left out of metrics)."""
        return ~np.isnan(targets.reshape(len(targets), -1)).any(axis=1)

    def evaluable(self, targets: np.ndarray) -> bool:
        """Whether metrics are defined on these targets (e.g. both classes present)."""
        return len(targets) > 1

    def class_members(self, targets: np.ndarray) -> dict[str, np.ndarray]:
        """The cases of each class, as boolean masks over ``targets`` (class indices here: binary and
        multi-class; the multi-label head gives each label's positive cases, a pretext head none)."""
        return {name: targets == i for i, name in enumerate(self.names)}

    decision: ClassVar[str] = ""  # the fixed decision rule of heads that choose none on validation

    def operating_point(self, targets: np.ndarray | None, values: np.ndarray | None) -> dict[str, Any]:
        """The decision rule (``source`` says what it is), chosen on validation when the head has one to choose."""
        return {"source": self.decision}

    def decide(self, values: np.ndarray, operating: Mapping[str, Any]) -> Any:
        """The decision for one case's values (a row of :meth:`case_values`) at an operating point."""
        return None

    def alternative_operating_points(self, targets: np.ndarray, values: np.ndarray) -> dict[str, dict[str, Any]]:
        """Other decision rules reported beside the validated one, for comparison only (none by default)."""
        return {}

    @abstractmethod
    def evaluate(
        self,
        targets: np.ndarray,
        values: np.ndarray,
        groups: np.ndarray,
        operating: Mapping[str, Any],
        n_boot: int,
        seed: int,
    ) -> dict[str, Any]:
        """Metrics with 95% bootstrap intervals, resampling whole ``groups`` (patients)."""

    @abstractmethod
    def compare(
        self,
        targets: np.ndarray,
        values_a: np.ndarray,
        values_b: np.ndarray,
        operating_a: Mapping[str, Any],
        operating_b: Mapping[str, Any],
        groups: np.ndarray,
        n_boot: int,
        seed: int,
    ) -> dict[str, Any]:
        """Paired tests of model A against model B on the same cases."""

    def plots(
        self,
        curves: Curves,
        results: Mapping[str, Mapping],
        out_dir: Path,
        prefix: str = "",
        groups: np.ndarray | None = None,
        readers: Mapping[str, tuple[float, float]] | None = None,
    ) -> dict[str, str]:
        """Plots of one or several models' results on the same cases (``groups``: their patients, for the
        bootstrap bands; ``readers``: human readers' (sensitivity, specificity), marked where the head draws
        an ROC with one operating point per model, i.e. a binary head); returns name -> PNG path."""
        return {}

    def calibration(self, targets: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, str] | None:
        """What calibration is measured on: ``(0/1 outcomes, probabilities, what they are)``, None without
        probabilities (a pretext stage)."""
        return None

    def calibration_plots(self, curves: Curves, out_dir: Path, prefix: str = "") -> dict[str, str]:
        """A reliability diagram with its ECE per model (see :meth:`calibration`)."""
        from osteoscope.report.plots import plot_reliability

        paths = {}
        for name, (targets, values) in curves.items():
            pairs = self.calibration(targets, values)
            if pairs is not None:
                tag = f"{prefix}{name}-" if len(curves) > 1 else prefix
                outcome, probability, what = pairs
                paths[f"{tag}reliability"] = str(
                    plot_reliability(outcome, probability, out_dir / f"{tag}reliability.png", title=f"{name}: {what}")
                )
        return paths

    @abstractmethod
    def output_text(self) -> str:
        """What the model outputs, in words (for the model card)."""

    def balance(self, targets: np.ndarray) -> dict[str, int]:
        """Cases per class (positives per label) among known targets, for the data summary; {} when none."""
        return {}

    def describe(self, target: np.ndarray) -> str:
        """A case's target in words (class or label names), for reports and contact sheets."""
        return ""

    def describe_value(self, value: np.ndarray, operating: Mapping[str, Any]) -> str:
        """A case's prediction in words at the decision rule."""
        return ""

    def examples(
        self, targets: np.ndarray, values: np.ndarray, operating: Mapping[str, Any], k: int = 2
    ) -> dict[str, list[int]]:
        """Example cases to show a reviewer: kind (e.g. ``false positive``) -> up to ``k`` case indices, the
        most confident first."""
        return {}

    @abstractmethod
    def table(self, rows: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
        """A Markdown table of results, one row per (label, result)."""

    @abstractmethod
    def columns(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """Columns of ``predictions.csv`` holding the per-case values."""

    @abstractmethod
    def target_columns(self, targets: np.ndarray) -> dict[str, np.ndarray]:
        """Columns of ``predictions.csv`` holding the targets."""

    def aggregate(self, targets: np.ndarray, values: np.ndarray, groups: np.ndarray, how: str) -> tuple:
        """One row per group (e.g. a patient's images): targets by maximum, values by ``mean`` or ``max``.

        Returns:
            ``(targets, values, group_ids)`` of the groups, in sorted group order.
        """
        if how not in ("mean", "max"):
            raise ConfigError(f"aggregation must be mean or max, got {how!r}")
        ids, index = np.unique(groups, return_inverse=True)
        reduce = np.mean if how == "mean" else np.max
        agg_targets = np.stack([targets[index == g].max(axis=0) for g in range(len(ids))])
        agg_values = np.stack([reduce(values[index == g], axis=0) for g in range(len(ids))])
        return agg_targets, agg_values, ids


class BinaryHead(Head):
    """One logit; sigmoid; BCE; monitored by validation AUC; threshold by Youden's J on validation."""

    kind = "binary"
    monitor = "auc"
    mode = "max"
    headline = "auc"
    LossOptions = WeightedLossOptions
    TABLE = ("auc", "sensitivity", "specificity", "precision", "f1", "accuracy")

    def __init__(self, names: Sequence[str] = ("negative", "positive")) -> None:
        if len(names) != 2:
            raise ValueError(f"a binary head needs a negative and a positive name, got {names!r}")
        super().__init__(names)

    @property
    def outputs(self) -> int:
        return 1

    def logits(self, raw: Any, model: str, task: str) -> torch.Tensor:
        if isinstance(raw, torch.Tensor) and raw.ndim == 2 and raw.shape[1] == 1:
            raw = raw[:, 0]
        if not isinstance(raw, torch.Tensor) or raw.ndim != 1:
            shape = tuple(raw.shape) if isinstance(raw, torch.Tensor) else type(raw).__name__
            raise ConfigError(
                f"model {model} returns logits of shape {shape}, but task {task} has a {self!r} "
                "that needs (batch,) or (batch, 1)"
            )
        return raw

    def make_loss(self, options: WeightedLossOptions) -> nn.Module:
        return BinaryLoss(options.pos_weight)

    def case_values(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits.float())

    def score(self, targets: np.ndarray, values: np.ndarray) -> float:
        known = self.known(targets)
        if not self.evaluable(targets[known]):
            return float("nan")
        return roc_auc(targets[known].astype(int), values[known])

    def evaluable(self, targets: np.ndarray) -> bool:
        return len(np.unique(targets)) == 2

    def operating_point(self, targets: np.ndarray | None, values: np.ndarray | None) -> dict[str, Any]:
        if targets is None or values is None or not self.evaluable(targets):
            return {"threshold": 0.5, "source": "fixed 0.5"}
        return {"threshold": youden_threshold(targets.astype(int), values), "source": "Youden's J on validation"}

    def decide(self, values: np.ndarray, operating: Mapping[str, Any]) -> str:
        """The positive class name at or above the threshold, else the negative one."""
        return self.names[1] if float(np.reshape(values, -1)[0]) >= float(operating["threshold"]) else self.names[0]

    def alternative_operating_points(self, targets: np.ndarray, values: np.ndarray) -> dict[str, dict[str, Any]]:
        """The fixed 0.5 threshold, and Youden's J chosen on the evaluated cases themselves (optimistic: that
        threshold has seen the labels it is scored on, so it is no estimate of future performance)."""
        points = {"fixed 0.5": {"threshold": 0.5, "source": "fixed 0.5"}}
        if self.evaluable(targets):
            points["Youden on these cases"] = {
                "threshold": youden_threshold(targets.astype(int), values),
                "source": "Youden's J on the evaluated cases themselves (optimistic, for comparison only)",
            }
        return points

    def evaluate(self, targets, values, groups, operating, n_boot, seed) -> dict[str, Any]:
        y, threshold = targets.astype(int), float(operating["threshold"])
        point = binary_metrics(y, values, threshold=threshold)
        intervals = bootstrap_metrics(y, values, threshold=threshold, groups=groups, n_boot=n_boot, seed=seed)
        return {
            "n": point["n"],
            "n_positive": point["n_positive"],
            "threshold": threshold,
            "confusion_matrix": point["confusion_matrix"],
            **intervals,
        }

    def compare(self, targets, values_a, values_b, operating_a, operating_b, groups, n_boot, seed) -> dict:
        y = targets.astype(int)
        delong = delong_test(y, values_a, values_b)
        mcnemar = mcnemar_test(
            y,
            (values_a >= operating_a["threshold"]).astype(int),
            (values_b >= operating_b["threshold"]).astype(int),
        )
        return paired("auc", "DeLong", delong, mcnemar)

    def plots(self, curves, results, out_dir, prefix="", groups=None, readers=None) -> dict[str, str]:
        """ROC with a bootstrap band over patients, each model's operating point and the readers' points,
        precision-recall, reliability, and each model's confusion matrix at its threshold."""
        from osteoscope.metrics import bootstrap_roc_band
        from osteoscope.report.plots import plot_confusion_matrix, plot_precision_recall, plot_roc

        points = {
            f"{name} at threshold": (1 - r["specificity"]["estimate"], r["sensitivity"]["estimate"])
            for name, r in results.items()
            if r["specificity"]["estimate"] is not None and r["sensitivity"]["estimate"] is not None
        }
        points.update({f"reader: {name}": (1 - spec, sens) for name, (sens, spec) in (readers or {}).items()})
        drawable = {name: (t.astype(int), v) for name, (t, v) in curves.items() if self.evaluable(t)}  # both classes
        bands = {name: bootstrap_roc_band(t, v, groups=groups) for name, (t, v) in drawable.items()}
        paths = (
            {
                f"{prefix}roc": plot_roc(drawable, out_dir / f"{prefix}roc.png", operating_points=points, bands=bands),
                f"{prefix}pr": plot_precision_recall(drawable, out_dir / f"{prefix}pr.png"),
            }
            if drawable
            else {}
        )
        for name, result in results.items():
            tag = f"{prefix}{name}-" if len(results) > 1 else prefix
            paths[f"{tag}confusion"] = plot_confusion_matrix(
                result["confusion_matrix"], list(self.names), out_dir / f"{tag}confusion.png", title=name
            )
        return {**{k: str(v) for k, v in paths.items()}, **self.calibration_plots(curves, out_dir, prefix)}

    def calibration(self, targets, values):
        return targets.astype(int), values, f"P({self.names[1]})"

    def output_text(self) -> str:
        return f"the probability of {self.names[1]} (against {self.names[0]}), and a decision at the operating point"

    def balance(self, targets: np.ndarray) -> dict[str, int]:
        known = targets[self.known(targets)]
        return {name: int((known == k).sum()) for k, name in enumerate(self.names)}

    def describe(self, target: np.ndarray) -> str:
        value = float(np.asarray(target).reshape(-1)[0])
        return "unknown" if np.isnan(value) else self.names[int(value)]

    def describe_value(self, value, operating) -> str:
        p = float(np.asarray(value).reshape(-1)[0])
        return f"{p:.3f}: {self.names[int(p >= float(operating['threshold']))]}"

    def examples(self, targets, values, operating, k=2) -> dict[str, list[int]]:
        y, positive = targets.astype(int), values >= float(operating["threshold"])
        return {
            "true positive": _most(values, (y == 1) & positive, k, True),
            "false positive": _most(values, (y == 0) & positive, k, True),
            "false negative": _most(values, (y == 1) & ~positive, k, False),
            "true negative": _most(values, (y == 0) & ~positive, k, False),
        }

    def table(self, rows: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
        body = [[label, f"{r['n']} ({r['n_positive']})", *(interval(r[m]) for m in self.TABLE)] for label, r in rows]
        return markdown_table(["", "n (pos)", *self.TABLE], body)

    def columns(self, values: np.ndarray) -> dict[str, np.ndarray]:
        return {"probability": values}

    def target_columns(self, targets: np.ndarray) -> dict[str, np.ndarray]:
        return {"label": targets.astype(int)}


class MulticlassHead(Head):
    """K logits; softmax; cross-entropy; monitored by macro one-vs-rest AUROC; prediction by argmax."""

    kind = "multiclass"
    decision = "the most probable class (argmax)"
    monitor = "macro_auc"
    mode = "max"
    headline = "macro_auc"
    LossOptions = MulticlassLossOptions

    def __init__(self, names: Sequence[str]) -> None:
        if len(names) < 2:
            raise ValueError(f"a multi-class head needs at least two class names, got {names!r}")
        super().__init__(names)

    def make_loss(self, options: MulticlassLossOptions) -> nn.Module:
        if options.class_weights is not None and len(options.class_weights) != self.outputs:
            raise ConfigError(f"loss.options.class_weights needs {self.outputs} values ({', '.join(self.names)})")
        return MulticlassLoss(options.label_smoothing, options.class_weights)

    def case_values(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float(), dim=1)

    def known(self, targets: np.ndarray) -> np.ndarray:
        return targets >= 0

    def evaluable(self, targets: np.ndarray) -> bool:
        return len(np.unique(targets)) >= 2

    def score(self, targets: np.ndarray, values: np.ndarray) -> float:
        known = self.known(targets)
        if not self.evaluable(targets[known]):
            return float("nan")
        return multiclass_metrics(targets[known], values[known])["macro_auc"]

    def decide(self, values: np.ndarray, operating: Mapping[str, Any]) -> str:
        """The most probable class."""
        return self.names[int(np.argmax(values))]

    def evaluate(self, targets, values, groups, operating, n_boot, seed) -> dict[str, Any]:
        return bootstrap_multiclass(
            targets.astype(int), values, class_names=list(self.names), groups=groups, n_boot=n_boot, seed=seed
        )

    def compare(self, targets, values_a, values_b, operating_a, operating_b, groups, n_boot, seed) -> dict:
        y = targets.astype(int)
        test = paired_bootstrap_test(
            lambda t, p: multiclass_metrics(t, p)["macro_auc"],
            y,
            values_a,
            values_b,
            strata=y,
            groups=groups,
            n_boot=n_boot,
            seed=seed,
        )
        right_a = (values_a.argmax(axis=1) == y).astype(int)
        right_b = (values_b.argmax(axis=1) == y).astype(int)
        return paired("macro_auc", "paired bootstrap", test, mcnemar_test(np.ones_like(y), right_a, right_b))

    def plots(self, curves, results, out_dir, prefix="", groups=None, readers=None) -> dict[str, str]:
        """Per model: one-vs-rest ROC and precision-recall, the confusion matrix, and the reliability of the
        predicted class's probability."""
        from osteoscope.report.plots import plot_confusion_matrix, plot_precision_recall, plot_roc_multiclass

        paths = {}
        for name, (targets, values) in curves.items():
            tag = f"{prefix}{name}-" if len(curves) > 1 else prefix
            if self.evaluable(targets):  # one-vs-rest curves need two classes
                y = targets.astype(int)
                paths[f"{tag}roc"] = plot_roc_multiclass(
                    y, values, list(self.names), out_dir / f"{tag}roc.png", title=f"{name}: one vs rest"
                )
                per_class = {
                    c: ((y == k).astype(int), values[:, k]) for k, c in enumerate(self.names) if (y == k).any()
                }
                paths[f"{tag}pr"] = plot_precision_recall(
                    per_class, out_dir / f"{tag}pr.png", title=f"{name}: precision-recall, one vs rest"
                )
            paths[f"{tag}confusion"] = plot_confusion_matrix(
                results[name]["confusion_matrix"], list(self.names), out_dir / f"{tag}confusion.png", title=name
            )
        return {**{k: str(v) for k, v in paths.items()}, **self.calibration_plots(curves, out_dir, prefix)}

    def output_text(self) -> str:
        return f"a probability for each of {', '.join(self.names)}; the decision is the most probable class"

    def calibration(self, targets, values):
        correct = (values.argmax(axis=1) == targets.astype(int)).astype(int)
        return correct, values.max(axis=1), "probability of the predicted class"

    def balance(self, targets: np.ndarray) -> dict[str, int]:
        return {name: int((targets == k).sum()) for k, name in enumerate(self.names)}

    def describe(self, target: np.ndarray) -> str:
        value = int(np.asarray(target).reshape(-1)[0])
        return self.names[value] if value >= 0 else "unknown"

    def describe_value(self, value, operating) -> str:
        k = int(np.argmax(value))
        return f"{self.names[k]} ({float(value[k]):.3f})"

    def examples(self, targets, values, operating, k=2) -> dict[str, list[int]]:
        confidence, correct = values.max(axis=1), values.argmax(axis=1) == targets.astype(int)
        return {
            "correct, most confident": _most(confidence, correct, 2 * k, True),
            "wrong, most confident": _most(confidence, ~correct, 2 * k, True),
        }

    def table(self, rows: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
        summary = markdown_table(
            ["", "n", "macro AUROC", "accuracy"],
            [[label, r["n"], interval(r["macro_auc"]), interval(r["accuracy"])] for label, r in rows],
        )
        per_class = markdown_table(
            ["", "class", "n", "AUROC (vs rest)", "sensitivity", "specificity"],
            [
                [label, c["name"], c["n"], interval(c["auc"]), interval(c["sensitivity"]), interval(c["specificity"])]
                for label, r in rows
                for c in r["per_class"]
            ],
        )
        matrices = []
        for label, r in rows:
            cells = [[self.names[i], *row] for i, row in enumerate(r["confusion_matrix"])]
            matrices.append(
                f"Confusion matrix, {label} (rows true, columns predicted):\n\n"
                + markdown_table(["true \\ predicted", *self.names], cells)
            )
        return "\n\n".join([summary, per_class, *matrices])

    def columns(self, values: np.ndarray) -> dict[str, np.ndarray]:
        named = {f"p_{name}": values[:, i] for i, name in enumerate(self.names)}
        return {**named, "predicted": np.array(self.names)[values.argmax(axis=1)]}

    def target_columns(self, targets: np.ndarray) -> dict[str, np.ndarray]:
        return {"label": targets.astype(int), "true": np.array([*self.names, ""])[targets.astype(int)]}

    def aggregate(self, targets: np.ndarray, values: np.ndarray, groups: np.ndarray, how: str) -> tuple:
        if how != "mean":
            raise ConfigError("multi-class probabilities aggregate by mean only (a max would not sum to 1)")
        return super().aggregate(targets, values, groups, how)


class MultilabelHead(Head):
    """L logits; sigmoid per label; BCE; monitored by mAP; one threshold for all labels (default 0.5).

    The threshold follows the MSRT calcaneus paper's fixed operating point; it is a head argument, not
    tuned on validation, so the reported P-C/R-C/F1-C and P-O/R-O/F1-O are those of a pre-set rule.
    """

    kind = "multilabel"
    monitor = "map"
    mode = "max"
    headline = "map"
    LossOptions = WeightedLossOptions
    TABLE = ("exact_match", "p_c", "r_c", "f1_c", "p_o", "r_o", "f1_o", "map")

    def __init__(self, names: Sequence[str], threshold: float = 0.5) -> None:
        if not names:
            raise ValueError("a multi-label head needs label names")
        super().__init__(names)
        self.threshold = threshold

    def make_loss(self, options: WeightedLossOptions) -> nn.Module:
        return MultilabelLoss(options.pos_weight)

    def case_values(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits.float())

    def score(self, targets: np.ndarray, values: np.ndarray) -> float:
        known = self.known(targets)
        if not known.any():
            return float("nan")
        return multilabel_metrics(targets[known].astype(int), values[known])["map"]

    def operating_point(self, targets: np.ndarray | None, values: np.ndarray | None) -> dict[str, Any]:
        return {"threshold": self.threshold, "source": f"fixed {self.threshold:g} for every label"}

    every_class_needed = False

    def class_members(self, targets: np.ndarray) -> dict[str, np.ndarray]:
        return {name: targets[:, j] == 1 for j, name in enumerate(self.names)}

    def decide(self, values: np.ndarray, operating: Mapping[str, Any]) -> list[str]:
        """The labels at or above the threshold."""
        threshold = float(operating["threshold"])
        return [name for name, value in zip(self.names, np.reshape(values, -1), strict=True) if value >= threshold]

    def evaluate(self, targets, values, groups, operating, n_boot, seed) -> dict[str, Any]:
        return bootstrap_multilabel(
            targets.astype(int),
            values,
            threshold=float(operating["threshold"]),
            class_names=list(self.names),
            groups=groups,
            n_boot=n_boot,
            seed=seed,
        )

    def compare(self, targets, values_a, values_b, operating_a, operating_b, groups, n_boot, seed) -> dict:
        y = targets.astype(int)
        test = paired_bootstrap_test(
            lambda t, s: multilabel_metrics(t, s)["map"], y, values_a, values_b, groups=groups, n_boot=n_boot, seed=seed
        )
        exact_a = np.all((values_a >= operating_a["threshold"]) == (y == 1), axis=1).astype(int)
        exact_b = np.all((values_b >= operating_b["threshold"]) == (y == 1), axis=1).astype(int)
        return paired("map", "paired bootstrap", test, mcnemar_test(np.ones_like(exact_a), exact_a, exact_b))

    def output_text(self) -> str:
        return f"a probability for each label ({', '.join(self.names)}), each decided at the threshold"

    def calibration(self, targets, values):
        return targets.astype(int).ravel(), values.ravel(), "every label's probability, pooled"

    def balance(self, targets: np.ndarray) -> dict[str, int]:
        return {name: int((targets[:, j] == 1).sum()) for j, name in enumerate(self.names)}

    def describe(self, target: np.ndarray) -> str:
        return ", ".join(name for name, t in zip(self.names, np.asarray(target), strict=True) if t == 1) or "none"

    def describe_value(self, value, operating) -> str:
        chosen = [f"{n} ({p:.2f})" for n, p in zip(self.names, value, strict=True) if p >= operating["threshold"]]
        return ", ".join(chosen) or "none"

    def examples(self, targets, values, operating, k=2) -> dict[str, list[int]]:
        wrong = ((values >= float(operating["threshold"])) != (targets == 1)).sum(axis=1)
        error = np.abs(values - targets).mean(axis=1)
        return {
            "every label right, most confident": _most(error, wrong == 0, 2 * k, False),
            "most labels wrong": _most(wrong + error, wrong > 0, 2 * k, True),
        }

    def plots(self, curves, results, out_dir, prefix="", groups=None, readers=None) -> dict[str, str]:
        """Per model: precision-recall per label and the reliability of all labels' probabilities pooled."""
        from osteoscope.report.plots import plot_precision_recall

        paths = {}
        for name, (targets, values) in curves.items():
            tag = f"{prefix}{name}-" if len(curves) > 1 else prefix
            per_label = {
                label: (targets[:, j].astype(int), values[:, j])
                for j, label in enumerate(self.names)
                if targets[:, j].any()
            }
            if per_label:
                paths[f"{tag}pr"] = plot_precision_recall(
                    per_label, out_dir / f"{tag}pr.png", title=f"{name}: precision-recall per label"
                )
        return {**{k: str(v) for k, v in paths.items()}, **self.calibration_plots(curves, out_dir, prefix)}

    def table(self, rows: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
        names = {
            "exact_match": "exact match",
            "p_c": "P-C",
            "r_c": "R-C",
            "f1_c": "F1-C",
            "p_o": "P-O",
            "r_o": "R-O",
            "f1_o": "F1-O",
            "map": "mAP",
        }
        overall = markdown_table(
            ["", "n", *(names[m] for m in self.TABLE)],
            [[label, r["n"], *(interval(r[m]) for m in self.TABLE)] for label, r in rows],
        )
        per_label = markdown_table(
            ["", "label", "n positive", "ACC", "F1", "AP"],
            [
                [label, c["name"], c["n_positive"], interval(c["acc"]), interval(c["f1"]), interval(c["ap"])]
                for label, r in rows
                for c in r["per_class"]
            ],
        )
        return f"{overall}\n\n{per_label}"

    def columns(self, values: np.ndarray) -> dict[str, np.ndarray]:
        return {f"p_{name}": values[:, j] for j, name in enumerate(self.names)}

    def target_columns(self, targets: np.ndarray) -> dict[str, np.ndarray]:
        return {f"label_{name}": targets[:, j].astype(int) for j, name in enumerate(self.names)}


class PretextHead(Head):
    """An image output (e.g. MR -> CT translation) for a self-supervised stage; monitored by the validation
    mean absolute error per case (mode min), the L1 loss the stage trains on by default."""

    kind = "pretext"
    decision = "none (an image output)"
    monitor = "mae"
    mode = "min"
    headline = "mae"
    diagnostic = False
    LossOptions = ImageLossOptions

    def __init__(self, names: Sequence[str] = ("image",), channels: int = 1) -> None:
        super().__init__(names)
        self.channels = channels

    @property
    def outputs(self) -> int:
        return self.channels

    def class_members(self, targets: np.ndarray) -> dict[str, np.ndarray]:
        return {}

    def model_kwargs(self) -> dict[str, int]:
        return {"out_chans": self.channels}

    def logits(self, raw: Any, model: str, task: str) -> torch.Tensor:
        if not isinstance(raw, torch.Tensor) or raw.ndim < 4 or raw.shape[1] != self.channels:
            shape = tuple(raw.shape) if isinstance(raw, torch.Tensor) else type(raw).__name__
            raise ConfigError(
                f"model {model} returns logits of shape {shape}, but task {task} has a {self!r} "
                f"that needs an image (batch, {self.channels}, *spatial)"
            )
        return raw

    def make_loss(self, options: ImageLossOptions) -> nn.Module:
        if options.kind not in ("l1", "l2"):
            raise ConfigError(f"loss.options.kind must be l1 or l2, got {options.kind!r}")
        return ImageLoss(options.kind)

    def case_values(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ConfigError(f"predicted image {tuple(logits.shape)} and target {tuple(target.shape)} differ")
        return (logits.float() - target.float()).abs().flatten(1).mean(dim=1, keepdim=True)

    def case_targets(self, target: torch.Tensor) -> torch.Tensor:
        return target.new_zeros((target.shape[0], 1))

    def known(self, targets: np.ndarray) -> np.ndarray:
        return np.ones(len(targets), dtype=bool)

    def score(self, targets: np.ndarray, values: np.ndarray) -> float:
        return float(values.mean()) if len(values) else float("nan")

    def evaluate(self, targets, values, groups, operating, n_boot, seed) -> dict[str, Any]:
        result = bootstrap_structured(
            lambda t, v: {"mae": float(v.mean())}, targets, values, groups=groups, n_boot=n_boot, seed=seed
        )
        return {"n": len(values), **result}

    def compare(self, targets, values_a, values_b, operating_a, operating_b, groups, n_boot, seed) -> dict:
        test = paired_bootstrap_test(
            lambda t, v: float(v.mean()), targets, values_a, values_b, groups=groups, n_boot=n_boot, seed=seed
        )
        return paired("mae", "paired bootstrap", test)

    def output_text(self) -> str:
        return "an image (a self-supervised pretext stage whose encoder starts a later stage): no diagnosis"

    def describe_value(self, value, operating) -> str:
        return f"MAE {float(np.asarray(value).reshape(-1)[0]):.4f}"

    def examples(self, targets, values, operating, k=2) -> dict[str, list[int]]:
        everyone = np.ones(len(values), dtype=bool)
        return {
            "lowest error": _most(values[:, 0], everyone, k, False),
            "highest error": _most(values[:, 0], everyone, k, True),
        }

    def table(self, rows: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
        return markdown_table(
            ["", "n", "mean absolute error"], [[label, r["n"], interval(r["mae"])] for label, r in rows]
        )

    def columns(self, values: np.ndarray) -> dict[str, np.ndarray]:
        return {"mae": values[:, 0]}

    def target_columns(self, targets: np.ndarray) -> dict[str, np.ndarray]:
        return {}


HEADS: dict[str, type[Head]] = {h.kind: h for h in (BinaryHead, MulticlassHead, MultilabelHead, PretextHead)}


def make_head(kind: str, names: Sequence[str] | None = None) -> Head:
    """A head of ``kind`` (as saved in metrics.json), with its names when the kind needs them."""
    if kind not in HEADS:
        raise ConfigError(f"unknown head kind {kind!r} (known: {', '.join(HEADS)})")
    return HEADS[kind](names) if names else HEADS[kind]()
