"""Tests for the femur fracture phantom (task ``femur-fracture-xray``): AFF vs NFF, AP + lateral views."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from helpers import box_of, read_rows
from PIL import Image
from scipy.ndimage import grey_closing

from osteoscope.errors import ConfigError
from osteoscope.phantoms.femur_fracture_xray import AFF_TYPES, COLUMNS, NFF_TYPES, TASK, _draw_fracture, generate

SIZE = (192, 128)
VIEWS = ("ap", "lat")


def _load(root: Path, rel: str) -> np.ndarray:
    return np.array(Image.open(root / rel))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    root = tmp_path_factory.mktemp("femur") / "a"
    manifest = generate(root, 50, seed=3, image_size=SIZE)
    return root, read_rows(manifest)


def test_manifest_columns_and_types(dataset: tuple[Path, list[dict[str, str]]]) -> None:
    root, rows = dataset
    assert TASK == "femur-fracture-xray"
    with (root / "manifest.csv").open() as fh:
        assert next(csv.reader(fh)) == list(COLUMNS)
    assert len(rows) == 50
    assert len({r["case_id"] for r in rows}) == 50
    for r in rows:
        assert r["label"] in {"0", "1"}
        types = AFF_TYPES if r["label"] == "1" else NFF_TYPES
        assert r["fracture_type"] in types
        assert float(r["subtlety"]) == 0.5
        for view in VIEWS:
            assert (root / r[f"image_{view}"]).is_file()
            assert (root / r[f"mask_{view}"]).is_file()
            assert r[f"image_{view}"] != r[f"mask_{view}"]


def test_aff_share_and_all_types_occur(dataset: tuple[Path, list[dict[str, str]]]) -> None:
    _, rows = dataset
    share = np.mean([r["label"] == "1" for r in rows])
    assert 0.12 <= share <= 0.28
    assert {r["fracture_type"] for r in rows} >= set(NFF_TYPES) | {"transverse_lateral"}


def test_images_are_16_bit_portrait_with_wide_range(dataset: tuple[Path, list[dict[str, str]]]) -> None:
    root, rows = dataset
    for r in rows[:6]:
        for view in VIEWS:
            image = Image.open(root / r[f"image_{view}"])
            assert image.mode.startswith("I;16") or image.mode == "I"
            pixels = np.array(image)
            assert pixels.shape == SIZE
            assert int(pixels.max()) - int(pixels.min()) > 15000


def test_masks_nonempty_inside_boxes_and_boxes_inside_images(dataset: tuple[Path, list[dict[str, str]]]) -> None:
    root, rows = dataset
    for r in rows:
        for view in VIEWS:
            x0, y0, x1, y1 = box_of(r[f"box_{view}"])
            assert 0 <= x0 < x1 <= SIZE[1] and 0 <= y0 < y1 <= SIZE[0]
            mask = _load(root, r[f"mask_{view}"])
            assert mask.shape == SIZE
            assert set(np.unique(mask)) <= {0, 255}
            assert mask.sum() > 0
            inside = np.zeros(SIZE, dtype=bool)
            inside[y0:y1, x0:x1] = True
            assert not np.any((mask > 0) & ~inside)


def test_patients_have_several_studies_with_one_fracture(dataset: tuple[Path, list[dict[str, str]]]) -> None:
    root, rows = dataset
    by_patient: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        by_patient[r["patient_id"]].append(r)
    multi = [studies for studies in by_patient.values() if len(studies) > 1]
    assert multi and len(by_patient) < len(rows)
    for studies in multi:
        assert len({(s["label"], s["fracture_type"]) for s in studies}) == 1
    # Follow-ups are new exposures, not copies.
    first, second = multi[0][:2]
    assert not np.array_equal(_load(root, first["image_ap"]), _load(root, second["image_ap"]))


def test_deterministic_from_seed(dataset: tuple[Path, list[dict[str, str]]], tmp_path: Path) -> None:
    root, rows = dataset
    again = read_rows(generate(tmp_path / "b", 50, seed=3, image_size=SIZE))
    assert again == rows
    for r in rows[:4]:
        for key in ("image_ap", "image_lat", "mask_ap"):
            assert np.array_equal(_load(root, r[key]), _load(tmp_path / "b", r[key]))
    other = read_rows(generate(tmp_path / "c", 4, seed=4, image_size=SIZE))
    assert not np.array_equal(_load(root, rows[0]["image_ap"]), _load(tmp_path / "c", other[0]["image_ap"]))


def _line_angle(root: Path, row: dict[str, str]) -> float:
    """Angle from horizontal (degrees) of the dark thin structures in the AP fracture box, from pixels only."""
    image = _load(root, row["image_ap"]).astype(np.float64)
    x0, y0, x1, y1 = box_of(row["box_ap"])
    crop = image[max(y0 - 4, 0) : y1 + 4, max(x0 - 4, 0) : x1 + 4]
    tophat = grey_closing(crop, size=5) - crop
    ys, xs = np.nonzero(tophat > np.percentile(tophat, 90))
    cov = np.cov(np.vstack([xs, ys]), aweights=tophat[ys, xs])
    vx, vy = np.linalg.eigh(cov)[1][:, 1]
    return float(np.degrees(np.arctan2(abs(vy), abs(vx))))


def test_aff_lines_are_more_transverse_even_when_subtle(tmp_path: Path) -> None:
    rows = read_rows(generate(tmp_path / "s", 40, seed=2, subtlety=1.0, image_size=(384, 256)))
    aff = [_line_angle(tmp_path / "s", r) for r in rows if r["label"] == "1"]
    nff = [_line_angle(tmp_path / "s", r) for r in rows if r["label"] == "0"]
    assert aff and nff
    assert np.mean(aff) < 30.0 < np.mean(nff)
    assert np.mean(nff) - np.mean(aff) > 20.0


def test_subtlety_shrinks_gap_displacement_and_beak_but_keeps_them() -> None:
    for aff in (True, False):
        for seed in range(5):
            easy = _draw_fracture(np.random.default_rng(seed), aff, 0.0)
            hard = _draw_fracture(np.random.default_rng(seed), aff, 1.0)
            assert easy.kind == hard.kind and easy.level == hard.level
            assert 0.0 < hard.gap < easy.gap
            assert np.hypot(*hard.shift[:2]) < np.hypot(*easy.shift[:2])
            if aff:
                assert 0.0 < hard.beak < easy.beak
            else:
                assert easy.beak == hard.beak == 0.0


def test_aff_fraction_progress_and_errors(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    manifest = generate(
        tmp_path / "p", 5, seed=1, image_size=SIZE, aff_fraction=0.0, progress=lambda i, n: calls.append((i, n))
    )
    rows = read_rows(manifest)
    assert calls == [(i, 5) for i in range(1, 6)]
    assert all(r["label"] == "0" for r in rows)
    for bad in ({"n": 0}, {"subtlety": 1.5}, {"aff_fraction": -0.1}, {"image_size": (32, 32)}):
        args = {"n": 2, **bad}
        n = args.pop("n")
        with pytest.raises(ConfigError):
            generate(tmp_path / "e", n, **args)


def test_smallest_images_still_have_masks(tmp_path: Path) -> None:
    rows = read_rows(generate(tmp_path / "t", 12, seed=1, image_size=(64, 64)))
    for r in rows:
        for view in VIEWS:
            assert (_load(tmp_path / "t", r[f"mask_{view}"]) > 0).any()
