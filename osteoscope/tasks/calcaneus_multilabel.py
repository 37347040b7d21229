"""Task ``calcaneus-multilabel``: six calcaneal fracture subtypes on a lateral radiograph (MSRT seed).

Multi-label: one 0/1 column ``label_<name>`` per subtype, evaluated with the MSRT paper's table (per-label
ACC and F1, exact match, P-C/R-C/F1-C, P-O/R-O/F1-O, mAP). The sample is the radiograph with its rough
fracture mask (``mask_rough``), which MSRT's GridDropIn&Out reads; ``mask_as_channel`` feeds the mask to a
model without a mask input as a second image channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from osteoscope.data.cache import DecodedCache
from osteoscope.data.datasets import SingleImage
from osteoscope.data.manifest import Case
from osteoscope.errors import ConfigError
from osteoscope.heads import Head, MultilabelHead
from osteoscope.phantoms import calcaneus_multilabel as calcaneus_phantom
from osteoscope.tasks.base import AugmentOptions, Schema, StudyInputs, Task, label_of

LABELS = calcaneus_phantom.LABELS


@dataclass(frozen=True)
class Options(AugmentOptions):
    """Sample options of ``calcaneus-multilabel``.

    Attributes:
        size: (H, W) of the radiograph and its mask (MSRT: 256 x 256).
        mask_column: Column of the rough fracture mask.
        mask_as_channel: Append the mask to the image as a second channel.
        threshold: Decision threshold of every label for the threshold metrics.
    """

    size: tuple[int, int] = (256, 256)
    mask_column: str = "mask_rough"
    mask_as_channel: bool = False
    threshold: float = 0.5
    flip_axes: tuple[int, ...] = (1,)
    rotate_deg: float = 10.0
    scale: float = 0.1
    translate: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"data.options.threshold must lie in (0, 1), got {self.threshold}")


class CalcaneusMultilabel(Task):
    name = "calcaneus-multilabel"
    description = "six calcaneal fracture subtypes (multi-label) from a lateral radiograph and its rough mask (MSRT)"
    default_model = "timm:resnet50"
    modalities = frozenset({"CR", "DX"})
    body_parts = frozenset({"FOOT", "ANKLE", "HEEL", "CALCANEUS", "LOWERLIMB", "EXTREMITY"})
    phantom = staticmethod(calcaneus_phantom.generate)
    Options = Options

    @property
    def head(self) -> Head:
        return MultilabelHead(LABELS, threshold=self.options.threshold)

    @property
    def schema(self) -> Schema:
        columns = tuple(f"label_{name}" for name in LABELS)
        mask = (self.options.mask_column,)
        required, optional = (("image", *mask), ()) if self.options.mask_as_channel else (("image",), mask)
        return Schema(labels=columns, label_values={c: (0, 1) for c in columns}, required=required, optional=optional)

    def target(self, case: Case) -> torch.Tensor:
        return torch.tensor([label_of(case, f"label_{name}") for name in LABELS], dtype=torch.float32)

    def builder(self, train: bool, cache: DecodedCache | None) -> SingleImage:
        o = self.options
        return SingleImage(
            size=o.size,
            crop_to_box=False,
            mask_column=o.mask_column,
            mask_as_channel=o.mask_as_channel,
            target=self.target,
            augmentation=o.augmentation() if train else None,
            cache=cache,
        )

    def model_kwargs(self) -> dict[str, Any]:
        return {"in_chans": 2 if self.options.mask_as_channel else 1, "img_size": self.options.size, "spatial_dims": 2}

    def study_case(self, inputs: StudyInputs, run_dir: Path) -> Case:
        """A radiograph and its rough mask: a bare ``--mask FILE`` fills ``mask_column``."""
        default = self.options.mask_column.removeprefix("mask_")
        masks = {(default if key in ("", "mask") else key): path for key, path in inputs.masks.items()}
        return super().study_case(StudyInputs(inputs.images, masks, inputs.boxes, inputs.files), run_dir)


TASK = CalcaneusMultilabel
