"""Experiment configuration: dataclasses that load from and save to YAML, with dotted overrides.

Every run saves its final configuration as ``config.yaml`` in its run directory, so it can be re-run,
resumed and evaluated without guessing what was used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from osteoscope.errors import ConfigError

T = TypeVar("T")


@dataclass
class DataConfig:
    """Where the data is, how patients are split, and the task's own data options.

    Attributes:
        path: Dataset folder holding manifest.csv.
        options: The task's sample-builder options (ROI size, window, views, ...); each task lists its own
            (``osteoscope tasks --options``) and an unknown key is an error naming the known ones.
        split_fractions: Train, validation and test shares of patients.
        split_seed: Seed of the patient-level split.
        skip_bad: Skip unreadable cases (listed in the run log) instead of stopping.
        num_workers: DataLoader worker processes (0 = load in the main process).
        cache_mb: Memory for decoded, cropped and resampled cases kept between epochs (0 = off); each
            DataLoader worker process holds its own copy.
    """

    path: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    split_seed: int = 0
    skip_bad: bool = False
    num_workers: int = 0
    cache_mb: float = 2048.0


@dataclass
class ModelConfig:
    """Which model to build and its size.

    Attributes:
        name: A registered name (``osteoscope models``), ``timm:<name>`` or ``monai:<name>``; empty means
            the task's default model.
        preset: Size preset of models that have them (``tiny``, ``small``, ``base``).
        options: Further keyword arguments of the model factory (e.g. ``pretrained_path``).
    """

    name: str = ""
    preset: str = "small"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    """The task's loss options (e.g. AsT's difference-loss weight); each task lists its own."""

    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Optimisation: AdamW with linear warm-up then cosine (or step) decay, early stopping on the task's monitor.

    The monitor follows the task's head: validation AUC (binary), macro one-vs-rest AUROC (multi-class),
    mAP (multi-label), or the validation loss (pretext stages).

    Attributes:
        epochs: Maximum number of epochs.
        batch_size: Cases per step.
        lr: Peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_epochs: Epochs of linear warm-up.
        schedule: ``cosine``, ``constant`` or ``step`` after warm-up.
        step_epochs: With ``step``: the learning rate is multiplied by ``step_gamma`` every this many epochs.
        step_gamma: With ``step``: the factor (SRANet: 0.1 every 50 epochs).
        patience: Stop after this many epochs without a better monitored value (0 = never stop early).
        seed: Seed of weights, shuffling and augmentation.
        init_from: ``RUN[:PREFIX]`` or ``RUN:PREFIX=NEW``: start from the best weights of an earlier run,
            the tensors whose keys start with PREFIX (all when omitted), renamed to NEW when given.
        device: ``auto`` (CUDA if present, else CPU), ``cpu`` or ``cuda``.
        amp: Mixed precision on CUDA (ignored on CPU).
        channels_last: Channels-last memory format on CUDA (ignored on CPU).
        threads: CPU threads for torch (0 = torch's default).
        mlflow: MLflow tracking URI (a server, ``file:///path`` or a folder) to log params and metrics to, as
            well as the TensorBoard files every run writes to ``RUN/tb/``; empty for none.
    """

    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    schedule: str = "cosine"
    step_epochs: int = 50
    step_gamma: float = 0.1
    patience: int = 8
    seed: int = 0
    init_from: str = ""
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    threads: int = 0
    mlflow: str = ""


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
            if not isinstance(value, list | tuple):
                raise ConfigError(f"{where}.{name} must be a list like {list(default)}, got {value!r}")
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


def parse_options(cls: type[T], values: dict[str, Any], where: str) -> T:
    """Fill an options dataclass (a task's data or loss options) with the same strict checks as the config.

    Args:
        cls: The dataclass; every field needs a default.
        values: The options given in the config (``data.options``, ``loss.options``).
        where: Dotted name of the section, used in error messages.
    """
    return _build(cls, values, where)


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
    values = read_yaml(path, "config") if path is not None else {}
    return config_from_dict(apply_overrides(values, overrides))


def read_yaml(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML mapping from a file; a missing file or invalid YAML is a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, got {type(values).__name__}")
    return values


def save_config(config: ExperimentConfig, path: str | Path) -> Path:
    """Write a config as YAML."""
    path = Path(path)
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return path
