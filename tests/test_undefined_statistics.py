"""Statistics that cannot be estimated are null with a reason (JSON), n/a in reports, and a warning in the log.

Finding 4 of issue 9: a one-patient test split gave ``0.000 [0.000, 0.000]`` without warning and metrics.json
held bare ``NaN``, which strict JSON parsers reject.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from osteoscope.cli import main
from osteoscope.heads import NOT_ESTIMABLE, BinaryHead, interval
from osteoscope.jsonio import dumps
from osteoscope.metrics import bootstrap_metrics, bootstrap_multiclass, bootstrap_multilabel, bootstrap_structured
from osteoscope.metrics.statistics import MIN_INTERVAL_UNITS, MIN_UNITS_PER_CLASS, paired_bootstrap_test
from osteoscope.phantoms import generate_phantom

INTERVAL_KEYS = {"estimate", "low", "high", "se", "n_boot", "n_valid", "reason"}


def strict_loads(text: str) -> Any:
    """``json.loads`` that refuses NaN and Infinity, as strict parsers (JavaScript, Go, jq) do."""

    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def intervals(result: Any) -> list[dict]:
    """Every interval dict in a nested metric result."""
    if isinstance(result, dict):
        if "estimate" in result:
            return [result]
        return [i for v in result.values() for i in intervals(v)]
    if isinstance(result, list):
        return [i for v in result for i in intervals(v)]
    return []


def floats(result: Any) -> list[float]:
    if isinstance(result, dict):
        return [f for v in result.values() for f in floats(v)]
    if isinstance(result, list | tuple):
        return [f for v in result for f in floats(v)]
    return [float(result)] if isinstance(result, float | np.floating) else []


def test_one_patient_gives_null_figures_with_reasons_never_nan() -> None:
    y, s, patient = np.array([1, 1]), np.array([0.7, 0.8]), np.array(["p1", "p1"])
    result = bootstrap_metrics(y, s, threshold=0.5, groups=patient, n_boot=200)
    assert all(set(ci) == INTERVAL_KEYS for ci in result.values())
    assert not any(math.isnan(f) for f in floats(result))
    assert result["auc"]["estimate"] is None and result["auc"]["reason"] == "only one class among the cases"
    assert result["specificity"]["estimate"] is None and result["specificity"]["reason"] == "no negative cases"
    sensitivity = result["sensitivity"]
    assert sensitivity["estimate"] == 1.0 and sensitivity["low"] is None and sensitivity["high"] is None
    assert sensitivity["reason"].startswith("too few cases: 1 patient")
    assert interval(sensitivity) == NOT_ESTIMABLE == "n/a (too few cases)"
    assert interval(result["auc"]) == "n/a (only one class among the cases)"


def test_the_interval_rule_counts_patients_and_patients_per_class() -> None:
    rng = np.random.default_rng(0)

    def auc_interval(n_pos: int, n_neg: int, copies: int = 2) -> dict:
        y = np.repeat([1] * n_pos + [0] * n_neg, copies)
        s = y * 0.3 + rng.random(y.size)
        return bootstrap_metrics(y, s, groups=np.repeat(np.arange(n_pos + n_neg), copies), n_boot=200)["auc"]

    assert MIN_INTERVAL_UNITS == 10 and MIN_UNITS_PER_CLASS == 2
    enough = auc_interval(5, 5)
    assert enough["reason"] is None and enough["low"] <= enough["estimate"] <= enough["high"]
    few = auc_interval(4, 5)  # 9 patients, 18 images: the images do not count
    assert few["low"] is None and few["reason"] == (
        "too few cases: 9 patients (an interval needs 10 patients, and 2 of each class present)"
    )
    one_positive = auc_interval(1, 12)
    assert one_positive["estimate"] is not None and one_positive["low"] is None
    assert "class 1: 1 patient(s)" in one_positive["reason"]


def test_every_kind_of_result_has_the_same_null_shape() -> None:
    three = np.array(["a", "b", "c"])
    results = {
        "multiclass": bootstrap_multiclass(np.array([0, 1, 2]), np.eye(3) * 0.4 + 0.2, groups=three, n_boot=50),
        "multilabel": bootstrap_multilabel(
            np.array([[1, 0], [0, 0], [1, 0]]), np.full((3, 2), 0.6), groups=three, n_boot=50
        ),
        "structured": bootstrap_structured(lambda t, v: {"mae": float(v.mean())}, three, np.ones(3), n_boot=50),
    }
    for kind, result in results.items():
        found = intervals(result)
        assert found and all(set(ci) == INTERVAL_KEYS for ci in found), kind
        assert all(ci["low"] is None and ci["high"] is None and ci["reason"] for ci in found), kind
        assert not any(math.isnan(f) for f in floats(result)), kind
    undefined = [ci for ci in intervals(results["multilabel"]) if ci["estimate"] is None]
    assert undefined and all(ci["reason"] == "a label has no positive cases among them" for ci in undefined)
    paired = paired_bootstrap_test(lambda t, v: float(v.mean()), three, np.ones(3), np.zeros(3), n_boot=50)
    assert paired["ci_low"] is None and paired["p_value"] is None and paired["reason"].startswith("too few cases")


def test_reports_say_na_never_a_degenerate_number() -> None:
    head = BinaryHead()
    result = head.evaluate(np.array([1.0, 1.0]), np.array([0.2, 0.9]), np.array(["p", "p"]), {"threshold": 0.5}, 100, 0)
    table = head.table([("all", result)])
    assert "n/a (too few cases)" in table and "n/a (only one class among the cases)" in table
    assert "0.000 [0.000, 0.000]" not in table and "nan" not in table.lower()


def test_json_is_strict() -> None:
    text = dumps({"a": float("nan"), "b": np.float32("inf"), "c": np.array([1.0, np.nan]), "d": np.int64(3)})
    assert strict_loads(text) == {"a": None, "b": None, "c": [1.0, None], "d": 3}
    with pytest.raises(ValueError, match="non-standard"):
        strict_loads(json.dumps({"a": float("nan")}))  # what the evaluation wrote before


def test_a_one_patient_test_split_is_reported_as_not_estimable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    generate_phantom("femur-fracture-xray", data, n=40, seed=0, subtlety=0.0, image_size=(64, 64), aff_fraction=0.4)
    with (data / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    patients = sorted({r["patient_id"] for r in rows})
    val = set(patients[1 : 1 + len(patients) // 4])
    for row in rows:
        row["split"] = "test" if row["patient_id"] == patients[0] else "val" if row["patient_id"] in val else "train"
    with (data / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    def cli(*args: str) -> str:
        monkeypatch.setattr(sys, "argv", ["osteoscope", *args])
        capsys.readouterr()
        main()
        return capsys.readouterr().err

    run = tmp_path / "run"
    options = "data.options={size: [32, 32], crop_to_box: true}"
    cli("train", "--set", "task=femur-fracture-xray", "--model", "timm:test_resnet", "--set", options,
        "--data", str(data), "--epochs", "1", "--out", str(run), "--set", "train.threads=2")  # fmt: skip
    err = cli("evaluate", str(run), "--n-boot", "100")
    assert "cannot be estimated" in err and "too few cases: 1 patient" in err
    metrics = strict_loads((run / "eval-test" / "metrics.json").read_text())
    assert metrics["n_patients"] == 1
    overall = metrics["overall"]
    for name in ("auc", "sensitivity", "specificity", "precision", "f1", "accuracy"):
        figure = overall[name]
        assert figure["low"] is None and figure["high"] is None and figure["reason"], name
    report = (run / "eval-test" / "report.md").read_text()
    assert "n/a (too few cases)" in report
    assert "[0.000, 0.000]" not in report and not re.search(r"\bnan\b", report, re.IGNORECASE)  # not "Provenance"
    for line in (run / "history.jsonl").read_text().splitlines():
        strict_loads(line)
    for line in (run / "evaluations.jsonl").read_text().splitlines():
        strict_loads(line)
