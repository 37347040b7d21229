"""Automatic femoral-head boxes on CT: on the phantom against its true boxes, and on the real pelvis CT."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from osteoscope.data.readers import read_image
from osteoscope.errors import DataError
from osteoscope.phantoms import generate_phantom
from osteoscope.tasks.avnfh_ct.heads import find_heads

REAL_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "pelvis-ct" / "example_ct.nii.gz"


def _centre_of(box: str) -> np.ndarray:
    x0, y0, z0, x1, y1, z1 = (int(v) for v in box.split())
    return np.array([(z0 + z1) / 2, (y0 + y1) / 2, (x0 + x1) / 2]) - 0.5


def test_heads_found_on_the_phantom_near_their_true_boxes(tmp_path: Path) -> None:
    generate_phantom("avnfh-ct", tmp_path, n=6, seed=3, full_region=True)
    errors = []
    for row in csv.DictReader((tmp_path / "manifest.csv").open()):
        image = read_image(tmp_path / row["image"])
        heads = {h.side: h for h in find_heads(image.array, image.spacing)}
        assert set(heads) == {"right", "left"} and heads["right"].centre[2] < heads["left"].centre[2]
        found = np.array(heads[row["side"]].centre)
        errors.append(float(np.linalg.norm((found - _centre_of(row["box"])) * np.asarray(image.spacing))))
    # Measured: 5 of 6 within 3.2 mm; the miss (48.6 mm) is a head whose greater trochanter wins the pair.
    assert sum(e < 10.0 for e in errors) >= 5, errors


def test_no_head_is_a_clear_error() -> None:
    soft = np.full((40, 40, 40), 40.0)  # muscle only
    with pytest.raises(DataError, match="no femoral head"):
        find_heads(soft, (2.0, 2.0, 2.0))


@pytest.mark.skipif(not REAL_CT.is_file(), reason="real CT in ../shared/data/pelvis-ct not present")
def test_heads_on_the_real_ct_and_the_implant_flagged() -> None:
    image = read_image(REAL_CT)
    right, left = find_heads(image.array, image.spacing)
    assert (right.side, left.side) == ("right", "left")
    # Checked by eye on the coronal slice: both centres inside the acetabula, about 162 mm apart at one height.
    apart = (left.centre[2] - right.centre[2]) * image.spacing[2]
    assert 140 < apart < 190 and abs(left.centre[0] - right.centre[0]) <= 2
    assert right.metal == 0 and left.metal > 0  # the metal implant reaches the head on the file's patient left
