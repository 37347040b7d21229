"""SRANet's coarse bone mask for CT (seed section II-B: adaptive threshold, erosion and dilation), and the tool
that writes one per case of a dataset into its manifest's ``mask`` column.

:func:`bone_mask`, in order:

1. **Adaptive threshold.** A three-class Otsu threshold on the histogram of the body's voxels
   (``body_hu`` <= HU < ``metal_hu``): the classes come out as fat, soft tissue and bone, and the upper cut
   is the bone threshold. Two classes would split fat from muscle instead (-32 HU on the real pelvis CT,
   where three classes give -44 and 202 HU). The cut is clamped into ``bone_hu``, so a scan with little bone
   in view, or heavy streaks, cannot move it into soft tissue or dense cortex; ``bone_hu`` (t, t) fixes it.
   Then, by hysteresis, voxels from ``grow_hu`` up to the threshold join the mask where they connect
   (6-connected) to it: the cancellous interior of bone, including that of a shaft or neck cut by the
   volume's border, which no plane of step 3 encloses (on the phantom's crops this lifts the Dice with the
   true mask from 0.88 to 0.95). Muscle (about 50 HU) reaches ``grow_hu`` only as isolated noise.
2. **Closing** (dilation then erosion, ``close_mm``) seals small gaps in a thin or partial-volumed cortex.
3. **Hole filling** per axial, coronal and sagittal plane, holes of at most ``max_hole_mm2`` each: a
   femoral head's trabecular interior is partly below the threshold while its cortex is a closed ring in
   most planes, even where the 3-D shell opens into the neck and the shaft's marrow; the area limit keeps
   the pelvic cavity, ringed by bone in some axial planes, out. (Smaller rings of bone, such as the
   obturator foramen, are filled: the mask is coarse.)
4. **Opening** (erosion then dilation, ``open_mm``) removes specks of noise and thin bridges to vessels.
5. **Metal** (HU >= ``metal_hu``) and every voxel within ``metal_margin_mm`` of it are removed from the
   mask, so an implant, and the bright streaks right beside it, never count as bone even where step 3
   enclosed it (a stem inside the femoral canal).
6. **Components** (26-connected) smaller than ``min_volume_ml`` are dropped.

Radii in mm become half-widths in voxels per axis (rounded down), so a radius under one voxel's size along
an axis leaves that axis alone; the structuring element is the ellipsoid of those half-widths. The volume
is padded by edge replication before each morphological step, so bone cut by the volume's border is not
eroded from it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import io_orientation, ornt_transform
from scipy import ndimage

from osteoscope.data.manifest import SkippedCase, load_manifest, manifest_path, read_rows, write_manifest
from osteoscope.data.readers import Image, read_image
from osteoscope.errors import ConfigError, DataError

MASK_COLUMN = "mask"
MASK_FOLDER = "masks"
_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class BoneMaskParams:
    """Parameters of :func:`bone_mask` (HU, mm, mL).

    Attributes:
        body_hu: Voxels at or above it are the body (air and lung below); the threshold's histogram is theirs.
        bone_hu: (low, high) range the adaptive bone threshold is clamped into; equal ends fix it.
        metal_hu: Voxels at or above it are metal: never bone, left out of the histogram.
        metal_margin_mm: Voxels within this distance of metal are left out of the mask too.
        close_mm: Radius of the closing that seals gaps in the cortex before holes are filled.
        open_mm: Radius of the opening that removes specks and thin bridges after holes are filled.
        max_hole_mm2: Largest hole, per plane, that is filled: a femoral head's section (radius up to about
            30 mm, 2800 mm^2) is, the pelvic cavity (about 10^4 mm^2) is not.
        min_volume_ml: Connected pieces of the mask smaller than this are dropped.
        bins: Histogram bins of the threshold, spread evenly over [body_hu, metal_hu).
        grow_hu: Voxels at or above it that connect to the thresholded bone join it (cancellous bone);
            None grows nothing.
    """

    body_hu: float = -500.0
    bone_hu: tuple[float, float] = (150.0, 400.0)
    metal_hu: float = 2500.0
    metal_margin_mm: float = 3.0
    close_mm: float = 3.0
    open_mm: float = 1.0
    max_hole_mm2: float = 4000.0
    min_volume_ml: float = 1.0
    bins: int = 256
    grow_hu: float | None = 120.0

    def __post_init__(self) -> None:
        low, high = self.bone_hu
        if self.grow_hu is not None and not self.body_hu <= self.grow_hu <= low:
            raise ConfigError(f"bone mask: grow_hu {self.grow_hu:g} must lie in [body_hu, bone_hu low]")
        if not self.body_hu < low <= high < self.metal_hu:
            raise ConfigError(
                f"bone mask: need body_hu < bone_hu low <= high < metal_hu, got {self.body_hu:g}, "
                f"({low:g}, {high:g}), {self.metal_hu:g}"
            )
        lengths = (self.metal_margin_mm, self.close_mm, self.open_mm, self.max_hole_mm2, self.min_volume_ml)
        if min(lengths) < 0:
            raise ConfigError("bone mask: margins, radii, hole area and minimum volume must not be negative")
        if self.bins < 3:
            raise ConfigError(f"bone mask: bins must be at least 3, got {self.bins}")


def bone_threshold(volume: np.ndarray, params: BoneMaskParams) -> float:
    """The adaptive bone threshold (HU) of ``volume``: the upper cut of a three-class Otsu threshold on the
    body's voxels, clamped into ``params.bone_hu`` (its low end when the body is empty)."""
    low, high = params.bone_hu
    body = volume[(volume >= params.body_hu) & (volume < params.metal_hu)]
    counts, edges = np.histogram(body, bins=params.bins, range=(params.body_hu, params.metal_hu))
    if counts.sum() == 0:
        return float(low)
    p = counts / counts.sum()
    centres = (edges[:-1] + edges[1:]) / 2
    w, m = np.cumsum(p), np.cumsum(p * centres)
    # Class 0 ends at bin i, class 1 at bin j > i; maximise sum_k w_k mu_k^2 (the between-class variance).
    w0, w1, w2 = w[:, None], w[None, :] - w[:, None], 1.0 - w[None, :]
    m0, m1, m2 = m[:, None], m[None, :] - m[:, None], m[-1] - m[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = m0**2 / w0 + m1**2 / w1 + m2**2 / w2
    tiny = 1e-12
    valid = np.triu(np.ones_like(between, dtype=bool), k=1) & (w0 > tiny) & (w1 > tiny) & (w2 > tiny)
    if not valid.any():
        return float(low)
    _, j = np.unravel_index(np.argmax(np.where(valid, between, -np.inf)), between.shape)
    return float(np.clip(edges[j + 1], low, high))


def bone_mask(volume: np.ndarray, spacing: Sequence[float], params: BoneMaskParams | None = None) -> np.ndarray:
    """The coarse bone mask (uint8, 1 = bone) of a CT ``volume`` (z, y, x) in HU with ``spacing`` (mm, same
    axes), by the steps of the module docstring. Metal (>= ``metal_hu``) and a ``metal_margin_mm`` margin
    around it are always outside the mask: an implant never fills it."""
    params = params or BoneMaskParams()
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise DataError(f"a bone mask needs a 3-D CT volume, got an array of shape {volume.shape}")
    sp = np.asarray(spacing, dtype=float)
    metal = volume >= params.metal_hu
    mask = (volume >= bone_threshold(volume, params)) & ~metal
    if params.grow_hu is not None:
        labels, count = ndimage.label((volume >= params.grow_hu) & ~metal)
        seeded = np.zeros(count + 1, dtype=bool)
        seeded[labels[mask]] = True
        seeded[0] = False
        mask = seeded[labels]
    mask = _morph(ndimage.binary_closing, mask, _ball(params.close_mm, sp))
    mask = fill_planes(mask, sp, params.max_hole_mm2)
    mask = _morph(ndimage.binary_opening, mask, _ball(params.open_mm, sp))
    if metal.any():
        mask &= ~_morph(ndimage.binary_dilation, metal, _ball(params.metal_margin_mm, sp))
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count:
        volume_ml = np.bincount(labels.ravel()) * float(np.prod(sp)) / 1000.0
        keep = volume_ml >= params.min_volume_ml
        keep[0] = False
        mask = keep[labels]
    return mask.astype(np.uint8)


def fill_planes(mask: np.ndarray, spacing: Sequence[float], max_hole_mm2: float = math.inf) -> np.ndarray:
    """``mask`` with its holes filled in every axial, coronal and sagittal plane (each plane's holes from
    the mask as given, not from the other planes' filling), each hole only up to ``max_hole_mm2``."""
    sp = np.asarray(spacing, dtype=float)
    filled = mask.copy()
    for axis in range(3):
        pixel_mm2 = float(np.prod(np.delete(sp, axis)))
        out = np.moveaxis(filled, axis, 0)
        for i, plane in enumerate(np.moveaxis(mask, axis, 0)):
            holes = ndimage.binary_fill_holes(plane) & ~plane
            if math.isfinite(max_hole_mm2) and holes.any():
                labels, _ = ndimage.label(holes)
                small = np.bincount(labels.ravel()) * pixel_mm2 <= max_hole_mm2
                small[0] = False
                holes = small[labels]
            out[i] |= holes
    return filled


def _ball(radius_mm: float, spacing: np.ndarray) -> np.ndarray | None:
    """The ellipsoidal structuring element of ``radius_mm`` on voxels of ``spacing``, or None when it does
    not reach a neighbour along any axis."""
    half = np.floor(radius_mm / spacing + 1e-6).astype(int)
    if not half.any():
        return None
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    return sum((g * s / radius_mm) ** 2 for g, s in zip(grids, spacing, strict=True)) <= 1.0 + 1e-6


def _morph(operation: Callable[..., np.ndarray], mask: np.ndarray, structure: np.ndarray | None) -> np.ndarray:
    """``operation`` (a scipy binary morphology) with ``structure`` on ``mask`` padded by edge replication,
    so the volume's border acts as more of the same, not as background; ``mask`` itself when no structure."""
    if structure is None:
        return mask
    pad = [(n // 2, n // 2) for n in structure.shape]
    out = operation(np.pad(mask, pad, mode="edge"), structure=structure)
    return out[tuple(slice(p, p + n) for (p, _), n in zip(pad, mask.shape, strict=True))]


@dataclass(frozen=True)
class MaskRun:
    """What :func:`write_bone_masks` did: the manifest it updated, the case ids whose mask it wrote, kept
    (an existing mask, without ``overwrite``) or skipped (``skip_bad``, with the reason), and the mean volume
    in mL of the masks it computed, a mask shared by cases of one image counted once (None: none computed)."""

    manifest: Path
    written: list[str]
    kept: list[str]
    skipped: list[SkippedCase]
    mean_volume_ml: float | None


def write_bone_masks(
    dataset: str | Path,
    params: BoneMaskParams | None = None,
    *,
    overwrite: bool = False,
    skip_bad: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> MaskRun:
    """Write the coarse bone mask of every case's ``image`` (a NIfTI file or a DICOM series folder) to
    ``masks/<case_id>_bone.nii.gz`` beside the manifest and name it in the ``mask`` column.

    Every other row and column is kept as it was. A case whose ``mask`` is filled keeps it unless
    ``overwrite``; cases naming the same image share the first one's mask file. The manifest is rewritten
    atomically after every mask, so an interruption loses at most the case being computed. The mask file
    has the image's voxel grid: a NIfTI source's own voxel order and affine; for a DICOM source, the
    reader's (z, y, x) array in LPS order with a diagonal affine of the voxel spacing and origin 0 (the
    series' position in the scanner is not kept), which every reader maps back voxel for voxel.

    Args:
        dataset: Dataset folder or its manifest.csv.
        params: Bone mask parameters (defaults: :class:`BoneMaskParams`).
        overwrite: Recompute masks the manifest already names.
        skip_bad: Leave out cases that are invalid or unreadable (listed in the result and the log, their rows
            kept unchanged) instead of raising.
        progress: Called as ``progress(i, n)`` after each of the ``n`` cases.

    Raises:
        DataError: the manifest is invalid, or (without ``skip_bad``) a case is, or its image is unreadable
            or not a 3-D volume; the error names the case and file.
    """
    params = params or BoneMaskParams()
    path = manifest_path(dataset)
    manifest = load_manifest(path, required_columns=("image",), skip_bad=skip_bad)
    columns, rows = read_rows(path)
    columns = columns if MASK_COLUMN in columns else [*columns, MASK_COLUMN]
    row_of = {row["case_id"].strip(): row for row in rows}
    written: list[str] = []
    kept: list[str] = []
    skipped = list(manifest.skipped)
    by_image: dict[Path, str] = {}  # image -> the mask written for it in this run
    volumes: list[float] = []
    for i, case in enumerate(manifest.cases, start=1):
        row, source = row_of[case.case_id], case.images["image"]
        if (row.get(MASK_COLUMN) or "").strip() and not overwrite:
            kept.append(case.case_id)
        elif source in by_image:
            row[MASK_COLUMN] = by_image[source]
            written.append(case.case_id)
        else:
            try:
                image = read_image(source, voi=False)
                mask = bone_mask(image.array, image.spacing, params)
            except DataError as error:
                error = DataError(error.reason, case_id=case.case_id, path=error.path or source)
                if not skip_bad:
                    raise error from None
                _LOG.warning("skipped: %s", error)
                skipped.append(SkippedCase(case.case_id, str(error)))
            else:
                relative = f"{MASK_FOLDER}/{case.case_id}_bone.nii.gz"
                save_mask(mask, image, path.parent / relative)
                row[MASK_COLUMN] = by_image[source] = relative
                volumes.append(float(mask.sum()) * float(np.prod(image.spacing)) / 1000.0)
                written.append(case.case_id)
                write_manifest(path, rows, columns)
                _LOG.info("case %s: bone mask %.1f mL -> %s", case.case_id, volumes[-1], relative)
        if progress is not None:
            progress(i, len(manifest.cases))
    write_manifest(path, rows, columns)
    return MaskRun(path, written, kept, skipped, float(np.mean(volumes)) if volumes else None)


def save_mask(mask: np.ndarray, image: Image, target: Path) -> Path:
    """Write ``mask`` (z, y, x, on ``image``'s grid) as a uint8 NIfTI at ``target``, in the geometry
    :func:`write_bone_masks` describes, so :func:`~osteoscope.data.readers.read_image` returns it on the
    image's grid."""
    voxels = np.ascontiguousarray(mask.transpose(2, 1, 0)).astype(np.uint8)  # (x, y, z), LPS voxel axes
    if image.meta.get("format") == "nifti":
        lps_affine = np.asarray(image.meta["affine"], dtype=float)
        source = nib.load(image.meta["path"]).affine  # header only
        nifti = nib.Nifti1Image(voxels, lps_affine)
        nifti = nifti.as_reoriented(ornt_transform(io_orientation(lps_affine), io_orientation(source)))
        nifti = nib.Nifti1Image(np.asarray(nifti.dataobj, dtype=np.uint8), source)
    else:
        dz, dy, dx = image.spacing
        nifti = nib.Nifti1Image(voxels, np.diag([-dx, -dy, dz, 1.0]))  # RAS world, LPS voxel axes
    nifti.set_qform(nifti.affine, code=1)
    nifti.set_sform(nifti.affine, code=1)
    target.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nifti, target)
    return target
