"""A run directory: its files, its log, the data it was trained on, and its model loaded back.

A run folder is self-contained and relocatable. ``config.yaml`` records the dataset as an absolute path
resolved at training time, and ``best.pt`` also records where the dataset lies relative to the run folder
and the SHA-256 of its manifest. A relative ``data.path`` in a run's config is relative to the run folder,
not to the working directory. Loading a run looks for the dataset at the absolute path, then relative to
the run folder (a run moved together with its data, e.g. the whole demo folder), and for runs written
before the location was recorded, relative to the working directory.

``best.pt`` carries everything ``predict`` needs besides the weights (see :func:`run_record`): the task
and its options, the head's names, the operating point chosen on validation with its rule, the
preprocessing, the package versions, the manifest's hash and the statistics of the training inputs that
predict's out-of-distribution guard compares a study with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.logging import RichHandler
from torch import nn
from torch.utils.data import DataLoader, Sampler

from osteoscope.config import ExperimentConfig, load_config
from osteoscope.data.cache import DecodedCache
from osteoscope.data.datasets import CaseDataset, SampleBuilder
from osteoscope.data.fingerprints import Fingerprints, recording
from osteoscope.data.manifest import Case, Manifest, SkippedCase, load_manifest, manifest_path
from osteoscope.data.profile import evenly_spaced, input_profile
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
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
VERSIONED_PACKAGES = ("osteoscope", "torch", "timm", "monai", "numpy")
RECORD_KEYS = ("task", "head", "preprocessing", "versions", "data", "input_profile")

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
        file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
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
    """A trained run loaded back: its config, task, model (best weights), split and checkpoint record.

    Attributes:
        record: What ``best.pt`` holds besides the weights (see :func:`run_record`; the operating point
            under ``operating_point``); runs of older versions lack some keys.
        data_found: Whether the dataset the run was trained on was found (``config.data.path`` then names
            it, resolved).
    """

    path: Path
    config: ExperimentConfig
    task: Task
    model: nn.Module
    splits: dict[str, str]
    record: dict[str, Any] = dataclasses.field(default_factory=dict)
    data_found: bool = True

    @property
    def model_name(self) -> str:
        return model_name(self.config, self.task)

    @property
    def operating_point(self) -> dict[str, Any] | None:
        """The decision rule chosen on validation at the end of training, or None for older runs."""
        return self.record.get("operating_point")

    def data_path(self) -> Path:
        """The run's own dataset; a clear error when it is not where the run recorded it."""
        if not self.data_found:
            relative = self.record.get("data", {}).get("relative_to_run")
            also = f" nor at {self.path / relative} (relative to the run folder)" if relative else ""
            raise DataError(
                f"the dataset this run was trained on is not found{also}: pass the dataset with --data",
                path=self.config.data.path,
            )
        return Path(self.config.data.path)


def model_name(config: ExperimentConfig, task: Task) -> str:
    """The model a config names, the task's default when it names none."""
    return config.model.name or task.default_model


def build_run_model(config: ExperimentConfig, task: Task) -> nn.Module:
    """The model a config names, built with the task's input and head arguments (each factory gets those it
    takes) and the config's ``model.options`` (checked strictly)."""
    defaults = {**task.model_kwargs(), **task.head.model_kwargs(), "preset": config.model.preset}
    return build_model(model_name(config, task), defaults, config.model.options)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    """Installed versions of osteoscope and the libraries a result depends on."""
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def data_location(data: str | Path, run_dir: Path) -> dict[str, str]:
    """Where a run's dataset is: the absolute path (resolved now, from the working directory), the path
    relative to the run folder, and the SHA-256 of its manifest."""
    manifest = manifest_path(data).resolve()
    return {
        "path": str(manifest.parent),
        "relative_to_run": os.path.relpath(manifest.parent, run_dir.resolve()),
        "manifest_sha256": file_sha256(manifest),
    }


def locate_data(run_dir: Path, recorded: str, record: dict[str, Any]) -> Path | None:
    """The run's dataset folder, or None: the recorded path (relative to the run folder when relative),
    then the location relative to the run folder stored in the checkpoint, then (runs written before the
    location was recorded) the recorded path from the working directory."""
    candidates = [run_dir / recorded]
    if record.get("data", {}).get("relative_to_run"):
        candidates.append(run_dir / record["data"]["relative_to_run"])
    if not Path(recorded).is_absolute():
        candidates.append(Path(recorded))
    for candidate in candidates:
        if recorded and (candidate.is_dir() or candidate.is_file()):
            return candidate.resolve()
    return None


def run_record(task: Task, data: dict[str, str], train_cases: Sequence[Case]) -> dict[str, Any]:
    """What ``best.pt`` stores beside the weights, so ``predict`` needs nothing else from the training.

    The operating point is added after training (:func:`osteoscope.engine.trainer.train`) when it has been
    chosen on validation with the best weights.
    """
    head = task.head
    files = [
        (column, path, case.series_of(column))
        for case in evenly_spaced(list(train_cases))
        for column, path in case.images.items()
        if path
    ]
    return {
        "task": {
            "name": task.name,
            "options": dataclasses.asdict(task.options),
            "loss_options": dataclasses.asdict(task.loss_options),
        },
        "head": {"kind": head.kind, "names": list(head.names)},
        "preprocessing": task.preprocessing(),
        "versions": package_versions(),
        "data": data,
        "input_profile": input_profile(files),
    }


def load_run(path: str | Path, checkpoint: str = BEST_CHECKPOINT) -> Run:
    """Load a run directory written by ``osteoscope train``, from any working directory."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise DataError("not a run directory (no config.yaml)", path=path)
    config = load_config(path / CONFIG_FILE)
    task = task_of(config)
    state = load_checkpoint(path / checkpoint)
    model = build_run_model(config, task)
    model.load_state_dict(state["model"])
    model.eval()
    record = {key: value for key, value in state.items() if key in (*RECORD_KEYS, "operating_point")}
    found = locate_data(path, config.data.path, record)
    if found is not None:
        config.data.path = str(found)
        recorded = record.get("data", {}).get("manifest_sha256")
        if recorded and file_sha256(manifest_path(found)) != recorded:
            log.warning("the manifest in %s has changed since %s was trained (its SHA-256 differs)", found, path)
    return Run(path, config, task, model, load_splits(path / SPLITS_FILE), record, found is not None)
