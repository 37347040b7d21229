"""Automatic femoral-head boxes on CT, for volumes whose manifest gives none (beyond the seed, whose boxes
were drawn by hand). Classical, no training, so it does not depend on a phantom looking real:

1. bone is ``bone_hu`` <= HU < ``metal_hu``, holes filled in every axial, coronal and sagittal plane (the
   head's trabecular interior is often below the threshold while its cortex is closed); metal is never bone;
2. the Euclidean distance to the nearest non-bone voxel, in mm, peaks at the centre of every thick, round
   piece of bone; a femoral head is the thickest such ball (its radius, less the thin cortex' partial volume,
   is the peak's value). A head sits in the acetabular cup: along many directions from its centre the bone
   ends near the ball's surface (within ``round_mm``) and bone comes back across the joint space within
   ``roof_mm``. Only peaks where that holds for at least ``cover`` of all directions count; the bony
   acetabulum spans about 40% of the sphere, so a quarter of it is a lenient bar. The greater trochanter and
   the base of the neck fail it (their bone runs on into the shaft and the neck, or ends in muscle), and so
   do the femoral shaft and the thick parts of the ilium, which have no ball nested under them;
3. the two heads are the pair of peaks (``radius_mm`` each, not on the volume's border) that sit side by side:
   ``pair_mm`` apart left-right, within ``offset_mm`` in height and depth, radii within ``radius_ratio``, the
   pair with the largest summed radius. The ratio is loose (2) because the disease this task grades
   flattens one head and cuts its measured radius (a collapsed segment, a crescent), and the cup test, not
   the size, already keeps out the trochanters. A volume too narrow for a pair (a crop around one hip) gives
   its one thickest peak, with the side left open; a wide scan whose heads in cups all lie on one side of
   the body's midline (the other hip replaced by a metal implant, or its head not found) gives the thickest
   of them with that side;
4. the box is a cube of ``box_mm`` around each centre (the phantom's crop is 76 mm), clipped to the volume.

Sides follow the reader's LPS axes: the array's x index grows toward the patient's left. A head with metal
within ``metal_margin_mm`` (a prosthesis, a neck screw) is reported with the reason, not silently boxed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from osteoscope.errors import DataError
from osteoscope.tasks.avnfh_ct.masks import fill_planes

_BODY_HU = -500.0  # above air: the body, whose left-right middle splits the sides when one head is found


@dataclass(frozen=True)
class HeadFinder:
    """Parameters of :func:`find_heads` (HU, mm)."""

    bone_hu: float = 200.0
    metal_hu: float = 2500.0
    radius_mm: tuple[float, float] = (9.0, 32.0)
    pair_mm: tuple[float, float] = (110.0, 260.0)
    offset_mm: float = 30.0
    radius_ratio: float = 2.0
    box_mm: float = 76.0
    metal_margin_mm: float = 15.0
    round_mm: float = 8.0
    roof_mm: float = 15.0
    cover: float = 0.1
    directions: int = 256


@dataclass(frozen=True)
class FoundHead:
    """One femoral head: ``side`` right/left (or "" when one hip alone was in view), centre (z, y, x) in
    voxels, radius (mm) of the largest bone ball there, ``cover`` (the share of directions in which a cup
    surrounds it), the box (x0 y0 z0 x1 y1 z1, end exclusive) and ``metal``, the implant voxels within the
    margin (0: none)."""

    side: str
    centre: tuple[float, float, float]
    radius_mm: float
    cover: float
    box: tuple[int, int, int, int, int, int]
    metal: int


def _peaks(thickness: np.ndarray, spacing: np.ndarray, finder: HeadFinder) -> list[tuple[np.ndarray, float]]:
    """Local maxima of the bone thickness map inside ``radius_mm``, away from the border, thickest first."""
    window = np.maximum(3, np.round(finder.radius_mm[0] / spacing).astype(int) * 2 + 1)
    local = thickness == ndimage.maximum_filter(thickness, size=tuple(window))
    low, high = finder.radius_mm
    found = np.argwhere(local & (thickness >= low) & (thickness <= high))
    shape = np.array(thickness.shape)
    inside = ((found >= 1) & (found <= shape - 2)).all(axis=1)
    found = found[inside]
    order = np.argsort(-thickness[tuple(found.T)], kind="stable")
    return [(found[i].astype(float), float(thickness[tuple(found[i])])) for i in order]


def _box(centre: np.ndarray, spacing: np.ndarray, shape: Sequence[int], box_mm: float) -> tuple[int, ...]:
    """The cube of ``box_mm`` around ``centre`` (z, y, x), as x0 y0 z0 x1 y1 z1 clipped to the volume."""
    half = box_mm / 2 / spacing
    lo = np.clip(np.floor(centre - half), 0, None).astype(int)
    hi = np.minimum(np.ceil(centre + half).astype(int) + 1, np.asarray(shape))
    return int(lo[2]), int(lo[1]), int(lo[0]), int(hi[2]), int(hi[1]), int(hi[0])


def find_heads(volume: np.ndarray, spacing: Sequence[float], finder: HeadFinder | None = None) -> list[FoundHead]:
    """The femoral heads of a CT volume (z, y, x) in HU with ``spacing`` (dz, dy, dx) mm: two, patient right
    first, or one: side "" when the volume is too narrow for a pair, its side when a wide scan shows one.

    Raises:
        DataError: when no piece of bone is thick and round enough to be a femoral head in a cup, or heads
            found on both sides of a wide scan do not pair up.
    """
    finder = finder or HeadFinder()
    sp = np.asarray(spacing, dtype=float)
    metal = volume >= finder.metal_hu
    bone = (volume >= finder.bone_hu) & ~metal
    filled = fill_planes(bone, sp)
    thickness = ndimage.distance_transform_edt(filled, sampling=sp)
    rays = _directions(finder.directions)
    scored = ((c, r, _cover(filled, bone, c, r, sp, rays, finder)) for c, r in _peaks(thickness, sp, finder))
    peaks = [(c, r, share) for c, r, share in scored if share >= finder.cover]
    if not peaks:
        raise DataError(
            f"no bone ball of radius {finder.radius_mm[0]:g}-{finder.radius_mm[1]:g} mm above {finder.bone_hu:g} HU "
            f"in a cup (cover >= {finder.cover:g}): the volume shows no femoral head (or give the box in the manifest)"
        )
    width = volume.shape[2] * sp[2]
    best: tuple[float, int, int] | None = None
    for i, (a, ra, _) in enumerate(peaks):
        for j in range(i + 1, len(peaks)):
            b, rb, _ = peaks[j]
            d = (b - a) * sp
            apart = abs(d[2])
            if not (finder.pair_mm[0] <= apart <= finder.pair_mm[1]):
                continue
            if abs(d[0]) > finder.offset_mm or abs(d[1]) > finder.offset_mm:
                continue
            if max(ra, rb) / min(ra, rb) > finder.radius_ratio:
                continue
            if best is None or ra + rb > best[0]:
                best = (ra + rb, i, j)
    if best is None and width < finder.pair_mm[0]:
        chosen = [("", peaks[0])]
    elif best is None:
        # A wide scan with one head alone (the other replaced by an implant, or not found): its side is
        # the side of the body's midline it lies on. Heads on both sides that do not pair up are doubtful.
        midline = float(np.argwhere((volume > _BODY_HU).any(axis=(0, 1)))[[0, -1]].mean())
        sides = {"right" if c[2] < midline else "left" for c, _, _ in peaks}
        if len(sides) == 2:
            raise DataError(
                f"{len(peaks)} bone balls found in cups, but no two side by side {finder.pair_mm[0]:g}-"
                f"{finder.pair_mm[1]:g} mm apart at one height: give the boxes in the manifest"
            )
        chosen = [(sides.pop(), peaks[0])]
    else:
        a, b = peaks[best[1]], peaks[best[2]]
        right, left = (a, b) if a[0][2] < b[0][2] else (b, a)  # x grows toward the patient's left
        chosen = [("right", right), ("left", left)]
    heads = []
    for side, (centre, radius, share) in chosen:
        near = 0
        if metal.any():
            near = int((metal & _ball_mask(volume.shape, centre, sp, radius + finder.metal_margin_mm)).sum())
        box = _box(centre, sp, volume.shape, finder.box_mm)
        heads.append(FoundHead(side, tuple(centre.tolist()), radius, share, box, near))
    return heads


def _directions(n: int) -> np.ndarray:
    """``n`` unit vectors (dz, dy, dx) spread evenly over the sphere (a Fibonacci lattice)."""
    k = np.arange(n) + 0.5
    dz = 1.0 - 2.0 * k / n
    phi = np.pi * (1.0 + np.sqrt(5.0)) * k
    ring = np.sqrt(1.0 - dz * dz)
    return np.stack([dz, ring * np.sin(phi), ring * np.cos(phi)], axis=1)


def _cover(
    filled: np.ndarray,
    bone: np.ndarray,
    centre: np.ndarray,
    radius: float,
    spacing: np.ndarray,
    rays: np.ndarray,
    finder: HeadFinder,
) -> float:
    """The share of ``rays`` from ``centre`` along which the filled bone ends within ``round_mm`` of the
    ball's surface and bone comes back within ``roof_mm`` after that: how much of a cup surrounds the ball.
    The exit is taken on the filled mask, so a head's low-density interior and the shaft's marrow are not
    mistaken for a joint space; outside the volume counts as no bone."""
    step = float(spacing.min()) / 2
    t = np.arange(0.0, radius + finder.round_mm + finder.roof_mm, step)
    points = np.round(centre + rays[:, None, :] * t[None, :, None] / spacing).astype(int)
    shape = np.array(bone.shape)
    inside = ((points >= 0) & (points < shape)).all(axis=-1)
    z, y, x = np.moveaxis(np.clip(points, 0, shape - 1), -1, 0)
    solid = filled[z, y, x] & inside
    hard = bone[z, y, x] & inside
    leaves = ~solid.all(axis=1)
    exit_mm = np.where(leaves, t[np.argmin(solid, axis=1)], np.inf)
    after = (t > exit_mm[:, None]) & (t <= exit_mm[:, None] + finder.roof_mm)
    cupped = (exit_mm <= radius + finder.round_mm) & (hard & after).any(axis=1)
    return float(cupped.mean())


def _ball_mask(shape: Sequence[int], centre: np.ndarray, spacing: np.ndarray, radius_mm: float) -> np.ndarray:
    """Voxels within ``radius_mm`` of ``centre``."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing, strict=True))
    return d2 <= radius_mm**2
