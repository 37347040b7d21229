"""Manifest validation errors and patient-level splits."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from osteoscope.data.manifest import Case, load_manifest, parse_box
from osteoscope.data.splits import check_patient_leakage, kfold_patients, split_patients
from osteoscope.errors import DataError


def write_dataset(root: Path, rows: list[str], header: str = "case_id,patient_id,image,label") -> Path:
    (root / "img").mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(np.zeros((8, 8), np.uint8)).save(root / "img" / "a.png")
    (root / "manifest.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


def test_manifest_reads_paths_relative_to_its_folder(tmp_path: Path) -> None:
    write_dataset(tmp_path, ["c1,p1,img/a.png,1"])
    case = load_manifest(tmp_path).cases[0]
    assert case.images["image"] == tmp_path / "img" / "a.png"
    assert case.labels == {"label": 1}


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        ("case_id,image,label", ["c1,img/a.png,1"], "missing column(s): patient_id"),
        ("case_id,patient_id,label", ["c1,p1,1"], "image"),
        ("case_id,patient_id,image,label", ["c1,p1,img/a.png,1", "c1,p2,img/a.png,0"], "duplicate case_id 'c1'"),
        ("case_id,patient_id,image,label", ["c1,p1,img/a.png,7"], "unknown label '7'"),
        ("case_id,patient_id,image,label", ["c1,p1,img/a.png,yes"], "unknown label 'yes'"),
        ("case_id,patient_id,image,label", ["c9,p1,img/missing.png,1"], "missing.png"),
        ("case_id,patient_id,image,label,side", ["c1,p1,img/a.png,1,up"], "side"),
        ("case_id,patient_id,image,label,box_left", ["c1,p1,img/a.png,1,5 5 2 9"], "end not after its start"),
    ],
)
def test_bad_manifests_give_clear_errors(tmp_path: Path, header: str, rows: list[str], message: str) -> None:
    write_dataset(tmp_path, rows, header)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_manifest(tmp_path, required_labels=("label",), label_values={"label": (0, 1)})


def test_missing_file_error_names_case(tmp_path: Path) -> None:
    write_dataset(tmp_path, ["c1,p1,img/a.png,1", "c2,p2,img/gone.png,0"])
    with pytest.raises(DataError) as info:
        load_manifest(tmp_path)
    assert info.value.case_id == "c2" and "gone.png" in str(info.value)


def test_skip_bad_records_instead_of_raising(tmp_path: Path) -> None:
    write_dataset(tmp_path, ["c1,p1,img/a.png,1", "c2,p2,img/gone.png,0", "c3,p3,img/a.png,9"])
    manifest = load_manifest(tmp_path, label_values={"label": (0, 1)}, skip_bad=True)
    assert [c.case_id for c in manifest.cases] == ["c1"]
    assert [s.case_id for s in manifest.skipped] == ["c2", "c3"]
    assert "gone.png" in manifest.skipped[0].reason


def test_parse_box_2d_and_3d() -> None:
    assert parse_box("1 2 30 40", case_id="c", column="box") == (1, 2, 30, 40)
    assert parse_box("1 2 3 10 20 30", case_id="c", column="box") == (1, 2, 3, 10, 20, 30)
    assert parse_box("", case_id="c", column="box") is None
    with pytest.raises(DataError, match="4 \\(2D\\) or 6 \\(3D\\)"):
        parse_box("1 2 3", case_id="c", column="box")


def make_cases(n_patients: int, seed: int = 0) -> list[Case]:
    """Patients with 1-3 studies each, about 30% positive patients."""
    rng = np.random.default_rng(seed)
    cases = []
    for p in range(n_patients):
        label = int(rng.random() < 0.3)
        for s in range(int(rng.integers(1, 4))):
            cases.append(Case(f"p{p}_s{s}", f"p{p}", {"image": None}, labels={"label": label}))
    return cases


def test_split_is_by_patient_stratified_and_reproducible() -> None:
    cases = make_cases(200)
    a = split_patients(cases, (0.6, 0.2, 0.2), seed=3)
    assert a == split_patients(cases, (0.6, 0.2, 0.2), seed=3)
    assert a != split_patients(cases, (0.6, 0.2, 0.2), seed=4)
    check_patient_leakage(cases, a)
    patient_split = {}
    for case in cases:
        assert patient_split.setdefault(case.patient_id, a[case.case_id]) == a[case.case_id]
    positives = {c.patient_id for c in cases if c.labels["label"] == 1}
    pos_by_split = Counter(patient_split[p] for p in positives)
    all_by_split = Counter(patient_split.values())
    for name in ("train", "val", "test"):
        # positive share of each part within 5 points of the overall share: stratification works
        assert abs(pos_by_split[name] / all_by_split[name] - len(positives) / 200) < 0.05
    assert abs(all_by_split["train"] - 120) <= 2


def test_leakage_is_an_error_naming_the_patient() -> None:
    cases = make_cases(5)
    patient = cases[0].patient_id
    siblings = [c for c in cases if c.patient_id == patient]
    if len(siblings) < 2:
        cases.append(Case("extra", patient, {"image": None}, labels={"label": 0}))
        siblings.append(cases[-1])
    assignment = {c.case_id: "train" for c in cases}
    assignment[siblings[-1].case_id] = "test"
    with pytest.raises(DataError, match=f"patient '{patient}'"):
        check_patient_leakage(cases, assignment)


def test_manifest_split_column_is_honoured_and_checked(tmp_path: Path) -> None:
    header = "case_id,patient_id,image,label,split"
    write_dataset(tmp_path, ["c1,p1,img/a.png,1,train", "c2,p1,img/a.png,0,test"], header)
    with pytest.raises(DataError, match="patient 'p1'"):
        split_patients(load_manifest(tmp_path).cases)


def test_kfold_keeps_patients_together_and_balances_folds() -> None:
    cases = make_cases(100)
    folds = kfold_patients(cases, k=5, seed=1)
    check_patient_leakage(cases, {k: str(v) for k, v in folds.items()})
    patients_per_fold = Counter({c.patient_id: folds[c.case_id] for c in cases}.values())
    assert set(patients_per_fold) == set(range(5))
    assert max(patients_per_fold.values()) - min(patients_per_fold.values()) <= 2
