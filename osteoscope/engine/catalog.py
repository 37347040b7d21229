"""What ``osteoscope models`` shows: each registered model with the tasks it serves, its presets and its size.

A model serves a task when it builds with the task's default arguments (its ``model_kwargs`` and head) and
its ``forward`` finds its inputs among the task's sample keys, the same check a run makes before reading
data. Sizes are counted on PyTorch's meta device (no memory, no weight initialisation), so even the ``base``
presets count in well under a second (a factory therefore must not read tensor values while it builds).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from osteoscope.config import ExperimentConfig, ModelConfig
from osteoscope.engine.preflight import build_checked_model
from osteoscope.errors import ConfigError
from osteoscope.models.registry import list_models, model_presets, prefix_descriptions
from osteoscope.tasks import Task, task_classes


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: per task it serves, the parameter count at each preset."""

    name: str
    sizes: dict[str, dict[str, int]]  # task -> preset -> parameters


def _build(name: str, preset: str, task: Task) -> nn.Module:
    """The model as a run of ``task`` would build it, on the meta device (shapes only, no memory)."""
    config = ExperimentConfig(task=task.name, model=ModelConfig(name=name, preset=preset))
    with torch.device("meta"):
        return build_checked_model(config, task)


def parameter_count(model: nn.Module) -> int:
    """The number of parameters of a model."""
    return sum(p.numel() for p in model.parameters())


def model_entries() -> list[ModelEntry]:
    """Every registered model with the tasks it serves and its parameter count per preset."""
    tasks = [cls() for cls in task_classes().values()]
    entries = []
    for name in list_models():
        presets = model_presets(name) or ("",)
        sizes: dict[str, dict[str, int]] = {}
        for task in tasks:
            try:
                first = _build(name, presets[0], task)
            except ConfigError:  # cannot be built for this task, or lacks an input the task gives
                continue
            sizes[task.name] = {presets[0]: parameter_count(first)}
            sizes[task.name].update({p: parameter_count(_build(name, p, task)) for p in presets[1:]})
        entries.append(ModelEntry(name, sizes))
    return entries


def _millions(count: int) -> str:
    return f"{count / 1e6:.3g}M"


def models_text() -> str:
    """The text of ``osteoscope models``: registered models, then the generic families and their defaults."""
    lines = ["Registered models (parameters per preset, built with each task's default options):"]
    for entry in model_entries():
        if not entry.sizes:
            lines.append(f"  {entry.name}: serves no task with its default options")
        for task, sizes in entry.sizes.items():
            listed = ", ".join(f"{preset} {_millions(n)}" if preset else _millions(n) for preset, n in sizes.items())
            lines.append(f"  {entry.name:<6} {task:<22} {listed}")
    lines.append("Generic families (any name after the prefix; --preset does not apply):")
    defaults = {cls.name: cls.default_model for cls in task_classes().values()}
    for family, description in prefix_descriptions().items():
        prefix = family.split(":", 1)[0] + ":"
        served = ", ".join(f"{task} ({model})" for task, model in defaults.items() if model.startswith(prefix))
        lines.append(f"  {family}: {description}" + (f"; default model of {served}" if served else ""))
    return "\n".join(lines)
