"""Patch-attention scoring against the lesion (SRANet Fig. 5): hand-computed examples, intervals, drawing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osteoscope.errors import DataError
from osteoscope.tasks.avnfh_ct.attention import (
    AttentionScore,
    draw_attention,
    lesion_patches,
    lesion_slices,
    score_case,
    summarise,
)


def test_lesion_patches_marks_every_touched_patch() -> None:
    lesion = np.zeros((8, 8, 8), bool)
    lesion[3:5, 0, 7] = True  # straddles the depth boundary of the 2x2x2 grid (4 voxels per patch)
    touched = lesion_patches(lesion, 2)
    assert touched.shape == (2, 2, 2)
    assert np.argwhere(touched).tolist() == [[0, 0, 1], [1, 0, 1]]
    with pytest.raises(DataError, match="equal patches"):
        lesion_patches(np.zeros((8, 8, 6)), 4)


def test_score_case_by_hand() -> None:
    lesion = np.zeros((8, 8, 8), bool)
    lesion[0:2, 0:2, 0:2] = True  # only patch (0, 0, 0) of a 2^3 grid
    attention = np.full((1, 2, 2, 2), 0.1)
    attention[0, 0, 0, 0] = 0.3  # total 1.0: mass 0.3, the top patch is the lesion's
    score = score_case("c1", attention, lesion)
    assert score.mass == pytest.approx(0.3)
    assert score.hit and score.chance == pytest.approx(1 / 8)
    attention[0, 1, 1, 1] = 0.5  # now another patch leads: mass 0.3 / 1.4
    score = score_case("c1", attention, lesion)
    assert score.mass == pytest.approx(0.3 / 1.4) and not score.hit
    with pytest.raises(DataError, match="no lesion"):
        score_case("c2", attention, np.zeros((8, 8, 8), bool))


def test_summary_intervals_cover_the_mean() -> None:
    rng = np.random.default_rng(0)
    scores = [AttentionScore(f"c{i}", float(m), bool(m > 0.5), 0.1) for i, m in enumerate(rng.uniform(0.2, 0.9, 40))]
    summary = summarise(scores, [f"p{i // 2}" for i in range(40)], n_boot=300)
    mass = summary["attention_mass"]
    assert mass["estimate"] == pytest.approx(np.mean([s.mass for s in scores]))
    assert mass["low"] < mass["estimate"] < mass["high"]
    assert summary["pointing_game"]["estimate"] == pytest.approx(np.mean([s.hit for s in scores]))
    assert summary["chance"] == pytest.approx(0.1) and summary["cases"] == 40


def test_draw_attention_goes_through_the_lesion(tmp_path: Path) -> None:
    volume = np.random.default_rng(1).normal(size=(16, 16, 16)).astype(np.float32)
    lesion = np.zeros((16, 16, 16), bool)
    lesion[10:13, 2:5, 6:9] = True
    assert lesion_slices(lesion, volume.shape) == (11, 3)
    assert lesion_slices(None, volume.shape) == (8, 8)
    top = np.zeros((2, 2, 2))
    top[1, 0, 1] = 1.0
    assert lesion_slices(None, volume.shape, top) == (12, 4)  # the centre of patch (1, 0, 1) of a 16^3 volume
    attention = np.random.default_rng(2).random((1, 4, 4, 4))
    path = draw_attention(volume, attention, tmp_path / "a.png", lesion=lesion, title="case c1")
    image = np.asarray(Image.open(path))
    assert image.shape[0] > 200 and image.std() > 10
