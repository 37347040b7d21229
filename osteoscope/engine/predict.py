"""Predict with a trained run on raw studies: the task turns the given files into a case, the head the
logits into named scores (the same columns as in ``predictions.csv``) and a decision at the operating point
stored in the checkpoint.

Each file of a study is decoded once (:func:`osteoscope.data.readers.decode_once`), at the task's
:attr:`~osteoscope.tasks.base.Task.study_min_side` (a task may choose a reduced scale that still keeps its
crops sharp); boxes are given and reported in the file's full-resolution pixels whatever the decode scale.

Before scoring, the task's out-of-distribution guard (:meth:`osteoscope.tasks.base.Task.check_study`)
compares the study with the training inputs: DICOM Modality and BodyPartExamined, image size, aspect and
intensity percentiles against the statistics stored at training time, and task checks of its own (the
femoral-head localiser's confidence for onfh-xray). A study that fails is refused (``ood="refuse"``, the
default: no score is shown for an image unlike the training data, and the reasons are) or scored and
flagged (``ood="flag"``).

Runs of older versions without a stored operating point decide by the head's fixed rule (binary 0.5),
labelled as such in ``operating_point.source``; without stored training statistics only the DICOM tags are
checked, and ``ood.note`` says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from osteoscope.data.manifest import Box
from osteoscope.data.readers import decode_once
from osteoscope.engine.inference import forward
from osteoscope.engine.runs import Run, load_run, log
from osteoscope.errors import ConfigError, DataError
from osteoscope.tasks.base import StudyInputs

OOD_MODES = ("refuse", "flag")


def operating_point(run: Run) -> dict[str, Any]:
    """The run's stored decision rule, or for older runs the head's fixed rule, labelled as such."""
    if run.operating_point is not None:
        return run.operating_point
    fixed = run.task.head.operating_point(None, None)
    return {**fixed, "source": f"{fixed['source']} (not validated: this run stores no operating point)"}


def predict_study(run: Run, inputs: StudyInputs, *, ood: str = "refuse") -> dict[str, Any]:
    """Scores and decision of one raw study (files named as on the command line; see :meth:`Task.study_case`),
    or its refusal when it fails the out-of-distribution guard and ``ood`` is ``refuse``."""
    task, head = run.task, run.task.head
    if not head.diagnostic:
        raise ConfigError(f"{run.path} is a pretext run ({task.name}, {head!r}): it makes no diagnosis to predict")
    if ood not in OOD_MODES:
        raise ConfigError(f"--ood must be one of {', '.join(OOD_MODES)}, got {ood!r}")
    profile = run.record.get("input_profile")
    with decode_once(task.study_min_side):  # the task, its builder and the guard share one decode per file
        case = task.study_case(inputs, run.path)
        # a file that cannot be read or a box that does not fit is an error, before the guard judges the image
        try:
            sample = task.builder(False, None)(case, None)
        except DataError as error:
            raise DataError(error.reason, path=error.path or next(iter(case.images.values()), None)) from None
        reasons = task.check_study(case, profile)
    result: dict[str, Any] = {
        "study": case.case_id,
        "inputs": {column: str(path) for column, path in {**case.images, **case.masks}.items() if path},
    }
    if case.boxes:
        result["boxes"] = {column: list(map(int, box)) for column, box in case.boxes.items() if box is not None}
    if case.extra:
        result["study_info"] = dict(case.extra)
    result["ood"] = {"passed": not reasons, "reasons": reasons}
    if profile is None:
        result["ood"]["note"] = "only DICOM tags checked: this run stores no statistics of its training inputs"
    if reasons:
        log.warning("study %s does not look like the training inputs: %s", case.case_id, "; ".join(reasons))
        if ood == "refuse":
            result["refused"] = "out of distribution (see ood.reasons); --ood flag scores it anyway"
            return result
    batch = default_collate([sample])
    with torch.no_grad():
        outputs = forward(run.model.eval(), batch, model_name=run.model_name, task=task)
    values = head.case_values(outputs["logits"], batch["label"]).numpy()
    result.update({k: _plain(v[0]) for k, v in head.columns(values).items()})
    for key, names in task.extra_outputs.items():
        if key in outputs:
            scores = torch.sigmoid(outputs[key].float())[0].tolist()
            result.update({name: round(score, 6) for name, score in zip(names, scores, strict=True)})
    rule = operating_point(run)
    result["decision"] = head.decide(values[0], rule)
    result["operating_point"] = rule
    return result


def predict_images(
    run_dir: str | Path,
    images: Sequence[str | Path] = (),
    *,
    named: Mapping[str, str | Path] | None = None,
    masks: Mapping[str, str | Path] | None = None,
    boxes: Mapping[str, Box] | None = None,
    files: Mapping[str, str | Path] | None = None,
    series: Mapping[str, str] | None = None,
    ood: str = "refuse",
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
        series: SeriesInstanceUID by image name (``""`` for the single image) for DICOM folders holding
            several series.
        ood: ``refuse`` (default) or ``flag`` a study that fails the out-of-distribution guard.

    Returns:
        One dict per study.
    """
    studies = study_inputs(images, named=named, masks=masks, boxes=boxes, files=files, series=series)
    return predict_studies(run_dir, studies, ood=ood)


def predict_studies(
    run_dir: str | Path, studies: Sequence[StudyInputs], *, ood: str = "refuse"
) -> list[dict[str, Any]]:
    """:func:`predict_study` of each raw study with the run in ``run_dir``."""
    if not studies:
        raise ConfigError("give at least one image to predict")
    run = load_run(run_dir)
    return [predict_study(run, study, ood=ood) for study in studies]


def study_inputs(
    images: Sequence[str | Path],
    *,
    named: Mapping[str, str | Path] | None = None,
    masks: Mapping[str, str | Path] | None = None,
    boxes: Mapping[str, Box] | None = None,
    files: Mapping[str, str | Path] | None = None,
    series: Mapping[str, str] | None = None,
) -> list[StudyInputs]:
    """The raw studies of the command line (see :func:`predict_images`): one per image of ``images``, one of
    all the ``named`` images; masks, boxes, files and series apply to each."""
    common = {
        "masks": {k: Path(v) for k, v in (masks or {}).items()},
        "boxes": dict(boxes or {}),
        "files": {k: Path(v) for k, v in (files or {}).items()},
        "series": dict(series or {}),
    }
    studies = [StudyInputs(images={"": Path(image)}, **common) for image in images]
    if named:
        studies.append(StudyInputs(images={k: Path(v) for k, v in named.items()}, **common))
    return studies


def _plain(value: Any) -> float | str:
    """A JSON-ready scalar: floats rounded to 6 places, anything else (class names) as text."""
    return round(float(value), 6) if isinstance(value, float | np.floating) else str(value)
