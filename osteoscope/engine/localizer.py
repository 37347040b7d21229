"""Train the femoral-head localiser from the boxes of a manifest."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from osteoscope.data.manifest import Box, Case, load_manifest
from osteoscope.data.readers import read_image
from osteoscope.engine.runs import log
from osteoscope.errors import DataError


def _boxed_images(cases: Sequence[Case]) -> Iterator[tuple[np.ndarray, Box, Box]]:
    for case in cases:
        left, right = case.boxes["box_left"], case.boxes["box_right"]
        path = case.images["image"]
        if left is None or right is None or path is None:
            continue
        yield read_image(path).array, left, right


def train_localizer_on_manifest(
    data: str | Path, out: str | Path, *, epochs: int = 30, seed: int = 0, case_ids: set[str] | None = None
) -> Path:
    """Fit a :class:`HeadLocalizer` on the ``box_left``/``box_right`` of a dataset and save it atomically.

    Args:
        data: Dataset folder.
        out: Weights file to write.
        epochs: Training epochs.
        seed: Random seed.
        case_ids: Restrict training to these cases (e.g. a run's training split).
    """
    from rich.progress import Progress

    from osteoscope.data.localize import fit_localizer, save_localizer

    manifest = load_manifest(data)
    if "box_left" not in manifest.columns or "box_right" not in manifest.columns:
        raise DataError("the manifest has no box_left/box_right columns to learn from", path=manifest.path)
    cases = [c for c in manifest.cases if case_ids is None or c.case_id in case_ids]
    with Progress(transient=True) as bar:
        job = bar.add_task("training head localiser", total=epochs)
        model = fit_localizer(
            _boxed_images(cases),
            epochs=epochs,
            seed=seed,
            progress=lambda epoch, total, loss: bar.update(job, completed=epoch),
        )
    save_localizer(model, out)
    log.info("head localiser trained on %d cases, saved to %s", len(cases), out)
    return Path(out)
