"""Predict ONFH on new radiographs (DICOM, PNG, ...) with a trained run, finding the heads if needed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from osteoscope.data.datasets import BilateralRois
from osteoscope.data.manifest import Box, Case
from osteoscope.data.readers import read_image
from osteoscope.engine.runs import load_run
from osteoscope.errors import ConfigError, DataError

LOCALIZER_FILE = "localizer.pt"


def predict_images(
    run_dir: str | Path,
    images: Sequence[str | Path],
    *,
    localizer: str | Path | None = None,
    boxes: tuple[Box, Box] | None = None,
) -> list[dict[str, Any]]:
    """ONFH probability and per-side scores for each image.

    Args:
        run_dir: A run written by ``osteoscope train``.
        images: Radiograph files, read as they are (DICOM or PNG/JPEG/TIFF).
        localizer: Head-localiser weights used when no ``boxes`` are given; defaults to
            ``RUN/localizer.pt``.
        boxes: (box_left, box_right) of the patient's femoral heads, applied to every image.

    Returns:
        One dict per image: ``image``, ``probability``, ``side_scores`` {left, right} (when the model has
        per-side heads) and the ``boxes`` used.
    """
    run = load_run(run_dir)
    builder = run.task.make_builder(run.config.data, False, None)
    if not isinstance(builder, BilateralRois):
        raise ConfigError(f"predict does not support task {run.task.name!r} yet")
    if boxes is None:
        from osteoscope.data.localize import load_localizer, locate_heads

        path = Path(localizer) if localizer else run.path / LOCALIZER_FILE
        if not path.is_file():
            raise DataError("no head localiser found: pass --localizer FILE or --box-left/--box-right", path=path)
        model = load_localizer(path)
        builder.locate = lambda image: locate_heads(model, image)
    results = []
    for image_path in images:
        image = read_image(image_path).array.astype(np.float32, copy=False)
        case = Case(
            case_id=Path(image_path).name,
            patient_id="",
            images={"image": Path(image_path)},
            boxes={"box_left": boxes[0], "box_right": boxes[1]} if boxes else {},
        )
        try:
            left_box, right_box = builder.boxes(case, image)
        except DataError as error:
            raise DataError(error.reason, path=image_path) from None
        left, right = builder.rois(image, left_box, right_box)
        with torch.no_grad():
            outputs = run.model(torch.from_numpy(left.copy())[None, None], torch.from_numpy(right.copy())[None, None])
        result: dict[str, Any] = {
            "image": str(image_path),
            "probability": round(float(torch.sigmoid(outputs["logits"])[0]), 6),
            "boxes": {"left": list(map(int, left_box)), "right": list(map(int, right_box))},
        }
        if "side_logits" in outputs:
            side = torch.sigmoid(outputs["side_logits"])[0].tolist()
            result["side_scores"] = {"left": round(side[0], 6), "right": round(side[1], 6)}
        results.append(result)
    return results
