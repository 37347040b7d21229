"""The femoral-head localiser's nonsense is not silent (issue 9, finding 5): degenerate or implausible boxes
are an error naming the file, training logs loss and held-out centre error and stores the error, predict
reports it and flags a study on which the localiser is much less sure than on any held-out patient."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from osteoscope.data.manifest import load_manifest
from osteoscope.errors import DataError
from osteoscope.phantoms import generate_phantom
from osteoscope.tasks import make_task
from osteoscope.tasks.base import StudyInputs
from osteoscope.tasks.onfh_xray import localizer as module
from osteoscope.tasks.onfh_xray.localizer import (
    HeadLocalizer,
    Heads,
    evaluate_localizer,
    fit_localizer,
    implausible_heads,
    load_localizer,
    save_localizer,
    train_localizer_on_manifest,
)

SHAPE = (160, 208)  # height, width
GOOD = Heads(left=(130, 60, 160, 90), right=(48, 62, 78, 92), confidence=0.9)


@pytest.fixture(scope="module")
def hips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hips")
    generate_phantom("onfh-xray", out, n=30, seed=4, subtlety=0.0, image_size=SHAPE)
    return out


@pytest.mark.parametrize(
    ("heads", "problem"),
    [
        (Heads((130, 60, 131, 90), GOOD.right, 0.9), "the left box 1x30 px is smaller than"),
        (Heads((180, 60, 208, 90), GOOD.right, 0.9), "touches the edge of the 208x160 image"),
        (Heads((130, 60, 190, 150), GOOD.right, 0.9), "differ in size by more than a factor 2"),
        (Heads((70, 60, 100, 90), GOOD.right, 0.9), "the boxes overlap"),
        (Heads(GOOD.right, GOOD.left, 0.9), "patient's right head is not on the image's left"),
        (Heads((130, 110, 160, 140), GOOD.right, 0.9), "not side by side"),
    ],
)
def test_implausible_boxes_are_named(heads: Heads, problem: str) -> None:
    assert any(problem in p for p in implausible_heads(heads, SHAPE)), implausible_heads(heads, SHAPE)


def test_plausible_boxes_pass() -> None:
    assert implausible_heads(GOOD, SHAPE) == []


def test_a_tiny_detector_trained_on_phantoms_finds_both_heads_on_held_out_phantoms(hips: Path) -> None:
    from osteoscope.data.readers import read_image

    cases = load_manifest(hips).cases
    samples = [(read_image(c.images["image"]).array, c.boxes["box_left"], c.boxes["box_right"]) for c in cases]
    model = fit_localizer(samples[:24], working_size=(64, 80), epochs=25, seed=0)
    score = evaluate_localizer(model, samples[24:])
    assert score["refused"] <= 1 and score["inside_boxes"] >= 4 / 6, score
    assert score["centre_error_rel"] < 0.1, score


def _study(hips: Path, run_dir: Path):
    case = load_manifest(hips).cases[0]
    task = make_task("onfh-xray")
    inputs = StudyInputs(images={"": case.images["image"]}, masks={}, boxes={}, files={})
    return task, case, lambda: task.study_case(inputs, run_dir)


def test_degenerate_localiser_boxes_are_an_error_naming_the_file(hips: Path, tmp_path: Path) -> None:
    """A localiser whose map is flat finds no head candidate: an error, not boxes in a corner (finding 5)."""
    model = HeadLocalizer((64, 80))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([-8.0, np.log(0.1)]))  # no cell scores as a head
    save_localizer(model, tmp_path / "localizer.pt")
    _, case, study = _study(hips, tmp_path)
    with pytest.raises(DataError, match="found no plausible pair of heads") as error:
        study()
    assert str(case.images["image"]) in str(error.value) and "--box left=" in str(error.value)


def test_training_logs_loss_and_held_out_error_and_stores_it(hips: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("osteoscope")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        train_localizer_on_manifest(hips, tmp_path / "loc.pt", epochs=2, working_size=(48, 64), held_out_fraction=0.2)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = [line for line in lines if "head localiser epoch" in line]
    assert len(lines) == 2 and all("loss" in line and "held-out centre error" in line for line in lines)
    held_out = load_localizer(tmp_path / "loc.pt").held_out
    patients = {c.patient_id for c in load_manifest(hips).cases}
    assert held_out is not None and held_out["n_images"] >= round(0.2 * len(patients))
    assert held_out["centre_error_px"] > 0 and 0 <= held_out["confidence_min"] <= held_out["confidence_median"] <= 1
    assert 0 <= held_out["refused"] <= held_out["n_images"]  # two epochs may find no plausible pair: refusals
    assert f"{held_out['centre_error_px']:.1f} px" in lines[-1]


def test_predict_reports_the_held_out_error_and_flags_low_confidence(
    hips: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = HeadLocalizer((64, 80))
    model.held_out = {"n_images": 5.0, "centre_error_px": 3.25, "centre_error_rel": 0.03, "confidence_min": 0.6,
                      "confidence_median": 0.8}  # fmt: skip
    save_localizer(model, tmp_path / "localizer.pt")
    task, case, study = _study(hips, tmp_path)
    for confidence, flagged in ((0.9, False), (0.1, True)):
        found = Heads(case.boxes["box_left"], case.boxes["box_right"], confidence)
        monkeypatch.setattr(module, "find_heads", lambda model, image, found=found, **_: found)
        located = study()
        assert located.boxes == {"box_left": found.left, "box_right": found.right}
        assert located.extra["localizer_held_out_centre_error_px"] == "3.25"
        problems = [p for p in task.check_study(located, None) if "localiser's confidence" in p]
        assert bool(problems) == flagged, problems
