"""SRANet's patch-attention maps (seed Fig. 5): scored against the lesion, and drawn on the CT.

A model of the ``avnfh-ct`` task that returns ``maps["attention"]`` (B, 1, P, P, P) has it saved per case by
evaluation (``maps/<case>_attention.npy``). Here each positive case with a lesion mask is scored in the
model's input frame (the lesion cropped, resampled and padded exactly as the image):

* **attention mass**: the share of the attention in patches that touch the lesion;
* **pointing game**: whether the most attended patch touches the lesion.

Both come with patient-level bootstrap intervals. :func:`draw_attention` overlays a case's map on the axial
and coronal slices through the lesion (or the volume's centre when there is none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from osteoscope.errors import DataError
from osteoscope.heads import interval, markdown_table
from osteoscope.metrics.statistics import bootstrap_ci


def lesion_patches(lesion: np.ndarray, grid: int) -> np.ndarray:
    """(P, P, P) booleans: which of the ``grid``^3 equal patches of a (D, H, W) mask touch the lesion."""
    if lesion.ndim != 3 or any(side % grid for side in lesion.shape):
        raise DataError(f"a lesion mask of shape {lesion.shape} does not split into {grid}^3 equal patches")
    d, h, w = (side // grid for side in lesion.shape)
    blocks = (lesion > 0).reshape(grid, d, grid, h, grid, w)
    return blocks.any(axis=(1, 3, 5))


@dataclass(frozen=True)
class AttentionScore:
    """One case's attention against its lesion."""

    case_id: str
    mass: float  # share of attention on patches touching the lesion
    hit: bool  # the most attended patch touches the lesion
    chance: float  # share of patches touching the lesion: both scores' expected value under uniform attention


def score_case(case_id: str, attention: np.ndarray, lesion: np.ndarray) -> AttentionScore:
    """Score one (P, P, P) attention map (any positive scale) against the lesion mask of the model input."""
    attention = np.asarray(attention, dtype=np.float64).reshape((attention.shape[-1],) * 3)
    touches = lesion_patches(lesion, attention.shape[0])
    total = attention.sum()
    if not touches.any() or total <= 0:
        raise DataError("no lesion in the model's input frame, or an all-zero attention map", case_id=case_id)
    mass = float(attention[touches].sum() / total)
    return AttentionScore(case_id, mass, bool(touches.flat[attention.argmax()]), float(touches.mean()))


def summarise(scores: Sequence[AttentionScore], groups: Sequence[str], *, n_boot: int = 2000) -> dict[str, Any]:
    """Mean attention mass and pointing-game hit rate with patient-level 95 % bootstrap intervals, and the
    level both would have under uniform attention (the mean share of patches that touch the lesion)."""
    ones = np.ones(len(scores))

    def mean(_: np.ndarray, values: np.ndarray) -> float:
        return float(values.mean())

    summary: dict[str, Any] = {"cases": len(scores), "chance": float(np.mean([s.chance for s in scores]))}
    for name, values in (("attention_mass", [s.mass for s in scores]), ("pointing_game", [s.hit for s in scores])):
        summary[name] = bootstrap_ci(
            mean, ones, np.asarray(values, float), groups=np.asarray(groups), n_boot=n_boot, stratify=False
        )
    return summary


def summary_markdown(summary: Mapping[str, Any], figures: Sequence[Path], base: Path) -> str:
    """The report's table of :func:`summarise` and the drawn cases (linked relative to ``base``)."""
    rows = [
        [label, interval(summary[key]), f"{summary['chance']:.3f}"]
        for label, key in (("attention mass on the lesion", "attention_mass"), ("pointing game", "pointing_game"))
    ]
    table = markdown_table(["measure (mean over cases)", "estimate [95% CI]", "uniform attention"], rows)
    shown = "\n\n".join(f"![{f.stem}]({f.relative_to(base).as_posix()})" for f in figures)
    return (
        f"{summary['cases']} positive test cases with a lesion visible in the model's input (ARCO I has none on "
        f"CT); intervals over patients.\n\n{table}\n\n{shown}"
    )


def lesion_slices(
    lesion: np.ndarray | None, shape: tuple[int, int, int], attention: np.ndarray | None = None
) -> tuple[int, int]:
    """(axial index along D, coronal index along H) through the lesion's centre of mass; without a lesion,
    through the centre of the most attended patch of ``attention`` (grid^3), or else the volume's centre."""
    if lesion is not None and (lesion > 0).any():
        z, y, _ = np.argwhere(lesion > 0).mean(axis=0)
        return round(float(z)), round(float(y))
    if attention is None:
        return shape[0] // 2, shape[1] // 2
    grid = np.asarray(attention).shape[-1]
    top = np.unravel_index(int(np.argmax(attention)), (grid,) * 3)
    return tuple(int((i + 0.5) * side / grid) for i, side in zip(top[:2], shape[:2], strict=True))


def draw_attention(
    volume: np.ndarray, attention: np.ndarray, path: str | Path, *, lesion: np.ndarray | None = None, title: str = ""
) -> Path:
    """PNG of the axial and coronal slices through the lesion (without one: through the most attended patch)
    with the patch attention over them (each patch a flat block, as the model sees it) and the lesion
    outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = attention.shape[-1]
    attention = np.asarray(attention, dtype=np.float32).reshape((grid,) * 3)
    factor = [side // grid for side in volume.shape]
    up = np.kron(attention, np.ones(factor, dtype=np.float32))
    z, y = lesion_slices(lesion, volume.shape, attention)
    outline = np.zeros(volume.shape, bool) if lesion is None else lesion > 0
    # Coronal rows run from the feet up (z toward superior), so they are flipped to show the head on top.
    panels = (
        ("axial", volume[z], up[z], outline[z]),
        ("coronal", volume[:, y][::-1], up[:, y][::-1], outline[:, y][::-1]),
    )
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.4))
    for ax, (name, image, heat, edge) in zip(axes, panels, strict=True):
        ax.imshow(image, cmap="gray")
        shown = ax.imshow(heat, cmap="inferno", alpha=0.45, vmin=0.0, vmax=float(attention.max()) or 1.0)
        if edge.any():
            ax.contour(edge, levels=[0.5], colors="cyan", linewidths=1.0)
        ax.set_title(f"{name} slice", fontsize=9)
        ax.axis("off")
    fig.colorbar(shown, ax=axes, fraction=0.03, label="patch attention")
    fig.suptitle(title or "patch attention (cyan: lesion)", fontsize=10)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
