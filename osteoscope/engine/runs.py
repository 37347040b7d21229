"""A run directory: its files, its log, the data it was trained on, and its model loaded back."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.logging import RichHandler
from torch import nn
from torch.utils.data import DataLoader, Sampler

from osteoscope.config import ExperimentConfig, load_config
from osteoscope.data.cache import DecodedCache
from osteoscope.data.datasets import CaseDataset, SampleBuilder
from osteoscope.data.fingerprints import Fingerprints, recording
from osteoscope.data.manifest import Case, Manifest, SkippedCase, load_manifest
from osteoscope.data.splits import load_splits
from osteoscope.engine.checkpoint import load_checkpoint
from osteoscope.errors import DataError, OsteoscopeError
from osteoscope.models import build_model
from osteoscope.tasks import Task, make_task

CONFIG_FILE = "config.yaml"
SPLITS_FILE = "splits.csv"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
LOG_FILE = "train.log"
HISTORY_FILE = "history.jsonl"

log = logging.getLogger("osteoscope")


def make_console(*, stderr: bool = False) -> Console:
    """A rich console that does not wrap tables and logs at 160 columns when writing to a file or CI."""
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


def task_of(config: ExperimentConfig) -> Task:
    """The config's task with its data and loss options."""
    return make_task(config.task, config.data.options, config.loss.options)


def make_cache(config: ExperimentConfig) -> DecodedCache:
    """The decoded-data cache of a run, bounded by ``data.cache_mb``; says in the log when it is full."""
    return DecodedCache(int(config.data.cache_mb * 2**20), on_full=log.warning)


def check_cases(
    cases: Sequence[Case],
    builder: SampleBuilder,
    *,
    skip_bad: bool,
    progress: Callable[[int], None] | None = None,
    hashes: Fingerprints | None = None,
) -> tuple[list[Case], list[SkippedCase]]:
    """Build every case once so bad files fail now, with their case named, not mid-training.

    With a caching builder this also fills the cache, so the first epoch does not decode again. With
    ``skip_bad`` bad cases are returned separately instead of raising. ``hashes`` collects the pixel hash of
    every image read (:mod:`osteoscope.data.fingerprints`), at no extra decoding.
    """
    good, bad = [], []
    for i, case in enumerate(cases):
        try:
            with recording({} if hashes is None else hashes):
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
    """Load a manifest with the columns the task requires, its rows turned into the task's cases."""
    schema = task.schema
    manifest = load_manifest(
        path,
        required_labels=schema.labels,
        label_values=dict(schema.label_values),
        required_columns=schema.required,
        any_of_columns=schema.any_of,
        skip_bad=skip_bad,
    )
    return Manifest(manifest.path, task.prepare_cases(manifest.cases), manifest.columns, manifest.skipped)


def report_skipped(skipped: Sequence[SkippedCase]) -> None:
    """Log each skipped case and the count, so nothing is dropped silently."""
    for item in skipped:
        log.warning("skipped %s: %s", item.case_id, item.reason)
    if skipped:
        log.warning("%d case(s) skipped (--skip-bad)", len(skipped))


def make_loader(
    dataset: CaseDataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    workers: int,
    sampler: Sampler | None = None,
) -> DataLoader:
    """A loader whose shuffling order depends only on (seed, epoch), so a resumed epoch replays exactly.

    ``sampler`` replaces the shuffling (e.g. a DistributedSampler under torchrun).
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        generator=generator if shuffle and sampler is None else None,
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

    @property
    def model_name(self) -> str:
        return model_name(self.config, self.task)


def model_name(config: ExperimentConfig, task: Task) -> str:
    """The model a config names, the task's default when it names none."""
    return config.model.name or task.default_model


def build_run_model(config: ExperimentConfig, task: Task) -> nn.Module:
    """The model a config names, built with the task's input and head arguments (each factory gets those it
    takes) and the config's ``model.options`` (checked strictly)."""
    defaults = {**task.model_kwargs(), **task.head.model_kwargs(), "preset": config.model.preset}
    return build_model(model_name(config, task), defaults, config.model.options)


def load_run(path: str | Path, checkpoint: str = BEST_CHECKPOINT) -> Run:
    """Load a run directory written by ``osteoscope train``."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise DataError("not a run directory (no config.yaml)", path=path)
    config = load_config(path / CONFIG_FILE)
    task = task_of(config)
    state = load_checkpoint(path / checkpoint)
    model = build_run_model(config, task)
    model.load_state_dict(state["model"])
    model.eval()
    return Run(path, config, task, model, load_splits(path / SPLITS_FILE))
