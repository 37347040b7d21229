"""predict on one reduced decode per study (issue 10): each file is decoded once, the femoral-head boxes found
on the reduced decode are reported in the file's pixels, and the ROIs are the picture a full decode gives.

The localiser is not under test here (tests/test_localize.py is): a deterministic detector of the two bright
discs of a synthetic film stands in for it, so any error in the boxes is the mapping's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_hip_run
from PIL import Image as PILImage

from osteoscope.data import readers
from osteoscope.data.datasets import BilateralRois
from osteoscope.data.manifest import Case
from osteoscope.engine.predict import predict_images
from osteoscope.tasks.onfh_xray import LOCALIZER_FILE, OnfhXray
from osteoscope.tasks.onfh_xray import localizer as localizer_module
from osteoscope.tasks.onfh_xray.localizer import HeadLocalizer, Heads, save_localizer

SHAPE = (1040, 1296)  # rows, columns: roi_size 32 -> study_min_side 256 -> decoded at 1/4
HEADS = {"right": (300, 420, 300 + 176, 420 + 176), "left": (820, 436, 820 + 176, 436 + 176)}  # x0 y0 x1 y1


def discs(image: np.ndarray) -> Heads:
    """The bounding boxes of the bright discs in each image half (patient right on the image's left)."""
    bright = image > (image.min() + image.max()) / 2
    boxes = {}
    for side, half in (("right", slice(0, image.shape[1] // 2)), ("left", slice(image.shape[1] // 2, None))):
        ys, xs = np.nonzero(bright[:, half])
        offset = half.start or 0
        boxes[side] = (int(xs.min()) + offset, int(ys.min()), int(xs.max()) + 1 + offset, int(ys.max()) + 1)
    return Heads(boxes["left"], boxes["right"], 1.0)


def write_film(path: Path, seed: int = 0) -> None:
    """A 16-bit film (or 8-bit JPEG) with two bright discs filling the ``HEADS`` boxes, a gradient and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: SHAPE[0], : SHAPE[1]]
    film = 0.2 + 0.1 * x / SHAPE[1] + rng.normal(0, 0.01, SHAPE)
    for x0, y0, x1, y1 in HEADS.values():
        cx, cy, r = (x0 + x1) / 2 - 0.5, (y0 + y1) / 2 - 0.5, (x1 - x0) / 2
        disc = (x - cx) ** 2 + (y - cy) ** 2 <= r**2
        film[disc] = 0.8 + 0.1 * np.sin((x[disc] - x0) / 9.0) * np.cos((y[disc] - y0) / 7.0)
    film = np.clip(film, 0, 1)
    if path.suffix == ".jpg":
        PILImage.fromarray((film * 255).astype(np.uint8)).save(path, quality=95)
    else:
        PILImage.fromarray((film * 65535).astype(np.uint16)).save(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tiny_hip_run(tmp_path_factory.mktemp("decode"), n=30, seed=3)
    save_localizer(HeadLocalizer((64, 80)), run_dir / LOCALIZER_FILE)  # weights unused: `discs` finds the heads
    return run_dir


@pytest.fixture()
def films(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    monkeypatch.setattr(localizer_module, "find_heads", lambda model, image, **_: discs(image))
    paths = [tmp_path / "film.png", tmp_path / "film.jpg"]
    for path in paths:
        write_film(path)
    return paths


def test_each_file_is_decoded_once_at_the_reduced_scale(
    run: Path, films: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, int | None]] = []
    read = readers._read
    monkeypatch.setattr(
        readers,
        "_read",
        lambda path, voi, min_side, series=None: (
            calls.append((path.name, min_side)),
            read(path, voi, min_side, series),
        )[1],
    )
    results = predict_images(run, films, ood="flag")  # located by the localiser, then cropped, then guarded
    assert calls == [("film.png", 256), ("film.jpg", 256)]
    assert all("probability" in result for result in results)
    calls.clear()
    predict_images(run, films[:1], boxes={"left": HEADS["left"], "right": HEADS["right"]}, ood="flag")
    assert calls == [("film.png", 256)]


def test_boxes_found_on_a_reduced_decode_are_reported_in_file_pixels(
    run: Path, films: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reduced = predict_images(run, films, ood="flag")
    monkeypatch.setattr(OnfhXray, "study_min_side", property(lambda self: None))
    full = predict_images(run, films, ood="flag")
    for at_quarter, at_full in zip(reduced, full, strict=True):
        for side in ("left", "right"):
            truth = np.array(HEADS[side])
            np.testing.assert_array_equal(at_full["boxes"][f"box_{side}"], truth)
            assert np.abs(np.array(at_quarter["boxes"][f"box_{side}"]) - truth).max() <= 4  # one decoded pixel
        assert abs(at_quarter["probability"] - at_full["probability"]) < 0.02


def test_rois_of_a_reduced_decode_are_the_full_decode_s_picture(films: list[Path]) -> None:
    case = Case("film", "", {"image": films[0]}, boxes={"box_left": HEADS["left"], "box_right": HEADS["right"]})
    builder = BilateralRois(size=32, box_jitter=0.0)
    full = builder(case, None)
    with readers.decode_once(min_side=256):
        reduced = builder(case, None)
    for key in ("left", "right"):
        a, b = full[key].numpy().ravel(), reduced[key].numpy().ravel()
        assert np.corrcoef(a, b)[0, 1] > 0.98 and np.abs(a - b).mean() < 0.05
