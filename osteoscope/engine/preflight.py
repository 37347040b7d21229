"""Checks before training: what can be found wrong or weak before an epoch is spent or a file written.

In the order :func:`osteoscope.engine.trainer.train` runs them:

* before anything is written: the model, its preset and options build, and its ``forward`` finds its
  inputs among the task's sample keys (:func:`build_checked_model`); on ``--resume``, options that differ
  from the saved run are an error unless overridden, and only :data:`RESUMABLE` keys may be overridden
  (:func:`resumed_config`);
* after the manifest is read: columns the task does not read, with the known column each is nearest to
  (:func:`report_columns`, at training and at evaluation);
* after the split: a train or validation split that lacks a class is an error, a test split that lacks
  one and splits too small for meaningful estimates are warnings with the counts (:func:`check_splits`);
  then the task's own check (:meth:`osteoscope.tasks.Task.check`, e.g. onfh-xray's box sides).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from osteoscope.config import ExperimentConfig, config_from_dict, config_to_dict
from osteoscope.data.manifest import Case, unread_columns
from osteoscope.engine.inference import model_inputs
from osteoscope.engine.runs import build_run_model, log, model_name
from osteoscope.errors import ConfigError, DataError
from osteoscope.tasks import Task

MIN_PATIENTS = 10  # fewer patients in a val/test split: its 95% patient-bootstrap intervals mean little
MIN_CASES_PER_CLASS = 5  # fewer cases of a class there: sensitivity and the like move in steps of 20 points
EVALUATED_SPLITS = ("val", "test")  # the splits whose estimates are reported (selection, evaluation)
LEARNED_SPLITS = ("train", "val")  # a class missing here makes the run meaningless: an error

# Keys that may change when a run is resumed (with --override): how long it runs and how it is executed.
# Everything else defines the experiment (task, data, split, model, loss, optimiser, seed); changing it
# mid-run would give weights that belong to no single configuration, so it needs a new run (--init-from).
RESUMABLE = (
    "train.epochs",
    "train.patience",
    "train.device",
    "train.threads",
    "train.amp",
    "train.channels_last",
    "train.mlflow",
    "data.num_workers",
    "data.cache_mb",
)


def build_checked_model(config: ExperimentConfig, task: Task) -> nn.Module:
    """The run's model, built (name, preset and ``model.options`` checked by the registry) and its required
    ``forward`` inputs found among the task's sample keys; a ConfigError otherwise. Reads no data."""
    model = build_run_model(config, task)
    model_inputs(model, dict.fromkeys(task.inputs), model_name=model_name(config, task), task=task)
    return model


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested config dict (``train.epochs``, ``data.options.roi_size``)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _comparable(key: str, value: Any) -> Any:
    """A value as compared on resume: the data path resolved, so ``data`` and ``./data`` are the same."""
    if key == "data.path" and value:
        return str(Path(value).resolve())
    return value


def config_changes(saved: ExperimentConfig, given: ExperimentConfig) -> dict[str, tuple[Any, Any]]:
    """Each dotted key whose value differs between two configs: key -> (saved, given)."""
    old, new = _flat(config_to_dict(saved)), _flat(config_to_dict(given))
    return {
        key: (old.get(key), new.get(key))
        for key in sorted(set(old) | set(new))
        if _comparable(key, old.get(key)) != _comparable(key, new.get(key))
    }


def resumed_config(
    saved: ExperimentConfig, given: ExperimentConfig, *, override: bool
) -> tuple[ExperimentConfig, list[str]]:
    """The config a resumed run continues with, and one line per applied change.

    Without ``override`` any difference is an error listing each key (saved vs given). With it, the
    :data:`RESUMABLE` keys take the given values; any other difference is still an error.
    """
    changes = config_changes(saved, given)
    if not changes:
        return saved, []
    listed = "; ".join(f"{key}: saved {old!r}, given {new!r}" for key, (old, new) in changes.items())
    if not override:
        raise ConfigError(
            f"--resume with options that differ from the saved run ({listed}); pass --override to apply "
            f"them (only {', '.join(RESUMABLE)} may change) or drop them"
        )
    fixed = [key for key in changes if key not in RESUMABLE]
    if fixed:
        raise ConfigError(
            f"cannot change {', '.join(fixed)} when resuming ({listed}): they define the experiment; "
            "start a new run (--init-from RUN to start from its weights)"
        )
    values = config_to_dict(saved)
    for key, (_, new) in changes.items():
        section, name = key.split(".", 1)
        values[section][name] = new
    return config_from_dict(values), [f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items()]


def report_columns(task: Task, columns: Sequence[str]) -> None:
    """Log the manifest columns the task does not read: a warning for each that is near a known column the
    header lacks (likely a typo: ``stages`` for ``stage``), and one info line listing the others."""
    unread = unread_columns(columns, task.schema.columns)
    for column, near in unread.items():
        if near is not None:
            log.warning("manifest column %r is not read by %s: did you mean %r?", column, task.name, near)
    others = [column for column, near in unread.items() if near is None]
    if others:
        log.info("manifest column(s) not read by %s (kept as they are): %s", task.name, ", ".join(others))


def _count(cases: Sequence[Case], noun: str = "case") -> str:
    """``"12 cases of 8 patients"``."""
    patients = len({case.patient_id for case in cases})
    return f"{len(cases)} {noun}{'' if len(cases) == 1 else 's'} of {patients} patient{'' if patients == 1 else 's'}"


def class_cases(task: Task, cases: Sequence[Case]) -> dict[str, list[Case]]:
    """The cases of each of the head's classes (each label's positives for multi-label; none for a pretext
    head, which has no classes)."""
    if cases:
        targets = np.stack([task.target(case).numpy() for case in cases])
    else:  # an empty split, shaped as a batch of no cases
        targets = np.zeros((0, task.head.outputs))
    return {
        name: [case for case, member in zip(cases, mask, strict=True) if member]
        for name, mask in task.head.class_members(targets).items()
    }


def split_counts(task: Task, name: str, cases: Sequence[Case]) -> str:
    """One split's counts: cases and patients, overall and per class."""
    per_class = ", ".join(f"{cls} {_count(members)}" for cls, members in class_cases(task, cases).items())
    return f"{name} {_count(cases)}" + (f" ({per_class})" if per_class else "")


MISSING_CLASS_EFFECT = {
    "train": "the model cannot learn it",
    "val": "it is left out of the monitored score",
    "test": "its metrics will be n/a",
}


def check_splits(task: Task, parts: Mapping[str, Sequence[Case]], source: str) -> list[str]:
    """Raise when the train or val split is empty or lacks a class (for a multi-label head: every label;
    see ``Head.every_class_needed``); return warnings for other missing classes and for val/test splits below
    :data:`MIN_PATIENTS` patients or :data:`MIN_CASES_PER_CLASS` cases of a class. ``source`` says where the
    split came from, for the advice."""
    fix = "fix the manifest's split column" if "manifest" in source else "add data or change data.split_fractions"
    warnings = []
    for name, cases in parts.items():
        members = class_cases(task, cases)
        missing = [cls for cls, found in members.items() if not found]
        fatal = missing and (task.head.every_class_needed or len(missing) == len(members))
        if name in LEARNED_SPLITS and (not cases or fatal):
            lacking = f"no case of {', '.join(missing)}" if cases else "no cases"
            raise DataError(f"the {name} split ({source}) has {lacking}: {split_counts(task, name, cases)}; {fix}")
        if missing and cases:
            warnings.append(
                f"the {name} split has no case of {', '.join(missing)}: {MISSING_CLASS_EFFECT[name]} "
                f"({split_counts(task, name, cases)})"
            )
        small = len({case.patient_id for case in cases}) < MIN_PATIENTS or any(
            0 < len(found) < MIN_CASES_PER_CLASS for found in members.values()
        )
        if name in EVALUATED_SPLITS and small:
            warnings.append(
                f"the {name} split is too small for meaningful estimates (advised: at least {MIN_PATIENTS} "
                f"patients and {MIN_CASES_PER_CLASS} cases per class): {split_counts(task, name, cases)}"
            )
    return warnings
