"""Task ``onfh-xray``: ONFH yes/no from the two femoral heads of an AP pelvis radiograph (AsT seed).

Binary, with a per-side score for each head. The sample is the pair of head ROIs (the patient's right one
mirrored); the loss is AsT's bilateral objective (patient BCE + per-side BCE + difference loss, Eq. 3).
``predict`` takes a radiograph with the two head boxes, or finds them with the femoral-head localiser of
:mod:`osteoscope.tasks.onfh_xray.localizer` (stored as ``RUN/localizer.pt``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from osteoscope.data.cache import DecodedCache
from osteoscope.data.datasets import BilateralRois, side_target
from osteoscope.data.manifest import Box, Case
from osteoscope.data.readers import box_to_file, check_image, decode_scale, read_image
from osteoscope.errors import DataError
from osteoscope.heads import BinaryHead, Head
from osteoscope.losses import BilateralLoss
from osteoscope.phantoms import onfh_xray as onfh_xray_phantom
from osteoscope.tasks.base import CasePredicate, ExtraEvaluation, Schema, StudyInputs, Task, label_of

LOCALIZER_FILE = "localizer.pt"
EXAMPLES = 5  # case ids quoted in a warning about many cases


def centre_x(box: Box) -> float:
    """The horizontal centre of a box (2-D ``x0 y0 x1 y1``, or 3-D), in image columns."""
    return (box[0] + box[len(box) // 2]) / 2


def sides_swapped(case: Case) -> bool:
    """Whether a case's ``box_left`` lies left of its ``box_right`` on the image.

    The manifest's sides are the patient's, and on a standard AP pelvis film (the phantom draws them so) the
    patient's left hip appears on the image's right: ``box_left`` must be the box further right.
    """
    left, right = case.boxes.get("box_left"), case.boxes.get("box_right")
    return left is not None and right is not None and centre_x(left) < centre_x(right)


@dataclass(frozen=True)
class Options:
    """Sample options of ``onfh-xray``.

    Attributes:
        roi_size: Side of each femoral-head ROI after resizing, in pixels.
        mirror_right: Mirror the patient's right ROI so both heads face the same way.
        box_jitter: Training-time random shift/scale of the ROI boxes, as a fraction of the box size.
        intensity: Strength of the training intensity augmentation (0 = off).
        swap_sides: Swap the two sides (and their side labels) in half of the training samples.
    """

    roi_size: int = 64
    mirror_right: bool = True
    box_jitter: float = 0.05
    intensity: float = 1.0
    swap_sides: bool = True


@dataclass(frozen=True)
class LossOptions:
    """AsT's bilateral loss.

    Attributes:
        diff_weight: Weight of the difference loss (AsT Eq. 3; the paper does not give it).
        margin: The margin m of Eq. 3.
        side_weight: Weight of the per-side BCE.
        pos_weight: Positive-class weight of the patient-level BCE, or None.
    """

    diff_weight: float = 0.1
    margin: float = 1.0
    side_weight: float = 0.5
    pos_weight: float | None = None


class OnfhXray(Task):
    name = "onfh-xray"
    description = "ONFH yes/no (+ per-side scores) from the two femoral heads of an AP pelvis radiograph (AsT)"
    default_model = "ast"
    phantom = staticmethod(onfh_xray_phantom.generate)
    Options = Options
    LossOptions = LossOptions
    extra_outputs: ClassVar[Mapping[str, tuple[str, ...]]] = {"side_logits": ("p_left", "p_right")}
    modalities = frozenset({"CR", "DX"})
    body_parts = frozenset({"PELVIS", "HIP"})
    phantom_gap = (
        "Measured on 31 real adult AP pelvis films outside this repository (issue 10): AsT trained on the "
        "earlier, geometric hip phantom called 28 of them ONFH at p >= 0.5, 4 of the 5 normal films included."
    )

    @property
    def study_min_side(self) -> int:
        """``predict`` decodes a film at the coarsest scale keeping 8 ROI sides on its shorter side: a femoral
        head spans about a sixth of it, so the head box keeps more pixels than the ROI (1/4 of a 2,048 px film)."""
        return 8 * self.options.roi_size

    @property
    def head(self) -> Head:
        return BinaryHead(("no ONFH", "ONFH"))

    @property
    def schema(self) -> Schema:
        return Schema(
            labels=("label",),
            label_values={"label": (0, 1)},
            required=("image",),
            optional=("side", "stage", "box_left", "box_right"),
        )

    def target(self, case: Case) -> torch.Tensor:
        return torch.tensor(label_of(case, "label"), dtype=torch.float32)

    def builder(self, train: bool, cache: DecodedCache | None) -> BilateralRois:
        o = self.options
        return BilateralRois(
            size=o.roi_size,
            mirror_right=o.mirror_right,
            box_jitter=o.box_jitter if train else 0.0,
            intensity_strength=o.intensity,
            swap_sides=o.swap_sides and train,
            target=self.target,
            cache=cache,
        )

    def loss(self) -> nn.Module:
        o = self.loss_options
        return BilateralLoss(
            diff_weight=o.diff_weight, margin=o.margin, side_weight=o.side_weight, pos_weight=o.pos_weight
        )

    def model_kwargs(self) -> dict[str, Any]:
        return {"img_size": self.options.roi_size, "in_chans": 1, "spatial_dims": 2}

    def check(self, cases: Sequence[Case]) -> list[str]:
        """A warning when boxes sit on the wrong side for an AP film (see :func:`sides_swapped`)."""
        swapped = [case.case_id for case in cases if sides_swapped(case)]
        if not swapped:
            return []
        examples = ", ".join(swapped[:EXAMPLES]) + (", ..." if len(swapped) > EXAMPLES else "")
        return [
            f"{len(swapped)} of {len(cases)} case(s) have box_left left of box_right on the image ({examples}); "
            "on an AP film the patient's left hip is on the image's right: check the box columns or the orientation"
        ]

    def subsets(self) -> dict[str, CasePredicate]:
        def stages(*included: int) -> CasePredicate:
            return lambda case: case.labels.get("label") == 0 or case.stage in included

        return {"early (ARCO I-II)": stages(1, 2), "late (ARCO III-IV)": stages(3, 4)}

    def extra_evaluations(
        self, cases: Sequence[Case], outputs: Mapping[str, np.ndarray], groups: np.ndarray
    ) -> list[ExtraEvaluation]:
        """Per hip: each head's side score against its side label, wherever the side is known."""
        if "side_logits" not in outputs:
            return []
        targets = np.array([side_target(case) for case in cases])
        known = targets >= 0
        head = BinaryHead(("no ONFH", "ONFH"))
        if not known.any() or not head.evaluable(targets[known]):
            return []
        hip_groups = np.repeat(groups[:, None], 2, axis=1)[known]
        return [
            ExtraEvaluation("per hip (side scores)", head, targets[known], outputs["side_logits"][known], hip_groups)
        ]

    def study_case(self, inputs: StudyInputs, run_dir: Path) -> Case:
        """A radiograph with ``box_left``/``box_right``, or boxes found by the localiser
        (``--localizer FILE``, default ``RUN/localizer.pt``), the patient side decided from the file's DICOM
        tags and a burned-in marker (:mod:`osteoscope.tasks.onfh_xray.sides`). A film on which the localiser
        finds no plausible pair of heads, or degenerate boxes, is an error naming the file and the reason.
        What was found (per side: centre, radius, box, confidence; the side's source; flags such as a marker
        contradicting the tags) and the localiser's held-out centre error go into the case's ``extra`` for
        :meth:`check_study` and the prediction's ``study_info``."""
        case = super().study_case(inputs, run_dir)
        if {"box_left", "box_right"} <= set(case.boxes):
            return case
        if case.boxes:
            raise DataError("give both head boxes (--box left=... --box right=...) or neither")
        from osteoscope.tasks.onfh_xray.localizer import confidence_floor, find_heads, implausible_heads, load_localizer

        image = check_image(read_image(case.images["image"]), ndim=2)  # a bad radiograph is named as such
        path = Path(inputs.files.get("localizer") or run_dir / LOCALIZER_FILE)
        if not path.is_file():
            raise DataError(
                "no head localiser found: pass --localizer FILE or --box left=... --box right=...", path=path
            )
        localizer = load_localizer(path)
        hint = "give the boxes with --box left=... --box right=..."
        try:
            heads = find_heads(localizer, image.array, tags=image.meta.get("view_tags", {}))
        except DataError as error:
            raise DataError(
                f"the femoral-head localiser ({path}) found no plausible pair of heads: {error.reason}; {hint}",
                path=case.images["image"],
            ) from None
        problems = implausible_heads(heads, image.array.shape)
        if problems:
            raise DataError(
                f"the femoral-head localiser ({path}) found no plausible pair of heads: {'; '.join(problems)}; {hint}",
                path=case.images["image"],
            )
        extra = {"localizer": str(path), **heads.info(decode_scale(image))}
        floor = confidence_floor(localizer)
        if floor is not None:
            extra["localizer_confidence_floor"] = f"{floor:.4f}"
            extra["localizer_held_out_centre_error_px"] = f"{localizer.held_out['centre_error_px']:.2f}"
        boxes = {"box_left": box_to_file(heads.left, image), "box_right": box_to_file(heads.right, image)}
        return Case(case.case_id, "", case.images, boxes=boxes, extra=extra)

    def check_study(self, case: Case, profile: Mapping[str, Any] | None) -> list[str]:
        """The generic checks, the localiser's flags (e.g. a side marker contradicting the DICOM tags), and its
        confidence against its floor from held-out patients."""
        problems = super().check_study(case, profile)
        if case.extra.get("localizer_flags"):
            problems.append(f"head localiser: {case.extra['localizer_flags']}")
        if "localizer_confidence_floor" in case.extra:
            confidence, floor = (
                float(case.extra["localizer_confidence"]),
                float(case.extra["localizer_confidence_floor"]),
            )
            if confidence < floor:
                problems.append(
                    f"the head localiser's confidence {confidence:.3f} is below {floor:.3f}, half its median on "
                    "held-out patients: the image may not show a pelvis"
                )
        return problems


TASK = OnfhXray
