"""Contact sheets cover every label/stage group and write a real PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from osteoscope.data.manifest import Case
from osteoscope.phantoms import generate_phantom
from osteoscope.phantoms.preview import contact_sheet, pick_cases


def test_pick_cases_takes_every_stage_before_repeating_one() -> None:
    cases = [Case(f"c{i}", f"p{i}", {"image": None}, stage=i % 3 if i < 9 else 0) for i in range(20)]
    picked = pick_cases(cases, 3)
    assert sorted(c.stage for c in picked) == [0, 1, 2]
    assert len(pick_cases(cases, 50)) == 20


def test_contact_sheet_of_a_phantom(tmp_path: Path) -> None:
    generate_phantom("onfh-xray", tmp_path / "data", n=6, seed=0, image_size=(96, 128))
    sheet = contact_sheet(tmp_path / "data", tmp_path / "sheet.png", count=6, columns=3)
    pixels = np.asarray(PILImage.open(sheet).convert("L"))
    assert pixels.shape[0] > 300 and pixels.shape[1] > 300
    assert pixels.std() > 20  # images were drawn, not a blank canvas
