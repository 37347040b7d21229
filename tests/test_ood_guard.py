"""predict's out-of-distribution guard (issue 9, finding 6: a wrist radiograph got an ONFH probability).

A tiny AsT run on the onfh-xray phantom is shown real wrist/hand radiographs, DICOMs of another modality or
body part and a CT volume: each is refused with its reasons (or, with ``--ood flag``, scored and flagged);
new phantom studies like the training ones pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_hip_run
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from osteoscope.cli import app
from osteoscope.data.manifest import load_manifest
from osteoscope.data.profile import input_profile, profile_problems
from osteoscope.engine.predict import predict_images
from osteoscope.errors import DataError
from osteoscope.phantoms import generate_phantom

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WRISTS = DATA / "bone-fracture-yolo" / "train" / "images"
CT_VOLUME = DATA / "pelvis-ct" / "example_ct.nii.gz"


def shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} absent: real test data lives in ../shared/data beside the checkout")
    return path


def pydicom_file(name: str) -> Path:
    found = get_testdata_file(name)
    if found is None:
        pytest.skip(f"{name} not available: install pydicom-data")
    return Path(found)


def boxes_for(shape: tuple[int, ...]) -> dict[str, tuple[int, int, int, int]]:
    """Two head-sized boxes side by side in the middle of an image of ``shape`` (the guard, not the boxes,
    is under test)."""
    h, w = shape[-2:]
    side = max(8, min(h, w) // 5)
    y0 = h // 2 - side // 2
    return {
        "left": (w * 3 // 4 - side // 2, y0, w * 3 // 4 + side // 2, y0 + side),
        "right": (w // 4 - side // 2, y0, w // 4 + side // 2, y0 + side),
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_hip_run(tmp_path_factory.mktemp("ood"), n=40, seed=2)


def _predict(run: Path, path: Path, shape: tuple[int, ...], ood: str = "refuse") -> dict:
    [result] = predict_images(run, [path], boxes=boxes_for(shape), ood=ood)
    return result


@pytest.mark.realdata
def test_wrist_radiographs_are_refused_with_reasons(run: Path) -> None:
    from osteoscope.data.readers import read_image

    files = sorted(shared(WRISTS).glob("*.jpg"))[::97][:10]
    assert len(files) == 10
    kinds = set()
    for path in files:
        shape = read_image(path).array.shape
        refused = _predict(run, path, shape)
        assert refused["ood"]["passed"] is False and refused["ood"]["reasons"], path
        assert "refused" in refused and "probability" not in refused and "decision" not in refused
        kinds.update(reason.split(": ")[1].split(" ")[0] for reason in refused["ood"]["reasons"])
        flagged = _predict(run, path, shape, ood="flag")
        assert flagged["ood"] == refused["ood"] and 0 <= flagged["probability"] <= 1 and "refused" not in flagged
    assert kinds - {"height", "width"}, kinds  # not only the image size: aspect or intensity too


def test_new_phantom_studies_pass(run: Path, tmp_path: Path) -> None:
    generate_phantom("onfh-xray", tmp_path / "new", n=8, seed=11, subtlety=0.0, image_size=(160, 208))
    for case in load_manifest(tmp_path / "new").cases:
        boxes = {"left": case.boxes["box_left"], "right": case.boxes["box_right"]}
        [result] = predict_images(run, [case.images["image"]], boxes=boxes)
        assert result["ood"] == {"passed": True, "reasons": []}, result["ood"]
        assert result["decision"] in ("ONFH", "no ONFH")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("CT_small.dcm", "DICOM Modality CT, expected CR or DX"),
        ("MR_small.dcm", "DICOM Modality MR, expected CR or DX"),
        ("RG1_UNCR.dcm", "DICOM BodyPartExamined CHEST, expected HIP or PELVIS"),
    ],
)
def test_dicom_of_another_modality_or_body_part(run: Path, name: str, reason: str) -> None:
    from osteoscope.data.readers import read_image

    path = pydicom_file(name)
    result = _predict(run, path, read_image(path).array.shape)
    assert any(reason in r for r in result["ood"]["reasons"]), result["ood"]
    assert "probability" not in result


@pytest.mark.realdata
def test_a_ct_volume_for_a_radiograph_task(run: Path) -> None:
    """A wrong dimensionality is a bad input (an error naming the file), found before the guard runs."""
    with pytest.raises(DataError, match=r"example_ct\.nii\.gz: expected a 2-D image, got a 3-D volume"):
        _predict(run, shared(CT_VOLUME), (112, 101))


@pytest.mark.realdata
def test_cli_refuses_and_names_the_option(run: Path) -> None:
    wrist = sorted(shared(WRISTS).glob("*.jpg"))[0]
    boxes = boxes_for((1024, 993))
    args = ["predict", str(run), str(wrist), "--box", "left=" + " ".join(map(str, boxes["left"]))]
    args += ["--box", "right=" + " ".join(map(str, boxes["right"]))]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    [printed] = json.loads(result.stdout[result.stdout.index("[") :])
    assert printed["refused"].startswith("out of distribution") and printed["ood"]["reasons"]
    bad = CliRunner().invoke(app, [*args, "--ood", "maybe"])
    assert bad.exit_code != 0 and "--ood must be one of refuse, flag" in str(bad.exception)


def test_profile_tolerances(tmp_path: Path) -> None:
    """Within the training range (plus tolerance) passes; outside, each feature is named with its range."""
    from PIL import Image as PILImage

    from osteoscope.data.readers import read_image

    rng = np.random.default_rng(0)

    def png(name: str, h: int, w: int, dark: float = 0.0) -> Path:
        values = rng.random((h, w)) ** 2 * 40000 + 1000
        values[rng.random((h, w)) < dark] = 0
        PILImage.fromarray(values.astype(np.uint16)).save(tmp_path / name)
        return tmp_path / name

    profile = input_profile([("image", png("a.png", 100, 130), None), ("image", png("b.png", 110, 140), None)])
    assert profile["columns"]["image"]["n"] == 2
    assert profile_problems("image", read_image(png("c.png", 105, 135)), profile) == []
    assert profile_problems("image", read_image(png("d.png", 190, 250)), profile) == []  # within a factor 2
    problems = profile_problems("image", read_image(png("e.png", 400, 200)), profile)
    assert any(p.startswith("image: height 400 px is outside the training range 100-110 px") for p in problems)
    assert any("aspect ratio (width/height) 0.50" in p for p in problems)
    dark = profile_problems("image", read_image(png("f.png", 100, 130, dark=0.7)), profile)
    assert dark and all("intensity percentile" in p for p in dark)
