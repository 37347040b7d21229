"""Task ``avnfh-ct``: femoral-head necrosis on a 3-D CT box (SRANet seed).

Binary necrosis (ARCO I-IV vs 0, as SRANet's public data loader maps its labels) by default;
``data.options.target: stage`` gives the 5-class ARCO 0-IV head instead, read from the ``stage`` column.
The sample is the CT (a NIfTI file, or a DICOM series folder with ``series_uid`` choosing among several)
cropped to the femoral-head ``box`` (voxels; or ``box_mm`` in patient LPS mm), clipped to an HU window,
resampled to isotropic voxels, padded to ``size`` (SRANet: 128^3) and z-scored, with its coarse bone ``mask``.

Augmentation defaults follow SRANet's public loader (reference/model-specs.md 1.1): OneOf, half and half, a
random crop of 80/128 of each axis (side drawn in [80, 128] per axis, MONAI's default of the time) resized
back, or an affine (rotation up to 45 degrees about the second axis, i.e. in the (0, 2) plane; zoom 0.1 per
axis; shift up to 32/128); then one random axis flipped with p 0.3. The loader has no intensity
augmentation, so ``intensity`` is 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from osteoscope.data.cache import DecodedCache
from osteoscope.data.datasets import VolumeWithMask
from osteoscope.data.manifest import Case
from osteoscope.errors import ConfigError, DataError
from osteoscope.heads import BinaryHead, Head, MulticlassHead
from osteoscope.losses import BinaryLoss, StructureRegularizedLoss
from osteoscope.phantoms import avnfh_ct as avnfh_ct_phantom
from osteoscope.tasks.avnfh_ct.attention import draw_attention, score_case, summarise, summary_markdown
from osteoscope.tasks.base import (
    AugmentOptions,
    CasePredicate,
    MapEvaluation,
    Schema,
    StudyInputs,
    Task,
    class_index,
    label_of,
)

STAGES = ("ARCO 0", "ARCO I", "ARCO II", "ARCO III", "ARCO IV")
ATTENTION_FIGURES = 4  # cases whose patch attention the evaluation report draws


@dataclass(frozen=True)
class Options(AugmentOptions):
    """Sample options of ``avnfh-ct``.

    Attributes:
        target: ``necrosis`` (binary, column ``label``) or ``stage`` (ARCO 0-IV, column ``stage``).
        size: Output (D, H, W) in voxels.
        window: HU range the volume is clipped to before normalisation (SRANet does not publish its own).
        keep_aspect: Resample to isotropic voxels and pad (True) or stretch to ``size``.
        normalise: ``zscore`` over the padded box (SRANet's loader) or ``robust`` percentiles to [-1, 1].
        mask_as_channel: Append the bone mask to the image as a second channel, for models without a
            mask input.
    """

    target: str = "necrosis"
    size: tuple[int, int, int] = (128, 128, 128)
    window: tuple[float, float] = (-200.0, 1500.0)
    keep_aspect: bool = True
    normalise: str = "zscore"
    mask_as_channel: bool = False
    flip_axes: tuple[int, ...] = (0, 1, 2)
    flip_p: float = 0.3
    flip_single: bool = True
    rotate_deg: float = 45.0
    rotate_planes: tuple[tuple[int, int], ...] | None = ((0, 2),)
    scale: float = 0.1
    isotropic_scale: bool = False
    translate: float = 0.25
    crop: float = 0.625
    crop_random_size: bool = True
    crop_p: float = 0.5
    intensity: float = 0.0

    def __post_init__(self) -> None:
        if self.target not in ("necrosis", "stage"):
            raise ConfigError(f"data.options.target must be necrosis or stage, got {self.target!r}")
        if len(self.size) != 3:
            raise ConfigError(f"data.options.size must be three numbers (D, H, W), got {list(self.size)}")


@dataclass(frozen=True)
class LossOptions:
    """SRANet's objective (Eq. 12) around the head's own loss; plain models train on the head's loss alone.

    Attributes:
        alpha: Weight of the classification loss against the structure regulariser, in (0, 1]; the seed
            does not give it: 0.5 weighs the two equally. 1 switches the regulariser off.
        pos_weight: Positive-class weight of the necrosis BCE (target ``necrosis`` only), or None.
    """

    alpha: float = 0.5
    pos_weight: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ConfigError(f"loss.options.alpha must be in (0, 1], got {self.alpha}")


class AvnfhCt(Task):
    name = "avnfh-ct"
    description = "femoral-head necrosis yes/no (or ARCO stage 0-IV with target: stage) from a 3-D CT box (SRANet)"
    default_model = "sranet"
    modalities = frozenset({"CT"})
    body_parts = frozenset({"HIP", "PELVIS", "ABDOMENPELVIS", "LOWERLIMB", "PARTIALBODY", "WHOLEBODY"})
    phantom = staticmethod(avnfh_ct_phantom.generate)
    Options = Options
    LossOptions = LossOptions

    @property
    def head(self) -> Head:
        if self.options.target == "stage":
            return MulticlassHead(STAGES)
        return BinaryHead(("no necrosis", "necrosis"))

    @property
    def schema(self) -> Schema:
        optional = ("box", "box_mm", "series_uid", "mask", "stage")
        if self.options.target == "stage":
            return Schema(required=("image",), optional=optional)
        return Schema(labels=("label",), label_values={"label": (0, 1)}, required=("image",), optional=optional)

    def loss(self) -> nn.Module:
        """SRANet's ``alpha * l_c + (1 - alpha) * l_s`` (:class:`StructureRegularizedLoss`), with ``l_c``
        the head's loss; models without structure scores get ``l_c`` alone."""
        o = self.loss_options
        if self.options.target == "stage":
            if o.pos_weight is not None:
                raise ConfigError("loss.options.pos_weight applies to the necrosis target, not to stage")
            base = self.head.make_loss(self.head.LossOptions())
        else:
            base = BinaryLoss(o.pos_weight)
        return StructureRegularizedLoss(base, o.alpha)

    def target(self, case: Case) -> torch.Tensor:
        if self.options.target == "stage":
            if case.stage is not None and case.stage not in range(len(STAGES)):
                raise DataError(f"stage {case.stage} is not an ARCO stage 0-4", case_id=case.case_id)
            return class_index(case.stage)
        return torch.tensor(label_of(case, "label"), dtype=torch.float32)

    def stratum(self, case: Case) -> int:
        return -1 if case.stage is None else case.stage

    def builder(self, train: bool, cache: DecodedCache | None) -> VolumeWithMask:
        o = self.options
        return VolumeWithMask(
            size=o.size,
            window=o.window,
            keep_aspect=o.keep_aspect,
            normalise=o.normalise,
            mask_as_channel=o.mask_as_channel,
            target=self.target,
            augmentation=o.augmentation() if train else None,
            cache=cache,
        )

    def model_kwargs(self) -> dict[str, Any]:
        return {"in_chans": 2 if self.options.mask_as_channel else 1, "img_size": self.options.size, "spatial_dims": 3}

    def subsets(self) -> dict[str, CasePredicate]:
        """Early disease (ARCO I-II) and each stage alone, every one against all the negatives: the seed's
        per-stage results. (The stage head reports per-stage figures itself.)"""
        if self.options.target == "stage":
            return {}

        def negatives_and(*stages: int) -> CasePredicate:
            return lambda case: case.labels.get("label") == 0 or case.stage in stages

        per_stage = {f"{STAGES[k]} vs negatives": negatives_and(k) for k in range(1, len(STAGES))}
        return {"early (ARCO I-II)": negatives_and(1, 2), **per_stage}

    def lesion_arrays(self, case: Case) -> dict[str, np.ndarray]:
        """The case's model input ``image`` with, when the manifest gives one, its lesion mask (``mask_lesion``)
        brought into the same frame as ``mask``."""
        lesions = replace(self.builder(False, None), mask_column="mask_lesion", mask_as_channel=False)
        return lesions.decode(case)

    def evaluate_maps(
        self, cases: Sequence[Case], maps: Mapping[str, Sequence[Path]], out: Path, n_boot: int
    ) -> list[MapEvaluation]:
        """A model's patch attention (``maps["attention"]``, SRANet) against the lesion mask on the positive
        cases that show one: attention mass and pointing game with intervals, and the first
        ``ATTENTION_FIGURES`` cases drawn."""
        files = maps.get("attention")
        if not files:
            return []
        scores, groups, figures = [], [], []
        for case, file in zip(cases, files, strict=True):
            if label_of(case, "label") != 1 or case.masks.get("mask_lesion") is None:
                continue
            arrays = self.lesion_arrays(case)
            if not arrays.get("mask", np.zeros(1)).any():
                continue  # ARCO I, or a lesion outside the box
            attention = np.load(file)
            scores.append(score_case(case.case_id, attention, arrays["mask"]))
            groups.append(case.patient_id)
            if len(figures) < ATTENTION_FIGURES:
                title = f"{case.case_id}: ARCO {case.stage}, attention mass {scores[-1].mass:.2f}"
                path = out / "attention" / f"{case.case_id}.png"
                figures.append(draw_attention(arrays["image"], attention, path, lesion=arrays["mask"], title=title))
        if not scores:
            return []
        summary = summarise(scores, groups, n_boot=n_boot)
        return [MapEvaluation("Patch attention against the lesion", summary, summary_markdown(summary, figures, out))]

    def draw_maps(self, case: Case, maps: Mapping[str, np.ndarray], out: Path, title: str) -> list[Path]:
        """The patch attention over the axial and coronal slices through the lesion (outlined when the manifest
        has ``mask_lesion``), else through the most attended patch."""
        if "attention" not in maps:
            return []
        arrays = self.lesion_arrays(case) if case.masks.get("mask_lesion") else self.builder(False, None).decode(case)
        lesion = arrays.get("mask") if case.masks.get("mask_lesion") else None
        path = out / f"{case.case_id}_attention.png"
        return [draw_attention(arrays["image"], maps["attention"], path, lesion=lesion, title=title)]

    def study_case(self, inputs: StudyInputs, run_dir: Path) -> Case:
        """A CT (NIfTI file or DICOM series folder) with the femoral-head ``--box`` and, when the model or
        ``mask_as_channel`` needs it, the bone ``--mask``."""
        case = super().study_case(inputs, run_dir)
        if self.options.mask_as_channel and "mask" not in case.masks:
            raise ConfigError(f"{self} with mask_as_channel needs the bone mask: --mask FILE")
        return case


TASK = AvnfhCt
