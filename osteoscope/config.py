"""Experiment configuration: dataclasses that load from and save to YAML, with dotted overrides.

Every run saves its final configuration as ``config.yaml`` in its run directory, so it can be re-run,
resumed and evaluated without guessing what was used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from osteoscope.errors import ConfigError


@dataclass
class DataConfig:
    """Where the data is and how it becomes tensors.

    Attributes:
        path: Dataset folder holding manifest.csv.
        roi_size: Side of each femoral-head ROI after resizing, in pixels.
        mirror_right: Mirror the patient's right ROI so both heads face the same way.
        box_jitter: Training-time random shift/scale of the ROI boxes, as a fraction of the box size.
        split_fractions: Train, validation and test shares of patients.
        split_seed: Seed of the patient-level split.
        skip_bad: Skip unreadable cases (listed in the run log) instead of stopping.
        num_workers: DataLoader worker processes (0 = load in the main process).
        cache: Keep each case's decoded head regions in memory after the first read (about 0.3 MB a case).
    """

    path: str = ""
    roi_size: int = 64
    mirror_right: bool = True
    box_jitter: float = 0.05
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    split_seed: int = 0
    skip_bad: bool = False
    num_workers: int = 0
    cache: bool = True


@dataclass
class ModelConfig:
    """Which registered model to build (see ``osteoscope.models.list_models``) and its size."""

    name: str = "ast"
    preset: str = "small"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    """Weights of the bilateral loss: difference loss (AsT Eq. 3), its margin m, and the per-side term."""

    diff_weight: float = 0.1
    margin: float = 1.0
    side_weight: float = 0.5


@dataclass
class TrainConfig:
    """Optimisation: AdamW with linear warm-up then cosine decay, early stopping on validation AUC.

    Attributes:
        epochs: Maximum number of epochs.
        batch_size: Cases per step.
        lr: Peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_epochs: Epochs of linear warm-up.
        schedule: ``cosine`` or ``constant`` after warm-up.
        patience: Stop after this many epochs without a better validation AUC (0 = never stop early).
        seed: Seed of weights, shuffling and augmentation.
        device: ``auto`` (CUDA if present, else CPU), ``cpu`` or ``cuda``.
        amp: Mixed precision on CUDA (ignored on CPU).
        channels_last: Channels-last memory format on CUDA (ignored on CPU).
        threads: CPU threads for torch (0 = torch's default).
    """

    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    schedule: str = "cosine"
    patience: int = 8
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    threads: int = 0


@dataclass
class ExperimentConfig:
    """A whole experiment: task, data, model, loss and training settings."""

    task: str = "onfh-xray"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass ``cls`` from a dict, rejecting unknown keys with their dotted name."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        dotted = ", ".join(f"{where}.{k}" if where else k for k in unknown)
        raise ConfigError(f"unknown config key(s): {dotted} (known: {', '.join(fields)})")
    kwargs = {}
    for name, value in values.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}" if where else name)
        elif isinstance(default, tuple):
            kwargs[name] = tuple(value)
        elif isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{where}.{name} must be true or false, got {value!r}")
        elif isinstance(default, float) and isinstance(value, int | float) and not isinstance(value, bool):
            kwargs[name] = float(value)
        elif default is not None and not isinstance(default, dict) and type(value) is not type(default):
            raise ConfigError(f"{where}.{name} must be a {type(default).__name__}, got {value!r}")
        else:
            kwargs[name] = value
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any]) -> ExperimentConfig:
    """Build a validated :class:`ExperimentConfig` from plain data."""
    return _build(ExperimentConfig, values, "")


def config_to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """Plain-data form of a config (tuples as lists, ready for YAML)."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def apply_overrides(values: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a config dict, in place."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like section.key=value")
        node = values
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(text)
    return values


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Load a YAML config (defaults when ``path`` is None) and apply overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from None
    return config_from_dict(apply_overrides(values, overrides))


def save_config(config: ExperimentConfig, path: str | Path) -> Path:
    """Write a config as YAML."""
    path = Path(path)
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return path
