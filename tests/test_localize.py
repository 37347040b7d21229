"""Tests of the femoral-head localiser on tiny synthetic 'pelvis' images."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from osteoscope.errors import DataError
from osteoscope.tasks.onfh_xray.localizer import (
    Box,
    HeadLocalizer,
    _Candidate,
    _pair_problems,
    find_heads,
    fit_localizer,
    load_localizer,
    locate_heads,
    save_localizer,
)

H, W = 96, 120
WORKING = (64, 80)


def _synthetic(rng: np.random.Generator) -> tuple[np.ndarray, Box, Box]:
    """Two bright discs under bright arcs on a noisy ramp; returns (image, box_left, box_right).

    The patient's right head is the disc on the image's left. Exposure (offset, gain) varies.
    """
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    img = 0.2 + 0.1 * yy / H + rng.normal(0, 0.05, (H, W)).astype(np.float32)
    radius = rng.uniform(6, 9)
    row = rng.uniform(0.4, 0.65) * H
    boxes = []
    for lo, hi in ((0.15, 0.32), (0.68, 0.85)):
        cx, cy = rng.uniform(lo, hi) * W, row + rng.uniform(-0.05, 0.05) * H  # side by side, as on a pelvis film
        dist = np.hypot(xx - cx, yy - cy)
        img += 0.6 * (dist < radius)
        img += 0.4 * ((np.abs(dist - radius * 1.4) < 1.5) & (yy < cy))
        r = round(radius * 1.3)
        boxes.append((round(cx) - r, round(cy) - r, round(cx) + r, round(cy) + r))
    gain, offset = rng.uniform(100, 4000), rng.uniform(-500, 500)
    return img * gain + offset, boxes[1], boxes[0]


def _centre(box: Box) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


@pytest.fixture(scope="module")
def trained() -> HeadLocalizer:
    rng = np.random.default_rng(1)
    return fit_localizer((_synthetic(rng) for _ in range(160)), working_size=WORKING, epochs=12, seed=0)


@pytest.fixture(scope="module")
def held_out() -> list[tuple[np.ndarray, Box, Box]]:
    rng = np.random.default_rng(99)
    return [_synthetic(rng) for _ in range(30)]


def _errors(model: HeadLocalizer, cases: list[tuple[np.ndarray, Box, Box]]) -> np.ndarray:
    errs = []
    for img, left, right in cases:
        pred = locate_heads(model, img)
        errs.append(np.linalg.norm(_centre(pred["left"]) - _centre(left)))
        errs.append(np.linalg.norm(_centre(pred["right"]) - _centre(right)))
    return np.asarray(errs)


def test_finds_held_out_centres_better_than_mean_position(trained, held_out) -> None:
    errs = _errors(trained, held_out)
    mean_left = np.mean([_centre(b) for _, b, _ in held_out], 0)
    mean_right = np.mean([_centre(b) for _, _, b in held_out], 0)
    baseline = (
        np.mean(
            [
                np.linalg.norm(_centre(lb) - mean_left) + np.linalg.norm(_centre(rb) - mean_right)
                for _, lb, rb in held_out
            ]
        )
        / 2
    )
    assert errs.mean() < 0.05 * W, f"mean centre error {errs.mean():.2f} px"
    assert errs.mean() < 0.4 * baseline, f"error {errs.mean():.2f} px vs mean-position baseline {baseline:.2f} px"


def test_box_size_matches_training_margin(trained, held_out) -> None:
    """Box widths follow the training boxes (1.3 x radius half-side): typically within 3 px, never off by a third
    (the edge fit may widen a box by a few pixels; threads change the last digits of the fit)."""
    misses = []
    for img, left, _ in held_out[:10]:
        pred = locate_heads(trained, img)["left"]
        misses.append(abs((pred[2] - pred[0]) - (left[2] - left[0])) / (left[2] - left[0]))
        wider = locate_heads(trained, img, box_scale=1.5)["left"]
        assert wider[2] - wider[0] > pred[2] - pred[0]
    assert np.median(misses) <= 0.15 and max(misses) <= 0.33, misses


def test_sides_follow_image_position_on_mirrored_images(trained, held_out) -> None:
    """Mirrored films: the head now on the image's right must still be called patient-left."""
    mirrored = []
    for img, left, right in held_out:
        flip = img[:, ::-1]
        # after mirroring, the old patient-right head lies on the image's right: it is the new 'left'
        new_left = (W - right[2], right[1], W - right[0], right[3])
        new_right = (W - left[2], left[1], W - left[0], left[3])
        mirrored.append((flip, new_left, new_right))
    errs = _errors(trained, mirrored)
    assert errs.mean() < 0.05 * W
    for img, _, _ in mirrored:
        pred = locate_heads(trained, img)
        assert _centre(pred["left"])[0] > W / 2 > _centre(pred["right"])[0]


def test_works_on_other_image_sizes_and_is_fast(trained) -> None:
    rng = np.random.default_rng(5)
    img, left, right = _synthetic(rng)
    big = np.kron(img, np.ones((3, 3), dtype=img.dtype))  # 3x larger, same content
    pred = locate_heads(trained, big)
    assert np.linalg.norm(_centre(pred["left"]) - 3 * _centre(left)) < 0.05 * 3 * W
    assert np.linalg.norm(_centre(pred["right"]) - 3 * _centre(right)) < 0.05 * 3 * W
    start = time.perf_counter()
    for _ in range(10):
        locate_heads(trained, big)
    assert (time.perf_counter() - start) / 10 < 0.1


def test_save_load_round_trip(trained, held_out, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "loc.pt"
    save_localizer(trained, path)
    loaded = load_localizer(path)
    assert loaded.working_size == WORKING
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["loc.pt"]  # no temp file left
    for img, _, _ in held_out[:5]:
        assert locate_heads(loaded, img) == locate_heads(trained, img)


def test_load_missing_or_corrupt_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_localizer(tmp_path / "absent.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 50)
    with pytest.raises(DataError, match="cannot read"):
        load_localizer(bad)
    import torch

    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(DataError, match="not a saved"):
        load_localizer(other)


def test_rejects_bad_inputs() -> None:
    model = HeadLocalizer(WORKING)
    with pytest.raises(DataError):
        locate_heads(model, np.zeros((4, 5, 3)))
    with pytest.raises(DataError):
        locate_heads(model, np.full((40, 50), np.nan))
    with pytest.raises(DataError, match="sample 0"):
        fit_localizer([(np.zeros((40, 50)), (10, 10, 5, 20), (30, 10, 40, 20))], working_size=WORKING, epochs=1)
    with pytest.raises(DataError, match="no training samples"):
        fit_localizer([], working_size=WORKING)


@pytest.mark.parametrize(
    ("right", "left", "symmetry", "problem"),
    [
        (_Candidate(100, 200, 20, 0.9), _Candidate(300, 200, 40, 0.9), 0.6, "radii differ by a factor 2.0"),
        (_Candidate(100, 100, 20, 0.9), _Candidate(300, 220, 20, 0.9), 0.6, "not side by side"),
        (_Candidate(100, 200, 20, 0.9), _Candidate(160, 200, 20, 0.9), 0.6, "radii apart"),
        (_Candidate(100, 200, 4, 0.9), _Candidate(160, 200, 4, 0.9), 0.6, "of the image width apart"),
        (_Candidate(100, 200, 20, 0.9), _Candidate(300, 200, 20, 0.9), -0.2, "not mirror-symmetric"),
    ],
)
def test_pairing_rejects_implausible_pairs(right, left, symmetry: float, problem: str) -> None:
    problems = _pair_problems(right, left, 500, symmetry)
    assert any(problem in p for p in problems), problems
    assert _pair_problems(_Candidate(100, 200, 20, 0.9), _Candidate(300, 210, 22, 0.8), 500, 0.6) == []


def test_heads_carry_side_centre_radius_and_confidence(trained, held_out) -> None:
    img, left, right = held_out[0]
    heads = find_heads(trained, img)
    assert heads.side_source == "AP display convention" and heads.right_on_image_left
    assert [h.side for h in heads.found] == ["right", "left"]
    for head, truth in zip(heads.found, (right, left), strict=True):
        assert head.box == getattr(heads, head.side)
        assert np.linalg.norm(np.array(head.centre) - _centre(truth)) < 0.05 * W
        assert 0.7 < 1.3 * head.radius / ((truth[2] - truth[0]) / 2) < 1.4
        assert 0 < head.confidence <= 1
    assert 0 < heads.confidence <= min(h.confidence for h in heads.found)
    info = heads.info()
    assert info["localizer_side_source"] == "AP display convention" and "localizer_left_radius" in info


def test_side_tags_flip_the_assignment(trained, held_out) -> None:
    img, left, right = held_out[0]
    for tags in ({"PatientOrientation": ["R", "F"]}, {"ViewPosition": "PA"}):
        heads = find_heads(trained, img, tags=tags)
        assert not heads.right_on_image_left and heads.side_source.startswith("DICOM")
        assert np.linalg.norm(_centre(heads.left) - _centre(right)) < 0.05 * W  # the head on the image's left
        assert np.linalg.norm(_centre(heads.right) - _centre(left)) < 0.05 * W


def test_a_non_pelvis_image_is_refused_with_a_reason(trained) -> None:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:H, 0:W]
    one_disc = 0.2 + rng.normal(0, 0.05, (H, W)) + 0.6 * (np.hypot(xx - 60, yy - 48) < 8)  # one round bone
    for name, image in (("noise", rng.normal(0, 1, (H, W))), ("one disc", one_disc)):
        try:
            found = find_heads(trained, image)
        except DataError as error:
            assert "femoral-head candidate" in error.reason or "no pair of the" in error.reason
        else:
            pytest.fail(f"{name}: {found}")
