"""Fixtures shared by test modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from osteoscope.cli import app
from osteoscope.phantoms import generate_phantom


@pytest.fixture(scope="session")
def tiny_evaluated_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny femur run on phantom data, through the CLI: trained 2 epochs with ``--mlflow`` to a local store
    (``RUN/../mlruns``), then evaluated on its test patients. Serves the report and tracking tests."""
    root = tmp_path_factory.mktemp("tiny-run")
    generate_phantom("femur-fracture-xray", root / "data", n=120, seed=0, subtlety=0.0, image_size=(96, 64))
    config = {
        "task": "femur-fracture-xray",
        "data": {"path": str(root / "data"), "options": {"size": [32, 32], "crop_to_box": True}},
        "model": {"name": "timm:test_resnet"},
        "train": {"epochs": 2, "batch_size": 16, "threads": 2, "patience": 0},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    run = root / "run"
    runner = CliRunner()
    trained = runner.invoke(
        app, ["train", "--config", str(root / "config.yaml"), "--out", str(run), "--mlflow", str(root / "mlruns")]
    )
    assert trained.exit_code == 0, trained.output
    evaluated = runner.invoke(app, ["evaluate", str(run), "--n-boot", "100"])
    assert evaluated.exit_code == 0, evaluated.output
    return run
