"""Calling a model by the contract, and running it over a dataset.

The contract: a model's ``forward`` takes keyword inputs named like the sample keys (``image``, ``mask``,
``left``, ``present`` ...) and returns a dict with ``logits`` shaped by the task's head, optional ``maps``
(name -> (B, 1, *spatial)) that evaluation saves per case, optional ``aux`` that only the loss reads, and
any extra outputs the task names (e.g. AsT's ``side_logits``). Targets (keys ending in ``label``) and the
dataset's ``index`` are never passed to a model.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from osteoscope.data.datasets import CaseDataset
from osteoscope.errors import ConfigError
from osteoscope.tasks import Task


def is_target(key: str) -> bool:
    """Sample keys that are targets or bookkeeping, never model inputs."""
    return key == "index" or key.endswith("label")


def input_names(model: nn.Module) -> tuple[list[str], list[str], bool]:
    """``(accepted, required, takes_any)`` keyword inputs of a model's forward."""
    params = [p for p in inspect.signature(model.forward).parameters.values() if p.name != "self"]
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted = [p.name for p in params if p.kind in kinds]
    required = [p.name for p in params if p.kind in kinds and p.default is inspect.Parameter.empty]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    return accepted, required, takes_any


def model_inputs(model: nn.Module, batch: Mapping[str, Any], *, model_name: str, task: Task) -> dict[str, Any]:
    """The batch entries the model takes, by name; a missing required input is a one-line error."""
    accepted, required, takes_any = input_names(model)
    missing = [name for name in required if name not in batch]
    if missing:
        given = ", ".join(k for k in batch if not is_target(k))
        raise ConfigError(
            f"model {model_name} needs the input(s) {', '.join(missing)}, which {task} does not give "
            f"(its samples hold: {given})"
        )
    return {k: v for k, v in batch.items() if not is_target(k) and (takes_any or k in accepted)}


def forward(model: nn.Module, batch: Mapping[str, Any], *, model_name: str, task: Task) -> dict[str, Any]:
    """Call the model on a batch and check its outputs against the task's head (``logits`` reshaped)."""
    outputs = model(**model_inputs(model, batch, model_name=model_name, task=task))
    if not isinstance(outputs, Mapping) or "logits" not in outputs:
        raise ConfigError(f"model {model_name} must return a dict with 'logits', got {type(outputs).__name__}")
    return {**outputs, "logits": task.head.logits(outputs["logits"], model_name, task.name)}


def to_device(batch: Mapping[str, Any], device: torch.device, channels_last: bool = False) -> dict[str, Any]:
    """Move the tensors of a batch to ``device`` (4-D images channels-last when asked)."""
    moved = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if channels_last and value.ndim == 4 and value.is_floating_point():
                value = value.contiguous(memory_format=torch.channels_last)
        moved[key] = value
    return moved


@dataclass
class Inference:
    """A model's outputs over a dataset, one row per case.

    Attributes:
        targets: What the head keeps of the targets (labels; zeros for an image target).
        values: Per-case values of the head (probabilities, or errors of a pretext stage).
        extras: Extra outputs the task names, through a sigmoid (e.g. per-side scores).
        maps: Map name -> saved file per case (when a maps folder was given).
        loss: Mean loss per case over the dataset (when a loss was given).
    """

    targets: np.ndarray
    values: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    maps: dict[str, list[str]] = field(default_factory=dict)
    loss: float = float("nan")


@torch.no_grad()
def infer(
    model: nn.Module,
    dataset: CaseDataset,
    task: Task,
    *,
    model_name: str,
    batch_size: int = 64,
    device: torch.device | None = None,
    loss_fn: nn.Module | None = None,
    maps_dir: Path | None = None,
) -> Inference:
    """Run a model over a dataset in eval mode and keep what evaluation needs.

    Args:
        model: The model (moved to ``device``).
        dataset: The cases; their samples' ``label`` are the targets.
        task: The task, whose head turns logits into values and whose extra outputs are kept.
        model_name: Named in errors.
        batch_size: Cases per forward pass.
        device: Where to run (CPU by default).
        loss_fn: When given, the mean loss over the dataset is computed too (the validation loss).
        maps_dir: When given, every ``maps`` output is saved there per case as ``<case>_<name>.npy`` (float16).
    """
    device = device or torch.device("cpu")
    model.to(device).eval()
    head = task.head
    targets, values, losses = [], [], []
    extras: dict[str, list[torch.Tensor]] = {key: [] for key in task.extra_outputs}
    maps: dict[str, list[str]] = {}
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        batch = to_device(batch, device)
        outputs = forward(model, batch, model_name=model_name, task=task)
        target = batch["label"]
        values.append(head.case_values(outputs["logits"], target).cpu())
        targets.append(head.case_targets(target).cpu())
        for key in extras:
            if key in outputs:
                extras[key].append(torch.sigmoid(outputs[key].float()).cpu())
        if loss_fn is not None:
            loss, _ = loss_fn(outputs, batch)
            losses.append(float(loss) * len(target))
        if maps_dir is not None:
            for name, tensor in outputs.get("maps", {}).items():
                maps.setdefault(name, []).extend(
                    _save_maps(maps_dir, [dataset.cases[int(i)].case_id for i in batch["index"]], name, tensor)
                )
    return Inference(
        targets=torch.cat(targets).numpy(),
        values=torch.cat(values).numpy(),
        extras={k: torch.cat(v).numpy() for k, v in extras.items() if v},
        maps=maps,
        loss=sum(losses) / len(dataset) if losses else float("nan"),
    )


def _save_maps(folder: Path, case_ids: list[str], name: str, maps: torch.Tensor) -> list[str]:
    """Save one map per case as float16 .npy; return the file names (relative to ``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for case_id, array in zip(case_ids, maps.float().cpu().numpy(), strict=True):
        file = f"{case_id}_{name}.npy".replace("/", "_")
        np.save(folder / file, array.astype(np.float16))
        names.append(file)
    return names
