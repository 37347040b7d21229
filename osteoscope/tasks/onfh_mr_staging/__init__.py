"""Task ``onfh-mr-staging``: four-way ARCO staging (I-IV) of one hip from five MR protocols (Med Phys 2023).

The sample holds the protocols ``image_t1``, ``image_t2``, ``image_pdfs``, ``image_stir`` and ``image_t1fs``
(any may be missing: zeros, with a present flag). ``stack: channels`` (default) feeds them as channels of
one image to a plain CNN, followed by one constant present-plane per protocol; ``stack: protocols`` gives
(P, 1, H, W) for fusion models that encode each protocol. The label column ``label`` holds 0-3 for
ARCO I-IV.

With a 2-D ``size`` a 3-D protocol volume (NIfTI, DICOM series; ``osteoscope import-mr`` writes them) is cut
to ``slices`` adjacent slices along ``slice_axis``, centred on the manifest's ``head_slice`` (the slice
through the femoral head; the middle one when empty): extra channels per protocol, so ``stack: channels``
gives P x slices images then the P present-planes, and ``stack: protocols`` (P, slices, H, W).

``target: ct`` is the self-supervised pretext stage of the paper: the same MR input, the paired CT
(``image_ct``) as an image target, an L1 loss, the validation error as the monitor, and no labels needed, so
a manifest of unlabelled MR-CT pairs works. A staging run then starts from its encoder with
``--init-from PRETEXT_RUN:backbone.`` (a ``timm:`` model) or ``PRETEXT_RUN:encoder.`` (``mr-fusion``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from osteoscope.data.cache import DecodedCache
from osteoscope.data.datasets import MultiProtocol
from osteoscope.data.manifest import Case
from osteoscope.errors import ConfigError
from osteoscope.heads import Head, MulticlassHead, PretextHead, markdown_table
from osteoscope.phantoms import onfh_mr_staging as onfh_mr_phantom
from osteoscope.tasks.base import AugmentOptions, MapEvaluation, Schema, Task, class_index

STAGES = ("ARCO I", "ARCO II", "ARCO III", "ARCO IV")
HEAD_SLICE = "head_slice"  # manifest column: index of the slice through the femoral head along slice_axis


@dataclass(frozen=True)
class Options(AugmentOptions):
    """Sample options of ``onfh-mr-staging``.

    Attributes:
        target: ``stage`` (ARCO I-IV from ``label``) or ``ct`` (pretext: predict the paired CT).
        protocols: Protocol names; their images are the columns ``image_<name>``.
        size: Size every protocol is resized to, (H, W) or (D, H, W).
        stack: ``channels`` (one multi-channel image) or ``protocols`` ((P, 1, ...) per protocol).
        present_planes: With ``stack: channels``, append one constant 0/1 plane per protocol.
        slices: With a 2-D ``size``: adjacent slices of a 3-D volume per protocol (odd, centred on
            ``head_slice``), fed as that many channels per protocol; 2-D images need 1.
        slice_axis: The axis of a volume (z, y, x) as read that slices are cut across; NIfTI and DICOM series
            are read in patient axes, so 0 = axial, 1 = coronal, 2 = sagittal slices.
    """

    target: str = "stage"
    protocols: tuple[str, ...] = ("t1", "t2", "pdfs", "stir", "t1fs")
    size: tuple[int, ...] = (64, 64)
    stack: str = "channels"
    present_planes: bool = True
    slices: int = 1
    slice_axis: int = 0
    rotate_deg: float = 10.0
    scale: float = 0.1
    translate: float = 0.05

    def __post_init__(self) -> None:
        if self.target not in ("stage", "ct"):
            raise ConfigError(f"data.options.target must be stage or ct, got {self.target!r}")
        if self.stack not in ("channels", "protocols"):
            raise ConfigError(f"data.options.stack must be channels or protocols, got {self.stack!r}")
        if not self.protocols:
            raise ConfigError("data.options.protocols must name at least one protocol")
        if self.slices < 1 or self.slices % 2 == 0:
            raise ConfigError(f"data.options.slices must be odd (centred on the head slice), got {self.slices}")
        if self.slice_axis not in (0, 1, 2):
            raise ConfigError(f"data.options.slice_axis must be 0, 1 or 2, got {self.slice_axis}")
        if self.slices > 1 and len(self.size) != 2:
            raise ConfigError("data.options.slices > 1 cuts slices from volumes: give a 2-D size, e.g. [64, 64]")


class OnfhMrStaging(Task):
    name = "onfh-mr-staging"
    description = "ARCO stage I-IV of one hip from five MR protocols; target: ct is the MR->CT pretext stage"
    default_model = "timm:vgg16_bn"
    modalities = frozenset({"MR"})
    body_parts = frozenset({"HIP", "PELVIS"})
    phantom = staticmethod(onfh_mr_phantom.generate)
    Options = Options

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(f"image_{p}" for p in self.options.protocols)

    @property
    def head(self) -> Head:
        return PretextHead(("CT",)) if self.options.target == "ct" else MulticlassHead(STAGES)

    @property
    def schema(self) -> Schema:
        if self.options.target == "ct":
            return Schema(required=("image_ct",), any_of=self.columns, optional=(HEAD_SLICE,))
        return Schema(
            labels=("label",), label_values={"label": (0, 1, 2, 3)}, any_of=self.columns, optional=(HEAD_SLICE,)
        )

    def target(self, case: Case) -> torch.Tensor:
        return class_index(case.labels.get("label"))

    def builder(self, train: bool, cache: DecodedCache | None) -> MultiProtocol:
        o = self.options
        pretext = o.target == "ct"
        return MultiProtocol(
            columns=self.columns,
            size=o.size,
            stack=o.stack,
            present_planes=o.present_planes,
            slices=o.slices,
            slice_axis=o.slice_axis,
            head_column=HEAD_SLICE,
            target_column="image_ct" if pretext else None,
            target=None if pretext else self.target,
            augmentation=o.augmentation() if train else None,
            cache=cache,
        )

    def dicom_expectations(self, column: str) -> tuple[frozenset[str], frozenset[str]]:
        """The paired CT of the pretext stage is a CT; every protocol an MR."""
        return (frozenset({"CT"}) if column == "image_ct" else self.modalities), self.body_parts

    def test_variants(self) -> dict[str, Callable[[Case], Case]]:
        """Each protocol dropped at test time (a case keeps it when it is its only protocol), to measure how
        much the model relies on it."""
        return {f"without {p}": functools.partial(_drop_protocol, column=f"image_{p}") for p in self.options.protocols}

    def evaluate_maps(
        self, cases: Sequence[Case], maps: Mapping[str, Sequence[Path]], out: Path, n_boot: int
    ) -> list[MapEvaluation]:
        """The inter-modality weights (``protocol_weights``, one per protocol and case): the mean weight of each
        protocol over all cases (metrics) and per ARCO stage (report)."""
        if "protocol_weights" not in maps or self.options.target != "stage":
            return []
        return [protocol_weights_by_stage(cases, maps["protocol_weights"], self.options.protocols)]

    def model_kwargs(self) -> dict[str, Any]:
        o = self.options
        if o.stack == "channels":
            channels = len(o.protocols) * (o.slices + (1 if o.present_planes else 0))
        else:
            channels = o.slices
        return {
            "in_chans": channels,
            "num_protocols": len(o.protocols),
            "img_size": o.size,
            "spatial_dims": len(o.size),
        }


def _drop_protocol(case: Case, column: str) -> Case:
    """The case without the image in ``column``, unless that is its only image."""
    if not any(c != column and path for c, path in case.images.items() if c.startswith("image_")):
        return case
    return dataclasses.replace(case, images={c: path for c, path in case.images.items() if c != column})


def protocol_weights_by_stage(cases: Sequence[Case], files: Sequence[Path], protocols: Sequence[str]) -> MapEvaluation:
    """Mean inter-modality weight per protocol, over all cases and per ARCO stage (true label)."""
    weights = np.stack([np.load(f).astype(np.float64).reshape(-1) for f in files])
    labels = np.array([int(c.labels["label"]) if c.labels.get("label") is not None else -1 for c in cases])
    rows = [
        [f"{STAGES[k]} ({int((labels == k).sum())} cases)", *(f"{w:.3f}" for w in weights[labels == k].mean(axis=0))]
        for k in range(len(STAGES))
        if (labels == k).any()
    ]
    rows.append([f"all ({len(cases)} cases)", *(f"{w:.3f}" for w in weights.mean(axis=0))])
    markdown = (
        "Mean inter-modality attention weight of each protocol (which protocol the model relied on), by the "
        "cases' true stage; a missing protocol has weight 0.\n\n" + markdown_table(["stage", *protocols], rows)
    )
    metrics = {"cases": len(cases), **{p: float(w) for p, w in zip(protocols, weights.mean(axis=0), strict=True)}}
    return MapEvaluation("Inter-modality attention per protocol", metrics, markdown)


TASK = OnfhMrStaging
