"""Film-level effects of a projection radiograph: detector noise, collimation, burned-in markers and text.

These act on the displayed image (a float array in [0, 1], bone bright) at the film's full resolution,
after the anatomy has been rendered, so a 3,000-px film costs a few array passes, not a re-render.
Text uses Pillow's bundled FreeType font (``ImageFont.load_default(size)``), so the same seed draws
the same pixels on every machine.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import gaussian_filter

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, end exclusive


def correlated_noise(rng: np.random.Generator, shape: tuple[int, int], grain_px: float) -> np.ndarray:
    """Unit-variance Gaussian noise whose power spectrum falls off beyond ``1 / grain_px``.

    A detector's noise is not white: the scintillator spreads each quantum over neighbouring pixels.
    A Gaussian kernel of ``grain_px`` pixels gives that low-pass noise power spectrum.
    """
    white = rng.standard_normal(shape, dtype=np.float32)
    if grain_px < 0.3:
        return white
    smooth = gaussian_filter(white, grain_px, truncate=3.0)
    # Variance of white noise after a Gaussian of sigma s is about 1 / (4 pi s^2).
    return smooth * np.float32(2.0 * math.sqrt(math.pi) * grain_px)


def rotated_rect_mask(shape: tuple[int, int], rect: tuple[float, float, float, float], angle: float) -> np.ndarray:
    """Float mask (1 inside) of the rectangle ``(x0, y0, x1, y1)`` rotated by ``angle`` (rad) about its centre."""
    x0, y0, x1, y1 = rect
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    hw, hh = (x1 - x0) / 2.0, (y1 - y0) / 2.0
    c, s = math.cos(angle), math.sin(angle)
    corners = [(cx + c * u - s * v, cy + s * u + c * v) for u, v in ((-hw, -hh), (hw, -hh), (hw, hh), (-hw, hh))]
    image = Image.new("L", (shape[1], shape[0]), 0)
    ImageDraw.Draw(image).polygon(corners, fill=255)
    return np.asarray(image, dtype=np.float32) / np.float32(255.0)


def collimation_field(
    rng: np.random.Generator, shape: tuple[int, int], keep: list[Box], max_inset: float, max_angle_deg: float
) -> tuple[np.ndarray, tuple[float, float, float, float], float]:
    """Draw a collimated (exposed) field: a tilted, possibly off-centre rectangle that keeps ``keep`` inside.

    Returns the field mask (1 exposed, 0 shuttered, with a penumbra of a few pixels), its rectangle
    before rotation and its angle. Insets are shrunk until every box of ``keep`` lies in the field.
    """
    rows, cols = shape
    angle = math.radians(float(rng.uniform(-max_angle_deg, max_angle_deg)))
    insets = rng.uniform(0.0, max_inset, size=4) * np.array([cols, rows, cols, rows])
    insets *= rng.random(4) < 0.75  # some borders are not collimated at all
    for _ in range(40):
        rect = (insets[0], insets[1], cols - insets[2], rows - insets[3])
        mask = rotated_rect_mask(shape, rect, angle)
        if all(mask[y0:y1, x0:x1].min() > 0.5 for x0, y0, x1, y1 in keep):
            break
        insets *= 0.8
        angle *= 0.8
    else:
        rect, angle = (0.0, 0.0, float(cols), float(rows)), 0.0
        mask = np.ones(shape, dtype=np.float32)
    penumbra = max(0.6, 0.002 * max(shape))
    return gaussian_filter(mask, penumbra, truncate=2.5), rect, angle


def text_layer(
    shape: tuple[int, int], text: str, size: int, xy: tuple[int, int], mirror: bool
) -> tuple[np.ndarray, Box]:
    """Render ``text`` in white on black at ``xy`` (top-left); return the [0, 1] layer and its tight box.

    ``mirror`` flips the glyphs left-right in place, as a marker placed the wrong way up on the
    detector looks.
    """
    font = ImageFont.load_default(size)
    x0, y0, x1, y1 = font.getbbox(text)
    w, h = x1 - x0 + 2, y1 - y0 + 2
    patch = Image.new("L", (w, h), 0)
    ImageDraw.Draw(patch).text((1 - x0, 1 - y0), text, fill=255, font=font)
    arr = np.asarray(patch, dtype=np.float32) / np.float32(255.0)
    if mirror:
        arr = arr[:, ::-1]
    layer = np.zeros(shape, dtype=np.float32)
    px, py = xy
    cx0, cy0 = max(px, 0), max(py, 0)
    cx1, cy1 = min(px + w, shape[1]), min(py + h, shape[0])
    if cx0 < cx1 and cy0 < cy1:
        layer[cy0:cy1, cx0:cx1] = arr[cy0 - py : cy1 - py, cx0 - px : cx1 - px]
    return layer, (cx0, cy0, max(cx1, cx0 + 1), max(cy1, cy0 + 1))


def text_size(text: str, size: int) -> tuple[int, int]:
    """Width and height in pixels of ``text`` rendered by :func:`text_layer`."""
    x0, y0, x1, y1 = ImageFont.load_default(size).getbbox(text)
    return x1 - x0 + 2, y1 - y0 + 2


def overlaps(a: Box, b: Box, margin: int = 0) -> bool:
    """Whether two boxes overlap once ``b`` is grown by ``margin`` pixels."""
    return not (a[2] <= b[0] - margin or b[2] + margin <= a[0] or a[3] <= b[1] - margin or b[3] + margin <= a[1])
