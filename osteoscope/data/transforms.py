"""Array transforms shared by every data shape: crop, resize, intensity normalisation, augmentation.

Random augmentation follows the TorchIO pattern: :func:`draw_intensity_params` only draws parameters from a
generator and :func:`apply_intensity` applies them deterministically, so a sample is reproducible from its
seed and the drawn parameters can be recorded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def box_problem(box: Sequence[int], shape: Sequence[int]) -> str | None:
    """What makes ``box`` (``x0 y0 x1 y1`` or ``x0 y0 z0 x1 y1 z1``) unusable on an image of ``shape``
    ((y, x) or (z, y, x)), in words, or None when it fits.

    A box fits when it has one start and end per image axis, is no larger than the image along any axis,
    and its centre lies inside the image. It may reach past an edge (a head near the film's border, a
    jittered box): :func:`crop` pads there. A box that is larger than the image, or centred outside it, was
    drawn on another image (another resolution, a 2-D box on a volume) and would crop padding.
    """
    half = len(box) // 2
    axes = "xyz"[:half]
    if half != len(shape):
        return f"a {half}-D box ({len(box)} numbers) cannot crop a {len(shape)}-D image of shape {tuple(shape)}"
    extent = tuple(shape)[::-1]  # (x, y[, z]) like the box
    size = " x ".join(str(n) for n in extent)
    starts, ends = np.asarray(box[:half], dtype=float), np.asarray(box[half:], dtype=float)
    for axis, lo, hi, n in zip(axes, starts, ends, extent, strict=True):
        if hi - lo > n:
            return f"the box is {hi - lo:g} pixels along {axis}, larger than the image ({size} pixels)"
    centre = (starts + ends) / 2
    if np.any(centre < 0) or np.any(centre > np.asarray(extent)):
        where = ", ".join(f"{c:g}" for c in centre)
        return f"the box's centre ({where}) lies outside the image ({size} pixels)"
    return None


def crop(array: np.ndarray, box: Sequence[int], *, square: bool = False) -> np.ndarray:
    """Crop a 2-D (``x0 y0 x1 y1``) or 3-D (``x0 y0 z0 x1 y1 z1``) box, padding with the edge value outside.

    Arrays are (H, W) or (D, H, W), i.e. (y, x) / (z, y, x). With ``square`` the box is grown about its
    centre to equal sides, so resizing keeps the aspect ratio.
    """
    ndim = array.ndim
    half = len(box) // 2
    if half != ndim:
        raise ValueError(f"a {len(box)}-number box does not fit a {ndim}-D image")
    starts = np.asarray(box[:half], dtype=float)
    ends = np.asarray(box[half:], dtype=float)
    if square:
        centre, side = (starts + ends) / 2, (ends - starts).max()
        starts, ends = centre - side / 2, centre + side / 2
    starts_i, ends_i = np.round(starts).astype(int), np.round(ends).astype(int)
    # box is (x, y[, z]); array axes are reversed
    lo, hi = starts_i[::-1], ends_i[::-1]
    pad = [(max(0, -a), max(0, b - n)) for a, b, n in zip(lo, hi, array.shape, strict=True)]
    window = tuple(slice(max(0, a), min(n, b)) for a, b, n in zip(lo, hi, array.shape, strict=True))
    region = array[window]
    if any(p for pair in pad for p in pair):
        region = np.pad(region, pad, mode="edge")
    return region


def resize(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resize a 2-D or 3-D array to ``shape`` (area-averaged when shrinking, linear when growing)."""
    if tuple(array.shape) == tuple(shape):
        return array.astype(np.float32, copy=False)
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    mode = "bilinear" if array.ndim == 2 else "trilinear"
    antialias = array.ndim == 2 and any(s < a for s, a in zip(shape, array.shape, strict=True))
    out = F.interpolate(tensor, size=tuple(shape), mode=mode, align_corners=False, antialias=antialias)
    return out[0, 0].numpy()


def percentiles(values: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """The ``low`` and ``high`` percentiles of ``values`` as ``np.percentile`` gives them (linear
    interpolation), from one partial sort: about twice as fast, which matters on the per-sample path."""
    n = values.size
    positions = np.array([low, high]) / 100 * (n - 1)
    below = np.floor(positions).astype(int)
    above = np.minimum(below + 1, n - 1)
    ranked = np.partition(values, np.unique(np.concatenate([below, above])))
    weight = positions - below
    lo, hi = ranked[below] * (1 - weight) + ranked[above] * weight
    return float(lo), float(hi)


def robust_normalise(arrays: Sequence[np.ndarray], low: float = 0.5, high: float = 99.5) -> list[np.ndarray]:
    """Map arrays jointly so their ``low``..``high`` percentiles span [-1, 1] (one transform for all).

    Normalising the two femoral heads together keeps their intensity difference, which is the signal AsT
    looks for; normalising each alone would erase a global density change of one head.
    """
    lo, hi = percentiles(np.concatenate([a.ravel() for a in arrays]), low, high)
    scale = 2.0 / max(float(hi - lo), 1e-6)
    return [((a - lo) * scale - 1.0).astype(np.float32) for a in arrays]


def zscore(array: np.ndarray) -> np.ndarray:
    """Zero mean, unit standard deviation over the whole array (MONAI's ``NormalizeIntensity``, as SRANet's
    loader applies it); a constant array becomes zeros."""
    std = float(array.std())
    return ((array - float(array.mean())) / (std if std > 1e-6 else 1.0)).astype(np.float32)


def draw_intensity_params(rng: np.random.Generator, strength: float = 1.0) -> dict[str, float]:
    """Draw a random gamma, contrast, brightness and noise level (``strength`` 0 disables all)."""
    return {
        "gamma": float(np.exp(rng.uniform(-0.3, 0.3) * strength)),
        "contrast": float(1 + rng.uniform(-0.15, 0.15) * strength),
        "brightness": float(rng.uniform(-0.1, 0.1) * strength),
        "noise": float(rng.uniform(0, 0.03) * strength),
        "noise_seed": int(rng.integers(2**31)),
    }


def apply_intensity(arrays: Sequence[np.ndarray], params: dict[str, float]) -> list[np.ndarray]:
    """Apply parameters from :func:`draw_intensity_params` identically to arrays normalised to [-1, 1].

    Computed in float32 and in place on fresh arrays: this runs for every training sample.
    """
    noise_rng = np.random.default_rng(int(params["noise_seed"]))
    gamma, contrast, brightness, noise = (np.float32(params[k]) for k in ("gamma", "contrast", "brightness", "noise"))
    out = []
    for array in arrays:
        x = np.clip((np.asarray(array, dtype=np.float32) + 1) * np.float32(0.5), 0, 1)
        np.power(x, gamma, out=x)
        x *= 2 * contrast  # (2u - 1) * contrast + brightness
        x += brightness - contrast
        if noise > 0:
            x += noise_rng.standard_normal(x.shape, dtype=np.float32) * noise
        out.append(x)
    return out


def jitter_box(box: Sequence[int], rng: np.random.Generator, amount: float) -> tuple[int, ...]:
    """Shift and scale a box randomly by up to ``amount`` of its size (a positioning augmentation)."""
    half = len(box) // 2
    starts = np.asarray(box[:half], dtype=float)
    ends = np.asarray(box[half:], dtype=float)
    size = ends - starts
    centre = (starts + ends) / 2 + rng.uniform(-amount, amount, size=half) * size
    size = size * (1 + rng.uniform(-amount, amount))
    return tuple(round(float(v)) for v in (*(centre - size / 2), *(centre + size / 2)))
