"""Figures for evaluation reports, rendered headless to PNG.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so plotting works without a display,
does not touch the global backend and leaves no open figures behind. matplotlib is imported lazily
because importing it is slow and most commands never plot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from osteoscope.metrics.binary import roc_auc, roc_points
from osteoscope.metrics.calibration import expected_calibration_error, reliability_curve
from osteoscope.metrics.multiclass import check_multiclass_inputs, multiclass_metrics
from osteoscope.metrics.multilabel import average_precision, precision_recall_points

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "plot_case_examples",
    "plot_confusion_matrix",
    "plot_precision_recall",
    "plot_reliability",
    "plot_roc",
    "plot_roc_multiclass",
    "plot_training_curves",
    "roc_figure",
]


def _new_figure(size: tuple[float, float]) -> Figure:
    """A figure attached to an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG to ``path``, creating parent folders, and return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=120)
    return out


def _finish_unit_square(ax: Axes, xlabel: str, ylabel: str, title: str, legend_loc: str) -> None:
    """Limits, labels, grid and legend shared by the plots of two rates on [0, 1] x [0, 1]."""
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc=legend_loc, fontsize="small")


def plot_roc(curves: dict[str, tuple[ArrayLike, ArrayLike]], path: str | Path, **options: Any) -> Path:
    """Write :func:`roc_figure` (same arguments after ``path``) as PNG to ``path`` and return the path."""
    return _save(roc_figure(curves, **options), path)


def roc_figure(
    curves: dict[str, tuple[ArrayLike, ArrayLike]],
    *,
    operating_points: dict[str, tuple[float, float]] | None = None,
    bands: dict[str, Mapping[str, Any]] | None = None,
    title: str = "ROC",
) -> Figure:
    """One or more ROC curves with their AUC and number of cases (positives) in the legend.

    Args:
        curves: Name -> ``(y_true, y_score)``; each needs both classes.
        operating_points: Name -> ``(fpr, tpr)`` drawn as markers, e.g. a chosen threshold or a human reader.
        bands: Name (of a curve) -> a bootstrap band (``fpr``, ``low``, ``high``, ``n_boot``, as from
            :func:`osteoscope.metrics.bootstrap_roc_band`), shaded around that curve.
        title: Figure title.

    Raises:
        ValueError: when ``curves`` is empty, an input is malformed or lacks a class, or an operating point
            lies outside the unit square.
    """
    if not curves:
        raise ValueError("plot_roc needs at least one curve")
    computed = []
    for name, (y_true, y_score) in curves.items():
        try:
            fpr, tpr, _ = roc_points(y_true, y_score)
        except ValueError as exc:
            raise ValueError(f"curve {name!r}: {exc}") from exc
        y = np.asarray(y_true)
        computed.append((name, fpr, tpr, roc_auc(y_true, y_score), len(y), int((y == 1).sum())))
    points = dict(operating_points or {})
    for name, point in points.items():
        coords = np.asarray(point, dtype=np.float64)
        if coords.shape != (2,) or not np.all((coords >= 0) & (coords <= 1)):
            raise ValueError(f"operating point {name!r} must be (fpr, tpr) within [0, 1], got {point!r}")

    fig = _new_figure((5.0, 5.0))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    for name, fpr, tpr, auc, n, n_pos in computed:
        (line,) = ax.plot(fpr, tpr, linewidth=1.8, label=f"{name} (AUC = {auc:.3f}; n = {n}, {n_pos} positive)")
        band = (bands or {}).get(name)
        if band is not None:
            ax.fill_between(
                band["fpr"],
                band["low"],
                band["high"],
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
                label=f"95% band ({band['n_boot']} patient resamples)",
            )
    markers = "osD^vP*X"
    for k, (name, (x, y)) in enumerate(points.items()):
        ax.plot(
            [x],
            [y],
            linestyle="none",
            marker=markers[k % len(markers)],
            markersize=8,
            markeredgecolor="black",
            label=name,
        )
    _finish_unit_square(
        ax, "1 - specificity (false positive rate)", "Sensitivity (true positive rate)", title, "lower right"
    )
    return fig


def plot_roc_multiclass(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    class_names: list[str],
    path: str | Path,
    *,
    title: str = "ROC, one class vs rest",
) -> Path:
    """Plot the one-vs-rest ROC curve of every class of a K-class classifier, macro AUC in the title.

    Classes absent from ``y_true`` have no curve; the title names them so the omission is visible.

    Raises:
        ValueError: on malformed input (see ``check_multiclass_inputs``), a wrong number of class names,
            or fewer than one class with both positive and negative cases.
    """
    y, p = check_multiclass_inputs(y_true, y_prob)
    if len(class_names) != p.shape[1]:
        raise ValueError(f"{len(class_names)} class names given for {p.shape[1]} classes")
    present = set(np.unique(y).tolist())
    curves = {
        f"{name} vs rest": ((y == c).astype(np.int64), p[:, c])
        for c, name in enumerate(class_names)
        if c in present and len(present) > 1
    }
    if not curves:
        raise ValueError("a one-vs-rest ROC needs at least two classes present in y_true")
    macro = multiclass_metrics(y, p)["macro_auc"]
    absent = [name for c, name in enumerate(class_names) if c not in present]
    suffix = f"; no cases of {', '.join(absent)}" if absent else ""
    return plot_roc(curves, path, title=f"{title}\nmacro AUC = {macro:.3f}{suffix}")


def plot_confusion_matrix(
    matrix: ArrayLike, class_names: list[str], path: str | Path, *, title: str = "Confusion matrix"
) -> Path:
    """Plot a confusion matrix (rows true class, columns predicted) with counts and row percentages.

    Cells are coloured by the row-normalised fraction so that rare classes remain readable.

    Args:
        matrix: Square array of non-negative counts, ``matrix[i][j]`` = cases of class i predicted as j.
        class_names: One name per row/column.
        path: Output PNG file.
        title: Figure title.

    Returns:
        The written path.

    Raises:
        ValueError: when the matrix is not square, has negative or non-finite entries, or its size does not
            match ``class_names``.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"confusion matrix must be square and non-empty, got shape {m.shape}")
    if len(class_names) != m.shape[0]:
        raise ValueError(f"{len(class_names)} class names given for a {m.shape[0]}x{m.shape[0]} matrix")
    if not np.all(np.isfinite(m)) or (m < 0).any():
        raise ValueError("confusion matrix entries must be finite and non-negative")
    row_sums = m.sum(axis=1, keepdims=True)
    fraction = np.divide(m, row_sums, out=np.zeros_like(m), where=row_sums > 0)

    k = m.shape[0]
    side = max(3.5, 1.1 * k + 2.0)
    fig = _new_figure((side, side))
    ax = fig.add_subplot()
    image = ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    integer = np.all(m == np.round(m))
    for i in range(k):
        for j in range(k):
            count = f"{int(m[i, j])}" if integer else f"{m[i, j]:.3g}"
            colour = "white" if fraction[i, j] > 0.5 else "black"
            ax.text(
                j, i, f"{count}\n{100 * fraction[i, j]:.0f}%", ha="center", va="center", color=colour, fontsize="small"
            )
    tilt = k > 3
    ax.set_xticks(range(k), labels=class_names, rotation=45 if tilt else 0, ha="right" if tilt else "center")
    ax.set_yticks(range(k), labels=class_names)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title)
    return _save(fig, path)


def plot_precision_recall(
    curves: dict[str, tuple[ArrayLike, ArrayLike]], path: str | Path, *, title: str = "Precision-recall"
) -> Path:
    """Plot one or more precision-recall curves with their average precision (AP) in the legend.

    Curves are drawn as steps, so the area under each is exactly its AP. A dotted line per curve marks its
    prevalence, the precision of a random classifier, which matters for rare findings.

    Args:
        curves: Name -> ``(y_true, y_score)``; each needs at least one positive case.
        path: Output PNG file.
        title: Figure title.

    Returns:
        The written path.

    Raises:
        ValueError: when ``curves`` is empty or an input is malformed or has no positive case.
    """
    if not curves:
        raise ValueError("plot_precision_recall needs at least one curve")
    computed = []
    for name, (y_true, y_score) in curves.items():
        try:
            precision, recall, _ = precision_recall_points(y_true, y_score)
        except ValueError as exc:
            raise ValueError(f"curve {name!r}: {exc}") from exc
        prevalence = float(np.mean(np.asarray(y_true, dtype=np.float64)))
        computed.append((name, precision, recall, average_precision(y_true, y_score), prevalence))

    fig = _new_figure((5.0, 5.0))
    ax = fig.add_subplot()
    for name, precision, recall, ap, prevalence in computed:
        (line,) = ax.step(
            np.r_[0.0, recall],
            np.r_[precision[0], precision],
            where="pre",
            linewidth=1.8,
            label=f"{name} (AP = {ap:.3f})",
        )
        ax.axhline(prevalence, linestyle=":", linewidth=1, color=line.get_color())
    _finish_unit_square(ax, "Recall (sensitivity)", "Precision (PPV)", title, "lower left")
    return _save(fig, path)


def plot_reliability(
    y_true: ArrayLike, y_prob: ArrayLike, path: str | Path, *, n_bins: int = 10, title: str = "Reliability"
) -> Path:
    """Plot a reliability diagram: observed positive rate against mean predicted probability per bin.

    The upper panel shows the curve against the diagonal of perfect calibration, with the expected
    calibration error (ECE) in the legend; the lower panel shows how many cases fall in each bin, since
    sparse bins make their points unreliable.

    Args:
        y_true: 0/1 labels.
        y_prob: Predicted probabilities of the positive class, in [0, 1].
        path: Output PNG file.
        n_bins: Number of equal-width bins.
        title: Figure title.

    Returns:
        The written path.

    Raises:
        ValueError: on invalid labels or probabilities or ``n_bins < 1``.
    """
    curve = reliability_curve(y_true, y_prob, n_bins=n_bins)
    ece = expected_calibration_error(y_true, y_prob, n_bins=n_bins)
    edges = np.asarray(curve["bin_edges"])
    counts = np.asarray(curve["counts"])
    filled = counts > 0
    mean_predicted = np.asarray(curve["mean_predicted"])[filled]
    observed = np.asarray(curve["observed_frequency"])[filled]

    fig = _new_figure((5.0, 6.0))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="perfectly calibrated")
    top.plot(mean_predicted, observed, marker="o", linewidth=1.8, label=f"model (ECE = {ece:.3f})")
    top.set_xlim(-0.01, 1.01)
    top.set_ylim(-0.01, 1.01)
    top.set_ylabel("Observed positive fraction")
    top.set_title(title)
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize="small")
    bottom.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="0.5", edgecolor="white")
    bottom.set_xlabel("Mean predicted probability")
    bottom.set_ylabel("Cases")
    return _save(fig, path)


def plot_training_curves(
    histories: Mapping[str, Sequence[Mapping[str, Any]]], monitor: str, path: str | Path, *, mode: str = "max"
) -> Path:
    """Training curves of one or more runs from their ``history.jsonl`` records.

    The upper panel shows the training loss (solid) and validation loss (dashed) per epoch, the lower one the
    monitored validation value with the best epoch marked (best by ``mode``). Epochs where a value is missing
    or not finite leave a gap.

    Raises:
        ValueError: when no history has a record.
    """
    if not any(histories.values()):
        raise ValueError("plot_training_curves needs at least one epoch record")

    def series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
        epochs = np.array([r["epoch"] for r in records], dtype=np.float64)
        values = np.array([r.get(key) if isinstance(r.get(key), int | float) else np.nan for r in records], float)
        return epochs, values

    from matplotlib.ticker import MaxNLocator

    fig = _new_figure((6.0, 6.0))
    top, bottom = fig.subplots(2, 1, sharex=True)
    for name, records in histories.items():
        epochs, train_loss = series(records, "train_total")
        (line,) = top.plot(epochs, train_loss, marker=".", linewidth=1.5, label=f"{name}: training loss")
        _, val_loss = series(records, "val_loss")
        top.plot(epochs, val_loss, marker=".", linestyle="--", color=line.get_color(), label=f"{name}: validation loss")
        _, score = series(records, monitor)
        bottom.plot(epochs, score, marker=".", color=line.get_color(), label=name)
        if np.isfinite(score).any():
            best = int(np.nanargmax(score) if mode == "max" else np.nanargmin(score))
            bottom.plot([epochs[best]], [score[best]], marker="*", markersize=12, color=line.get_color())
    top.set_ylabel("Loss")
    top.set_title("Training curves (star: best epoch, the weights kept)")
    top.grid(alpha=0.3)
    top.legend(fontsize="small")
    bottom.set_xlabel("Epoch")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set_ylabel(monitor)
    bottom.grid(alpha=0.3)
    if len(histories) > 1:
        bottom.legend(fontsize="small")
    return _save(fig, path)


def plot_case_examples(rows: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]], path: str | Path) -> Path:
    """Example cases, one row each: a title and the 2-D crops the model saw (channels, ROIs, mid slices).

    Args:
        rows: ``(title, [(tile name, 2-D array), ...])`` per case.
        path: Output PNG file.

    Raises:
        ValueError: when there is no row or a row has no tile.
    """
    if not rows or not all(tiles for _, tiles in rows):
        raise ValueError("plot_case_examples needs at least one case, each with at least one image")
    columns = max(len(tiles) for _, tiles in rows)
    fig = _new_figure((max(6.0, 2.0 * columns), 2.4 * len(rows)))
    for (title, tiles), panel in zip(rows, fig.subfigures(len(rows), 1, squeeze=False)[:, 0], strict=True):
        panel.suptitle(title, fontsize="small", x=0.01, ha="left")
        for k, ax in enumerate(panel.subplots(1, columns, squeeze=False)[0]):
            ax.set_axis_off()
            if k >= len(tiles):
                continue
            name, tile = tiles[k]
            finite = tile[np.isfinite(tile)]
            low, high = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
            ax.imshow(tile, cmap="gray", vmin=low, vmax=high if high > low else low + 1)
            ax.set_title(name, fontsize="x-small")
    return _save(fig, path)
