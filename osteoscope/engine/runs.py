"""A run directory: its files, its log, the data it was trained on, and its model loaded back."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.logging import RichHandler
from torch import nn
from torch.utils.data import DataLoader

from osteoscope.config import ExperimentConfig, load_config
from osteoscope.data.datasets import CaseDataset, SampleBuilder
from osteoscope.data.manifest import Case, Manifest, SkippedCase, load_manifest
from osteoscope.engine.checkpoint import load_checkpoint
from osteoscope.errors import DataError, OsteoscopeError
from osteoscope.models import create_model
from osteoscope.tasks import Task, get_task

CONFIG_FILE = "config.yaml"
SPLITS_FILE = "splits.csv"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
LOG_FILE = "train.log"
HISTORY_FILE = "history.jsonl"

log = logging.getLogger("osteoscope")


def make_console(*, stderr: bool = False) -> Console:
    """A rich console that does not wrap tables and logs at 80 columns when writing to a file or CI."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=160)


def setup_logging(log_file: Path | None = None, *, verbose: bool = True) -> None:
    """Log to the terminal (rich) and, when given, to a plain-text file a person can read later."""
    log.setLevel(logging.INFO)
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    if verbose:
        handler = RichHandler(console=make_console(stderr=True), show_path=False, markup=False, rich_tracebacks=False)
        log.addHandler(handler)
    if log_file is not None:
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(file_handler)
    log.propagate = False


def select_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise OsteoscopeError("device cuda was asked for but no CUDA GPU is available")
    return torch.device(name)


def check_cases(
    cases: Sequence[Case], builder: SampleBuilder, *, skip_bad: bool, progress: Callable[[int], None] | None = None
) -> tuple[list[Case], list[SkippedCase]]:
    """Build every case once so bad files fail now, with their case named, not mid-training.

    With ``skip_bad`` bad cases are returned separately instead of raising.
    """
    good, bad = [], []
    for i, case in enumerate(cases):
        try:
            builder(case, None)
            good.append(case)
        except DataError as error:
            error = error if error.case_id else error.with_case(case.case_id)
            if not skip_bad:
                raise error from None
            bad.append(SkippedCase(case.case_id, str(error)))
        if progress is not None:
            progress(i + 1)
    return good, bad


def load_task_manifest(task: Task, path: str | Path, *, skip_bad: bool) -> Manifest:
    """Load a manifest with the label columns and values the task requires."""
    return load_manifest(path, required_labels=task.label_columns, label_values=task.label_values, skip_bad=skip_bad)


def report_skipped(skipped: Sequence[SkippedCase]) -> None:
    """Log each skipped case and the count, so nothing is dropped silently."""
    for item in skipped:
        log.warning("skipped %s: %s", item.case_id, item.reason)
    if skipped:
        log.warning("%d case(s) skipped (--skip-bad)", len(skipped))


def make_loader(
    dataset: CaseDataset, batch_size: int, *, shuffle: bool, seed: int, epoch: int, workers: int
) -> DataLoader:
    """A loader whose shuffling order depends only on (seed, epoch), so a resumed epoch replays exactly."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator if shuffle else None,
        num_workers=workers,
        persistent_workers=False,
        drop_last=False,
    )


@dataclass
class Run:
    """A trained run loaded back: its config, task, model (best weights) and split."""

    path: Path
    config: ExperimentConfig
    task: Task
    model: nn.Module
    splits: dict[str, str]


def build_model(config: ExperimentConfig) -> nn.Module:
    """The model a config names, sized for the configured ROI."""
    options = {"preset": config.model.preset, "img_size": config.data.roi_size, **config.model.options}
    return create_model(config.model.name, **options)


def load_run(path: str | Path, checkpoint: str = BEST_CHECKPOINT) -> Run:
    """Load a run directory written by ``osteoscope train``."""
    from osteoscope.data.splits import load_splits

    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise DataError("not a run directory (no config.yaml)", path=path)
    config = load_config(path / CONFIG_FILE)
    state = load_checkpoint(path / checkpoint)
    model = build_model(config)
    model.load_state_dict(state["model"])
    model.eval()
    return Run(path, config, get_task(config.task), model, load_splits(path / SPLITS_FILE))


@torch.no_grad()
def predict_dataset(
    model: nn.Module, dataset: CaseDataset, *, batch_size: int = 64, device: torch.device | None = None
) -> dict[str, np.ndarray]:
    """Run a model over a dataset: probabilities of the patient-level logit and of per-side logits (if any)."""
    device = device or torch.device("cpu")
    model.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    probs, sides, labels = [], [], []
    for batch in loader:
        outputs = model(*[batch[k].to(device) for k in model.input_keys])
        probs.append(torch.sigmoid(outputs["logits"].float()).cpu())
        if "side_logits" in outputs:
            sides.append(torch.sigmoid(outputs["side_logits"].float()).cpu())
        labels.append(batch["label"])
    result = {"probability": torch.cat(probs).numpy(), "label": torch.cat(labels).numpy()}
    if sides:
        result["side_probability"] = torch.cat(sides).numpy()
    return result
