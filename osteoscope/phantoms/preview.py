"""Contact sheets: a grid of a dataset's cases by label/stage, masks outlined, to judge realism at a glance.

Works for any manifest: the first image column is shown (the middle axial slice of a volume), each mask
column is outlined in its own colour, and boxes are drawn; masks and boxes named for another view
(``mask_lat`` when ``image_ap`` is shown) are left out. Cases are grouped by their label in words (the task's
class or label names, e.g. ``ONFH`` / ``no ONFH``) and stage, so every group appears.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from osteoscope.data.manifest import Case, load_manifest
from osteoscope.data.readers import read_image
from osteoscope.tasks import Task, make_task

MASK_COLOURS = ("red", "cyan", "yellow", "lime", "magenta")


def group_of(case: Case, task: Task) -> str:
    """A case's label in the task's words (its head's class or label names) and its stage, if any."""
    named = task.head.describe(task.target(case).numpy())
    stage = f"stage {case.stage}" if case.stage is not None else ""
    return ", ".join(part for part in (named, stage) if part) or "no label"


def pick_cases(
    cases: list[Case], count: int, group: Callable[[Case], str] = lambda case: str(case.stage)
) -> list[Case]:
    """Up to ``count`` cases, taken round-robin from each group (by default the stage) in sorted order."""
    groups: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        groups[group(case)].append(case)
    queues = [groups[k] for k in sorted(groups)]
    chosen: list[Case] = []
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return chosen


def _slice(array: np.ndarray, z: int | None) -> np.ndarray:
    return array if array.ndim == 2 else array[array.shape[0] // 2 if z is None else z]


def _focus_slice(case: Case, volume: np.ndarray) -> int:
    """The axial slice to show: where a lesion mask (``mask_<key>``) is largest, else the box centre."""
    for column, path in case.masks.items():
        if column != "mask" and path is not None:
            area = (read_image(path).array > 0).sum(axis=(1, 2))
            if area.shape[0] == volume.shape[0] and area.any():
                return int(area.argmax())
    box = next((b for b in case.boxes.values() if b is not None and len(b) == 6), None)
    return (box[2] + box[5]) // 2 if box else volume.shape[0] // 2


def contact_sheet(dataset: str | Path, out: str | Path, task: str, *, count: int = 12, columns: int = 4) -> Path:
    """Draw ``count`` cases of a dataset of ``task`` on one PNG, titled by case, label name, stage and side.

    For volumes the axial slice where the lesion mask is largest is shown (else the centre of the 3-D box).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    kind = make_task(task)
    cases = pick_cases(load_manifest(dataset).cases, count, lambda case: group_of(case, kind))
    colours = dict(zip(sorted({c for case in cases for c in case.masks}), MASK_COLOURS, strict=False))
    rows = max(1, -(-len(cases) // columns))
    figure = Figure(figsize=(3.2 * columns, 3.2 * rows))
    FigureCanvasAgg(figure)
    for index, case in enumerate(cases):
        axis = figure.add_subplot(rows, columns, index + 1)
        column, path = next((c, p) for c, p in case.images.items() if p is not None)
        other_views = {c.removeprefix("image_") for c in case.images if c != column and c.startswith("image_")}
        volume = read_image(path).array
        z = _focus_slice(case, volume) if volume.ndim == 3 else None
        image = _slice(volume, z)
        axis.imshow(image, cmap="gray", vmin=np.percentile(image, 0.5), vmax=np.percentile(image, 99.5))
        for mask_column, mask_path in case.masks.items():
            if mask_path is None or mask_column not in colours or mask_column.removeprefix("mask_") in other_views:
                continue
            mask = _slice(read_image(mask_path).array, z)
            if mask.shape == image.shape and mask.any():
                axis.contour(mask > 0, levels=[0.5], colors=colours[mask_column], linewidths=0.8)
        for box_column, box in case.boxes.items():
            if box is not None and box_column.removeprefix("box_") not in other_views:
                x0, y0, x1, y1 = (box[0], box[1], box[3], box[4]) if len(box) == 6 else box
                axis.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="orange", linewidth=0.7))
        side = f", side {case.side}" if case.side else ""
        axis.set_title(f"{case.case_id}: {group_of(case, kind)}{side}", fontsize=7)
        axis.set_axis_off()
    legend = ", ".join(f"{c}={colour}" for c, colour in colours.items()) or "none"
    figure.suptitle(f"{Path(dataset).name}: {len(cases)} cases; outlines {legend}; boxes orange", fontsize=9)
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    return out
