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


def _study(stage: int, i: int, subtlety: float = 0.5, size: int = SIZE) -> dict[str, np.ndarray]:
    return mr._synth_study(np.random.default_rng([7, stage, i]), stage, subtlety, size, "right")


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


# Tissue contrast is checked as the ratio of two region medians inside one image, so the per-protocol gain and
# scaling of a scanner cancel. A region is the pixels a tissue fills to at least ``purity``; "marrow" is the
# normal fatty femoral marrow outside the lesion mask. Each bound sits well inside the worst ratio (comment)
# measured over 60 seeds (families [7, stage, i] and [1234, stage, i], i < 30) x subtlety 0, .25, .5, .75, 1.
# (tissue, reference, protocols, ">" brighter / "<" darker than bound x reference, bound)
Rule = tuple[str, str, tuple[str, ...], str, float]
TISSUE_RULES: tuple[Rule, ...] = (
    ("fat", "muscle", ("t1", "t2"), ">", 1.8),  # worst 2.39
    ("fat", "muscle", ("pdfs", "stir", "t1fs"), "<", 0.6),  # fat suppression; worst 0.43
    ("fluid", "muscle", ("t2", "pdfs", "stir"), ">", 1.8),  # worst 2.45
    ("fluid", "muscle", ("t1", "t1fs"), "<", 0.75),  # worst 0.57
    ("oedema", "marrow", ("t1",), "<", 0.7),  # marrow oedema dark on T1; worst 0.56
    ("oedema", "marrow", ("pdfs", "stir"), ">", 3.0),  # bright on fat-suppressed fluid-sensitive; worst 4.11
    ("oedema", "muscle", ("pdfs", "stir"), ">", 1.5),  # worst 2.01
)
SCLEROSIS_RULES: tuple[Rule, ...] = (
    ("sclerosis", "marrow", ("t1", "t2"), "<", 0.45),  # worst 0.31 (128 px, purity 0.8)
    ("sclerosis", "muscle", ("pdfs", "stir", "t1fs"), "<", 1.0),  # hypointense to muscle; worst 0.79
)
CONTRAST_SEEDS = range(8)


def _region(s: dict[str, np.ndarray], name: str, purity: float) -> np.ndarray:
    region = (s["tissue"] == mr.TISSUES.index(name)) & (s["fraction"] >= purity)
    return region & ~s["mask"] if name == "marrow" else region


def _ratio(s: dict[str, np.ndarray], protocol: str, a: np.ndarray, b: np.ndarray) -> float:
    assert a.sum() >= 4 and b.sum() >= 4, "a tissue region is missing"
    return float(np.median(s[protocol][a]) / np.median(s[protocol][b]))


def rule_margins(s: dict[str, np.ndarray], rules: tuple[Rule, ...], purity: float) -> dict[str, float]:
    """Each rule's margin per protocol: ratio / bound for ">" and bound / ratio for "<" (above 1 passes)."""
    margins = {}
    for tissue, reference, protocols, side, bound in rules:
        a, b = _region(s, tissue, purity), _region(s, reference, purity)
        for p in protocols:
            ratio = _ratio(s, p, a, b)
            margins[f"{tissue}/{reference} {p} {side} {bound}"] = ratio / bound if side == ">" else bound / ratio
    return margins


def lesion_margins(s: dict[str, np.ndarray], stage: int) -> dict[str, float]:
    """The staging signs of the necrotic segment on the dominant-tissue map, as margins (above 1 passes)."""
    marrow = _region(s, "marrow", 0.0)
    tissue = {name: _region(s, name, 0.0) for name in ("interface", "granulation", "sclerosis", "fluid")}
    # Worst ratios measured as for TISSUE_RULES: segment 0.84, interface 0.70, granulation 2.27 and 3.55, fluid 4.53.
    margins = {"segment/marrow t1 < 0.92": 0.92 * np.median(s["t1"][marrow]) / s["t1"][s["mask"]].mean()}
    if stage == 1:  # the single T1-dark band
        margins["interface/marrow t1 < 0.8"] = 0.8 / _ratio(s, "t1", tissue["interface"], marrow)
    if stage == 2:  # double line: T2-bright granulation inside the dark sclerotic rim
        margins["granulation/sclerosis t2 > 1.8"] = _ratio(s, "t2", tissue["granulation"], tissue["sclerosis"]) / 1.8
        margins["granulation/marrow stir > 2.5"] = _ratio(s, "stir", tissue["granulation"], marrow) / 2.5
    if stage >= 3:  # fluid crescent and cysts in the segment
        margins["segment fluid/marrow stir > 3"] = _ratio(s, "stir", tissue["fluid"] & s["mask"], marrow) / 3.0
    return margins


@pytest.mark.parametrize("subtlety", [0.0, 1.0])
def test_protocol_contrast_rules(subtlety: float) -> None:
    for i in CONTRAST_SEEDS:
        for stage in (3, 4):  # stages with an effusion and bone-marrow oedema
            margins = rule_margins(_study(stage, i, subtlety, size=96), TISSUE_RULES, purity=0.6)
            assert min(margins.values()) > 1.0, (stage, i, {k: round(v, 2) for k, v in margins.items() if v <= 1})


@pytest.mark.parametrize("subtlety", [0.0, 1.0])
def test_sclerosis_dark_on_every_protocol(subtlety: float) -> None:
    # Finer pixels and nearly pure pixels: a 2-3 mm sclerotic band is otherwise partial volume with its neighbours.
    for i in range(4):
        for stage in (2, 3, 4):
            margins = rule_margins(_study(stage, i, subtlety, size=128), SCLEROSIS_RULES, purity=0.8)
            assert min(margins.values()) > 1.0, (stage, i, {k: round(v, 2) for k, v in margins.items() if v <= 1})


@pytest.mark.parametrize("subtlety", [0.0, 1.0])
def test_lesion_signs_per_stage(subtlety: float) -> None:
    for i in CONTRAST_SEEDS:
        for stage in (1, 2, 3, 4):
            margins = lesion_margins(_study(stage, i, subtlety, size=96), stage)
            assert min(margins.values()) > 1.0, (stage, i, {k: round(v, 2) for k, v in margins.items() if v <= 1})


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
