"""Torch datasets over manifest cases, one sample builder per data shape the five tasks need.

A builder turns one :class:`Case` into a dict of tensors keyed by name (``image``, ``mask``, ``present``,
``label``, ...). Builders split their work in two: :meth:`decode` reads, crops, resamples and normalises a case
(deterministic, so its result is kept in the bounded :class:`~osteoscope.data.cache.DecodedCache` and later
epochs never decode or resample again), and the training augmentation, drawn from the sample's generator and
applied as one deterministic twin to every array of the sample (linear for images and targets, nearest for
masks). :class:`CaseDataset` seeds that generator by (seed, epoch, index), so augmentation replays exactly
after a resumed run, and names the case in every read error.

Shapes:
    * :class:`SingleImage` - one 2-D image, optionally with a region mask (femur, calcaneus).
    * :class:`BilateralRois` - the two femoral-head ROIs of one pelvis radiograph (AsT).
    * :class:`VolumeWithMask` - a 3-D box and its coarse mask (SRANet).
    * :class:`MultiProtocol` - several co-registered images of one hip, some possibly missing (MR fusion),
      optionally with a paired image as the target of a pretext stage (MR -> CT).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset

from osteoscope.data.augment import SpatialAugmentation, apply_transforms
from osteoscope.data.cache import DecodedCache
from osteoscope.data.fingerprints import record
from osteoscope.data.manifest import Box, Case, nearest_name
from osteoscope.data.readers import Image, box_mm_to_voxels, box_to_decoded, check_image, file_shape, read_image
from osteoscope.data.transforms import (
    apply_intensity,
    box_problem,
    crop,
    draw_intensity_params,
    jitter_box,
    resize,
    robust_normalise,
    zscore,
)
from osteoscope.errors import ConfigError, DataError

T = TypeVar("T")
Target = Callable[[Case], torch.Tensor]
Arrays = dict[str, np.ndarray]
HeadRegion = tuple[np.ndarray, Box]
REGION_CONTEXT = 1.5
SIDE_TARGETS = {"none": (0.0, 0.0), "left": (1.0, 0.0), "right": (0.0, 1.0), "both": (1.0, 1.0)}


def side_target(case: Case, label_column: str = "label") -> tuple[float, float]:
    """Per-side target [left, right] from the ``side`` column; -1 where unknown (a negative case is 0, 0)."""
    if case.side is None:
        return (0.0, 0.0) if case.labels.get(label_column) == 0 else (-1.0, -1.0)
    return SIDE_TARGETS[case.side]


class SampleBuilder(Protocol):
    """Turns a case into tensors; ``rng`` is given for training-time augmentation, ``None`` otherwise.

    ``inputs`` names the sample keys a model may take (targets aside), so a model's ``forward`` can be
    checked against them before any data are read.
    """

    @property
    def inputs(self) -> tuple[str, ...]: ...

    def __call__(self, case: Case, rng: np.random.Generator | None) -> dict[str, torch.Tensor]: ...


def read_case_image(case: Case, column: str, ndim: int | None = None) -> Image:
    """Read the file in ``column`` of a case (array and spacing), or raise a DataError naming case and column.

    An image (not a mask) must be ``ndim``-D when given, and usable at all (:func:`check_image`: not tiny,
    finite, not blank); a mask may be empty. An image's pixel hash is recorded when a
    :func:`~osteoscope.data.fingerprints.recording` is active (the case check of training and evaluation).
    """
    path = case.images.get(column) or case.masks.get(column)
    if path is None:
        raise DataError(f"no file in column {column}", case_id=case.case_id)
    image = read_image(path, series=case.series_of(column) if column in case.images else None)
    if column not in case.images:
        return image
    check_image(image, ndim=ndim)
    record(case.case_id, column, image.array, path)
    return image


def read_array(case: Case, column: str, ndim: int | None = None) -> np.ndarray:
    """The pixels of the file in ``column`` of a case as float32 (checked as :func:`read_case_image` does)."""
    return read_case_image(case, column, ndim).array.astype(np.float32, copy=False)


def case_box(case: Case, column: str, shape: tuple[int, ...], image_column: str = "image") -> Box | None:
    """The case's box in ``column`` (None when it has none), checked against the image's ``shape``: a box
    that does not fit (:func:`~osteoscope.data.transforms.box_problem`) is a DataError naming the case, the
    column and the image file."""
    box = case.boxes.get(column)
    problem = None if box is None else box_problem(box, shape)
    if problem is not None:
        path = case.images.get(image_column)
        raise DataError(f"column {column}: {problem}", case_id=case.case_id, path=path)
    return box


def read_mask(case: Case, column: str, shape: tuple[int, ...]) -> np.ndarray:
    """A case's mask, which must have the image's ``shape``."""
    mask = read_array(case, column)
    if mask.shape != shape:
        raise DataError(
            f"mask {column} has shape {mask.shape}, the image {shape}", case_id=case.case_id, path=case.masks[column]
        )
    return mask


def mask_to(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resize a mask and binarise it again."""
    return (resize((mask > 0).astype(np.float32), shape) >= 0.5).astype(np.float32)


def decoded(cache: DecodedCache | None, case: Case, decode: Callable[[Case], T]) -> T:
    """``decode(case)``, kept in ``cache`` (when given) so later epochs do not decode or resample again."""
    return decode(case) if cache is None else cache.get_or_make(case.case_id, lambda: decode(case))


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


@dataclass(kw_only=True)
class Augmentation:
    """Training augmentation of a builder: one spatial draw for all arrays, then intensity on the images.

    Attributes:
        spatial: Flip/rotation/scale/translation ranges (see :class:`SpatialAugmentation`).
        intensity: Strength of the random gamma, contrast, brightness and noise (0 = off).
    """

    spatial: SpatialAugmentation = field(default_factory=SpatialAugmentation)
    intensity: float = 1.0

    def __call__(
        self, arrays: Arrays, rng: np.random.Generator, spatial_dims: int, images: Sequence[str], masks: Sequence[str]
    ) -> Arrays:
        """Augment ``arrays`` of ``spatial_dims`` spatial axes (after an optional channel axis): one spatial
        draw for images, masks and the ``target``, then intensity for ``images`` only."""
        spatial_keys = [k for k in arrays if k in images or k in masks or k == "target"]
        out = dict(arrays)
        out.update(apply_transforms({k: arrays[k] for k in spatial_keys}, self.spatial.draw(rng, spatial_dims), masks))
        if self.intensity > 0:
            params = draw_intensity_params(rng, self.intensity)
            out.update(zip(images, apply_intensity([out[k] for k in images], params), strict=True))
        return out


@dataclass(kw_only=True)
class CachedBuilder:
    """Base of the builders that decode a case once and augment the decoded arrays.

    Subclasses implement :meth:`decode` (deterministic: read, crop, resample, normalise) and
    :meth:`assemble` (arrays -> tensors); ``images`` and ``masks`` name the decoded arrays that are
    images (augmented in intensity) and masks (nearest-neighbour resampling). A decoded ``target`` array is
    an image target (a pretext stage's CT): moved with the images, never intensity-augmented.

    Attributes:
        target: The label of a case (None when the builder makes its own target, or in ``predict``).
        augmentation: Training augmentation, used when the dataset passes a generator.
        cache: Keeps decoded cases between epochs (shared by the training and evaluation builders).
    """

    images: ClassVar[tuple[str, ...]] = ("image",)
    masks: ClassVar[tuple[str, ...]] = ("mask",)
    size: tuple[int, ...]
    target: Target | None = None
    augmentation: Augmentation | None = None
    cache: DecodedCache | None = None

    def decode(self, case: Case) -> Arrays:
        raise NotImplementedError

    def assemble(self, arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __call__(self, case: Case, rng: np.random.Generator | None) -> dict[str, torch.Tensor]:
        arrays = decoded(self.cache, case, self.decode)
        if rng is not None and self.augmentation is not None:
            present = [k for k in self.images if k in arrays]
            masks = [k for k in self.masks if k in arrays]
            arrays = self.augmentation(arrays, rng, len(self.size), present, masks)
        sample = self.assemble(arrays)
        if self.target is not None:
            sample["label"] = self.target(case)
        return sample


def tensor(array: np.ndarray) -> torch.Tensor:
    """A contiguous float32 tensor of a (possibly read-only or strided) array."""
    return torch.from_numpy(np.array(array, dtype=np.float32, copy=True))


@dataclass(kw_only=True)
class MaskedImage(CachedBuilder):
    """An image with an optional mask of the same shape (2-D or 3-D), served as ``image`` (1, ...) and
    ``mask`` (1, ...). With ``mask_as_channel`` the mask is also appended to ``image`` as a second channel,
    for models that take no mask; a case without the mask file then is an error naming the case."""

    mask_column: str | None = None
    mask_as_channel: bool = False

    @property
    def inputs(self) -> tuple[str, ...]:
        """``image``, and ``mask`` when the builder reads one."""
        return ("image",) if self.mask_column is None else ("image", "mask")

    def read_mask(self, case: Case, shape: tuple[int, ...]) -> np.ndarray | None:
        """The case's mask (None when it has none and none is needed)."""
        if self.mask_column is not None and case.masks.get(self.mask_column) is not None:
            return read_mask(case, self.mask_column, shape)
        if self.mask_as_channel:
            raise DataError(f"mask_as_channel needs the mask in column {self.mask_column}", case_id=case.case_id)
        return None

    def assemble(self, arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        sample = {"image": tensor(arrays["image"])[None]}
        if "mask" in arrays:
            sample["mask"] = tensor(arrays["mask"])[None]
            if self.mask_as_channel:
                sample["image"] = torch.cat([sample["image"], sample["mask"]])
        return sample


@dataclass(kw_only=True)
class SingleImage(MaskedImage):
    """One 2-D image resized to ``size`` (H, W) and normalised, with an optional region mask.

    With ``crop_to_box`` the image is first cropped to the square about the box in ``box_column`` when the
    case has one. With a ``mask_column`` the mask is resized alike and served as ``mask`` (1, H, W); with
    ``mask_as_channel`` it is also appended to ``image`` (see :class:`MaskedImage`).
    """

    size: tuple[int, int] = (224, 224)
    image_column: str = "image"
    box_column: str = "box"
    crop_to_box: bool = True

    def decode(self, case: Case) -> Arrays:
        image = read_array(case, self.image_column, ndim=2)
        mask = self.read_mask(case, image.shape)
        box = case_box(case, self.box_column, image.shape, self.image_column) if self.crop_to_box else None
        if box is not None:
            image = crop(image, box, square=True)
            mask = None if mask is None else crop(mask, box, square=True)
        (image,) = robust_normalise([resize(image, self.size)])
        return {"image": image} if mask is None else {"image": image, "mask": mask_to(mask, self.size)}


@dataclass(kw_only=True)
class VolumeWithMask(MaskedImage):
    """A 3-D volume (cropped to ``box`` in voxels, or else to ``box_mm`` in patient LPS mm, when given) and its
    mask, brought to ``size`` (D, H, W).

    With ``keep_aspect`` (default) the crop is resampled to isotropic voxels, the longest physical side
    filling ``size``, and the rest padded, as the SRANet seed crops, resamples and pads the femoral-head box
    to 128^3; otherwise it is stretched to ``size``. Intensities are clipped to ``window`` (e.g. Hounsfield
    units) before the normalisation; padding takes the lowest value. ``normalise`` is ``zscore`` (default: the
    whole padded volume to zero mean and unit SD, as SRANet's loader does) or ``robust`` (the 0.5..99.5th
    percentiles to [-1, 1], as the 2-D builders). The mask is optional (see :class:`MaskedImage`).
    """

    size: tuple[int, int, int] = (128, 128, 128)
    window: tuple[float, float] | None = (-200.0, 1500.0)
    keep_aspect: bool = True
    normalise: str = "zscore"
    image_column: str = "image"
    box_mm_column: str = "box_mm"
    mask_column: str | None = "mask"

    def __post_init__(self) -> None:
        if self.normalise not in ("zscore", "robust"):
            raise ConfigError(f"normalise must be zscore or robust, got {self.normalise!r}")

    @property
    def normalisation(self) -> str:
        """What the intensities go through, for the checkpoint's preprocessing record."""
        if self.normalise == "zscore":
            return f"per case, clipped to {self.window} then a z-score over the whole padded volume"
        return f"per case, clipped to {self.window} then the 0.5th..99.5th percentiles mapped to [-1, 1]"

    def fitted_shape(self, shape: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[int, ...]:
        """Shape of the isotropic resampling whose longest physical side fills ``size``."""
        extent = np.asarray(shape) * np.asarray(spacing)
        voxel = max(extent / np.asarray(self.size))
        return tuple(int(min(s, max(1, round(e / voxel)))) for e, s in zip(extent, self.size, strict=True))

    def decode(self, case: Case) -> Arrays:
        image = read_case_image(case, self.image_column, ndim=3)
        volume = image.array.astype(np.float32, copy=False)
        mask = self.read_mask(case, volume.shape)
        box = case_box(case, "box", volume.shape, self.image_column)
        if box is None and case.boxes.get(self.box_mm_column) is not None:
            box = box_mm_to_voxels(case.boxes[self.box_mm_column], image)
        if box is not None:
            volume = crop(volume, box)
            mask = None if mask is None else crop(mask, box)
        if self.window is not None:
            volume = np.clip(volume, *self.window)
        shape = self.fitted_shape(volume.shape, image.spacing) if self.keep_aspect else self.size
        volume = resize(volume, shape)
        pad = [((s - n) // 2, s - n - (s - n) // 2) for s, n in zip(self.size, shape, strict=True)]
        volume = np.pad(volume, pad, constant_values=volume.min())
        volume = zscore(volume) if self.normalise == "zscore" else robust_normalise([volume])[0]
        if mask is None:
            return {"image": volume}
        return {"image": volume, "mask": np.pad(mask_to(mask, shape), pad)}


@dataclass(kw_only=True)
class MultiProtocol(CachedBuilder):
    """Several images of one case (e.g. five MR protocols), missing ones as zeros, each resized to ``size``.

    With a 2-D ``size`` a protocol may be a 3-D volume: it is cut to ``slices`` (odd) adjacent slices across
    ``slice_axis``, centred on the index in the case's ``head_column`` (the middle slice, ``n // 2``, when the
    cell is empty or the column absent); past the volume's end the edge slice repeats. A 2-D image is one
    slice and needs ``slices`` 1. A 3-D ``size`` takes each volume whole (``slices`` 1).

    ``stack="protocols"`` serves ``image`` as (P, slices, *size) for fusion models that encode each protocol;
    ``stack="channels"`` serves (P * slices, *size) (protocol by protocol, slices in order) as channels of one
    image for a plain CNN, followed, with ``present_planes``, by one constant plane per protocol (1 present, 0
    missing) so the network can tell a missing protocol from a dark one. ``present`` (P,) is always given.
    With ``target_column`` (a pretext stage) the image in that column (of a volume, its head slice), resized
    and normalised alike and moved by the same augmentation, is the ``label`` (1, *size).
    """

    inputs: ClassVar[tuple[str, ...]] = ("image", "present")
    columns: tuple[str, ...] = ("image_t1", "image_t2", "image_pdfs", "image_stir", "image_t1fs")
    size: tuple[int, ...] = (64, 64)
    stack: str = "channels"
    present_planes: bool = True
    slices: int = 1
    slice_axis: int = 0
    head_column: str = "head_slice"
    target_column: str | None = None

    def __post_init__(self) -> None:
        if self.stack not in ("protocols", "channels"):
            raise ValueError(f"stack must be protocols or channels, got {self.stack!r}")
        if self.slices < 1 or self.slices % 2 == 0 or (self.slices > 1 and len(self.size) != 2):
            raise ConfigError(f"slices must be odd, and 1 with a 3-D size; got {self.slices} with size {self.size}")

    def planes(self, case: Case, column: str) -> np.ndarray:
        """The image in ``column`` as (slices, *size) before normalisation: a volume's slices about the head
        slice when ``size`` is 2-D, else the image itself."""
        image = read_case_image(case, column, 3 if len(self.size) == 3 else None)
        array = image.array.astype(np.float32, copy=False)
        if len(self.size) == 3 or array.ndim == 2:
            if self.slices > 1:
                raise DataError(
                    f"column {column} holds a 2-D image; slices: {self.slices} needs 3-D volumes",
                    case_id=case.case_id,
                    path=image.meta.get("path"),
                )
            return resize(array, self.size)[None]
        count = array.shape[self.slice_axis]
        text = case.extra.get(self.head_column, "").strip()
        try:
            centre = count // 2 if not text else int(text)
        except ValueError:
            raise DataError(
                f"column {self.head_column}: {text!r} is not a slice index (a whole number from 0)",
                case_id=case.case_id,
            ) from None
        if not 0 <= centre < count:
            raise DataError(
                f"column {self.head_column}: slice {centre} is outside the {count} slices along axis {self.slice_axis}",
                case_id=case.case_id,
                path=image.meta.get("path"),
            )
        around = np.clip(np.arange(centre - self.slices // 2, centre + self.slices // 2 + 1), 0, count - 1)
        planes = np.moveaxis(np.take(array, around, axis=self.slice_axis), self.slice_axis, 0)
        return np.stack([resize(plane, self.size) for plane in planes])

    def decode(self, case: Case) -> Arrays:
        stack, present = [], []
        for column in self.columns:
            if case.images.get(column) is None:
                stack.append(np.zeros((self.slices, *self.size), np.float32))
                present.append(False)
                continue
            (planes,) = robust_normalise([self.planes(case, column)])
            stack.append(planes)
            present.append(True)
        if not any(present):
            raise DataError(f"none of the images {', '.join(self.columns)} is present", case_id=case.case_id)
        arrays = {"image": np.concatenate(stack), "present": np.array(present)}
        if self.target_column is not None:
            target = self.planes(case, self.target_column)
            (arrays["target"],) = robust_normalise([target[len(target) // 2]])
        return arrays

    def assemble(self, arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        present = torch.from_numpy(np.array(arrays["present"]))
        spatial = [1] * len(self.size)
        image = tensor(arrays["image"]) * present.repeat_interleave(self.slices).view(-1, *spatial)  # missing: 0
        if self.stack == "protocols":
            image = image.view(len(self.columns), self.slices, *self.size)
        elif self.present_planes:
            planes = present.float().view(-1, *spatial).expand(-1, *self.size)
            image = torch.cat([image, planes])
        sample = {"image": image, "present": present}
        if "target" in arrays:
            sample["label"] = tensor(arrays["target"])[None]
        return sample

    @property
    def channels(self) -> int:
        """Input channels of ``image`` in ``stack="channels"`` mode."""
        return len(self.columns) * (self.slices + (1 if self.present_planes else 0))


@dataclass(kw_only=True)
class BilateralRois:
    """The two femoral-head ROIs of an AP pelvis radiograph, for AsT and its baselines.

    Both ROIs are cropped as squares about the manifest boxes, resized to ``size``, normalised jointly, and
    the patient's right ROI is mirrored left-right (``mirror_right``) so both heads face the same way and the
    same pixel means the same anatomy.

    With ``cache`` each radiograph is decoded once and only the two head regions are kept, so later epochs
    do not wait for image decoding. Training and evaluation read the film in full; ``predict`` reads it at
    onfh-xray's reduced scale (boxes mapped from file pixels onto the decoded array), where the head box still
    spans more pixels than the ROI.

    Training augmentation (when the dataset passes a generator): box jitter, one intensity transform for
    both sides, and with probability 0.5 a swap of the two sides (with their side labels) - a mirror image of
    the whole pelvis, which keeps the asymmetry and the label. No further flips or rotations: flipping one
    ROI alone would break the correspondence of the mirrored pair that AsT compares.

    Output keys: ``left``, ``right`` (1, size, size); ``side_label`` (2,) [left, right] with -1 where
    unknown; ``label`` from ``target``.
    """

    inputs: ClassVar[tuple[str, ...]] = ("left", "right")
    size: int = 64
    mirror_right: bool = True
    box_jitter: float = 0.05
    intensity_strength: float = 1.0
    swap_sides: bool = True
    label_column: str = "label"
    image_column: str = "image"
    target: Target | None = None
    cache: DecodedCache | None = None

    def boxes(self, case: Case) -> tuple[Box, Box]:
        """The manifest's head boxes of a case."""
        left, right = case.boxes.get("box_left"), case.boxes.get("box_right")
        if left is None or right is None:
            missing = [name for name, box in (("box_left", left), ("box_right", right)) if box is None]
            other = [column for column in case.boxes if column not in ("box_left", "box_right")]
            near = {column: nearest_name(column, missing) for column in other}
            hint = "".join(f"; column {k} is not read: did you mean {v}?" for k, v in near.items() if v)
            raise DataError(f"no box_left/box_right given (predict finds them with the head localiser){hint}",
                            case_id=case.case_id)  # fmt: skip
        return left, right

    def head_region(self, image: np.ndarray, box: Sequence[float]) -> HeadRegion:
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

    def decode(self, case: Case) -> tuple[HeadRegion, HeadRegion]:
        """Both head regions of a case. The boxes are in the file's pixels; on a reduced decode (``predict``,
        see :func:`~osteoscope.data.readers.decode_once`) they are mapped onto the decoded array."""
        self.boxes(case)  # a missing box is named before the image is read
        image = read_case_image(case, self.image_column, ndim=2)
        shape = file_shape(image)
        left, right = (case_box(case, column, shape, self.image_column) for column in ("box_left", "box_right"))
        return self.head_region(image.array, box_to_decoded(left, image)), self.head_region(
            image.array, box_to_decoded(right, image)
        )

    def crop_rois(self, left: HeadRegion, right: HeadRegion) -> tuple[np.ndarray, np.ndarray]:
        """Crop, resize, mirror and jointly normalise the two ROIs from their regions."""
        shape = (self.size, self.size)
        roi_left = resize(crop(left[0], left[1], square=True), shape)
        roi_right = resize(crop(right[0], right[1], square=True), shape)
        if self.mirror_right:
            roi_right = roi_right[:, ::-1]
        roi_left, roi_right = robust_normalise([roi_left, roi_right])
        return roi_left, roi_right

    def __call__(self, case: Case, rng: np.random.Generator | None) -> dict[str, torch.Tensor]:
        left, right = decoded(self.cache, case, self.decode)
        if rng is not None and self.box_jitter > 0:
            left = (left[0], jitter_box(left[1], rng, self.box_jitter))
            right = (right[0], jitter_box(right[1], rng, self.box_jitter))
        roi_left, roi_right = self.crop_rois(left, right)
        side = side_target(case, self.label_column)
        if rng is not None:
            roi_left, roi_right = apply_intensity(
                [roi_left, roi_right], draw_intensity_params(rng, self.intensity_strength)
            )
            if self.swap_sides and rng.random() < 0.5:
                roi_left, roi_right, side = roi_right, roi_left, side[::-1]
        sample = {
            "left": tensor(roi_left)[None],
            "right": tensor(roi_right)[None],
            "side_label": torch.tensor(side, dtype=torch.float32),
        }
        if self.target is not None:
            sample["label"] = self.target(case)
        return sample
