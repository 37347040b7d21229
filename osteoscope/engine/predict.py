"""Predict with a trained run on raw studies: the task turns the given files into a case, the head the
logits into named scores (the same columns as in ``predictions.csv``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from osteoscope.data.manifest import Box
from osteoscope.engine.inference import forward
from osteoscope.engine.runs import Run, load_run
from osteoscope.errors import ConfigError, DataError
from osteoscope.tasks.base import StudyInputs


def predict_study(run: Run, inputs: StudyInputs) -> dict[str, Any]:
    """Scores of one raw study (files named as on the command line; see :meth:`Task.study_case`)."""
    task, head = run.task, run.task.head
    if not head.diagnostic:
        raise ConfigError(f"{run.path} is a pretext run ({task.name}, {head!r}): it makes no diagnosis to predict")
    case = task.study_case(inputs, run.path)
    try:
        sample = task.builder(False, None)(case, None)
    except DataError as error:
        raise DataError(error.reason, path=error.path or next(iter(case.images.values()), None)) from None
    batch = default_collate([sample])
    with torch.no_grad():
        outputs = forward(run.model.eval(), batch, model_name=run.model_name, task=task)
    values = head.case_values(outputs["logits"], batch["label"]).numpy()
    result: dict[str, Any] = {
        "study": case.case_id,
        "inputs": {column: str(path) for column, path in {**case.images, **case.masks}.items() if path},
    }
    if case.boxes:
        result["boxes"] = {column: list(map(int, box)) for column, box in case.boxes.items() if box is not None}
    result.update({k: _plain(v[0]) for k, v in head.columns(values).items()})
    for key, names in task.extra_outputs.items():
        if key in outputs:
            scores = torch.sigmoid(outputs[key].float())[0].tolist()
            result.update({name: round(score, 6) for name, score in zip(names, scores, strict=True)})
    return result


def predict_images(
    run_dir: str | Path,
    images: Sequence[str | Path] = (),
    *,
    named: Mapping[str, str | Path] | None = None,
    masks: Mapping[str, str | Path] | None = None,
    boxes: Mapping[str, Box] | None = None,
    files: Mapping[str, str | Path] | None = None,
) -> list[dict[str, Any]]:
    """Predict each image of ``images`` as a study of its own, and ``named`` images as one study.

    Args:
        run_dir: A run written by ``osteoscope train``.
        images: Single-image studies (radiographs, a CT file or DICOM series folder).
        named: Images of one study by name (``{"T1": a.dcm, "STIR": b.dcm}`` for MR protocols).
        masks: Masks by name (``""`` for the task's mask), applied to every study.
        boxes: Boxes by name (``""`` for ``box``, ``left``/``right`` for the femoral heads), applied to
            every study.
        files: Auxiliary files by name, e.g. ``localizer`` for onfh-xray's head localiser.

    Returns:
        One dict per study.
    """
    run = load_run(run_dir)
    common = {
        "masks": {k: Path(v) for k, v in (masks or {}).items()},
        "boxes": dict(boxes or {}),
        "files": {k: Path(v) for k, v in (files or {}).items()},
    }
    studies = [StudyInputs(images={"": Path(image)}, **common) for image in images]
    if named:
        studies.append(StudyInputs(images={k: Path(v) for k, v in named.items()}, **common))
    if not studies:
        raise ConfigError("give at least one image to predict")
    return [predict_study(run, study) for study in studies]


def _plain(value: Any) -> float | str:
    """A JSON-ready scalar: floats rounded to 6 places, anything else (class names) as text."""
    return round(float(value), 6) if isinstance(value, float | np.floating) else str(value)
