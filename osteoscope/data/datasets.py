"""Torch datasets over manifest cases, one sample builder per data shape the five tasks need.

A builder turns one :class:`Case` into a dict of tensors; :class:`CaseDataset` adds per-sample seeding
(reproducible augmentation, independent of worker count) and names the case in every read error.

Shapes:
    * :class:`SingleImage` - one 2-D image (femur fracture radiographs).
    * :class:`BilateralRois` - the two femoral-head ROIs of one pelvis radiograph (AsT).
    * :class:`VolumeWithMask` - a 3-D box and its coarse mask (SRANet).
    * :class:`MultiProtocol` - several co-registered images of one hip, some possibly missing (MR fusion).
    * :class:`ImageWithMask` - a 2-D image, a rough region mask and a multi-label target (MSRT).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from osteoscope.data.manifest import Box, Case
from osteoscope.data.readers import Image, read_image
from osteoscope.data.transforms import (
    apply_intensity,
    crop,
    draw_intensity_params,
    jitter_box,
    resize,
    robust_normalise,
)
from osteoscope.errors import DataError

LabelKind = Literal["binary", "multiclass", "multilabel"]
HeadRegion = tuple[np.ndarray, Box]
REGION_CONTEXT = 1.5
SIDE_TARGETS = {"none": (0.0, 0.0), "left": (1.0, 0.0), "right": (0.0, 1.0), "both": (1.0, 1.0)}


def side_target(case: Case, label_column: str = "label") -> tuple[float, float]:
    """Per-side target [left, right] from the ``side`` column; -1 where unknown (a negative case is 0, 0)."""
    if case.side is None:
        return (0.0, 0.0) if case.labels.get(label_column) == 0 else (-1.0, -1.0)
    return SIDE_TARGETS[case.side]


class SampleBuilder(Protocol):
    """Turns a case into tensors; ``rng`` is given for training-time augmentation, ``None`` otherwise."""

    def __call__(self, case: Case, rng: np.random.Generator | None) -> dict[str, torch.Tensor]: ...


def read_case_image(case: Case, column: str) -> Image:
    """Read the file in ``column`` of a case (array and spacing), or raise a DataError naming case and column."""
    path = case.images.get(column) or case.masks.get(column)
    if path is None:
        raise DataError(f"no file in column {column}", case_id=case.case_id)
    return read_image(path)


def read_array(case: Case, column: str) -> np.ndarray:
    """The pixels of the file in ``column`` of a case as float32."""
    return read_case_image(case, column).array.astype(np.float32, copy=False)


def read_with_mask(case: Case, image_column: str, mask_column: str) -> tuple[Image, np.ndarray]:
    """Read an image (with its spacing) and its mask, which must have the same shape."""
    image, mask = read_case_image(case, image_column), read_array(case, mask_column)
    if mask.shape != image.array.shape:
        raise DataError(f"mask shape {mask.shape} differs from image shape {image.array.shape}", case_id=case.case_id)
    return image, mask


def label_target(case: Case, columns: Sequence[str], kind: LabelKind) -> torch.Tensor:
    """The training target of a case: a float 0/1 (binary), a class index, or a 0/1 vector (multi-label).

    A missing label gives NaN (binary/multi-label) or -1 (multi-class), which losses and metrics mask out.
    """
    values = [case.labels.get(column) for column in columns]
    if kind == "multiclass":
        return torch.tensor(-1 if values[0] is None else values[0], dtype=torch.long)
    floats = torch.tensor([float("nan") if v is None else float(v) for v in values], dtype=torch.float32)
    return floats[0] if kind == "binary" else floats


class CaseDataset(Dataset):
    """Cases of a manifest through a sample builder.

    Args:
        cases: The cases to serve.
        builder: Turns a case into tensors.
        augment: Give the builder a generator seeded from ``(seed, epoch, index)`` so every sample's
            augmentation is reproducible, including after a resumed run.
        seed: Base seed of the augmentation.
    """

    def __init__(self, cases: Sequence[Case], builder: SampleBuilder, *, augment: bool = False, seed: int = 0):
        self.cases = list(cases)
        self.builder = builder
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.cases)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation stream (call once per epoch)."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        case = self.cases[index]
        rng = np.random.default_rng((self.seed, self.epoch, index)) if self.augment else None
        try:
            sample = self.builder(case, rng)
        except DataError as error:
            raise (error if error.case_id else error.with_case(case.case_id)) from None
        sample["index"] = torch.tensor(index)
        return sample


@dataclass
class BilateralRois:
    """The two femoral-head ROIs of an AP pelvis radiograph, for AsT and its baselines.

    Both ROIs are cropped as squares about the manifest boxes (or boxes from ``locate`` when the manifest
    has none), resized to ``size``, normalised jointly, and the patient's right ROI is mirrored left-right
    (``mirror_right``) so both heads face the same way and the same pixel means the same anatomy.

    With ``cache`` (a dict, shareable between builders) each radiograph is decoded once and only the two
    head regions are kept, so later epochs do not wait for image decoding.

    Training augmentation (when the dataset passes a generator): box jitter, one intensity transform for
    both sides, and with probability 0.5 a swap of the two sides (with their side labels) - a mirror image of
    the whole pelvis, which keeps the asymmetry and the label.

    Output keys: ``left``, ``right`` (1, size, size); ``label`` (float, NaN if unknown); ``side_label`` (2,)
    [left, right] with -1 where unknown.
    """

    size: int = 64
    mirror_right: bool = True
    box_jitter: float = 0.05
    intensity_strength: float = 1.0
    swap_sides: bool = True
    label_column: str = "label"
    image_column: str = "image"
    locate: Callable[[np.ndarray], dict[str, Box]] | None = None
    cache: dict[str, tuple[HeadRegion, HeadRegion]] | None = None

    def boxes(self, case: Case, image: np.ndarray) -> tuple[Box, Box]:
        left, right = case.boxes.get("box_left"), case.boxes.get("box_right")
        if left is None or right is None:
            if self.locate is None:
                raise DataError("no box_left/box_right given and no head localiser configured", case_id=case.case_id)
            found = self.locate(image)
            left, right = found["left"], found["right"]
        return left, right

    def head_region(self, image: np.ndarray, box: Box) -> HeadRegion:
        """The square neighbourhood of a head box (``REGION_CONTEXT`` x its side, room for jitter), shrunk so
        the box spans at most ``2 * size`` pixels, and the box in the region's coordinates.

        Every path (training, evaluation, prediction) crops its ROI from such a region, so they all see the
        same pixels; the region is small enough to keep in memory for the whole dataset.
        """
        x0, y0, x1, y1 = box
        side = max(x1 - x0, y1 - y0)
        half = side * REGION_CONTEXT / 2
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        outer = (round(cx - half), round(cy - half), round(cx + half), round(cy + half))
        region = crop(image, outer)
        factor = min(1.0, 2 * self.size / side)
        region = resize(region, [max(1, round(n * factor)) for n in region.shape])
        fx, fy = region.shape[1] / (outer[2] - outer[0]), region.shape[0] / (outer[3] - outer[1])
        local = (
            round((x0 - outer[0]) * fx),
            round((y0 - outer[1]) * fy),
            round((x1 - outer[0]) * fx),
            round((y1 - outer[1]) * fy),
        )
        return region, local

    def regions(self, case: Case) -> tuple[HeadRegion, HeadRegion]:
        """Both head regions of a case, read from disk once per case when ``cache`` is set."""
        if self.cache is not None and case.case_id in self.cache:
            return self.cache[case.case_id]
        image = read_array(case, self.image_column)
        left, right = self.boxes(case, image)
        found = (self.head_region(image, left), self.head_region(image, right))
        if self.cache is not None:
            self.cache[case.case_id] = found
        return found

    def crop_rois(self, left: HeadRegion, right: HeadRegion) -> tuple[np.ndarray, np.ndarray]:
        """Crop, resize, mirror and jointly normalise the two ROIs from their regions."""
        shape = (self.size, self.size)
        roi_left = resize(crop(left[0], left[1], square=True), shape)
        roi_right = resize(crop(right[0], right[1], square=True), shape)
        if self.mirror_right:
            roi_right = roi_right[:, ::-1]
        roi_left, roi_right = robust_normalise([roi_left, roi_right])
        return roi_left, roi_right

    def rois(self, image: np.ndarray, left: Box, right: Box) -> tuple[np.ndarray, np.ndarray]:
        """The two normalised ROIs of a whole image and its head boxes (no augmentation)."""
        return self.crop_rois(self.head_region(image, left), self.head_region(image, right))

    def __call__(self, case: Case, rng: np.random.Generator | None) -> dict[str, torch.Tensor]:
        left, right = self.regions(case)
        if rng is not None and self.box_jitter > 0:
            left = (left[0], jitter_box(left[1], rng, self.box_jitter))
            right = (right[0], jitter_box(right[1], rng, self.box_jitter))
        roi_left, roi_right = self.crop_rois(left, right)
        label = label_target(case, [self.label_column], "binary")
        side = side_target(case, self.label_column)
        if rng is not None:
            roi_left, roi_right = apply_intensity(
                [roi_left, roi_right], draw_intensity_params(rng, self.intensity_strength)
            )
            if self.swap_sides and rng.random() < 0.5:
                roi_left, roi_right, side = roi_right, roi_left, side[::-1]
        return {
            "left": torch.from_numpy(np.ascontiguousarray(roi_left))[None],
            "right": torch.from_numpy(np.ascontiguousarray(roi_right))[None],
            "label": label,
            "side_label": torch.tensor(side, dtype=torch.float32),
        }


@dataclass
class SingleImage:
    """One 2-D image resized to ``size`` (H, W) and normalised; cropped first to the square about the box in
    ``box_column`` when the case has one."""

    size: tuple[int, int] = (224, 224)
    label_columns: tuple[str, ...] = ("label",)
    kind: LabelKind = "binary"
    image_column: str = "image"
    box_column: str = "box"

    def __call__(self, case: Case, rng: np.random.Generator | None) -> dict[str, torch.Tensor]:
        image = read_array(case, self.image_column)
        if case.boxes.get(self.box_column) is not None:
            image = crop(image, case.boxes[self.box_column], square=True)
        (image,) = robust_normalise([resize(image, self.size)])
        if rng is not None:
            (image,) = apply_intensity([image], draw_intensity_params(rng))
        return {"image": torch.from_numpy(image)[None], "label": label_target(case, self.label_columns, self.kind)}


def _mask_to(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resize a mask and binarise it again."""
    return (resize((mask > 0).astype(np.float32), shape) >= 0.5).astype(np.float32)


@dataclass
class VolumeWithMask:
    """A 3-D volume (cropped to ``box`` when given) and its mask, brought to ``size`` (D, H, W).

    With ``keep_aspect`` (default) the crop is resampled to isotropic voxels, the longest physical side
    filling ``size``, and the rest padded, as the SRANet seed crops, resamples and pads the femoral-head box
    to 128^3; otherwise it is stretched to ``size``. Intensities are clipped to ``window`` (e.g. Hounsfield
    units) before the normalisation; padding takes the lowest value.
    """

    size: tuple[int, int, int] = (128, 128, 128)
    window: tuple[float, float] | None = (-200.0, 1500.0)
    keep_aspect: bool = True
    label_columns: tuple[str, ...] = ("label",)
    kind: LabelKind = "binary"
    image_column: str = "image"
    mask_column: str = "mask"

    def fitted_shape(self, shape: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[int, ...]:
        """Shape of the isotropic resampling whose longest physical side fills ``size``."""
        extent = np.asarray(shape) * np.asarray(spacing)
        voxel = max(extent / np.asarray(self.size))
        return tuple(int(min(s, max(1, round(e / voxel)))) for e, s in zip(extent, self.size, strict=True))

    def __call__(self, case: Case, rng: np.random.Generator | None) -> dict[str, torch.Tensor]:
        image, mask = read_with_mask(case, self.image_column, self.mask_column)
        volume = image.array
        box = case.boxes.get("box")
        if box is not None:
            volume, mask = crop(volume, box), crop(mask, box)
        if self.window is not None:
            volume = np.clip(volume, *self.window)
        shape = self.fitted_shape(volume.shape, image.spacing) if self.keep_aspect else self.size
        volume, mask = resize(volume, shape), _mask_to(mask, shape)
        pad = [((s - n) // 2, s - n - (s - n) // 2) for s, n in zip(self.size, shape, strict=True)]
        volume = np.pad(volume, pad, constant_values=volume.min())
        (volume,) = robust_normalise([volume])
        return {
            "image": torch.from_numpy(volume)[None],
            "mask": torch.from_numpy(np.pad(mask, pad))[None],
            "label": label_target(case, self.label_columns, self.kind),
        }


@dataclass
class MultiProtocol:
    """Several images of one case (e.g. five MR protocols) stacked as (P, 1, *size), missing ones as zeros.

    ``present`` (P,) tells the model which protocols exist, so fusion can ignore the missing ones.
    """

    columns: tuple[str, ...] = ("image_t1", "image_t2", "image_pdfs", "image_stir", "image_t1fs")
    size: tuple[int, ...] = (64, 64, 64)
    label_columns: tuple[str, ...] = ("label",)
    kind: LabelKind = "multiclass"

    def __call__(self, case: Case, rng: np.random.Generator | None) -> dict[str, torch.Tensor]:
        stack, present = [], []
        for column in self.columns:
            if case.images.get(column) is None:
                stack.append(np.zeros(self.size, np.float32))
                present.append(False)
                continue
            (array,) = robust_normalise([resize(read_array(case, column), self.size)])
            stack.append(array)
            present.append(True)
        if not any(present):
            raise DataError(f"none of the images {', '.join(self.columns)} is present", case_id=case.case_id)
        return {
            "image": torch.from_numpy(np.stack(stack))[:, None],
            "present": torch.tensor(present),
            "label": label_target(case, self.label_columns, self.kind),
        }


@dataclass
class ImageWithMask:
    """A 2-D image with a rough region mask, resized to ``size``, and a multi-label target."""

    label_columns: tuple[str, ...]
    size: tuple[int, int] = (256, 256)
    image_column: str = "image"
    mask_column: str = "mask_rough"

    def __call__(self, case: Case, rng: np.random.Generator | None) -> dict[str, torch.Tensor]:
        image, mask = read_with_mask(case, self.image_column, self.mask_column)
        (pixels,) = robust_normalise([resize(image.array, self.size)])
        return {
            "image": torch.from_numpy(pixels)[None],
            "mask": torch.from_numpy(_mask_to(mask, self.size))[None],
            "label": label_target(case, self.label_columns, "multilabel"),
        }
