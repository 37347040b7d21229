"""Tests for the AP pelvis ONFH phantom (task ``onfh-xray``)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from helpers import box_of, read_rows
from PIL import Image

from osteoscope.data.readers import read_image
from osteoscope.errors import ConfigError
from osteoscope.phantoms import generate_phantom
from osteoscope.phantoms.onfh_xray import COLUMNS, Realism
from osteoscope.tasks import task_classes

SIZE = (192, 256)


def _image(root: Path, row: dict[str, str]) -> np.ndarray:
    return np.array(Image.open(root / row["image"]))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    root = tmp_path_factory.mktemp("onfh") / "a"
    manifest = generate_phantom("onfh-xray", root, 16, seed=3, image_size=SIZE)
    return root, read_rows(manifest)


def test_manifest_columns_and_types(dataset: tuple[Path, list[dict[str, str]]]) -> None:
    root, rows = dataset
    with (root / "manifest.csv").open() as fh:
        assert next(csv.reader(fh)) == list(COLUMNS)
    assert len(rows) == 16
    assert len({r["case_id"] for r in rows}) == 16
    for r in rows:
        assert r["label"] in {"0", "1"}
        assert 0 <= int(r["stage"]) <= 4
        assert r["side"] in {"none", "left", "right", "both"}
        assert float(r["subtlety"]) == 0.5
        assert (root / r["image"]).is_file()
        for key in ("box_left", "box_right"):
            assert len(box_of(r[key])) == 4


def test_label_stage_side_and_masks_agree(dataset: tuple[Path, list[dict[str, str]]]) -> None:
    _, rows = dataset
    labels = {r["label"] for r in rows}
    assert labels == {"0", "1"}
    for r in rows:
        negative = r["label"] == "0"
        assert negative == (r["stage"] == "0") == (r["side"] == "none")
        for side in ("left", "right"):
            affected = r["side"] in (side, "both")
            assert bool(r[f"mask_{side}"]) == affected, (r["case_id"], side)


def test_masks_nonempty_and_inside_head_boxes(dataset: tuple[Path, list[dict[str, str]]]) -> None:
    root, rows = dataset
    checked = 0
    for r in rows:
        for side in ("left", "right"):
            if not r[f"mask_{side}"]:
                continue
            mask = np.array(Image.open(root / r[f"mask_{side}"])) > 0
            assert mask.shape == SIZE
            assert mask.sum() > 10
            x0, y0, x1, y1 = box_of(r[f"box_{side}"])
            outside = mask.copy()
            outside[y0:y1, x0:x1] = False
            assert not outside.any(), (r["case_id"], side)
            checked += 1
    assert checked >= 4


def test_boxes_inside_image_and_on_the_right_sides(dataset: tuple[Path, list[dict[str, str]]]) -> None:
    _, rows = dataset
    rows_n, cols_n = SIZE
    for r in rows:
        left, right = box_of(r["box_left"]), box_of(r["box_right"])
        for x0, y0, x1, y1 in (left, right):
            assert 0 <= x0 < x1 <= cols_n and 0 <= y0 < y1 <= rows_n
            assert 15 <= x1 - x0 <= 60  # a femoral head (~48 mm) plus margin at ~1.5 mm/pixel
        # The patient's right hip is on the image's left.
        assert right[2] <= cols_n // 2 <= left[0]


def test_patients_have_follow_up_studies(dataset: tuple[Path, list[dict[str, str]]]) -> None:
    _, rows = dataset
    per_patient: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        per_patient.setdefault(r["patient_id"], []).append(r)
    multi = [v for v in per_patient.values() if len(v) > 1]
    assert len(multi) >= 2
    for studies in multi:
        # Disease status is a property of the patient; stages never regress over follow-ups.
        assert len({s["label"] for s in studies}) == 1
        stages = [int(s["stage"]) for s in studies]
        assert stages == sorted(stages)
        assert stages[-1] - stages[0] <= len(stages) - 1


def test_png_is_16_bit_with_wide_range(dataset: tuple[Path, list[dict[str, str]]]) -> None:
    root, rows = dataset
    img = _image(root, rows[0])
    assert img.dtype == np.uint16 and img.shape == SIZE
    assert int(img.max()) - int(img.min()) > 4096
    assert len(np.unique(img)) > 1024


def test_deterministic_from_seed(dataset: tuple[Path, list[dict[str, str]]], tmp_path: Path) -> None:
    root, rows = dataset
    again = generate_phantom("onfh-xray", tmp_path / "b", 16, seed=3, image_size=SIZE)
    assert again.read_bytes() == (root / "manifest.csv").read_bytes()
    for r in rows[:4]:
        np.testing.assert_array_equal(_image(root, r), _image(tmp_path / "b", r))
    other = generate_phantom("onfh-xray", tmp_path / "c", 16, seed=4, image_size=SIZE)
    first = read_rows(other)[0]
    assert not np.array_equal(_image(root, rows[0]), _image(tmp_path / "c", first))


def test_follow_up_keeps_anatomy_but_changes_pose(dataset: tuple[Path, list[dict[str, str]]]) -> None:
    root, rows = dataset
    by_patient: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_patient.setdefault(r["patient_id"], []).append(r)
    studies = next(v for v in by_patient.values() if len(v) > 1)
    a, b = (_image(root, s).astype(np.float64) for s in studies[:2])
    assert not np.array_equal(a, b)
    # Same anatomy: head boxes have nearly the same size in both studies.
    for side in ("left", "right"):
        wa = box_of(studies[0][f"box_{side}"])[2] - box_of(studies[0][f"box_{side}"])[0]
        wb = box_of(studies[1][f"box_{side}"])[2] - box_of(studies[1][f"box_{side}"])[0]
        assert abs(wa - wb) <= 0.15 * wa


def _head_asymmetry(root: Path, row: dict[str, str]) -> float:
    """Mean |left ROI - mirrored right ROI| after smoothing and standardising each ROI."""
    img = _image(root, row).astype(np.float32)
    rois = []
    for side in ("left", "right"):
        x0, y0, x1, y1 = box_of(row[f"box_{side}"])
        roi = np.array(Image.fromarray(img[y0:y1, x0:x1]).resize((12, 12), Image.Resampling.BOX))[2:-2, 2:-2]
        rois.append((roi - roi.mean()) / roi.std())
    return float(np.abs(rois[0] - rois[1][:, ::-1]).mean())


def test_positives_are_more_asymmetric_even_when_subtle(tmp_path: Path) -> None:
    manifest = generate_phantom("onfh-xray", tmp_path, 60, seed=5, subtlety=1.0, image_size=SIZE)
    rows = read_rows(manifest)
    scores = {"0": [], "1": []}
    for r in rows:
        scores[r["label"]].append(_head_asymmetry(tmp_path, r))
    assert len(scores["0"]) >= 20 and len(scores["1"]) >= 20
    assert np.mean(scores["1"]) > np.mean(scores["0"])


def test_lesion_contrast_follows_subtlety(tmp_path: Path) -> None:
    easy = read_rows(generate_phantom("onfh-xray", tmp_path / "e", 6, seed=9, subtlety=0.0, image_size=SIZE))
    hard = read_rows(generate_phantom("onfh-xray", tmp_path / "h", 6, seed=9, subtlety=1.0, image_size=SIZE))
    diffs = {"0": [], "1": []}
    for r_easy, r_hard in zip(easy, hard, strict=True):
        delta = np.abs(_image(tmp_path / "e", r_easy).astype(np.int64) - _image(tmp_path / "h", r_hard))
        diffs[r_easy["label"]].append(delta.sum())
    # Only lesions (and what they touch) depend on subtlety: healthy studies are identical.
    assert diffs["0"] and all(d == 0 for d in diffs["0"])
    assert diffs["1"] and all(d > 0 for d in diffs["1"])


def test_stage_mix_and_positive_fraction(tmp_path: Path) -> None:
    rows = read_rows(
        generate_phantom(
            "onfh-xray",
            tmp_path / "s",
            12,
            seed=2,
            image_size=SIZE,
            stage_mix={4: 1.0},
            positive_fraction=1.0,
        )
    )
    assert all(r["label"] == "1" and r["stage"] == "4" for r in rows)
    rows = read_rows(generate_phantom("onfh-xray", tmp_path / "n", 5, seed=2, image_size=SIZE, positive_fraction=0.0))
    assert all(r["label"] == "0" and not r["mask_left"] and not r["mask_right"] for r in rows)


def test_dicom_output(tmp_path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    calls: list[tuple[int, int]] = []
    manifest = generate_phantom(
        "onfh-xray",
        tmp_path,
        6,
        seed=1,
        image_size=SIZE,
        fmt="dicom",
        realism={"monochrome1": 0.5, "bits_stored": [10, 12, 14, 16]},
        progress=lambda i, n: calls.append((i, n)),
    )
    assert calls == [(i, 6) for i in range(1, 7)]
    generate_phantom("onfh-xray", tmp_path / "png", 6, seed=1, image_size=SIZE)
    rows = read_rows(manifest)
    assert {r["photometric"] for r in rows} == {"MONOCHROME1", "MONOCHROME2"}
    for r in rows:
        assert r["image"].endswith(".dcm")
        ds = pydicom.dcmread(tmp_path / r["image"])
        assert ds.PatientID == r["patient_id"]
        assert ds.Modality == "DX" and ds.PhotometricInterpretation == r["photometric"]
        assert ds.BitsStored in (10, 12, 14, 16) and ds.HighBit == ds.BitsStored - 1
        assert float(ds.PixelSpacing[0]) == pytest.approx(float(r["pixel_spacing"]), rel=1e-4)
        pixels = ds.pixel_array
        assert pixels.shape == SIZE and pixels.dtype == np.uint16
        assert int(pixels.max()) < 2**ds.BitsStored and int(pixels.max()) - int(pixels.min()) > 2 ** (ds.BitsStored - 2)
        # Read back as a user would, a MONOCHROME1 film shows bone bright: it matches the PNG of the study.
        image = read_image(tmp_path / r["image"]).array
        png = read_image(tmp_path / "png" / r["image"].replace(".dcm", ".png")).array
        assert np.corrcoef(image.ravel(), png.ravel())[0, 1] > 0.99, r["case_id"]


def test_jpeg_output_reads_back(tmp_path: Path) -> None:
    rows = read_rows(generate_phantom("onfh-xray", tmp_path, 2, seed=1, image_size=SIZE, fmt="jpeg"))
    for r in rows:
        assert r["image"].endswith(".jpg") and r["photometric"] == "MONOCHROME2"
        image = read_image(tmp_path / r["image"])
        assert image.meta["format"] == "jpeg" and image.meta["bit_depth"] == 8
        assert image.array.shape == SIZE and np.ptp(image.array) > 100


def test_new_columns_are_filled_and_consistent(tmp_path: Path) -> None:
    rows = read_rows(
        generate_phantom(
            "onfh-xray",
            tmp_path,
            24,
            seed=6,
            image_size=(320, 400),
            child_fraction=0.5,
            realism={"marker": 1.0, "implant": 1.0, "collimation": 1.0, "text": 1.0},
        )
    )
    assert {r["child"] for r in rows} == {"0", "1"}
    implants = {r["implant"] for r in rows if r["child"] == "0"}
    assert implants and all(i.startswith(("pedicle screws", "clips", "iud", "neck screw")) for i in implants)
    assert all(r["implant"] == "" for r in rows if r["child"] == "1")  # no implants in children
    markers = 0
    for r in rows:
        assert r["photometric"] == "MONOCHROME2" and float(r["pixel_spacing"]) > 0
        assert r["marker"] in {"R", "L", ""} and bool(r["marker"]) == bool(r["marker_box"])
        if not r["marker"]:
            continue
        markers += 1
        x0, y0, x1, y1 = box_of(r["marker_box"])
        assert 0 <= x0 < x1 <= 400 and 0 <= y0 < y1 <= 320
        # The marker names the patient's side it sits on: the patient's right is the image's left.
        assert (x1 <= 200) if r["marker"] == "R" else (x0 >= 200), r
        image = np.array(Image.open(tmp_path / r["image"])).astype(np.float64)
        heads = []
        for side in ("left", "right"):
            hx0, hy0, hx1, hy1 = box_of(r[f"box_{side}"])
            heads.append(np.median(image[hy0:hy1, hx0:hx1]))
            assert x1 <= hx0 or hx1 <= x0 or y1 <= hy0 or hy1 <= y0  # never over a head
        assert image[y0:y1, x0:x1].max() > max(heads)  # lead is burned in brighter than bone
    assert markers >= 18


def test_children_have_smaller_heads_inside_their_boxes(tmp_path: Path) -> None:
    rows = read_rows(generate_phantom("onfh-xray", tmp_path, 20, seed=8, image_size=SIZE, child_fraction=0.5))
    size_mm: dict[str, list[float]] = {"0": [], "1": []}
    for r in rows:
        spacing = float(r["pixel_spacing"])
        for side in ("left", "right"):
            x0, y0, x1, y1 = box_of(r[f"box_{side}"])
            size_mm[r["child"]].append((x1 - x0) * spacing)
            # The box centre is on bone (the head or its ossification centre): brighter than most of the film.
            image = np.array(Image.open(tmp_path / r["image"])).astype(np.float64)
            roi = image[y0:y1, x0:x1]
            h, w = roi.shape
            centre = np.median(roi[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3])
            assert centre > np.percentile(image, 40), (r["case_id"], side)
            if r[f"mask_{side}"]:  # a child's lesion lies in its ossification centre, inside the box
                mask = np.array(Image.open(tmp_path / r[f"mask_{side}"])) > 0
                assert mask.sum() > 3 and mask[y0:y1, x0:x1].sum() == mask.sum(), (r["case_id"], side)
    assert size_mm["0"] and size_mm["1"]
    assert max(size_mm["1"]) < min(size_mm["0"])


def test_film_components_follow_their_knobs(tmp_path: Path) -> None:
    clean = read_rows(
        generate_phantom("onfh-xray", tmp_path / "c", 6, seed=2, image_size=SIZE, realism=Realism.clean())
    )
    assert all(not r["marker"] and not r["implant"] for r in clean)
    default = read_rows(generate_phantom("onfh-xray", tmp_path / "d", 6, seed=2, image_size=SIZE))
    # Same anatomy and ground truth; only the film differs.
    assert [r["box_left"] for r in clean] == [r["box_left"] for r in default]
    a = _image(tmp_path / "c", clean[0]).astype(np.int64)
    b = _image(tmp_path / "d", default[0]).astype(np.int64)
    assert not np.array_equal(a, b)
    with pytest.raises(ConfigError, match="realism"):
        generate_phantom("onfh-xray", tmp_path / "e", 1, realism={"markers": 1.0})
    with pytest.raises(ConfigError, match="marker"):
        generate_phantom("onfh-xray", tmp_path / "e", 1, realism={"marker": 2.0})
    with pytest.raises(ConfigError, match="child_fraction"):
        generate_phantom("onfh-xray", tmp_path / "e", 1, child_fraction=-0.1)


def test_large_films_render_anatomy_capped_and_keep_ground_truth(tmp_path: Path) -> None:
    rows = read_rows(generate_phantom("onfh-xray", tmp_path, 1, seed=3, image_size=(1536, 2048), positive_fraction=1.0))
    r = rows[0]
    image = _image(tmp_path, r)
    assert image.shape == (1536, 2048)
    side = "left" if r["mask_left"] else "right"
    mask = np.array(Image.open(tmp_path / r[f"mask_{side}"])) > 0
    assert mask.shape == (1536, 2048) and mask.sum() > 100
    x0, y0, x1, y1 = box_of(r[f"box_{side}"])
    outside = mask.copy()
    outside[y0:y1, x0:x1] = False
    assert not outside.any()
    # Noise is added at full resolution: neighbouring pixels are not copies of an upsampled image.
    assert np.mean(np.abs(np.diff(image[700:800, 900:1100].astype(np.float64), axis=1))) > 20


def test_registry_and_errors(tmp_path: Path) -> None:
    assert set(task_classes()) == {
        "onfh-xray",
        "avnfh-ct",
        "onfh-mr-staging",
        "femur-fracture-xray",
        "calcaneus-multilabel",
    }
    with pytest.raises(ConfigError, match="onfh-xray"):
        generate_phantom("no-such-task", tmp_path, 1)
    with pytest.raises(ConfigError, match="colour"):
        generate_phantom("onfh-xray", tmp_path, 1, colour="red")
    with pytest.raises(ConfigError, match="subtlety"):
        generate_phantom("onfh-xray", tmp_path, 1, subtlety=1.5)
    with pytest.raises(ConfigError, match="fmt"):
        generate_phantom("onfh-xray", tmp_path, 1, fmt="tiff")
    with pytest.raises(ConfigError, match="stage_mix"):
        generate_phantom("onfh-xray", tmp_path, 1, stage_mix={5: 1.0})
