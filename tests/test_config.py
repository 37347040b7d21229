"""Experiment configs: YAML round trip, overrides, strict task options, and the shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from osteoscope.config import load_config, save_config
from osteoscope.engine.runs import build_run_model, task_of
from osteoscope.engine.study import load_study
from osteoscope.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_yaml_round_trip_with_overrides(tmp_path: Path) -> None:
    config = load_config(
        CONFIGS / "onfh-xray-ast.yaml",
        ["train.lr=0.01", "model.options={depth: 1}", "data.split_seed=4", "data.options.roi_size=32"],
    )
    assert config.train.lr == 0.01 and config.model.options == {"depth": 1} and config.data.split_seed == 4
    assert config.data.split_fractions == (0.6, 0.2, 0.2) and config.data.options["roi_size"] == 32
    saved = save_config(config, tmp_path / "config.yaml")
    assert load_config(saved) == config


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_build_their_task_and_model(path: Path) -> None:
    config = load_config(path)
    task = task_of(config)
    model = build_run_model(config, task)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert path.stem.startswith(task.name.split("-")[0])


def test_shipped_study_parses() -> None:
    study = load_study(CONFIGS / "studies" / "femur-cnn-vs-vit.yaml")
    assert list(study.models) == ["resnet18-scratch", "resnet18-imagenet", "vit-scratch", "vit-imagenet"]
    assert len(study.grid()) == 3


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrate=0.1", "unknown config key.*train.lrate"),
        ("train.epochs=ten", "train.epochs must be a int"),
        ("train.amp=3", "train.amp must be true or false"),
        ("nonsense", "section.key=value"),
    ],
)
def test_bad_overrides_are_named(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize(
    ("task", "options", "message"),
    [
        ("onfh-xray", {"roi_sise": 32}, r"unknown config key\(s\): data.options.roi_sise \(known: roi_size,"),
        ("avnfh-ct", {"target": "grade"}, "target must be necrosis or stage"),
        ("femur-fracture-xray", {"patient_score": "median"}, "patient_score must be mean or max"),
        ("onfh-mr-staging", {"size": 64}, "data.options.size must be a list"),
    ],
)
def test_unknown_or_bad_task_options_are_errors(task: str, options: dict, message: str) -> None:
    config = load_config(None, [f"task={task}", f"data.options={options}"])
    with pytest.raises(ConfigError, match=message):
        task_of(config)


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("no/such.yaml")


def test_cli_lists_tasks_with_their_options_and_the_model_families() -> None:
    from typer.testing import CliRunner

    from osteoscope.cli import app

    tasks = CliRunner().invoke(app, ["tasks", "--options"])
    assert tasks.exit_code == 0, tasks.output
    for line in (
        "avnfh-ct:",
        "data.options.target: 'necrosis'",
        "loss.options.diff_weight: 0.1",
        "femur-fracture-xray:",
    ):
        assert line in tasks.output
    models = CliRunner().invoke(app, ["models"])
    assert models.exit_code == 0, models.output
    lines = models.output.splitlines()
    ast = next(line for line in lines if line.split()[:2] == ["ast", "onfh-xray"])
    assert "tiny 0.0156M" in ast and "small 0.0902M" in ast and "base 11M" in ast  # docs/models.md: small 0.09 M
    assert any(line.split()[:2] == ["vit", "onfh-xray"] and "base 85.3M" in line for line in lines)
    timm = next(line for line in lines if line.strip().startswith("timm:<any timm model>:"))
    assert "femur-fracture-xray (timm:resnet18)" in timm and "--preset" in timm
    assert any(line.split()[:2] == ["sranet", "avnfh-ct"] and "base 3.38M" in line for line in lines)
