"""Tests for the lateral calcaneus multi-label phantom (task ``calcaneus-multilabel``)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from helpers import read_rows
from PIL import Image

from osteoscope.errors import ConfigError
from osteoscope.phantoms import calcaneus_multilabel as cm

SIZE = (128, 160)


def _mask(root: Path, rel: str) -> np.ndarray:
    return np.array(Image.open(root / rel)) > 0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    root = tmp_path_factory.mktemp("calc") / "a"
    manifest = cm.generate(root, 80, seed=5, image_size=SIZE)
    return root, read_rows(manifest)


def test_manifest_columns_files_and_progress(tmp_path: Path, dataset: tuple[Path, list[dict[str, str]]]) -> None:
    root, rows = dataset
    with (root / "manifest.csv").open() as fh:
        assert next(csv.reader(fh)) == list(cm.COLUMNS)
    assert cm.COLUMNS[3:9] == tuple(f"label_{k}" for k in cm.LABELS)
    assert len(rows) == 80 and len({r["case_id"] for r in rows}) == 80
    patients = {r["patient_id"] for r in rows}
    assert len(patients) < 80  # some patients have a follow-up study
    for r in rows:
        assert all(r[f"label_{k}"] in {"0", "1"} for k in cm.LABELS)
        image = np.array(Image.open(root / r["image"]))
        assert image.dtype == np.uint16 and image.shape == SIZE
        assert _mask(root, r["mask"]).shape == SIZE and _mask(root, r["mask_rough"]).shape == SIZE
    calls: list[tuple[int, int]] = []
    cm.generate(tmp_path / "p", 3, image_size=SIZE, progress=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_deterministic(tmp_path: Path) -> None:
    a = cm.generate(tmp_path / "a", 4, seed=2, image_size=SIZE)
    b = cm.generate(tmp_path / "b", 4, seed=2, image_size=SIZE)
    c = cm.generate(tmp_path / "c", 4, seed=3, image_size=SIZE)
    assert a.read_text() == b.read_text()
    ra = read_rows(a)
    for r in ra:
        for key in ("image", "mask", "mask_rough"):
            assert (a.parent / r[key]).read_bytes() == (b.parent / r[key]).read_bytes()
    rc = read_rows(c)
    assert (a.parent / ra[0]["image"]).read_bytes() != (c.parent / rc[0]["image"]).read_bytes()


def test_bad_arguments(tmp_path: Path) -> None:
    for kwargs in ({"n": 0}, {"n": 2, "subtlety": 1.5}, {"n": 2, "image_size": (32, 32)}):
        with pytest.raises(ConfigError):
            cm.generate(tmp_path, **kwargs)


def test_label_cardinality_and_correlations(dataset: tuple[Path, list[dict[str, str]]]) -> None:
    _, rows = dataset
    counts = np.array([sum(int(r[f"label_{k}"]) for k in cm.LABELS) for r in rows])
    positive = counts[counts > 0]
    assert 0 < len(positive) < len(rows)
    assert abs(positive.mean() - 2.94) < 0.4
    freq = {k: np.mean([int(r[f"label_{k}"]) for r in rows]) for k in cm.LABELS}
    assert max(freq, key=freq.get) == "primary_line"
    assert freq["tongue_block"] < freq["primary_line"] / 2


def test_masks_follow_labels(dataset: tuple[Path, list[dict[str, str]]]) -> None:
    root, rows = dataset
    dices = []
    for r in rows:
        exact = _mask(root, r["mask"])
        rough = _mask(root, r["mask_rough"])
        if any(r[f"label_{k}"] == "1" for k in cm.LABELS):
            assert exact.sum() > 20
            dices.append(2 * (exact & rough).sum() / (exact.sum() + rough.sum()))
        else:
            assert not exact.any()
    assert 0.5 < float(np.mean(dices)) < 0.95
    assert min(dices) > 0.2 and max(dices) < 1.0


def _study(labels: frozenset[str], subtlety: float, noise_seed: int = 0) -> tuple[np.ndarray, dict, np.ndarray]:
    rng = np.random.default_rng(11)
    anatomy = cm._draw_anatomy(rng)
    fracture = cm._draw_fracture(rng, anatomy, labels)
    pose = cm._draw_pose(np.random.default_rng(12), SIZE)
    return cm._render(anatomy, fracture, pose, SIZE, subtlety, np.random.default_rng(noise_seed))


def test_each_label_drawn_at_its_place() -> None:
    _, regions, calc = _study(frozenset(cm.LABELS), 0.5)
    assert set(regions) == set(cm.LABELS)
    centre = {}
    for name, region in regions.items():
        assert region.sum() > 10, name
        assert (region & ~calc).sum() == 0, name
        rows, cols = np.nonzero(region)
        centre[name] = (rows.mean(), cols.mean())
    # Heel is on the image's left: tuberosity lines lie behind the primary line; the collapse block
    # and facet lines lie under the articular surface, above the body comminution.
    assert centre["tuberosity"][1] < centre["primary_line"][1]
    assert centre["tongue_block"][1] < centre["primary_line"][1]
    assert centre["collapse_block"][0] < centre["body"][0]
    assert centre["posterior_facet"][0] < centre["body"][0]


@pytest.mark.parametrize("name", cm.LABELS)
def test_label_measurable_at_full_subtlety(name: str) -> None:
    with_label, regions, _ = _study(frozenset({name}), 1.0)
    without, _, _ = _study(frozenset(), 1.0)
    other_noise, _, _ = _study(frozenset(), 1.0, noise_seed=1)
    region = regions[name]
    signal = np.abs(with_label.astype(float) - without)[region].mean()
    noise = np.abs(other_noise.astype(float) - without)[region].mean()
    assert signal > 0.5 * noise
    easy, _, _ = _study(frozenset({name}), 0.0)
    assert np.abs(easy.astype(float) - without)[region].mean() > signal


def test_bohler_angle_normal_and_flattened_by_depression() -> None:
    """Normal calcanei have Böhler's angle in the normal 20-40° range; collapse and tongue fractures flatten it."""
    normal = []
    for i in range(300):
        anatomy = cm._draw_anatomy(np.random.default_rng([7, i]))
        angle = cm.bohler_angle(anatomy)
        normal.append(angle)
        frng = np.random.default_rng(i)
        for name, drop in (("collapse_block", 5.0), ("tongue_block", 4.0), ("primary_line", 0.0)):
            fracture = cm._draw_fracture(frng, anatomy, frozenset({name}))
            flattened = cm.bohler_angle(anatomy, fracture, 1.0)
            assert flattened <= angle - drop + 1e-9, (name, angle, flattened)
    assert min(normal) >= 20.0 and max(normal) <= 40.0
    assert 26.0 < float(np.median(normal)) < 34.0  # spread across the range, not pinned to one end


def test_rendered_calcaneus_follows_its_outline() -> None:
    """The rendered calcaneus mask has the drawn outline's area: the measured geometry is the one shown."""
    rng = np.random.default_rng(11)
    anatomy = cm._draw_anatomy(rng)
    fracture = cm._draw_fracture(rng, anatomy, frozenset())
    size = (256, 320)
    pose = cm._draw_pose(np.random.default_rng(12), size)
    _, _, calc = cm._render(anatomy, fracture, pose, size, 0.5, np.random.default_rng(0))
    outline, _ = cm._outline(anatomy, fracture, 1.0)
    x, y = outline[:, 0], outline[:, 1]
    area_mm2 = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
    assert 1500.0 < area_mm2 < 3600.0  # an adult calcaneus in lateral projection, not a sliver or a slab
    assert abs(calc.sum() * pose.spacing**2 / area_mm2 - 1.0) < 0.04
