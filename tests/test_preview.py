"""Contact sheets cover every label/stage group, name labels in the task's words, and write a real PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from osteoscope.data.manifest import Case
from osteoscope.phantoms import generate_phantom
from osteoscope.phantoms.preview import contact_sheet, group_of, pick_cases
from osteoscope.tasks import make_task


def test_pick_cases_takes_every_stage_before_repeating_one() -> None:
    cases = [Case(f"c{i}", f"p{i}", {"image": None}, stage=i % 3 if i < 9 else 0) for i in range(20)]
    picked = pick_cases(cases, 3)
    assert sorted(c.stage for c in picked) == [0, 1, 2]
    assert len(pick_cases(cases, 50)) == 20


def test_contact_sheet_of_a_phantom(tmp_path: Path) -> None:
    generate_phantom("onfh-xray", tmp_path / "data", n=6, seed=0, image_size=(96, 128))
    sheet = contact_sheet(tmp_path / "data", tmp_path / "sheet.png", "onfh-xray", count=6, columns=3)
    pixels = np.asarray(PILImage.open(sheet).convert("L"))
    assert pixels.shape[0] > 300 and pixels.shape[1] > 300
    assert pixels.std() > 20  # images were drawn, not a blank canvas


def test_contact_sheet_titles_name_the_label_not_its_code() -> None:
    onfh = make_task("onfh-xray")
    assert group_of(Case("a", "p", {}, labels={"label": 0}, stage=0), onfh) == "no ONFH, stage 0"
    assert group_of(Case("b", "p", {}, labels={"label": 1}, stage=2), onfh) == "ONFH, stage 2"
    calcaneus = make_task("calcaneus-multilabel")
    names = calcaneus.head.names
    labels = {f"label_{n}": int(i in (0, 2)) for i, n in enumerate(names)}
    assert group_of(Case("c", "p", {}, labels=labels), calcaneus) == f"{names[0]}, {names[2]}"
    assert group_of(Case("d", "p", {}, labels=dict.fromkeys(labels, 0)), calcaneus) == "none"
    staging = make_task("onfh-mr-staging")
    assert group_of(Case("e", "p", {}, labels={"label": 3}), staging) == staging.head.names[3]
