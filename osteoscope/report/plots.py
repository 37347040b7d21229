"""Figures for evaluation reports, rendered headless to PNG.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so plotting works without a display,
does not touch the global backend and leaves no open figures behind. matplotlib is imported lazily
because importing it is slow and most commands never plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from osteoscope.metrics.binary import roc_auc, roc_points

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_confusion_matrix", "plot_roc"]


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


def plot_roc(
    curves: dict[str, tuple[ArrayLike, ArrayLike]],
    path: str | Path,
    *,
    operating_points: dict[str, tuple[float, float]] | None = None,
    title: str = "ROC",
) -> Path:
    """Plot one or more ROC curves with their AUC in the legend.

    Args:
        curves: Name -> ``(y_true, y_score)``; each needs both classes.
        path: Output PNG file.
        operating_points: Name -> ``(fpr, tpr)`` drawn as markers, e.g. a chosen threshold or a human reader.
        title: Figure title.

    Returns:
        The written path.

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
        computed.append((name, fpr, tpr, roc_auc(y_true, y_score)))
    points = dict(operating_points or {})
    for name, point in points.items():
        coords = np.asarray(point, dtype=np.float64)
        if coords.shape != (2,) or not np.all((coords >= 0) & (coords <= 1)):
            raise ValueError(f"operating point {name!r} must be (fpr, tpr) within [0, 1], got {point!r}")

    fig = _new_figure((5.0, 5.0))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    for name, fpr, tpr, auc in computed:
        ax.plot(fpr, tpr, linewidth=1.8, label=f"{name} (AUC = {auc:.3f})")
    markers = "osD^vP*X"
    for k, (name, (x, y)) in enumerate(points.items()):
        ax.plot([x], [y], linestyle="none", marker=markers[k % len(markers)], markersize=8,
                markeredgecolor="black", label=name)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("Sensitivity (true positive rate)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


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
            ax.text(j, i, f"{count}\n{100 * fraction[i, j]:.0f}%", ha="center", va="center", color=colour,
                    fontsize="small")
    tilt = k > 3
    ax.set_xticks(range(k), labels=class_names, rotation=45 if tilt else 0, ha="right" if tilt else "center")
    ax.set_yticks(range(k), labels=class_names)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title)
    return _save(fig, path)
