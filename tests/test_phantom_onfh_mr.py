"""Tests of the multi-protocol MR + CT ONFH staging phantom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import read_rows
from PIL import Image

from osteoscope.errors import ConfigError
from osteoscope.phantoms import onfh_mr_staging as mr

SIZE = 64


def _study(stage: int, i: int, subtlety: float = 0.5) -> dict[str, np.ndarray]:
    return mr._synth_study(np.random.default_rng([7, stage, i]), stage, subtlety, SIZE, "right")


def _mean(image: np.ndarray, tissue: np.ndarray, name: str) -> float:
    region = tissue == mr.TISSUES.index(name)
    assert region.sum() > 3, name
    return float(np.median(image[region]))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mr.generate(tmp_path_factory.mktemp("mr"), 40, seed=3, image_size=SIZE, missing_fraction=0.25)


def test_manifests_columns_and_files(dataset: Path) -> None:
    rows = read_rows(dataset)
    assert len(rows) == 40
    assert tuple(rows[0]) == mr.COLUMNS
    pre = read_rows(dataset.parent / "pretext" / "manifest.csv")
    assert len(pre) == 120
    assert tuple(pre[0]) == mr.PRETEXT_COLUMNS
    assert {r["label"] for r in rows} == {"0", "1", "2", "3"}
    assert all(int(r["label"]) == int(r["stage"]) - 1 for r in rows)
    assert len({r["case_id"] for r in rows}) == 40
    for row in rows[:5]:
        for col in (*mr.IMAGE_COLUMNS, "image_ct", "mask"):
            if row[col]:
                image = np.asarray(Image.open(dataset.parent / row[col]))
                assert image.shape == (SIZE, SIZE)
                assert image.dtype == (np.uint8 if col == "mask" else np.uint16)
    for row in pre[:5]:
        assert all(row[c] for c in (*mr.IMAGE_COLUMNS, "image_ct"))
        assert (dataset.parent / "pretext" / row["image_ct"]).is_file()


def test_missing_protocols(dataset: Path) -> None:
    rows = read_rows(dataset)
    missing = [sum(not r[c] for c in mr.IMAGE_COLUMNS) for r in rows]
    assert max(missing) == 1
    assert sum(missing) == 10  # round(0.25 * 40)


def test_pretext_patients_disjoint(dataset: Path) -> None:
    labelled = {r["patient_id"] for r in read_rows(dataset)}
    pretext = {r["patient_id"] for r in read_rows(dataset.parent / "pretext" / "manifest.csv")}
    assert labelled and pretext and not labelled & pretext


def test_deterministic(tmp_path: Path) -> None:
    a = mr.generate(tmp_path / "a", 3, seed=9, image_size=SIZE, unlabelled_pairs=2)
    b = mr.generate(tmp_path / "b", 3, seed=9, image_size=SIZE, unlabelled_pairs=2)
    c = mr.generate(tmp_path / "c", 3, seed=10, image_size=SIZE, unlabelled_pairs=2)
    assert a.read_text() == b.read_text()
    for name in ("images/" + read_rows(a)[0]["case_id"] + "_t2.png", "pretext/images/u0001_ct.png"):
        assert (a.parent / name).read_bytes() == (b.parent / name).read_bytes()
    ct = "pretext/images/u0001_ct.png"
    assert (a.parent / ct).read_bytes() != (c.parent / ct).read_bytes()


def test_written_images_match_the_rendering(tmp_path: Path) -> None:
    manifest = mr.generate(tmp_path, 1, seed=4, image_size=SIZE, unlabelled_pairs=0, missing_fraction=0.0)
    row = read_rows(manifest)[0]
    study = mr._synth_study(np.random.default_rng([4, 1, 0]), int(row["stage"]), 0.5, SIZE, row["side"])
    t1 = np.asarray(Image.open(tmp_path / row["image_t1"])).astype(np.float64)
    np.testing.assert_allclose(t1, np.round(study["t1"] * 3000.0), atol=1)
    ct = np.asarray(Image.open(tmp_path / row["image_ct"])).astype(np.float64) - mr.CT_OFFSET
    np.testing.assert_allclose(ct, np.maximum(np.round(study["ct"]), -mr.CT_OFFSET), atol=1)
    mask = np.asarray(Image.open(tmp_path / row["mask"])) > 0
    assert np.array_equal(mask, study["mask"]) and mask.any()


def test_protocol_contrast_rules() -> None:
    for i in range(3):
        s = _study(4, i)
        tissue = s["tissue"]
        # Fat: bright on T1 and T2, suppressed on PDfs, STIR and T1fs (relative to muscle and absolute).
        for p in ("t1", "t2"):
            assert _mean(s[p], tissue, "fat") > 2.0 * _mean(s[p], tissue, "muscle")
        for p in ("pdfs", "stir", "t1fs"):
            assert _mean(s[p], tissue, "fat") < 0.6 * _mean(s[p], tissue, "muscle")
        assert _mean(s["t1"], tissue, "fat") > 5.0 * _mean(s["stir"], tissue, "fat")
        # Fluid and oedema: bright on T2/STIR/PDfs, dark on T1.
        for name in ("fluid", "oedema"):
            assert _mean(s["stir"], tissue, name) > _mean(s["t1"], tissue, name)
            stir = _mean(s["stir"], tissue, name) / _mean(s["stir"], tissue, "muscle")
            assert stir > 1.5 * _mean(s["t1"], tissue, name) / _mean(s["t1"], tissue, "muscle")
            assert _mean(s["pdfs"], tissue, name) > _mean(s["pdfs"], tissue, "muscle")
        assert _mean(s["stir"], tissue, "fluid") > 2.0 * _mean(s["t1"], tissue, "fluid")
        assert _mean(s["t2"], tissue, "fluid") > _mean(s["t2"], tissue, "muscle")


def test_cortex_dark_on_mr_and_bright_on_ct() -> None:
    # Finer pixels, so that the 1-5 mm cortex is not all partial volume.
    s = mr._synth_study(np.random.default_rng(2), 3, 0.5, 128, "left")
    for p in mr.PROTOCOLS:
        assert _mean(s[p], s["tissue"], "cortex") < 0.65 * _mean(s[p], s["tissue"], "muscle")
    assert _mean(s["ct"], s["tissue"], "cortex") > 700


def test_ct_hounsfield_ranges() -> None:
    s = _study(2, 0)
    tissue, ct = s["tissue"], s["ct"]
    assert -1100 < _mean(ct, tissue, "air") < -900
    assert -160 < _mean(ct, tissue, "fat") < -40
    assert 0 < _mean(ct, tissue, "muscle") < 100
    assert _mean(ct, tissue, "cortex") > 400
    assert 100 < _mean(ct, tissue, "marrow") < 400
    assert ct.min() > -1200 and ct.max() < 2000


@pytest.mark.parametrize("subtlety", [0.0, 1.0])
def test_stages_are_ordered(subtlety: float) -> None:
    area = {st: np.mean([_study(st, i, subtlety)["mask"].mean() for i in range(8)]) for st in (1, 2, 3, 4)}
    assert area[1] < area[2] < area[3] < area[4]
    normal = _study(0, 0, subtlety)
    assert not normal["mask"].any()

    def oedema_ratio(s: dict[str, np.ndarray]) -> float:
        return float(s["stir"][s["mask"]].mean() / _mean(s["stir"], s["tissue"], "muscle"))

    early = np.mean([oedema_ratio(_study(st, i, subtlety)) for st in (1, 2) for i in range(5)])
    late = np.mean([oedema_ratio(_study(st, i, subtlety)) for st in (3, 4) for i in range(5)])
    assert late > 1.3 * early


def test_left_hips_are_mirrored() -> None:
    right = mr._synth_study(np.random.default_rng(1), 3, 0.5, SIZE, "right")
    left = mr._synth_study(np.random.default_rng(1), 3, 0.5, SIZE, "left")
    assert np.array_equal(left["tissue"], right["tissue"][:, ::-1])


@pytest.mark.parametrize(
    "kwargs",
    [{"n": 0}, {"subtlety": 1.5}, {"image_size": 16}, {"unlabelled_pairs": -1}, {"missing_fraction": 2.0}],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, float]) -> None:
    args = {"n": 2, **kwargs}
    with pytest.raises(ConfigError):
        mr.generate(tmp_path, **args)


def test_progress_counts_all_studies(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    mr.generate(tmp_path, 2, image_size=SIZE, unlabelled_pairs=3, progress=lambda i, t: calls.append((i, t)))
    assert calls == [(i, 5) for i in range(1, 6)]
