"""SRANet's coarse bone mask: a synthetic ball with a metal rod, the dataset tool on the phantom (NIfTI and
DICOM), the ``osteoscope masks ct`` command, and the real pelvis CT with its implant."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from osteoscope.cli import app
from osteoscope.data.manifest import read_rows, write_manifest
from osteoscope.data.readers import read_image
from osteoscope.errors import ConfigError, DataError
from osteoscope.phantoms import generate_phantom
from osteoscope.tasks.avnfh_ct.heads import find_heads
from osteoscope.tasks.avnfh_ct.masks import BoneMaskParams, bone_mask, bone_threshold, write_bone_masks

REAL_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "pelvis-ct" / "example_ct.nii.gz"
SPACING = (1.0, 0.8, 0.8)  # anisotropic, so radii in mm must become different voxel counts per axis


def _distance_mm(shape: tuple[int, ...], centre: tuple[float, ...], spacing: tuple[float, ...] = SPACING) -> np.ndarray:
    """Distance (mm) of every voxel from ``centre`` (voxel coordinates)."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing, strict=True)))


def _ball_with_rod() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Muscle and fat around a bone ball (radius 20 mm: a 2 mm cortex of 1400 HU around a fatty interior of
    -50 HU, below every threshold), a metal rod (3000 HU, radius 2 mm) along z through it off-centre.
    Returns the volume, the ball's interior and the rod."""
    rng = np.random.default_rng(0)
    shape = (56, 64, 64)
    centre = (28.0, 32.0, 32.0)
    volume = np.where(rng.random(shape) < 0.3, -90.0, 45.0) + rng.normal(0, 12, shape)
    r = _distance_mm(shape, centre)
    volume[r <= 20.0] = 1400.0
    interior = r <= 18.0
    volume[interior] = -50.0 + rng.normal(0, 12, int(interior.sum()))
    yy, xx = np.ogrid[: shape[1], : shape[2]]
    rod = np.broadcast_to(((yy - 32) * 0.8) ** 2 + ((xx - 40) * 0.8) ** 2 <= 4.0, shape).copy()
    volume[rod] = 3000.0
    return volume.astype(np.float32), interior, rod


def test_the_mask_fills_the_ball_and_leaves_out_the_metal() -> None:
    volume, interior, rod = _ball_with_rod()
    written = bone_mask(volume, SPACING)
    assert written.dtype == np.uint8 and set(np.unique(written)) == {0, 1}
    mask = written.astype(bool)
    assert not (mask & rod).any()
    margin = ndimage.distance_transform_edt(~rod, sampling=SPACING) <= BoneMaskParams().metal_margin_mm
    assert not (mask & margin).any()  # nor the voxels beside the implant
    away = interior & ~ndimage.binary_dilation(margin, iterations=2)
    assert mask[away].mean() > 0.99  # the fatty interior, not a shell
    outside = _distance_mm(volume.shape, (28.0, 32.0, 32.0)) > 23.0
    assert mask[outside].mean() < 0.001  # muscle and fat stay out


def test_the_threshold_adapts_between_soft_tissue_and_bone_and_is_clamped() -> None:
    rng = np.random.default_rng(1)
    tissue = np.concatenate([rng.normal(-100, 15, 4000), rng.normal(50, 15, 4000), rng.normal(700, 80, 800)])
    volume = tissue.reshape(22, 20, 20).astype(np.float32)
    cut = bone_threshold(volume, BoneMaskParams(bone_hu=(0.0, 1000.0), grow_hu=None))
    assert abs(int((volume >= cut).sum()) - 800) <= 8, cut  # the upper class is the bone, not muscle and bone
    assert bone_threshold(volume, BoneMaskParams(bone_hu=(300.0, 300.0))) == 300.0
    with pytest.raises(ConfigError, match="grow_hu"):
        BoneMaskParams(grow_hu=200.0, bone_hu=(150.0, 400.0))


def _phantom_without_masks(root: Path, fmt: str) -> tuple[Path, list[dict[str, str]]]:
    """A 2-case avnfh-ct phantom whose manifest lacks the mask column; returns it and its true rows."""
    manifest = generate_phantom("avnfh-ct", root, 2, seed=0, voxel_scale=3.0, fmt=fmt)
    columns, rows = read_rows(manifest)
    write_manifest(manifest, rows, [c for c in columns if c != "mask"])
    return manifest, rows


@pytest.mark.parametrize("fmt", ["nifti", "dicom"])
def test_masks_are_written_on_the_image_grid_and_named_in_the_manifest(tmp_path: Path, fmt: str) -> None:
    manifest, truth = _phantom_without_masks(tmp_path, fmt)
    true_masks = [read_image(tmp_path / row["mask"]).array > 0 for row in truth]  # before they are overwritten
    run = write_bone_masks(tmp_path)
    assert run.written == [row["case_id"] for row in truth] and not run.kept and run.mean_volume_ml > 0
    columns, rows = read_rows(manifest)
    assert columns[-1] == "mask"
    for row, true_row, true in zip(rows, truth, true_masks, strict=True):
        assert {c: row[c] for c in columns if c != "mask"} == {c: true_row[c] for c in columns if c != "mask"}
        assert row["mask"] == f"masks/{row['case_id']}_bone.nii.gz"
        mask = read_image(tmp_path / row["mask"]).array > 0
        assert mask.shape == read_image(tmp_path / row["image"]).array.shape
        dice = 2 * (mask & true).sum() / (mask.sum() + true.sum())
        assert dice > 0.85, dice  # on the image's voxels, not flipped or transposed


def test_existing_masks_are_kept_and_a_bad_case_is_named_or_skipped(tmp_path: Path) -> None:
    manifest, _ = _phantom_without_masks(tmp_path, "nifti")
    columns, rows = read_rows(manifest)
    rows[0]["mask"] = "masks/mine.nii.gz"
    (tmp_path / "masks" / "mine.nii.gz").write_bytes((tmp_path / rows[0]["mask_lesion"]).read_bytes())
    (tmp_path / "images" / "broken.nii.gz").write_bytes(b"not a nifti")
    rows.append({**rows[1], "case_id": "broken", "image": "images/broken.nii.gz", "mask": ""})
    write_manifest(manifest, rows, [*columns, "mask"])
    with pytest.raises(DataError, match=r"case 'broken'.*broken\.nii\.gz"):
        write_bone_masks(tmp_path)
    after_crash = {row["case_id"]: row["mask"] for row in read_rows(manifest)[1]}
    assert after_crash[rows[1]["case_id"]]  # the mask written before the bad case is in the manifest
    run = write_bone_masks(tmp_path, skip_bad=True)
    assert run.kept == [rows[0]["case_id"], rows[1]["case_id"]] and not run.written
    assert [case.case_id for case in run.skipped] == ["broken"]
    final = {row["case_id"]: row["mask"] for row in read_rows(manifest)[1]}
    assert final[rows[0]["case_id"]] == "masks/mine.nii.gz" and final["broken"] == ""


def test_the_cli_writes_the_masks_and_prints_one_summary(tmp_path: Path) -> None:
    _phantom_without_masks(tmp_path, "nifti")
    result = CliRunner().invoke(app, ["masks", "ct", str(tmp_path), "--bone-hu", "200", "300"])
    assert result.exit_code == 0, result.output
    assert "bone masks: 2 written, 0 kept, 0 skipped; mean mask volume" in result.stdout
    with (tmp_path / "manifest.csv").open() as handle:
        assert all((tmp_path / row["mask"]).is_file() for row in csv.DictReader(handle))
    again = CliRunner().invoke(app, ["masks", "ct", str(tmp_path), "--overwrite"])
    assert again.exit_code == 0 and "2 written, 0 kept" in again.stdout


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_CT.is_file(), reason="real CT in ../shared/data/pelvis-ct not present")
def test_on_the_real_ct_both_heads_are_covered_and_the_implant_is_not() -> None:
    image = read_image(REAL_CT)
    params = BoneMaskParams()
    mask = bone_mask(image.array, image.spacing, params).astype(bool)
    metal = image.array >= params.metal_hu
    assert metal.sum() > 100 and not (mask & metal).any()
    covered = {}
    for head in find_heads(image.array, image.spacing):
        ball = _distance_mm(mask.shape, head.centre, image.spacing) <= head.radius_mm
        covered[head.side] = float(mask[ball].mean())
    # Measured: right 1.00; left 0.87, less the voxels within 3 mm of the neck screw that reaches the head.
    assert covered["right"] > 0.97 and covered["left"] > 0.8, covered
