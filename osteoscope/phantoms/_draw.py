"""Drawing and image-writing helpers shared by the radiograph phantoms.

Shapes are evaluated in anatomical millimetres on small pixel crops, so that a study costs a few
milliseconds: a :class:`Grid` maps an anatomical bounding box to the pixel window that covers it and
hands back the coordinates of that window only. Every shape returns its *projected thickness* (the
length of the X-ray path through it, in mm), which is what a radiograph adds up.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import distance_transform_edt, gaussian_filter

from osteoscope.errors import ConfigError

FloatArray = np.ndarray


@dataclass(frozen=True)
class Crop:
    """A pixel window of a :class:`Grid` with the anatomical coordinates of its pixel centres."""

    rows: slice
    cols: slice
    x: FloatArray
    y: FloatArray


class Grid:
    """Affine map between pixel indices and anatomical millimetres for one image.

    Args:
        shape: Image shape ``(rows, cols)``.
        origin: Anatomical coordinates of the centre of pixel ``(0, 0)``.
        du: Anatomical step for one pixel to the right.
        dv: Anatomical step for one pixel down.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        origin: tuple[float, float],
        du: tuple[float, float],
        dv: tuple[float, float],
    ) -> None:
        self.shape = shape
        self.origin = np.asarray(origin, dtype=np.float64)
        self.matrix = np.array([[du[0], dv[0]], [du[1], dv[1]]], dtype=np.float64)
        self.inverse = np.linalg.inv(self.matrix)

    def to_pixel(self, x: float, y: float) -> tuple[float, float]:
        """Return the ``(col, row)`` pixel position of an anatomical point."""
        col, row = self.inverse @ (np.array([x, y]) - self.origin)
        return float(col), float(row)

    def crop(self, x0: float, y0: float, x1: float, y1: float) -> Crop | None:
        """Return the pixel window covering an anatomical box, or ``None`` if it misses the image."""
        corners = [self.to_pixel(x, y) for x in (x0, x1) for y in (y0, y1)]
        cols = [c for c, _ in corners]
        rows = [r for _, r in corners]
        c0 = max(math.floor(min(cols)), 0)
        c1 = min(math.ceil(max(cols)) + 1, self.shape[1])
        r0 = max(math.floor(min(rows)), 0)
        r1 = min(math.ceil(max(rows)) + 1, self.shape[0])
        if c0 >= c1 or r0 >= r1:
            return None
        u = np.arange(c0, c1, dtype=np.float32)[None, :]
        v = np.arange(r0, r1, dtype=np.float32)[:, None]
        m = self.matrix.astype(np.float32)
        x = np.float32(self.origin[0]) + m[0, 0] * u + m[0, 1] * v
        y = np.float32(self.origin[1]) + m[1, 0] * u + m[1, 1] * v
        return Crop(slice(r0, r1), slice(c0, c1), x, y)

    def full(self) -> Crop:
        """Return the whole image as one crop."""
        x0, y0 = self.origin
        corner = self.origin + self.matrix @ np.array([self.shape[1] - 1, self.shape[0] - 1])
        crop = self.crop(min(x0, corner[0]), min(y0, corner[1]), max(x0, corner[0]), max(y0, corner[1]))
        assert crop is not None
        return crop


def sphere(x: FloatArray, y: FloatArray, cx: float, cy: float, r: float) -> FloatArray:
    """Projected thickness of a ball: the chord length ``2 sqrt(r² - d²)``."""
    d2 = (x - cx) ** 2 + (y - cy) ** 2
    return 2.0 * np.sqrt(np.maximum(r * r - d2, 0.0))


def ellipsoid(
    x: FloatArray, y: FloatArray, cx: float, cy: float, a: float, b: float, depth: float, angle: float = 0.0
) -> FloatArray:
    """Projected thickness of an ellipsoid with in-plane semi-axes ``a, b`` rotated by ``angle`` (rad)."""
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = x - cx, y - cy
    q = ((c * dx + s * dy) / a) ** 2 + ((-s * dx + c * dy) / b) ** 2
    return 2.0 * depth * np.sqrt(np.maximum(1.0 - q, 0.0))


def ellipse_radius(
    x: FloatArray, y: FloatArray, cx: float, cy: float, a: float, b: float, angle: float = 0.0
) -> FloatArray:
    """Normalised elliptic radius (1 on the outline) of an ellipse rotated by ``angle`` (rad)."""
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = x - cx, y - cy
    return np.sqrt(((c * dx + s * dy) / a) ** 2 + ((-s * dx + c * dy) / b) ** 2)


def segment_distance(
    x: FloatArray, y: FloatArray, p0: tuple[float, float], p1: tuple[float, float]
) -> tuple[FloatArray, FloatArray]:
    """Distance to the segment ``p0``–``p1`` and the clamped position ``t`` in [0, 1] along it."""
    ex, ey = p1[0] - p0[0], p1[1] - p0[1]
    length2 = max(ex * ex + ey * ey, 1e-9)
    t = np.clip(((x - p0[0]) * ex + (y - p0[1]) * ey) / length2, 0.0, 1.0)
    dist = np.sqrt((x - p0[0] - t * ex) ** 2 + (y - p0[1] - t * ey) ** 2)
    return dist, t


def tube(
    x: FloatArray,
    y: FloatArray,
    p0: tuple[float, float],
    p1: tuple[float, float],
    r0: float,
    r1: float,
    wall: float | None = None,
) -> FloatArray:
    """Projected thickness of a tapered capsule; with ``wall`` only its shell of that thickness.

    A hollow tube seen side-on gives the bright cortical margins of a long bone for free.
    """
    dist, t = segment_distance(x, y, p0, p1)
    r = r0 + (r1 - r0) * t
    outer = 2.0 * np.sqrt(np.maximum(r * r - dist * dist, 0.0))
    if wall is None:
        return outer
    ri = np.maximum(r - wall, 0.0)
    return outer - 2.0 * np.sqrt(np.maximum(ri * ri - dist * dist, 0.0))


def band(d: FloatArray, width: float) -> FloatArray:
    """Gaussian ridge of half-width ``width`` along the zero level of ``d``."""
    return np.exp(-((d / width) ** 2))


def smoothstep(v: FloatArray, lo: float, hi: float) -> FloatArray:
    """Cubic step from 0 at ``lo`` to 1 at ``hi``."""
    t = np.clip((v - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@dataclass(frozen=True)
class FourierField:
    """A smooth random field as a sum of plane waves, defined in anatomical coordinates.

    Being a closed-form function of position, the same field reappears exactly in a follow-up study
    taken with another pose, which a pixel-noise texture could not do.
    """

    kx: FloatArray
    ky: FloatArray
    phase: FloatArray
    amp: FloatArray

    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        n: int,
        wavelength: tuple[float, float],
        anisotropy: float = 1.0,
        angle: float = 0.0,
    ) -> FourierField:
        """Draw ``n`` waves with wavelengths in ``wavelength`` (mm), unit total variance.

        ``anisotropy`` > 1 stretches the waves along ``angle`` (rad), giving streaks along it.
        """
        lam = rng.uniform(*wavelength, size=n)
        theta = rng.uniform(0.0, 2.0 * math.pi, size=n)
        k = 2.0 * math.pi / lam
        ku = k * np.cos(theta) / anisotropy
        kv = k * np.sin(theta)
        c, s = math.cos(angle), math.sin(angle)
        kx = c * ku - s * kv
        ky = s * ku + c * kv
        amp = rng.uniform(0.5, 1.0, size=n)
        amp = amp / math.sqrt(float(np.sum(amp**2)) / 2.0)
        return cls(
            kx.astype(np.float32),
            ky.astype(np.float32),
            rng.uniform(0.0, 2.0 * math.pi, size=n).astype(np.float32),
            amp.astype(np.float32),
        )

    def __call__(self, x: FloatArray, y: FloatArray, cx: float = 0.0, cy: float = 0.0) -> FloatArray:
        """Evaluate the field at positions relative to ``(cx, cy)``; ``x`` may be mirrored by the caller."""
        dx, dy = x - np.float32(cx), y - np.float32(cy)
        out = np.zeros(np.broadcast_shapes(dx.shape, dy.shape), dtype=np.float32)
        for kx, ky, ph, a in zip(self.kx, self.ky, self.phase, self.amp, strict=True):
            out += a * np.cos(kx * dx + ky * dy + ph)
        return out


def polygon_labels(grid: Grid, polygons: list[np.ndarray]) -> np.ndarray:
    """Label image of polygons given as ``(n, 2)`` arrays of anatomical mm: polygon ``i`` is ``i + 1``.

    Later polygons cover earlier ones; up to 255 polygons. Rasterising an outline costs far less than
    evaluating a distance to each of its edges at every pixel.
    """
    image = Image.new("L", (grid.shape[1], grid.shape[0]), 0)
    draw = ImageDraw.Draw(image)
    for value, points in enumerate(polygons, start=1):
        pixels = (np.asarray(points, dtype=np.float64) - grid.origin) @ grid.inverse.T
        draw.polygon(pixels.ravel().tolist(), fill=value)
    return np.asarray(image)


def inner_distance(labels: np.ndarray, spacing: float) -> FloatArray:
    """Distance (mm) from each labelled pixel to the outline of its region; 0 outside all regions.

    Pixels touching another label count as outline, so touching regions stay separate. The distance is
    smoothed over about a pixel, which turns the staircase of a rasterised outline into a smooth edge.
    """
    contact = np.zeros(labels.shape, dtype=bool)
    for a, b, ca, cb in (
        (labels[1:], labels[:-1], contact[1:], contact[:-1]),
        (labels[:, 1:], labels[:, :-1], contact[:, 1:], contact[:, :-1]),
    ):
        touch = (a != b) & (a > 0) & (b > 0)
        ca |= touch
        cb |= touch
    inside = (labels > 0) & ~contact
    distance = distance_transform_edt(inside).astype(np.float32) - np.float32(0.5)
    distance[~inside] = -0.5
    return np.maximum(gaussian_filter(distance, 0.8, truncate=2.5), 0.0) * np.float32(spacing)


def rounded_slab(
    d: FloatArray, width: FloatArray | float, radius: FloatArray | float, wall: FloatArray | float = 0.0
) -> tuple[FloatArray, FloatArray]:
    """Projected path lengths through a slab seen side-on, at inner distance ``d`` from its outline.

    The slab is ``width`` thick with its rim rounded by ``radius`` (a chord profile, so outlines fade in
    like a real bone's); ``wall`` is its cortex. Returns ``(cortex, cancellous)`` path lengths in mm.
    """

    def chord(depth: FloatArray, r: FloatArray | float) -> FloatArray:
        t = np.clip(depth / r, 0.0, 1.0)
        return np.sqrt(t * (2.0 - t))

    outer = width * chord(d, radius)
    inner = np.maximum(width - 2.0 * wall, 0.0) * chord(d - wall, np.maximum(radius - wall, 0.1))
    return outer - inner, inner


def write_png16(path: str | Path, pixels: np.ndarray) -> None:
    """Write a 16-bit grayscale PNG with the 'Up' row filter and fast zlib.

    Pillow's encoder spends most of its time choosing filters for noisy 16-bit data; one fixed filter
    is three times faster at the same file size, which matters when writing hundreds of studies.
    """
    rows, cols = pixels.shape
    data = np.ascontiguousarray(pixels, dtype=">u2").view(np.uint8).reshape(rows, 2 * cols)
    up = np.empty((rows, 2 * cols + 1), dtype=np.uint8)
    up[:, 0] = 2
    up[0, 1:] = data[0]
    np.subtract(data[1:], data[:-1], out=up[1:, 1:])  # uint8 arithmetic wraps modulo 256, as PNG wants

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", cols, rows, 16, 0, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(up.tobytes(), 1))
        + chunk(b"IEND", b"")
    )
    Path(path).write_bytes(png)


def check_count_and_subtlety(n: int, subtlety: float) -> None:
    """Reject a study count that is not a positive integer or a subtlety outside [0, 1]."""
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    if not 0.0 <= subtlety <= 1.0:
        raise ConfigError(f"subtlety must lie in [0, 1], got {subtlety!r}")


def check_image_size(image_size: tuple[int, int]) -> None:
    """Reject an image size that is not (rows, cols) with both at least 64 pixels."""
    if len(image_size) != 2 or min(image_size) < 64:
        raise ConfigError(f"image_size must be (rows, cols) with both at least 64, got {image_size!r}")
