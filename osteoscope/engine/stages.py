"""Stages: a later run starts from an earlier run's weights, selected by key prefix.

``--init-from RUN[:PREFIX]`` loads the tensors of ``RUN/best.pt`` whose keys start with PREFIX (all when
omitted) into the same keys of the new model; ``RUN:PREFIX=NEW`` renames the prefix on the way, for models
that name the shared part differently. This is how a staging network starts from the encoder of a
self-supervised pretext run (e.g. ``--init-from runs/mr-ct:backbone.``).

Joining two stages is checked for leakage: the earlier run must not have trained or validated on a patient
that the new run holds out for its test (:func:`check_stage_leakage`), e.g. unlabelled MR-CT pairs of a test
patient in the pretext set. A pretext run (an image target) shows what it learned in ``RUN/translations.png``:
held-out inputs beside the predicted and the true target (:func:`draw_translations`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import default_collate

from osteoscope.data.datasets import CaseDataset
from osteoscope.data.splits import read_split_rows
from osteoscope.engine.checkpoint import load_checkpoint
from osteoscope.engine.inference import forward, to_device
from osteoscope.engine.runs import BEST_CHECKPOINT, SPLITS_FILE
from osteoscope.errors import ConfigError
from osteoscope.report.plots import plot_case_examples
from osteoscope.tasks.base import Task

TRANSLATIONS_FIGURE = "translations.png"


def parse_init_from(spec: str) -> tuple[Path, str, str]:
    """``RUN[:PREFIX[=NEW]]`` -> (run folder, prefix, new prefix)."""
    run, sep, prefix = spec.rpartition(":")
    if not sep or "/" in prefix:
        return Path(spec), "", ""
    old, _, new = prefix.partition("=")
    return Path(run), old, new if "=" in prefix else old


def load_init_weights(model: nn.Module, spec: str, model_name: str) -> str:
    """Copy the selected tensors of an earlier run into ``model``; return a line for the log saying how many.

    Raises:
        ConfigError: When no tensor matches the prefix (listing the run's prefixes), or the selected tensors
            do not fit the model (keys absent from it or of another shape: another architecture).
    """
    run, prefix, new = parse_init_from(spec)
    state = load_checkpoint(run / BEST_CHECKPOINT)["model"]
    selected = {new + key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    if not selected:
        tops = sorted({key.split(".")[0] + "." for key in state})
        raise ConfigError(
            f"--init-from {spec}: no tensor of {run / BEST_CHECKPOINT} starts with {prefix!r} "
            f"(its prefixes: {', '.join(tops[:8])})"
        )
    own = model.state_dict()
    absent = [key for key in selected if key not in own]
    mismatched = [
        f"{key} {tuple(selected[key].shape)} vs {tuple(own[key].shape)}"
        for key in selected
        if key in own and selected[key].shape != own[key].shape
    ]
    if absent or mismatched:
        detail = "; ".join(
            part
            for part in (
                f"{len(absent)} tensor(s) have no counterpart in {model_name} (e.g. {absent[0]})" if absent else "",
                f"{len(mismatched)} differ in shape (e.g. {mismatched[0]})" if mismatched else "",
            )
            if part
        )
        raise ConfigError(f"--init-from {spec}: that run is of another architecture: {detail}")
    model.load_state_dict(selected, strict=False)
    values = sum(t.numel() for t in selected.values()) / 1e6
    renamed = f" -> {new!r}" if new != prefix else ""
    where = f" (prefix {prefix!r}{renamed})" if prefix else ""
    source = run / BEST_CHECKPOINT
    return f"initialised {len(selected)} of {len(own)} tensors ({values:.2f}M values) from {source}{where}"


def check_stage_leakage(spec: str, test_patients: Iterable[str]) -> None:
    """Refuse to join an earlier stage that saw any of this run's test patients.

    Raises:
        ConfigError: Naming how many test patients the earlier run trained or validated on, and examples.
    """
    run, _, _ = parse_init_from(spec)
    seen = {row["patient_id"] for row in read_split_rows(run / SPLITS_FILE) if row["split"] in ("train", "val")}
    leaked = sorted(seen & set(test_patients))
    if leaked:
        raise ConfigError(
            f"--init-from {spec}: that run trained or validated on {len(leaked)} patient(s) of this run's test "
            f"split (e.g. {', '.join(leaked[:3])}): leakage; remove them from its data or from the test split"
        )


def draw_translations(
    model: nn.Module, dataset: CaseDataset, task: Task, model_name: str, path: Path, device: torch.device, n: int = 4
) -> Path:
    """One row per held-out case (the first ``n`` of ``dataset``): each input image, the model's image and the
    true target image (the middle slice of a volume)."""
    model.eval()
    rows = []
    with torch.no_grad():
        for index in range(min(n, len(dataset))):
            sample = dataset[index]
            batch = to_device(default_collate([sample]), device)
            predicted = forward(model, batch, model_name=model_name, task=task)["logits"][0, 0]
            channels = sample["image"].reshape(-1, *predicted.shape)
            names = [str(c).removeprefix("image_") for c in getattr(dataset.builder, "columns", ())]
            if names:  # one channel per named image; later channels are flags (e.g. present-planes)
                channels = channels[: len(names)]
            tiles = [(names[k] if names else f"input {k + 1}", _middle(c)) for k, c in enumerate(channels)]
            tiles += [("predicted", _middle(predicted)), ("true", _middle(sample["label"][0]))]
            rows.append((dataset.cases[index].case_id, tiles))
    return plot_case_examples(rows, path)


def _middle(image: torch.Tensor) -> np.ndarray:
    """A 2-D image as it is, a volume by its middle slice, as float numpy."""
    array = image.float().cpu().numpy()
    while array.ndim > 2:
        array = array[array.shape[0] // 2]
    return array
