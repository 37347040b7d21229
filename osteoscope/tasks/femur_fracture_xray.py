"""Task ``femur-fracture-xray``: atypical (AFF, 1) vs normal (NFF, 0) femur fracture on radiographs.

The seed study (Eklund & Schilcher) has about 4300 images of 1200 patients: the unit the model sees is one
radiograph, and a patient's score aggregates all of their images (``patient_score``: ``mean`` or ``max``),
reported beside the per-image metrics. A manifest row may hold one image (column ``image``, with optional
``box``) or one study with several views (``image_<view>``, ``box_<view>``, ``mask_<view>`` for each of
``views``); such a row becomes one case per view, named ``<case_id>_<view>``, of the same patient.

Whether a model sees the whole film or the fracture region (``crop_to_box``, off by default) is a choice
of the study, not of the paper; the box is a manifest column, never derived from the label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from osteoscope.data.cache import DecodedCache
from osteoscope.data.datasets import SingleImage
from osteoscope.data.manifest import Case
from osteoscope.errors import ConfigError
from osteoscope.heads import BinaryHead, Head
from osteoscope.phantoms import femur_fracture_xray as femur_phantom
from osteoscope.tasks.base import AugmentOptions, Schema, Task, label_of


@dataclass(frozen=True)
class Options(AugmentOptions):
    """Sample options of ``femur-fracture-xray``.

    Attributes:
        views: View names of study rows (columns ``image_<view>``); ignored for rows with ``image``.
        size: (H, W) the radiograph is resized to (portrait, as femur films are).
        crop_to_box: Crop to the square about the case's ``box`` when it has one.
        patient_score: How a patient's image scores combine: ``mean`` or ``max``.
    """

    views: tuple[str, ...] = ("ap", "lat")
    size: tuple[int, int] = (320, 224)
    crop_to_box: bool = False
    patient_score: str = "mean"
    flip_axes: tuple[int, ...] = (1,)
    rotate_deg: float = 10.0
    scale: float = 0.1
    translate: float = 0.05

    def __post_init__(self) -> None:
        if self.patient_score not in ("mean", "max"):
            raise ConfigError(f"data.options.patient_score must be mean or max, got {self.patient_score!r}")


class FemurFractureXray(Task):
    name = "femur-fracture-xray"
    description = "atypical (AFF) vs normal femur fracture per radiograph, with a patient-level score"
    default_model = "timm:resnet18"
    modalities = frozenset({"CR", "DX"})
    body_parts = frozenset({"FEMUR", "THIGH", "HIP", "PELVIS", "LEG", "LOWERLIMB", "EXTREMITY"})
    phantom = staticmethod(femur_phantom.generate)
    Options = Options

    @property
    def head(self) -> Head:
        return BinaryHead(("NFF", "AFF"))

    @property
    def schema(self) -> Schema:
        views = self.options.views
        columns = ("image", *(f"image_{v}" for v in views))
        boxes = ("box", *(f"box_{v}" for v in views)) if self.options.crop_to_box else ()
        return Schema(labels=("label",), label_values={"label": (0, 1)}, any_of=columns, optional=boxes)

    def target(self, case: Case) -> torch.Tensor:
        return torch.tensor(label_of(case, "label"), dtype=torch.float32)

    def prepare_cases(self, cases: Sequence[Case]) -> list[Case]:
        """One case per radiograph: a study row with several views becomes one case per view."""
        images = []
        for case in cases:
            if case.images.get("image") is not None:
                images.append(case)
                continue
            for view in self.options.views:
                path = case.images.get(f"image_{view}")
                if path is None:
                    continue
                mask = case.masks.get(f"mask_{view}")
                images.append(
                    replace(
                        case,
                        case_id=f"{case.case_id}_{view}",
                        images={"image": path},
                        boxes={"box": case.boxes.get(f"box_{view}")},
                        masks={} if mask is None else {"mask": mask},
                        extra={**case.extra, "view": view, "study": case.case_id},
                    )
                )
        return images

    @property
    def patient_aggregation(self) -> str:
        return self.options.patient_score

    def builder(self, train: bool, cache: DecodedCache | None) -> SingleImage:
        o = self.options
        return SingleImage(
            size=o.size,
            crop_to_box=o.crop_to_box,
            target=self.target,
            augmentation=o.augmentation() if train else None,
            cache=cache,
        )

    def model_kwargs(self) -> dict[str, Any]:
        return {"in_chans": 1, "img_size": self.options.size, "spatial_dims": 2}


TASK = FemurFractureXray
