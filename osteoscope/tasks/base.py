"""The :class:`Task` base class: everything task-specific, named in one place per task.

A task module subclasses :class:`Task` and says: the manifest schema (label columns and values, the image,
mask and box columns it reads), the head, a typed options dataclass for its sample builder (filled from
``data.options``) and for its loss (``loss.options``), the evaluation subsets as case predicates, the extra
model outputs to save, the keyword arguments its models are built with, and how ``predict`` turns a raw
study into a case. The engine reads all of this through the methods below and so names no task itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from osteoscope.config import parse_options
from osteoscope.data.augment import SpatialAugmentation
from osteoscope.data.cache import DecodedCache
from osteoscope.data.datasets import Augmentation, SampleBuilder
from osteoscope.data.manifest import ENGINE_COLUMNS, Box, Case, series_column
from osteoscope.data.profile import profile_problems
from osteoscope.data.readers import read_image
from osteoscope.data.splits import default_stratum
from osteoscope.data.transforms import robust_normalise
from osteoscope.errors import DataError
from osteoscope.heads import Head, NoOptions

CasePredicate = Callable[[Case], bool]


@dataclass(frozen=True)
class Schema:
    """The manifest columns a task reads: the single list of them, so a column outside it is reported as
    unread (with the nearest name it may have been meant as) before training.

    Attributes:
        labels: Label columns that must exist in the header.
        label_values: Allowed integer values per label column.
        required: Image/mask columns every case must fill.
        any_of: Image columns of which every case must fill at least one (e.g. MR protocols).
        optional: Further columns the task reads when present (boxes, masks, ``side``, ``stage``).
    """

    labels: tuple[str, ...] = ()
    label_values: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    any_of: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column read: the engine's (``case_id``, ``patient_id``, ``split``) and the task's."""
        return tuple(dict.fromkeys((*ENGINE_COLUMNS, *self.labels, *self.required, *self.any_of, *self.optional)))


@dataclass(frozen=True)
class AugmentOptions:
    """Training augmentation, shared by the tasks' option dataclasses (each sets its own defaults).

    Attributes:
        flip_axes: Spatial axes (0 = first spatial axis) that may be flipped.
        flip_p: Probability of flipping each of them (with ``flip_single``: of flipping one of them).
        flip_single: Flip one of ``flip_axes`` at most, drawn at random.
        rotate_deg: Largest rotation, in degrees, either way.
        rotate_planes: Planes of spatial axes that rotate, e.g. [[0, 2]]; None = every plane.
        scale: Largest zoom, as a fraction either way.
        isotropic_scale: One zoom for all axes, or one per axis.
        translate: Largest shift, as a fraction of the size either way.
        crop: Smallest side of a random crop resized back to the full size, as a fraction (0 = off).
        crop_random_size: Each axis' crop side drawn from [crop, 1], or exactly ``crop``.
        crop_p: Share of samples that get the crop instead of the rotation/zoom/shift.
        intensity: Strength of the random gamma, contrast, brightness and noise (0 = off).

    See :class:`~osteoscope.data.augment.SpatialAugmentation` for the exact meaning of each.
    """

    flip_axes: tuple[int, ...] = ()
    flip_p: float = 0.5
    flip_single: bool = False
    rotate_deg: float = 0.0
    rotate_planes: tuple[tuple[int, int], ...] | None = None
    scale: float = 0.0
    isotropic_scale: bool = True
    translate: float = 0.0
    crop: float = 0.0
    crop_random_size: bool = True
    crop_p: float = 0.5
    intensity: float = 1.0

    def augmentation(self) -> Augmentation:
        """The builder's augmentation from these options."""
        spatial = SpatialAugmentation(
            flip_axes=self.flip_axes,
            flip_p=self.flip_p,
            flip_single=self.flip_single,
            rotate_deg=self.rotate_deg,
            rotate_planes=self.rotate_planes,
            scale=self.scale,
            isotropic_scale=self.isotropic_scale,
            translate=self.translate,
            crop=self.crop,
            crop_random_size=self.crop_random_size,
            crop_p=self.crop_p,
        )
        return Augmentation(spatial=spatial, intensity=self.intensity)


@dataclass(frozen=True)
class ExtraEvaluation:
    """A further evaluation a task asks for beside the main one, e.g. AsT's per-hip side scores."""

    name: str
    head: Head
    targets: np.ndarray
    values: np.ndarray
    groups: np.ndarray


@dataclass(frozen=True)
class MapEvaluation:
    """A score of the saved ``maps`` against the cases' ground truth, e.g. attention against the lesion:
    ``metrics`` go into metrics.json, ``markdown`` (figures linked relative to the evaluation folder) into the
    report."""

    name: str
    metrics: dict[str, Any]
    markdown: str


@dataclass(frozen=True)
class StudyInputs:
    """A raw study given to ``predict``: files by name (``--image T1=a.dcm``), masks, boxes, aux files, and
    the SeriesInstanceUID to read from a DICOM folder holding several (``--series``, keyed like the images).

    Keys are as typed on the command line; :meth:`Task.study_case` maps them onto manifest columns.
    """

    images: Mapping[str, Path]
    masks: Mapping[str, Path]
    boxes: Mapping[str, Box]
    files: Mapping[str, Path]
    series: Mapping[str, str] = field(default_factory=dict)


class Task(ABC):
    """One diagnostic problem. Subclasses set the class attributes and implement the abstract methods.

    Args:
        options: ``data.options`` of the config, checked against :attr:`Options`.
        loss_options: ``loss.options`` of the config, checked against :attr:`LossOptions` (or the head's).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    default_model: ClassVar[str]
    phantom: ClassVar[Callable[..., Path]]  # the task's synthetic-data generator (osteoscope.phantoms)
    Options: ClassVar[type] = NoOptions
    LossOptions: ClassVar[type | None] = None  # None: the head's default loss and its options
    extra_outputs: ClassVar[Mapping[str, tuple[str, ...]]] = {}  # model output key -> column names (sigmoid)
    modalities: ClassVar[frozenset[str]] = frozenset()  # DICOM Modality values of the task's inputs
    phantom_gap: ClassVar[str] = ""  # what is known of phantom-trained weights on real data (the model card)
    body_parts: ClassVar[frozenset[str]] = frozenset()  # DICOM BodyPartExamined values of its inputs

    @property
    def study_min_side(self) -> int | None:
        """``predict`` decodes each file of a study once, at the coarsest scale keeping this many pixels on
        its shorter side (:func:`osteoscope.data.readers.decode_once`); ``None`` (the default): in full."""
        return None

    def __init__(self, options: Mapping[str, Any] | None = None, loss_options: Mapping[str, Any] | None = None):
        self.options = parse_options(self.Options, dict(options or {}), "data.options")
        loss_type = self.LossOptions or self.head.LossOptions
        self.loss_options = parse_options(loss_type, dict(loss_options or {}), "loss.options")

    def __repr__(self) -> str:
        return f"task {self.name}"

    def option_lines(self) -> list[str]:
        """``data.options.<name>: <value>`` and ``loss.options...`` lines, for ``osteoscope tasks --options``."""
        data = [f"data.options.{k}: {v!r}" for k, v in asdict(self.options).items()]
        return data + [f"loss.options.{k}: {v!r}" for k, v in asdict(self.loss_options).items()]

    @property
    @abstractmethod
    def head(self) -> Head:
        """What the task predicts (may depend on the options, e.g. ``target: stage``)."""

    @property
    @abstractmethod
    def schema(self) -> Schema:
        """The manifest columns the task reads."""

    @abstractmethod
    def target(self, case: Case) -> torch.Tensor:
        """The training target of a case in the head's form (an unknown label is NaN, or -1 for classes)."""

    @abstractmethod
    def builder(self, train: bool, cache: DecodedCache | None) -> SampleBuilder:
        """The sample builder; ``train`` switches augmentation on; ``cache`` keeps decoded cases."""

    @abstractmethod
    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments every model of this task is built with (``in_chans``, ``img_size``, ...);
        the engine adds ``num_classes`` or ``out_chans`` from the head and passes each factory what it takes."""

    def loss(self) -> nn.Module:
        """The training loss: the head's default unless the task defines its own."""
        return self.head.make_loss(self.loss_options)

    def subsets(self) -> dict[str, CasePredicate]:
        """Case subsets reported separately in evaluation, e.g. early-stage disease (negatives included)."""
        return {}

    def prepare_cases(self, cases: Sequence[Case]) -> list[Case]:
        """The units the model sees, from manifest rows (identity; a task may split a row into images)."""
        return list(cases)

    @property
    def patient_aggregation(self) -> str | None:
        """``mean`` or ``max`` when several images of a patient get one patient-level score, else None."""
        return None

    @property
    def inputs(self) -> tuple[str, ...]:
        """The model inputs the task's samples can hold (its builder's keys), checked against a model's
        ``forward`` before any data are read."""
        return self.builder(False, None).inputs

    def check(self, cases: Sequence[Case]) -> list[str]:
        """Task-specific checks of the cases of a run before any epoch (none by default).

        Returns:
            One-line warnings for the log, each naming the cases concerned.

        Raises:
            DataError: For a problem that would make training meaningless.
        """
        return []

    def stratum(self, case: Case) -> int:
        """The stratum of a case in the patient-level split (the label by default)."""
        return default_stratum(case)

    def extra_evaluations(
        self, cases: Sequence[Case], outputs: Mapping[str, np.ndarray], groups: np.ndarray
    ) -> list[ExtraEvaluation]:
        """Further evaluations from the saved extra outputs (none by default)."""
        return []

    def test_variants(self) -> dict[str, Callable[[Case], Case]]:
        """Named changes of a test case (e.g. one MR protocol dropped) under which evaluation scores the model
        again, for a robustness table; none by default."""
        return {}

    def evaluate_maps(
        self, cases: Sequence[Case], maps: Mapping[str, Sequence[Path]], out: Path, n_boot: int
    ) -> list[MapEvaluation]:
        """Scores of the saved maps (map name -> one ``.npy`` per case, in ``cases`` order) against the cases'
        ground truth, with figures written into ``out`` (none by default)."""
        return []

    def draw_maps(self, case: Case, maps: Mapping[str, np.ndarray], out: Path, title: str) -> list[Path]:
        """Figures of one case's maps (map name -> the model's array for the case) over its image, written
        into ``out``, for ``osteoscope explain``; none by default."""
        return []

    def study_case(self, inputs: StudyInputs, run_dir: Path) -> Case:
        """Turn a raw study into a case: ``--image`` keys map to ``image``/``image_<key>`` columns, ``--mask``
        keys to ``mask``/``mask_<key>``, ``--box`` keys to ``box``/``box_<key>``. Tasks check here that
        every input they need is given, naming what is missing."""
        images = {column_name("image", key): Path(path) for key, path in inputs.images.items()}
        masks = {column_name("mask", key): Path(path) for key, path in inputs.masks.items()}
        boxes = {column_name("box", key): box for key, box in inputs.boxes.items()}
        series = {series_column(column_name("image", key)): uid for key, uid in inputs.series.items()}
        unknown = sorted(set(series) - {series_column(column) for column in images})
        if unknown:
            raise DataError(f"--series given for {', '.join(unknown)} but no image of that name")
        first = next(iter(images.values()), None)
        case = Case(
            case_id=first.name if first else "study",
            patient_id="",
            images=images,
            masks=masks,
            boxes=boxes,
            extra=series,
        )
        for column in self.schema.required:
            if column not in images and column not in masks:
                raise DataError(f"{self} needs the input {column!r}: {input_hint(column)}")
        if self.schema.any_of and not any(column in images for column in self.schema.any_of):
            names = ", ".join(c.removeprefix("image_") for c in self.schema.any_of)
            raise DataError(f"{self} needs at least one of the images {names}: --image NAME=FILE")
        return case

    def preprocessing(self) -> dict[str, Any]:
        """How a case becomes model input at evaluation and prediction: the builder, its settings (sizes,
        columns, windows) and the intensity normalisation, as stored in the checkpoint."""
        builder = self.builder(False, None)
        training_only = ("target", "cache", "augmentation")
        settings = {f.name: getattr(builder, f.name) for f in fields(builder) if f.name not in training_only}
        defaults = robust_normalise.__defaults__
        intensity = getattr(builder, "normalisation", None) or (
            f"per case, the {defaults[0]}th..{defaults[1]}th percentiles mapped to [-1, 1] "
            "(osteoscope.data.transforms.robust_normalise)"
        )
        return {"builder": type(builder).__name__, "settings": settings, "intensity": intensity}

    def check_study(self, case: Case, profile: Mapping[str, Any] | None) -> list[str]:
        """Why a study given to ``predict`` does not look like the training inputs (empty when it does):
        each image's DICOM Modality and BodyPartExamined against :attr:`modalities` and :attr:`body_parts`
        (and those seen in training), its size, aspect and intensity percentiles against the training
        profile (:mod:`osteoscope.data.profile`). Tasks add their own checks by extending this."""
        problems = []
        for column, path in case.images.items():
            if path is not None:
                modalities, body_parts = self.dicom_expectations(column)
                image = read_image(path, series=case.series_of(column))
                problems += profile_problems(column, image, profile or {}, modalities=modalities, body_parts=body_parts)
        return problems

    def dicom_expectations(self, column: str) -> tuple[frozenset[str], frozenset[str]]:
        """The DICOM Modality and BodyPartExamined values expected in an image column (all columns alike by
        default; a task with images of several modalities says which column holds which)."""
        return self.modalities, self.body_parts


def column_name(kind: str, key: str) -> str:
    """Manifest column of a command-line input: ``T1`` -> ``image_t1``, ``""``/``image`` -> ``image``."""
    key = key.strip().lower()
    if key in ("", kind):
        return kind
    return key if key.startswith(f"{kind}_") else f"{kind}_{key}"


def input_hint(column: str) -> str:
    """How to give a manifest column on the ``predict`` command line."""
    kind, _, key = column.partition("_")
    if kind == "image":
        return f"--image {key.upper()}=FILE" if key else "give the image file"
    return f"--{kind} {key}=FILE" if key else f"--{kind} FILE"


def label_of(case: Case, column: str) -> float:
    """A label as a float, NaN when the manifest leaves it empty."""
    value = case.labels.get(column)
    return float("nan") if value is None else float(value)


def class_index(value: int | None) -> torch.Tensor:
    """A class index target, -1 when unknown."""
    return torch.tensor(-1 if value is None else int(value), dtype=torch.long)
