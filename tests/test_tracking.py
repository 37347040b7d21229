"""Experiment tracking (issue 9, finding 15): TensorBoard event files in every run, MLflow with --mlflow.

The event files and the MLflow file store are read back and compared with the run's own records
(history.jsonl, metrics.json, config.yaml).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from osteoscope.engine import loop
from osteoscope.engine.loop import TRACKING_FILE, Tracker, Tracking


def read_events(folder: Path) -> list[tuple[int, str, Any]]:
    """``(step, tag, value)`` of every summary value in the event files of ``folder`` (not its sub-folders):
    a float for scalars, the text for text summaries, the plugin name otherwise."""
    from tensorboardX.proto import event_pb2

    out = []
    for file in sorted(folder.glob("events.out.tfevents.*")):
        data, i = file.read_bytes(), 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i : i + 8])  # TFRecord: length, its CRC, data, its CRC
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12 : i + 12 + length])
            i += 12 + length + 4
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                if plugin == "text":
                    out.append((event.step, value.tag, value.tensor.string_val[0].decode()))
                elif plugin:
                    out.append((event.step, value.tag, plugin))
                else:
                    out.append((event.step, value.tag, value.simple_value))
    return out


def scalars(events: list[tuple[int, str, Any]], tag: str) -> dict[int, float]:
    return {step: value for step, t, value in events if t == tag}


def mlflow_client(uri: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_tensorboard_logs_params_every_epoch_and_the_test_metrics(tiny_evaluated_run: Path) -> None:
    run = tiny_evaluated_run
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    metrics = json.loads((run / "eval-test" / "metrics.json").read_text())
    events = read_events(run / "tb")
    for key in ("train_total", "val_loss", "val_auc", "lr"):
        logged = scalars(events, key)
        assert sorted(logged) == [1, 2], key
        assert all(logged[r["epoch"]] == pytest.approx(r[key], rel=1e-6, abs=1e-7) for r in history), key
    [params] = [value for _, tag, value in events if tag == "params/text_summary"]
    assert "| train.epochs | 2 |" in params and "| model.name | timm:test_resnet |" in params
    assert scalars(events, "test_auc")[0] == pytest.approx(metrics["overall"]["auc"]["estimate"], rel=1e-6)
    assert scalars(events, "test_auc_low")[0] == pytest.approx(metrics["overall"]["auc"]["low"], rel=1e-6)
    hparams = read_events(run / "tb" / "eval-test")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= {tag for _, tag, _ in hparams}


def test_mlflow_logs_params_every_epoch_and_the_test_metrics(
    tiny_evaluated_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tiny_evaluated_run
    state = json.loads((run / TRACKING_FILE).read_text())
    assert state["mlflow_uri"] == (run.parent / "mlruns").resolve().as_uri()  # the folder given to --mlflow
    client = mlflow_client(state["mlflow_uri"], monkeypatch)
    logged = client.get_run(state["mlflow_run_id"])
    assert logged.info.status == "FINISHED" and logged.info.run_name == run.name
    assert client.get_experiment(logged.info.experiment_id).name == "femur-fracture-xray"
    assert logged.data.params["train.epochs"] == "2" and logged.data.params["model.name"] == "timm:test_resnet"
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    for key in ("train_total", "val_loss", "val_auc"):
        series = {m.step: m.value for m in client.get_metric_history(state["mlflow_run_id"], key)}
        assert series == {r["epoch"]: pytest.approx(r[key]) for r in history}, key
    metrics = json.loads((run / "eval-test" / "metrics.json").read_text())
    auc = metrics["overall"]["auc"]
    assert logged.data.metrics["test_auc"] == pytest.approx(auc["estimate"])
    assert logged.data.metrics["test_auc_high"] == pytest.approx(auc["high"])
    assert logged.data.metrics["test_n"] == metrics["overall"]["n"]


def test_a_resumed_run_logs_to_the_same_mlflow_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"file://{tmp_path / 'store'}"
    first = Tracker(tmp_path / "run", uri, "exp")
    assert not first.started
    first.params({"train": {"lr": 0.01, "size": [32, 32]}})
    first.metrics({"val_auc": 0.6, "improved": True, "val_map": float("nan")}, 1)
    first.finish()
    again = Tracker(tmp_path / "run", uri, "exp")  # e.g. after --resume
    assert again.started
    again.metrics({"val_auc": 0.7}, 2)
    again.finish()
    client = mlflow_client(uri, monkeypatch)
    [logged] = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert logged.data.params == {"train.lr": "0.01", "train.size": "[32, 32]"}
    assert [(m.step, m.value) for m in client.get_metric_history(logged.info.run_id, "val_auc")] == [(1, 0.6), (2, 0.7)]
    assert set(logged.data.metrics) == {"val_auc"}  # flags and undefined values are not metrics


def test_without_a_uri_only_tensorboard_is_written(tmp_path: Path) -> None:
    tracker = Tracker(tmp_path, "")
    tracker.params({"a": 1})
    tracker.metrics({"loss": 0.5}, 3)
    tracker.finish()
    assert scalars(read_events(tmp_path / "tb"), "loss") == {3: 0.5}
    assert "mlflow_run_id" not in json.loads((tmp_path / TRACKING_FILE).read_text())


def test_only_the_main_process_tracks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "is_main_process", lambda: False)
    handler = Tracking(tmp_path, {"a": 1})
    handler.epoch_end(None, {"epoch": 1, "loss": 0.5})  # type: ignore[arg-type]
    handler.run_end(None)  # type: ignore[arg-type]
    assert not (tmp_path / "tb").exists() and not (tmp_path / TRACKING_FILE).exists()


def test_a_new_mlflow_store_on_resume_gets_the_params_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Tracker(tmp_path / "run", "", "exp").params({"lr": 0.1})  # first trained without MLflow
    later = Tracker(tmp_path / "run", str(tmp_path / "store"), "exp")
    assert not later.started
    later.params({"lr": 0.1})
    client = mlflow_client((tmp_path / "store").as_uri(), monkeypatch)
    [logged] = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert logged.data.params == {"lr": "0.1"}


def test_kfold_and_study_pass_the_mlflow_store_to_every_run() -> None:
    from osteoscope.cli import _experiment
    from osteoscope.engine.study import parse_study, run_config

    assert _experiment(None, None, None, None, None, None, None, False, mlflow="file:///s").train.mlflow == "file:///s"
    values = {
        "task": "femur-fracture-xray",
        "data": {"path": "data"},
        "train": {"epochs": 1, "mlflow": "file:///s"},  # what `osteoscope study --mlflow` sets
        "tuning": {"lr": [1e-3, 3e-3]},
        "models": {"a": {"model": {"name": "timm:test_resnet"}}, "b": {"model": {"name": "vit"}}},
    }
    study = parse_study(values)
    assert {run_config(study, m, p).train.mlflow for m in study.models for p in study.grid()} == {"file:///s"}
