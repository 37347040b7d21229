"""Tests for the hip CT AVNFH phantom (task ``avnfh-ct``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import read_rows

from osteoscope.data.readers import read_image
from osteoscope.errors import ConfigError
from osteoscope.phantoms.avnfh_ct import COLUMNS, TASK, _plan, generate


def _box(row: dict[str, str]) -> tuple[int, ...]:
    return tuple(int(v) for v in row["box"].split())


def _crop(array: np.ndarray, box: tuple[int, ...]) -> np.ndarray:
    x0, y0, z0, x1, y1, z1 = box
    return array[z0:z1, y0:y1, x0:x1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    root = tmp_path_factory.mktemp("ct") / "a"
    return root, read_rows(generate(root, 16, seed=2, subtlety=1.0))


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


def test_determinism_and_errors(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    m1 = generate(tmp_path / "a", 3, seed=4, progress=lambda i, n: calls.append((i, n)))
    m2 = generate(tmp_path / "b", 3, seed=4)
    assert calls == [(1, 3), (2, 3), (3, 3)]
    r1, r2 = read_rows(m1), read_rows(m2)
    assert r1 == r2
    a = read_image(tmp_path / "a" / r1[0]["image"]).array
    b = read_image(tmp_path / "b" / r2[0]["image"]).array
    assert np.array_equal(a, b)
    with pytest.raises(ConfigError):
        generate(tmp_path / "c", 0)
    with pytest.raises(ConfigError):
        generate(tmp_path / "c", 2, subtlety=1.5)


def test_full_region_is_larger_and_box_holds_the_head(tmp_path: Path) -> None:
    rows = read_rows(generate(tmp_path / "f", 2, seed=1, full_region=True))
    for r in rows:
        img = read_image(tmp_path / "f" / r["image"])
        a = img.array
        extent = np.array(a.shape) * np.array(img.spacing)
        assert np.all(extent[1:] > 200) and a.min() < -900 and a.max() > 700
        box = _box(r)
        x0, y0, z0, x1, y1, z1 = box
        assert 0 <= x0 < x1 <= a.shape[2] and 0 <= z0 < z1 <= a.shape[0]
        assert 100 < a[(z0 + z1) // 2, (y0 + y1) // 2, (x0 + x1) // 2] < 700
        # The patient's right hip lies at low x (LPS x points to the patient's left).
        assert ((x0 + x1) / 2 < a.shape[2] / 2) == (r["side"] == "right")
