"""A run folder is self-contained and relocatable; its checkpoint carries what predict needs (issue 9,
findings 2, 3 and 18): trained in one working directory, evaluated and predicted from another and after
moving; the operating point chosen on validation is stored and used by external evaluation and predict;
two fresh processes train identical weights."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from osteoscope.cli import app
from osteoscope.config import config_from_dict, load_config
from osteoscope.data.datasets import CaseDataset
from osteoscope.data.manifest import load_manifest, manifest_path
from osteoscope.demo import DEMO_THREADS, demo_study
from osteoscope.engine.checkpoint import load_checkpoint, save_atomic
from osteoscope.engine.evaluate import evaluate_run
from osteoscope.engine.inference import infer
from osteoscope.engine.predict import predict_images
from osteoscope.engine.runs import BEST_CHECKPOINT, CONFIG_FILE, load_run, load_task_manifest
from osteoscope.engine.trainer import train
from osteoscope.errors import DataError
from osteoscope.heads import MulticlassHead, MultilabelHead
from osteoscope.metrics import youden_threshold
from osteoscope.phantoms import generate_phantom

REPO = Path(__file__).resolve().parents[1]


def tiny(data: str, epochs: int = 2) -> dict:
    return {
        "data": {"path": data, "options": {"roi_size": 32}},
        "model": {"name": "ast", "preset": "tiny"},
        "train": {"epochs": epochs, "batch_size": 16, "lr": 3e-3, "patience": 0, "seed": 0, "threads": 2},
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory holding a small hip phantom ``hips/`` and a run ``runs/ast`` trained from it with
    the data given relative to that directory."""
    root = tmp_path_factory.mktemp("work")
    generate_phantom("onfh-xray", root / "hips", n=60, seed=1, subtlety=0.0, image_size=(160, 208))
    here = Path.cwd()
    os.chdir(root)
    try:
        train(config_from_dict(tiny("hips")), Path("runs/ast"), verbose=False)
    finally:
        os.chdir(here)
    return root


def _case(data: Path):
    return load_manifest(data).cases[0]


def _predict(run: Path, data: Path) -> dict:
    case = _case(data)
    boxes = {"left": case.boxes["box_left"], "right": case.boxes["box_right"]}
    [result] = predict_images(run, [case.images["image"]], boxes=boxes)
    return result


def test_config_records_the_absolute_data_path(workdir: Path) -> None:
    config = load_config(workdir / "runs/ast" / CONFIG_FILE)
    assert Path(config.data.path) == (workdir / "hips").resolve()
    record = load_checkpoint(workdir / "runs/ast" / BEST_CHECKPOINT)["data"]
    assert record["relative_to_run"] == os.path.join("..", "..", "hips")


def test_evaluate_and_predict_from_another_working_directory(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run = workdir / "runs/ast"
    result = CliRunner().invoke(app, ["evaluate", str(run), "--n-boot", "20", "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["data"] == str((workdir / "hips").resolve())
    assert 0 <= _predict(run, workdir / "hips")["probability"] <= 1


def test_a_moved_run_finds_its_data(workdir: Path, tmp_path: Path) -> None:
    """The whole folder moved (data beside the run): found relative to the run. Only the run moved: found at
    the absolute path. The data gone: a clear error for evaluate, while predict needs no data."""
    moved = tmp_path / "moved"
    shutil.copytree(workdir, moved)
    shutil.move(str(workdir / "hips"), str(tmp_path / "hips-original"))
    try:
        metrics = evaluate_run(moved / "runs/ast", n_boot=20, out_dir=tmp_path / "e1")
        assert metrics["data"] == str((moved / "hips").resolve())
        with pytest.raises(DataError, match=r"not found .*relative to the run folder.*--data"):
            evaluate_run(workdir / "runs/ast", n_boot=20, out_dir=tmp_path / "e2")
        assert "probability" in _predict(workdir / "runs/ast", moved / "hips")  # predict needs no dataset
    finally:
        shutil.move(str(tmp_path / "hips-original"), str(workdir / "hips"))
    lonely = tmp_path / "lonely-run"
    shutil.copytree(workdir / "runs/ast", lonely)
    assert evaluate_run(lonely, n_boot=20, out_dir=tmp_path / "e3")["data"] == str((workdir / "hips").resolve())


def test_missing_dataset_messages_say_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"no dataset folder or manifest file .*working directory") as error:
        manifest_path("nowhere")
    assert "expected a folder" not in str(error.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no manifest\.csv"):
        manifest_path(tmp_path / "empty")


def test_checkpoint_carries_what_predict_needs(workdir: Path) -> None:
    state = load_checkpoint(workdir / "runs/ast" / BEST_CHECKPOINT)
    assert state["task"]["name"] == "onfh-xray" and state["task"]["options"]["roi_size"] == 32
    assert state["head"] == {"kind": "binary", "names": ["no ONFH", "ONFH"]}
    assert state["preprocessing"]["builder"] == "BilateralRois" and state["preprocessing"]["settings"]["size"] == 32
    assert "robust_normalise" in state["preprocessing"]["intensity"]
    assert set(state["versions"]) == {"osteoscope", "torch", "timm", "monai", "numpy"}
    assert state["versions"]["torch"] == torch.__version__.split("+")[0]
    manifest = (workdir / "hips" / "manifest.csv").read_bytes()
    assert state["data"]["manifest_sha256"] == hashlib.sha256(manifest).hexdigest()
    assert state["input_profile"]["columns"]["image"]["features"]["size_0"]["max"] == 160
    # the stored threshold is Youden's J on the validation split with the best weights
    run = load_run(workdir / "runs/ast")
    val = [
        c
        for c in load_task_manifest(run.task, workdir / "hips", skip_bad=False).cases
        if run.splits[c.case_id] == "val"
    ]
    pred = infer(run.model, CaseDataset(val, run.task.builder(False, None)), run.task, model_name=run.model_name)
    assert state["operating_point"] == {
        "threshold": youden_threshold(pred.targets.astype(int), pred.values),
        "source": "Youden's J on validation",
    }


def test_external_evaluation_uses_the_stored_threshold(workdir: Path, tmp_path: Path) -> None:
    generate_phantom("onfh-xray", tmp_path / "external", n=24, seed=9, subtlety=0.0, image_size=(160, 208))
    manifest = tmp_path / "external" / "manifest.csv"
    renamed = re.sub(r"^(p\d+_s\d+),(p\d+),", r"ext-\1,ext-\2,", manifest.read_text(), flags=re.M)
    manifest.write_text(renamed)  # other patients, so other case and patient ids
    stored = load_checkpoint(workdir / "runs/ast" / BEST_CHECKPOINT)["operating_point"]
    metrics = evaluate_run(workdir / "runs/ast", tmp_path / "external", split="all", n_boot=20, out_dir=tmp_path / "x")
    assert metrics["operating_point"] == stored and metrics["overall"]["threshold"] == stored["threshold"]
    alternatives = metrics["alternative_operating_points"]
    assert alternatives["fixed 0.5"]["overall"]["threshold"] == 0.5
    assert "optimistic" in alternatives["Youden on these cases"]["operating_point"]["source"]
    assert all("comparison only" in a["note"] for a in alternatives.values())


def test_predict_prints_the_decision_at_the_stored_operating_point(workdir: Path) -> None:
    result = _predict(workdir / "runs/ast", workdir / "hips")
    threshold = result["operating_point"]["threshold"]
    assert result["operating_point"]["source"] == "Youden's J on validation"
    assert result["decision"] == ("ONFH" if result["probability"] >= threshold else "no ONFH")


def test_multiclass_and_multilabel_decisions() -> None:
    import numpy as np

    assert MulticlassHead(("I", "II", "III")).decide(np.array([0.2, 0.5, 0.3]), {"source": "argmax"}) == "II"
    head = MultilabelHead(("a", "b", "c"))
    assert head.decide(np.array([0.7, 0.2, 0.5]), head.operating_point(None, None)) == ["a", "c"]


def test_an_older_run_without_stored_fields_falls_back_as_documented(workdir: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(workdir / "runs/ast", old)
    state = load_checkpoint(old / BEST_CHECKPOINT)
    stored = state["operating_point"]
    save_atomic(
        {k: v for k, v in state.items() if k in ("model", "epoch", "monitor", "value", "config")}, old / BEST_CHECKPOINT
    )
    result = _predict(old, workdir / "hips")
    assert "not validated" in result["operating_point"]["source"] and result["operating_point"]["threshold"] == 0.5
    assert "only DICOM tags" in result["ood"]["note"]
    metrics = evaluate_run(old, n_boot=20, out_dir=tmp_path / "e")  # chosen again on the run's validation split
    assert metrics["operating_point"] == stored


def test_two_fresh_processes_train_identical_weights(workdir: Path, tmp_path: Path) -> None:
    """Finding 18: other hash seeds and working directories give the same bits (the demo pins its threads)."""
    assert demo_study(Path("d"), 1)["train"]["threads"] == DEMO_THREADS
    script = (
        "import sys, json, hashlib, torch; from osteoscope.config import config_from_dict;"
        "from osteoscope.engine.trainer import train;"
        "run = train(config_from_dict(json.loads(sys.argv[1])), sys.argv[2], verbose=False);"
        "state = torch.load(run / 'best.pt', weights_only=False);"
        "h = hashlib.sha256(); [h.update(state['model'][k].numpy().tobytes()) for k in sorted(state['model'])];"
        "print(h.hexdigest(), state['operating_point']['threshold'])"
    )
    config = json.dumps(tiny(str(workdir / "hips"), epochs=1))
    outputs = []
    for seed, cwd in (("1", workdir), ("2", tmp_path)):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}
        done = subprocess.run(
            [sys.executable, "-c", script, config, str(tmp_path / f"run-{seed}")],
            cwd=cwd, env=env, capture_output=True, text=True, check=True, timeout=300,
        )  # fmt: skip
        outputs.append(done.stdout.split())
    assert outputs[0] == outputs[1]
