"""Tests for the hip CT AVNFH phantom (task ``avnfh-ct``)."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path
from types import ModuleType

import numpy as np
import pydicom
import pytest
from helpers import read_rows
from torch.utils.data import DataLoader

from osteoscope.data.datasets import CaseDataset, VolumeWithMask
from osteoscope.data.manifest import load_manifest
from osteoscope.data.readers import read_image
from osteoscope.errors import ConfigError
from osteoscope.phantoms import generate_phantom
from osteoscope.phantoms.avnfh_ct import COLUMNS, TASK, _plan, generate

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "ct_realism.py"
BOTH_HIPS_SEED = 25  # with n=2 this seed gives one patient with both hips (checked in the tests)
Rows = list[dict[str, str]]
Pair = tuple[Path, Rows, Rows, list[tuple[int, int]]]


def _box(row: dict[str, str]) -> tuple[int, ...]:
    return tuple(int(v) for v in row["box"].split())


def _crop(array: np.ndarray, box: tuple[int, ...]) -> np.ndarray:
    x0, y0, z0, x1, y1, z1 = box
    return array[z0:z1, y0:y1, x0:x1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    root = tmp_path_factory.mktemp("ct") / "a"
    return root, read_rows(generate(root, 16, seed=2, subtlety=1.0))


def _pair(root: Path, **options: object) -> Pair:
    """Two runs of one seed (both hips of one patient): NIfTI rows, DICOM rows and the NIfTI run's progress calls.

    The DICOM run goes through ``generate_phantom`` with ``fmt="dicom"``, as the CLI's ``--format dicom`` does.
    """
    calls: list[tuple[int, int]] = []
    manifest = generate(root / "nifti", 2, seed=BOTH_HIPS_SEED, progress=lambda i, n: calls.append((i, n)), **options)
    nifti = read_rows(manifest)
    dicom = read_rows(generate_phantom(TASK, root / "dicom", 2, seed=BOTH_HIPS_SEED, fmt="dicom", **options))
    return root, nifti, dicom, calls


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    return _pair(tmp_path_factory.mktemp("crops"))


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    return _pair(tmp_path_factory.mktemp("full"), full_region=True)


def test_manifest_columns_and_labels(dataset: tuple[Path, list[dict[str, str]]]) -> None:
    root, rows = dataset
    assert TASK == "avnfh-ct"
    assert tuple(rows[0]) == COLUMNS and len(rows) == 16
    assert len({r["case_id"] for r in rows}) == 16
    for r in rows:
        assert r["label"] == str(int(int(r["stage"]) > 0))
        assert r["side"] in ("left", "right")
        assert (root / r["image"]).exists() and (root / r["mask"]).exists()


def test_stage_mix_follows_table_one() -> None:
    plan = _plan(40, np.random.default_rng(9))
    cases = [case for patient in plan for case in patient]
    assert len(cases) == 40 and all(len(p) in (1, 2) for p in plan)
    assert all({side for side, _ in p} == {"left", "right"} for p in plan if len(p) == 2)
    counts = Counter(stage for _, stage in cases)
    assert counts[0] == 20 and counts[1] == 1
    assert all(6 <= counts[s] <= 7 for s in (2, 3, 4))


def test_read_back_hu_spacing_and_box(dataset: tuple[Path, list[dict[str, str]]]) -> None:
    root, rows = dataset
    for r in rows[:8]:
        img = read_image(root / r["image"])
        bone = read_image(root / r["mask"]).array > 0
        a = img.array
        assert a.ndim == 3 and min(a.shape) >= 64 and max(a.shape) <= 112
        np.testing.assert_allclose(img.spacing[::-1], [float(v) for v in r["spacing"].split()], rtol=1e-3)
        assert a.max() > 700 and -250 < np.median(a[~bone]) < 120
        box = _box(r)
        x0, y0, z0, x1, y1, z1 = box
        assert 0 <= x0 < x1 <= a.shape[2] and 0 <= y0 < y1 <= a.shape[1] and 0 <= z0 < z1 <= a.shape[0]
        size_mm = np.array([x1 - x0, y1 - y0, z1 - z0]) * np.array(img.spacing[::-1])
        assert np.all((size_mm > 45) & (size_mm < 70))
        centre = a[(z0 + z1) // 2, (y0 + y1) // 2, (x0 + x1) // 2]
        assert 100 < centre < 700  # head centre is trabecular bone
        assert _crop(bone, box).mean() > 0.4


def test_lesion_mask_by_stage(dataset: tuple[Path, list[dict[str, str]]]) -> None:
    root, rows = dataset
    for r in rows:
        lesion = read_image(root / r["mask_lesion"]).array > 0
        if int(r["stage"]) < 2:
            assert not lesion.any()
            continue
        bone = read_image(root / r["mask"]).array > 0
        assert lesion.sum() > 50 and not (lesion & ~bone).any()
        assert lesion.sum() == _crop(lesion, _box(r)).sum()


def test_lesions_change_the_head_at_highest_subtlety(dataset: tuple[Path, list[dict[str, str]]]) -> None:
    root, rows = dataset
    healthy, sick = [], []
    for r in rows:
        img = read_image(root / r["image"])
        x0, y0, z0, x1, y1, z1 = _box(r)
        sz, sy, sx = img.spacing
        z, y, x = np.ogrid[: img.array.shape[0], : img.array.shape[1], : img.array.shape[2]]
        radius = ((x1 - x0) * sx / 2 - 1.0) / 1.2  # the box is 1.2 head radii + 1 mm each side
        d2 = ((x - (x0 + x1) / 2) * sx) ** 2 + ((y - (y0 + y1) / 2) * sy) ** 2 + ((z - (z0 + z1) / 2) * sz) ** 2
        stat = float(img.array[d2 < (0.9 * radius) ** 2].std())  # HU spread inside the head
        if r["stage"] == "0":
            healthy.append(stat)
        elif int(r["stage"]) >= 2:
            sick.append(stat)
    assert healthy and sick
    assert np.mean(sick) > np.mean(healthy) + 2 * np.std(healthy) / np.sqrt(len(healthy))


def test_full_region_is_larger_and_box_holds_the_head(full: Pair) -> None:
    root, rows, _, _ = full
    assert {r["side"] for r in rows} == {"left", "right"} and rows[0]["image"] == rows[1]["image"]
    for r in rows:
        img = read_image(root / "nifti" / r["image"])
        a = img.array
        extent = np.array(a.shape) * np.array(img.spacing)
        assert np.all(extent[1:] > 200) and a.min() < -900 and a.max() > 700
        box = _box(r)
        x0, y0, z0, x1, y1, z1 = box
        assert 0 <= x0 < x1 <= a.shape[2] and 0 <= z0 < z1 <= a.shape[0]
        assert 100 < a[(z0 + z1) // 2, (y0 + y1) // 2, (x0 + x1) // 2] < 700
        # The patient's right hip lies at low x (LPS x points to the patient's left).
        assert ((x0 + x1) / 2 < a.shape[2] / 2) == (r["side"] == "right")


def _check_series_matches_nifti(root: Path, nifti: Rows, dicom: Rows) -> None:
    """Same manifest but the image column; each series reads back as the NIfTI's exact voxels and spacing.

    The two variants come from separate runs, so this also shows that a seed fixes every voxel.
    """
    assert [{**r, "image": ""} for r in nifti] == [{**r, "image": ""} for r in dicom]
    studies = set()
    for a, b in zip(nifti, dicom, strict=True):
        series = root / "dicom" / b["image"]
        assert a["image"].endswith(".nii.gz") and series.is_dir()
        ref, img = read_image(root / "nifti" / a["image"]), read_image(series)
        assert img.meta["format"] == "dicom-series" and img.array.dtype == np.float32
        np.testing.assert_array_equal(img.array, ref.array)
        np.testing.assert_allclose(img.spacing, ref.spacing, rtol=1e-9)
        files = sorted(series.iterdir())
        assert len(files) == img.array.shape[0]  # one file per slice
        for i in (0, len(files) - 1):
            ds = pydicom.dcmread(files[i])
            assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.Modality == "CT"
            assert ds.PatientID == b["patient_id"] and ds.pixel_array.dtype == np.int16
            assert ds.RescaleType == "HU" and float(ds.RescaleSlope) == 1 and float(ds.RescaleIntercept) == 0
            assert [float(v) for v in ds.PixelSpacing] == pytest.approx(ref.spacing[1:], rel=1e-9)
            assert float(ds.SliceThickness) == pytest.approx(ref.spacing[0], rel=1e-9)
            studies.add(ds.StudyInstanceUID)
        for name in ("mask", "mask_lesion"):  # masks stay NIfTI and index the series voxel for voxel
            mask = read_image(root / "dicom" / b[name]).array
            assert b[name].endswith(".nii.gz") and mask.shape == img.array.shape
            np.testing.assert_array_equal(mask, read_image(root / "nifti" / a[name]).array)
    assert len(studies) == 1  # both hips of the one patient come from one study


def test_dicom_series_reads_back_like_nifti(crops: Pair) -> None:
    root, nifti, dicom, calls = crops
    assert calls == [(1, 2), (2, 2)]
    assert [r["patient_id"] for r in dicom] == ["p0001", "p0001"] and dicom[0]["image"] != dicom[1]["image"]
    _check_series_matches_nifti(root, nifti, dicom)
    uids = [pydicom.dcmread(next((root / "dicom" / r["image"]).iterdir())).SeriesInstanceUID for r in dicom]
    assert uids[0] != uids[1]  # one series per crop


def test_full_region_dicom_is_one_series_shared_by_both_hips(full: Pair) -> None:
    root, nifti, dicom, _ = full
    assert dicom[0]["image"] == dicom[1]["image"] == "images/p0001"
    _check_series_matches_nifti(root, nifti, dicom)


def test_volume_with_mask_loads_the_dicom_variant(crops: Pair) -> None:
    root = crops[0]
    batches = []
    for variant in ("nifti", "dicom"):
        dataset = CaseDataset(load_manifest(root / variant).cases, VolumeWithMask(size=(24, 24, 24)))
        batches.append(next(iter(DataLoader(dataset, batch_size=2))))
    nifti, dicom = batches
    assert dicom["image"].shape == dicom["mask"].shape == (2, 1, 24, 24, 24)
    assert dicom["mask"].sum() > 0 and dicom["image"].std() > 0.1
    for key in ("image", "mask"):
        assert (nifti[key] == dicom[key]).all()


def test_bad_options_are_config_errors(tmp_path: Path) -> None:
    for fmt in ("png", "dcm"):
        with pytest.raises(ConfigError, match=f"fmt 'nifti' or 'dicom', got '{fmt}'"):
            generate_phantom(TASK, tmp_path / fmt, 1, fmt=fmt)
        assert not (tmp_path / fmt).exists()
    with pytest.raises(ConfigError):
        generate(tmp_path / "c", 0)
    with pytest.raises(ConfigError):
        generate(tmp_path / "c", 2, subtlety=1.5)
    with pytest.raises(ConfigError, match="voxel_scale"):
        generate(tmp_path / "c", 2, voxel_scale=0.5)


def test_voxel_scale_gives_the_same_cases_with_fewer_voxels(tmp_path: Path) -> None:
    fine, coarse = (read_rows(generate(tmp_path / str(s), 2, seed=3, voxel_scale=s)) for s in (1.0, 3.0))
    for a, b in zip(fine, coarse, strict=True):
        assert (a["label"], a["stage"]) == (b["label"], b["stage"])  # the same patients and lesions
        sa, sb = (read_image(tmp_path / d / r["image"]) for d, r in (("1.0", a), ("3.0", b)))
        assert np.allclose(np.array(sb.spacing) / np.array(sa.spacing), 3.0, rtol=0.05)
        assert sb.array.size * 20 < sa.array.size


def _realism() -> ModuleType:
    """benchmarks/ct_realism.py as a module, skipping when the real CT beside the checkout is absent."""
    spec = importlib.util.spec_from_file_location("ct_realism", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not module.REAL_CT.exists():
        pytest.skip(f"{module.REAL_CT} absent: real test data lives in ../shared/data beside the checkout")
    return module


@pytest.mark.realdata
def test_tissue_medians_lie_within_the_real_ct_quartiles(dataset: tuple[Path, list[dict[str, str]]]) -> None:
    """Fat, muscle, cancellous and cortical HU of healthy phantom crops, averaged to the real CT's 3 mm voxels,
    have medians inside the quartiles the same tissue windows give around a real femoral head."""
    realism = _realism()
    hip, spacing = realism.real_hip()
    real = realism.tissue_stats(hip)
    root, rows = dataset
    cases = []
    for r in rows:
        if int(r["stage"]) <= 1:  # stage I has no CT change
            img = read_image(root / r["image"])
            cases.append(realism.tissue_stats(realism.average_to(img.array, img.spacing, spacing)))
    assert len(cases) >= 6
    for tissue, (q1, _, q3) in real.items():
        median = float(np.median([case[tissue][1] for case in cases]))
        assert q1 <= median <= q3, f"{tissue}: phantom median {median:.0f} HU, real quartiles [{q1:.0f}, {q3:.0f}]"
