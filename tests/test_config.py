"""Experiment configs: YAML round trip, overrides and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from osteoscope.config import load_config, save_config
from osteoscope.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_yaml_round_trip_with_overrides(tmp_path: Path) -> None:
    config = load_config(
        CONFIGS / "onfh-xray-ast.yaml", ["train.lr=0.01", "model.options={depth: 1}", "data.split_seed=4"]
    )
    assert config.train.lr == 0.01 and config.model.options == {"depth": 1} and config.data.split_seed == 4
    assert config.data.split_fractions == (0.6, 0.2, 0.2)
    saved = save_config(config, tmp_path / "config.yaml")
    assert load_config(saved) == config


@pytest.mark.parametrize("name", ["ast", "vit", "swin"])
def test_shipped_configs_load(name: str) -> None:
    assert load_config(CONFIGS / f"onfh-xray-{name}.yaml").model.name == name


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


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("no/such.yaml")
