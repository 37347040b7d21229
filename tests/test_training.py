"""End to end on a small hip phantom: train, evaluate, predict, resume after a kill, CLI errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from osteoscope.config import config_from_dict
from osteoscope.engine.evaluate import evaluate_run
from osteoscope.engine.predict import predict_images
from osteoscope.engine.runs import HISTORY_FILE, LAST_CHECKPOINT, SPLITS_FILE
from osteoscope.engine.trainer import train
from osteoscope.errors import OsteoscopeError
from osteoscope.phantoms import generate_phantom

REPO = Path(__file__).resolve().parents[1]


def tiny_config(data: Path, epochs: int, **train: object) -> dict:
    return {
        "data": {"path": str(data), "options": {"roi_size": 32}},
        "model": {"name": "ast", "preset": "tiny"},
        "train": {"epochs": epochs, "batch_size": 16, "lr": 3e-3, "patience": 0, "seed": 0, "threads": 2, **train},
    }


@pytest.fixture(scope="module")
def easy_hips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hips")
    generate_phantom("onfh-xray", out, n=160, seed=1, subtlety=0.0, image_size=(160, 208))
    return out


@pytest.fixture(scope="module")
def trained_run(easy_hips: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run") / "ast"
    return train(config_from_dict(tiny_config(easy_hips, epochs=8)), run, verbose=False)


def test_training_beats_chance_on_held_out_patients(trained_run: Path) -> None:
    result = evaluate_run(trained_run, split="test", n_boot=300)
    overall = result["overall"]
    assert overall["n"] >= 25 and overall["n_positive"] >= 8
    auc = overall["auc"]
    assert auc["estimate"] >= 0.8, auc
    assert auc["low"] <= auc["estimate"] <= auc["high"]
    written = json.loads((trained_run / "eval-test" / "metrics.json").read_text())
    assert written["overall"]["auc"]["estimate"] == pytest.approx(auc["estimate"])
    assert (trained_run / "eval-test" / "roc.png").stat().st_size > 1000
    assert "early (ARCO I-II)" in written["subsets"]
    # AsT's attention maps are saved per case and referenced from predictions.csv
    rows = list(csv.DictReader((trained_run / "eval-test" / "predictions.csv").open()))
    attention = np.load(trained_run / "eval-test" / rows[0]["map_attn_left"])
    assert len(rows) == overall["n"] and attention.shape == (1, 8, 8) and 0 < attention.min() < attention.max() < 1
    hips = written["extra"]["per hip (side scores)"]
    assert overall["n"] < hips["n"] <= 2 * overall["n"] and 0 <= hips["auc"]["estimate"] <= 1


def test_evaluate_refuses_training_cases_as_external(trained_run: Path) -> None:
    with pytest.raises(OsteoscopeError, match="used for training or validation"):
        evaluate_run(trained_run, split="all", n_boot=10)


def test_predict_with_given_boxes_matches_evaluation(trained_run: Path, easy_hips: Path) -> None:
    from osteoscope.data.manifest import load_manifest

    if not (trained_run / "eval-test" / "predictions.csv").is_file():
        evaluate_run(trained_run, split="test", n_boot=50)
    rows = {r["case_id"]: r for r in csv.DictReader((trained_run / "eval-test" / "predictions.csv").open())}
    case = next(c for c in load_manifest(easy_hips).cases if c.case_id in rows)
    boxes = (case.boxes["box_left"], case.boxes["box_right"])
    [result] = predict_images(trained_run, [case.images["image"]], boxes={"left": boxes[0], "right": boxes[1]})
    assert result["boxes"]["box_left"] == list(boxes[0])
    # the same study through evaluation's predictions.csv gives the same scores
    for key in ("probability", "p_left", "p_right"):
        assert float(rows[case.case_id][key]) == pytest.approx(result[key], abs=1e-5)


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / LAST_CHECKPOINT, map_location="cpu", weights_only=False)["model"]


def test_kill_mid_epoch_then_resume_matches_uninterrupted(easy_hips: Path, tmp_path: Path) -> None:
    """SIGKILL during epoch 2 loses at most that epoch; the resumed run ends with the uninterrupted weights."""
    config = tiny_config(easy_hips, epochs=3)
    reference = train(config_from_dict(config), tmp_path / "reference", verbose=False)
    interrupted = tmp_path / "interrupted"
    script = (
        "import sys, json; from osteoscope.config import config_from_dict; from osteoscope.engine.trainer import train;"
        f"train(config_from_dict(json.loads(sys.argv[1])), {str(interrupted)!r}, verbose=False)"
    )
    process = subprocess.Popen([sys.executable, "-c", script, json.dumps(config)], cwd=REPO)
    history = interrupted / HISTORY_FILE
    deadline = time.time() + 120
    while not (history.exists() and history.read_text().count("\n") >= 1) and time.time() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "training ended before it could be interrupted"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    epochs_done = history.read_text().count("\n")
    assert 1 <= epochs_done < 3
    train(config_from_dict(config), interrupted, resume=True, verbose=False)
    assert [json.loads(line)["epoch"] for line in history.read_text().splitlines()] == [1, 2, 3]
    assert "resumed after epoch" in (interrupted / "train.log").read_text()
    expected, got = _final_weights(reference), _final_weights(interrupted)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert (interrupted / SPLITS_FILE).read_text() == (reference / SPLITS_FILE).read_text()


def test_existing_run_is_not_overwritten(trained_run: Path, easy_hips: Path) -> None:
    with pytest.raises(OsteoscopeError, match="already holds a run"):
        train(config_from_dict(tiny_config(easy_hips, epochs=1)), trained_run, verbose=False)


def test_cli_errors_are_one_line_not_tracebacks(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text("case_id,image\nc1,a.png\n")
    cli = [sys.executable, "-c", "from osteoscope.cli import main; main()"]
    result = subprocess.run(
        [*cli, "train", "--data", str(tmp_path), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert "missing column(s): patient_id, label" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_predict_prints_json_per_image(trained_run: Path, easy_hips: Path) -> None:
    from typer.testing import CliRunner

    from osteoscope.cli import app
    from osteoscope.data.manifest import format_box, load_manifest

    cases = load_manifest(easy_hips).cases[:2]
    args = ["predict", str(trained_run), *(str(c.images["image"]) for c in cases)]
    args += ["--box", f"left={format_box(cases[0].boxes['box_left'])}"]
    args += ["--box", f"right={format_box(cases[0].boxes['box_right'])}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    predictions = json.loads(result.output)
    assert [p["inputs"]["image"] for p in predictions] == [str(c.images["image"]) for c in cases]
    assert all(0 <= p["probability"] <= 1 for p in predictions)


def test_skip_bad_lists_unreadable_cases_in_the_run_log(easy_hips: Path, tmp_path: Path) -> None:
    import csv

    from osteoscope.errors import DataError

    rows = list(csv.DictReader((easy_hips / "manifest.csv").open()))
    for row in rows:
        for column in ("image", "mask_left", "mask_right"):
            row[column] = str(easy_hips / row[column]) if row[column] else ""
    (tmp_path / "broken.png").write_text("not a png")
    rows.append({**rows[0], "case_id": "broken_case", "patient_id": "broken_patient", "image": "broken.png"})
    with (tmp_path / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    config = tiny_config(tmp_path, epochs=1)
    with pytest.raises(DataError, match=r"broken_case.*broken\.png"):
        train(config_from_dict(config), tmp_path / "strict", verbose=False)
    config["data"]["skip_bad"] = True
    run = train(config_from_dict(config), tmp_path / "lenient", verbose=False)
    log_text = (run / "train.log").read_text()
    assert "skipped broken_case" in log_text and "1 case(s) skipped" in log_text
    assert "broken_case" not in (run / SPLITS_FILE).read_text()
