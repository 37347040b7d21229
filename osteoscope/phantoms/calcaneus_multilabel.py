"""Lateral calcaneus radiograph phantom with six fracture subtypes (task ``calcaneus-multilabel``).

Each study is a synthetic lateral hindfoot radiograph, heel on the image's left: the calcaneus (body,
posterior tuberosity, anterior process, sustentaculum tali, a sparse "neutral triangle" under the angle
of Gissane, trabeculae fanning from the posterior facet), the talus above it (body, neck, head), the
navicular, cuboid and a cuneiform in front, the distal tibia and fibula, and the soft tissue of the heel
with the Achilles tendon and Kager's fat pad. Bone is bright; values are 16-bit.

The upper outline of the calcaneus is a polyline through the tuberosity top ``T``, the posterior-facet
apex ``P``, the angle of Gissane and the anterior-process top ``A``, so Böhler's angle (180° minus the
angle TPA, about 25–38° here) is explicit geometry and fractures can flatten it.

Labels follow the MSRT paper (Mu et al.): any combination of six subtypes, each drawn at its place:

* ``tuberosity``: an oblique line across the posterior tuberosity with a slightly displaced fragment;
* ``primary_line``: the oblique primary line from the angle of Gissane down to the plantar cortex;
* ``collapse_block``: joint-depression fragment under the posterior facet: a dense, outlined block
  driven into the body, the facet lowered so Böhler's angle flattens;
* ``body``: comminution of the central body: short lines and an impaction density;
* ``posterior_facet``: a line through the articular surface with a step-off of the facet;
* ``tongue_block``: the secondary line running from under the facet back out through the tuberosity,
  the tongue fragment rotated (facet down, tuberosity top up).

Label cardinality: a positive study first draws how many subtypes it has, ``k`` in 1..6 with
probabilities ``_CARDINALITY`` (mean 2.95, the paper reports 2.94), then draws which ones by weighted
sampling without replacement (``_WEIGHTS``: primary line most common, tongue block rarest). Tongue-type
and joint-depression patterns rarely coexist (Essex-Lopresti), so picking one divides the other's
weight by ``_EXCLUSIVE``. A quarter of patients have no fracture.

Each study also gets ``mask`` (the exact union of the subtypes' fracture regions) and ``mask_rough``:
that mask as a segmenter trained on rough annotations would give it: computed at quarter resolution
(staircase edges), with a noisy threshold (jagged, grown or shrunk), a missed block and sometimes an
extra false region. ``subtlety`` in [0, 1] scales line contrast and fragment displacement; at 1 the
fractures keep 25 % of their contrast and 30 % of their displacement. A fifth of patients have a
follow-up study: same fracture, new positioning and exposure.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, gaussian_filter1d

from osteoscope.data.manifest import MANIFEST_NAME, write_manifest
from osteoscope.phantoms._draw import (
    FourierField,
    Grid,
    band,
    check_count_and_subtlety,
    check_image_size,
    ellipse_radius,
    ellipsoid,
    segment_distance,
    smoothstep,
    sphere,
    tube,
    write_png16,
)

TASK = "calcaneus-multilabel"
LABELS = ("tuberosity", "primary_line", "collapse_block", "body", "posterior_facet", "tongue_block")
COLUMNS = ("case_id", "patient_id", "image", *(f"label_{k}" for k in LABELS), "mask", "mask_rough", "subtlety")

_CARDINALITY = (0.07, 0.29, 0.37, 0.18, 0.07, 0.02)  # P(k labels), k = 1..6; mean 2.95
_WEIGHTS = {
    "tuberosity": 1.3,
    "primary_line": 4.0,
    "collapse_block": 1.6,
    "body": 1.4,
    "posterior_facet": 2.0,
    "tongue_block": 0.7,
}
_EXCLUSIVE = 6.0
_POSITIVE = 0.75
_FOLLOW_UP = 0.2
_FOV_WIDTH_MM = 130.0
_MU_BONE = 0.05
_MU_SOFT = 0.008
_REGION_MM = 2.2  # half-width of the fracture region around a line


@dataclass(frozen=True)
class _Anatomy:
    """Fixed hindfoot anatomy of one patient (mm, calcaneus-centred, x anterior, y down)."""

    scale: float
    tub: tuple[float, float]
    facet: tuple[float, float]
    gissane: tuple[float, float]
    anterior: tuple[float, float]
    floor: tuple[float, float, float]
    width: float
    density: float
    soft: float
    texture: tuple[FourierField, FourierField]


@dataclass(frozen=True)
class _Fracture:
    """Fixed fracture geometry of one patient: the subtypes present and their lines and fragments."""

    labels: frozenset[str]
    lines: dict[str, tuple[tuple[tuple[float, float], ...], ...]]
    block: tuple[float, float, float, float, float]
    depression: float
    step: tuple[float, float]
    tongue_lift: float
    shift: float


@dataclass(frozen=True)
class _Pose:
    """Positioning and exposure of one study."""

    rotation: float
    spacing: float
    shift: tuple[float, float]
    blur_mm: float
    photons: float
    gain: float
    gamma: float
    white: float
    black: float


def generate(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    *,
    subtlety: float = 0.5,
    image_size: tuple[int, int] = (256, 320),
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``n`` synthetic lateral calcaneus studies with six fracture labels; return the manifest path.

    Args:
        out_dir: Folder to create; gets ``manifest.csv``, ``images/`` and ``masks/``.
        n: Number of studies; a fifth of patients have two.
        seed: Everything is a deterministic function of the seed.
        subtlety: Fracture contrast and displacement knob in [0, 1]; 1 is hardest but still visible.
        image_size: ``(rows, cols)``; the field of view stays 130 mm wide.
        progress: Called as ``progress(i, n)`` after study ``i`` (1-based) is written.

    Returns:
        Path of the written ``manifest.csv``.
    """
    check_count_and_subtlety(n, subtlety)
    check_image_size(image_size)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    plan_rng = np.random.default_rng([seed, 0])
    counts: list[int] = []
    while sum(counts) < n:
        counts.append(min(2 if plan_rng.random() < _FOLLOW_UP else 1, n - sum(counts)))
    width = max(4, len(str(len(counts))))
    rows: list[dict[str, str]] = []
    for index, studies in enumerate(counts):
        rng = np.random.default_rng([seed, 1, index])
        anatomy = _draw_anatomy(rng)
        fracture = _draw_fracture(rng, anatomy, _draw_labels(rng))
        patient_id = f"p{index + 1:0{width}d}"
        for k in range(studies):
            case_id = f"{patient_id}_s{k + 1}"
            pose = _draw_pose(np.random.default_rng([seed, 2, index, k]), image_size)
            noise_rng = np.random.default_rng([seed, 3, index, k])
            pixels, regions, calc = _render(anatomy, fracture, pose, image_size, subtlety, noise_rng)
            exact = np.zeros(image_size, dtype=bool)
            for region in regions.values():
                exact |= region
            rough = _rough_mask(exact, calc, noise_rng)
            write_png16(out / "images" / f"{case_id}.png", pixels)
            for name, mask in (("mask", exact), ("rough", rough)):
                Image.fromarray(mask.astype(np.uint8) * 255).save(
                    out / "masks" / f"{case_id}_{name}.png", compress_level=1
                )
            row = {"case_id": case_id, "patient_id": patient_id, "image": f"images/{case_id}.png"}
            row.update({f"label_{k}": str(int(k in fracture.labels)) for k in LABELS})
            row.update(
                mask=f"masks/{case_id}_mask.png", mask_rough=f"masks/{case_id}_rough.png", subtlety=f"{subtlety:g}"
            )
            rows.append(row)
            if progress is not None:
                progress(len(rows), n)
    return write_manifest(out / MANIFEST_NAME, rows, COLUMNS)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    """One uniform draw as a Python float, so that float32 arrays stay float32."""
    return float(rng.uniform(lo, hi))


def _draw_labels(rng: np.random.Generator) -> frozenset[str]:
    """Draw the subtypes of one patient: none, or ``k`` correlated ones (see the module docstring)."""
    positive = rng.random() < _POSITIVE
    k = int(rng.choice(np.arange(1, 7), p=_CARDINALITY))
    weights = dict(_WEIGHTS)
    chosen: list[str] = []
    for _ in range(k):
        names = [name for name in LABELS if name not in chosen]
        w = np.array([weights[name] for name in names])
        pick = names[int(rng.choice(len(names), p=w / w.sum()))]
        chosen.append(pick)
        other = {"collapse_block": "tongue_block", "tongue_block": "collapse_block"}.get(pick)
        if other is not None:
            weights[other] /= _EXCLUSIVE
    return frozenset(chosen) if positive else frozenset()


def _draw_anatomy(rng: np.random.Generator) -> _Anatomy:
    """Draw one patient's hindfoot: outline points giving a Böhler angle of about 25–38°."""
    s = float(np.clip(rng.normal(1.0, 0.06), 0.85, 1.15))
    return _Anatomy(
        scale=s,
        tub=(-37.0 * s, _u(rng, -12.0, -8.0) * s),
        facet=(_u(rng, -9.0, -4.0) * s, _u(rng, -22.0, -19.0) * s),
        gissane=(_u(rng, 6.0, 10.0) * s, _u(rng, -12.0, -9.0) * s),
        anterior=(_u(rng, 27.0, 32.0) * s, _u(rng, -16.0, -12.0) * s),
        floor=(_u(rng, 18.0, 22.0) * s, _u(rng, 13.0, 16.0) * s, _u(rng, 4.0, 7.0) * s),
        width=_u(rng, 36.0, 44.0) * s,
        density=_u(rng, 0.85, 1.15),
        soft=_u(rng, 0.85, 1.2),
        texture=(
            FourierField.random(rng, 6, (8.0, 25.0)),
            FourierField.random(rng, 14, (2.0, 5.0)),
        ),
    )


def _jitter(rng: np.random.Generator, pts: list[tuple[float, float]], sd: float) -> tuple[tuple[float, float], ...]:
    """A polyline through ``pts`` with its inner points moved a little, so lines are not straight."""
    out = [pts[0]]
    for p in pts[1:-1]:
        out.append((p[0] + float(rng.normal(0.0, sd)), p[1] + float(rng.normal(0.0, sd))))
    out.append(pts[-1])
    return tuple(out)


def _draw_fracture(rng: np.random.Generator, a: _Anatomy, labels: frozenset[str]) -> _Fracture:
    """Draw the lines and fragments of every subtype (all drawn, so labels do not shift the others)."""
    s = a.scale
    tx, ty = a.tub
    px, py = a.facet
    gx, gy = a.gissane
    fl_t, fl_m, _ = a.floor
    lines = {
        "tuberosity": (
            _jitter(rng, [(tx + _u(rng, 6, 10) * s, ty + 2.0), (tx + 2 * s, 2.0), (tx - 3.0 * s, fl_t - 3.0)], 1.2),
        ),
        "primary_line": (
            _jitter(
                rng,
                [(gx - 1.0, gy + 1.0), (gx - 7.0 * s, 0.0), (gx - _u(rng, 14.0, 20.0) * s, fl_m - 1.0)],
                1.0,
            ),
        ),
        "body": tuple(
            _jitter(rng, [(cx, cy), (cx + 0.5 * dx, cy + 0.5 * dy + _u(rng, -1, 1)), (cx + dx, cy + dy)], 0.6)
            for cx, cy, dx, dy in (
                (_u(rng, -14, 6) * s, _u(rng, -3, 7) * s, _u(rng, -9, 9) * s, _u(rng, 4, 9) * s)
                for _ in range(int(rng.integers(2, 4)))
            )
        ),
        "posterior_facet": (
            _jitter(rng, [(px - 4.0 * s, py - 1.0), (px - 6.0 * s, py + 5.0 * s), (px - 5.0 * s, py + 10.0 * s)], 0.8),
        ),
        "tongue_block": (
            _jitter(
                rng,
                [
                    (px + 2.0 * s, py + 9.0 * s),
                    (px - 12.0 * s, _u(rng, -8, -5) * s),
                    (tx - 5.0 * s, _u(rng, -3, 2) * s),
                ],
                1.0,
            ),
        ),
    }
    block = (
        px - _u(rng, 2.0, 5.0) * s,
        py + 6.0 * s,
        _u(rng, 7.0, 10.0) * s,
        _u(rng, 3.5, 5.0) * s,
        _u(rng, -0.4, 0.1),
    )
    return _Fracture(
        labels=labels,
        lines=lines,
        block=block,
        depression=_u(rng, 3.0, 6.0) * s,
        step=(px - 5.0 * s, _u(rng, 1.5, 3.0)),
        tongue_lift=_u(rng, 2.0, 4.0) * s,
        shift=_u(rng, 0.8, 1.6),
    )


def _draw_pose(rng: np.random.Generator, image_size: tuple[int, int]) -> _Pose:
    """Draw positioning and exposure of one study."""
    return _Pose(
        rotation=math.radians(float(rng.normal(0.0, 4.0))),
        spacing=_FOV_WIDTH_MM / image_size[1] * _u(rng, 0.93, 1.07),
        shift=(float(rng.normal(0.0, 4.0)), float(rng.normal(0.0, 4.0))),
        blur_mm=_u(rng, 0.15, 0.4),
        photons=_u(rng, 3.0e3, 1.2e4),
        gain=_u(rng, 0.8, 1.1),
        gamma=_u(rng, 0.8, 1.2),
        white=_u(rng, 40000.0, 64000.0),
        black=_u(rng, 200.0, 2000.0),
    )


def _polyline_distance(x: np.ndarray, y: np.ndarray, pts: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Distance to a polyline."""
    return np.minimum.reduce([segment_distance(x, y, p, q)[0] for p, q in itertools.pairwise(pts)])


def _outline(a: _Anatomy, f: _Fracture, c: float) -> tuple[list[float], list[float], list[float], list[float]]:
    """Roof and floor polylines of the calcaneus (x knots, y values), with fracture deformations."""
    s = a.scale
    tx, ty = a.tub
    px, py = a.facet
    if "collapse_block" in f.labels:
        py += c * f.depression
    if "tongue_block" in f.labels:
        py += c * 0.5 * f.tongue_lift
        ty -= c * f.tongue_lift
    roof_x = [tx - 8.0 * s, tx, px - 11.0 * s, px, a.gissane[0], a.anterior[0], 44.0 * s]
    roof_y = [ty + 6.0 * s, ty, py + 2.5 * s, py, a.gissane[1], a.anterior[1], a.anterior[1] + 4.0 * s]
    fl_t, fl_m, fl_a = a.floor
    floor_x = [tx - 8.0 * s, tx + 2.0 * s, -12.0 * s, 15.0 * s, 44.0 * s]
    floor_y = [fl_t - 2.0 * s, fl_t + 1.0 * s, fl_m + 2.0 * s, fl_m - 2.0 * s, fl_a]
    return roof_x, roof_y, floor_x, floor_y


def _render(
    a: _Anatomy,
    f: _Fracture,
    pose: _Pose,
    image_size: tuple[int, int],
    subtlety: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Render one study: 16-bit pixels, each present subtype's fracture region, the calcaneus mask."""
    contrast = 1.0 - 0.75 * subtlety
    disp = 1.0 - 0.7 * subtlety
    rows, cols = image_size
    cr, sr = math.cos(pose.rotation), math.sin(pose.rotation)
    du = (pose.spacing * cr, pose.spacing * sr)
    dv = (-pose.spacing * sr, pose.spacing * cr)
    centre = (8.0 + pose.shift[0], -8.0 + pose.shift[1])
    origin = (
        centre[0] - du[0] * cols / 2 - dv[0] * rows / 2,
        centre[1] - du[1] * cols / 2 - dv[1] * rows / 2,
    )
    grid = Grid(image_size, origin, du, dv)
    crop = grid.full()
    x, y = crop.x, crop.y
    s = a.scale

    # Calcaneus: an extrusion between roof and floor with an elliptic cross-section and rounded ends.
    roof_x, roof_y, floor_x, floor_y = _outline(a, f, disp)
    knots = np.linspace(-80.0, 80.0, 641)  # 0.25 mm; smoothing rounds the polyline corners
    roof = np.interp(x, knots, gaussian_filter1d(np.interp(knots, roof_x, roof_y), 8.0)).astype(np.float32)
    floor = np.interp(x, knots, gaussian_filter1d(np.interp(knots, floor_x, floor_y), 12.0)).astype(np.float32)
    x0, x1 = a.tub[0] - 6.0 * s, 42.0 * s
    half_h = np.maximum((floor - roof) / 2, 0.1)
    mid = (floor + roof) / 2
    along = (x - (x0 + x1) / 2) / ((x1 - x0) / 2)
    ends = np.sqrt(np.maximum(1.0 - np.abs(along) ** 3, 0.0))
    depth = a.width * (0.75 + 0.25 * smoothstep(-x, -10.0 * s, 30.0 * s))  # tuberosity narrower than body
    outer = depth * np.sqrt(np.maximum(1.0 - ((y - mid) / half_h) ** 2, 0.0)) * ends
    inner_half = np.maximum(half_h - 1.4, 0.1)
    inner = (
        (depth - 2.8) * np.sqrt(np.maximum(1.0 - ((y - mid) / inner_half) ** 2, 0.0)) * ends * (np.abs(along) < 0.97)
    )
    inner = np.minimum(inner, outer)
    calc = outer > 0
    # Trabeculae fan from the posterior facet; sparse neutral triangle below the angle of Gissane.
    px, py = a.facet
    ray = np.arctan2(y - py, x - px)
    waves, fine = a.texture
    rays = np.cos(ray * 40.0 + 2.5 * waves(x, y)) ** 4
    neutral = np.exp(-(ellipse_radius(x, y, a.gissane[0] - 3.0 * s, a.gissane[1] + 11.0 * s, 7.0 * s, 6.0 * s) ** 2))
    spongy_density = (
        0.4 * (1.0 + 0.18 * (rays - 0.5) * (1.0 + 0.5 * waves(y, x)) + 0.2 * fine(x, y)) * (1.0 - 0.45 * neutral)
    )
    sub_chondral = band(y - roof, 2.0) * smoothstep(x, px - 14.0 * s, px - 8.0 * s) * smoothstep(-x, -a.gissane[0], -px)
    calc_t = (outer - inner) * 0.9 + inner * spongy_density + 0.25 * inner * sub_chondral
    calc_t += 0.35 * ellipsoid(x, y, a.gissane[0] - 2.0 * s, a.gissane[1] + 2.0 * s, 9.0 * s, 4.0 * s, 5.0, -0.25)

    factor = np.ones_like(x)
    regions: dict[str, np.ndarray] = {}
    for name in LABELS:
        if name not in f.labels:
            continue
        region = np.zeros(x.shape, dtype=bool)
        if name == "collapse_block":
            bx, by, hw, hh, ang = f.block
            by += disp * f.depression
            c, sn = math.cos(ang), math.sin(ang)
            lx = c * (x - bx) + sn * (y - by)
            ly = -sn * (x - bx) + c * (y - by)
            qx, qy = np.abs(lx) - hw, np.abs(ly) - hh
            sd = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2) + np.minimum(np.maximum(qx, qy), 0)
            factor += contrast * (0.35 * (sd < 0) - 0.55 * band(sd, 0.6))
            region |= sd < 1.5
        if name == "body":
            er = ellipse_radius(x, y, -4.0 * s, 3.0 * s, 13.0 * s, 8.0 * s)
            factor += 0.2 * contrast * np.exp(-(er**2))
            region |= er < 0.8
        if name == "posterior_facet":
            step_x, step = f.step
            lowered = smoothstep(-x, -step_x - 0.5, -step_x + 0.5) * smoothstep(x, step_x - 9.0 * s, step_x - 7.0 * s)
            factor -= 0.8 * band(y - roof, disp * step) * lowered * (y > roof)
        for pts in f.lines.get(name, ()):
            d = _polyline_distance(x, y, pts)
            factor -= 0.6 * contrast * band(d, 0.45 + 0.3 * disp)
            off = _polyline_distance(x - f.shift * disp - 1.0, y, pts)
            factor += 0.35 * contrast * band(off, 0.5) * (d > 0.8)
            region |= d < _REGION_MM
        regions[name] = region & calc
    calc_t = calc_t * np.maximum(factor, 0.0) * a.density

    # Neighbouring bones, kept clear of the calcaneus by a joint space.
    talus_floor = roof - 1.6
    talus_body = ellipsoid(x, y, px + 1.0 * s, py - 9.0 * s, 19.0 * s, 17.0 * s, 16.0 * s, 0.1)
    talus_body *= smoothstep(talus_floor - y, 0.0, 0.8)
    talus = np.maximum.reduce(
        [
            talus_body,
            tube(x, y, (px + 10.0 * s, py - 12.0 * s), (30.0 * s, py - 15.0 * s), 8.0 * s, 9.0 * s)
            * smoothstep(talus_floor - y, 0.0, 0.8),
            sphere(x, y, 36.0 * s, py - 14.0 * s, 11.0 * s),
        ]
    )
    talus_in = np.maximum.reduce([talus_body - 2.0, sphere(x, y, 36.0 * s, py - 14.0 * s, 9.8 * s)])
    talus_t = (talus - np.maximum(talus_in, 0)) * 0.8 + np.maximum(talus_in, 0) * 0.4 * (1.0 + 0.15 * fine(y, x))
    nav = ellipsoid(x, y, 50.0 * s, py - 12.0 * s, 5.0 * s, 11.0 * s, 14.0 * s, 0.3)
    cuboid = ellipsoid(x, y, 56.0 * s, a.anterior[1] + 10.0 * s, 13.0 * s, 10.0 * s, 14.0 * s, -0.5)
    cunei = ellipsoid(x, y, 66.0 * s, py - 10.0 * s, 9.0 * s, 12.0 * s, 14.0 * s, 0.2)
    mt = tube(x, y, (72.0 * s, a.anterior[1] + 4.0 * s), (130.0 * s, a.anterior[1] + 18.0 * s), 7.0 * s, 5.0 * s, 1.8)
    tibia = tube(x, y, (px + 2.0 * s, py - 32.0 * s), (px - 4.0 * s, -150.0), 15.0 * s, 13.0 * s, 3.0)
    tib_in = tube(x, y, (px + 2.0 * s, py - 32.0 * s), (px - 4.0 * s, -150.0), 12.0 * s, 10.0 * s)
    fibula = tube(x, y, (px - 8.0 * s, py - 18.0 * s), (px - 14.0 * s, -150.0), 6.5 * s, 5.0 * s, 2.0)
    others = 0.35 * (nav + cuboid + cunei) + 0.7 * mt + 0.35 * tibia + 0.12 * tib_in + 0.8 * fibula + talus_t
    bone = calc_t + others * a.density

    # Soft tissue: foot and leg outline, heel pad, Achilles tendon, Kager's fat pad (lucent).
    foot = ellipsoid(x, y, 20.0 * s, -8.0 * s, 85.0 * s, 40.0 * s, 40.0 * s, -0.08)
    heel = ellipsoid(x, y, -25.0 * s, 8.0 * s, 30.0 * s, 24.0 * s, 38.0 * s)
    leg = tube(x, y, (px, py - 20.0 * s), (px - 10.0 * s, -200.0), 38.0 * s, 36.0 * s)
    achilles = tube(x, y, (a.tub[0] - 2.0 * s, a.tub[1] - 2.0 * s), (a.tub[0] + 2.0 * s, -150.0), 4.0, 5.0)
    kager = ellipsoid(x, y, a.tub[0] + 12.0 * s, a.tub[1] - 22.0 * s, 7.0 * s, 18.0 * s, 12.0, 0.1)
    soft = a.soft * (np.maximum.reduce([foot, heel, leg]) + 0.6 * achilles - 0.5 * kager)

    log_signal = (_MU_BONE * bone + _MU_SOFT * soft).astype(np.float32)
    noise = rng.standard_normal(log_signal.shape, dtype=np.float32)
    noisy = log_signal + noise * np.sqrt(np.exp(np.minimum(log_signal, 6.0)) / pose.photons)
    sigma = pose.blur_mm / pose.spacing
    if sigma > 0.3:
        noisy = gaussian_filter(noisy, sigma, truncate=3.0)
    v = np.clip(1.0 - np.exp(-pose.gain * 1.3 * np.maximum(noisy, 0.0)), 0.0, 1.0) ** pose.gamma
    pixels = np.round(pose.black + v * (pose.white - pose.black)).astype(np.uint16)
    return pixels, regions, calc


def _rough_mask(exact: np.ndarray, calc: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Degrade the exact mask like a segmenter trained on rough labels: blocky, jagged, holes, extras."""
    rows, cols = exact.shape
    noise = gaussian_filter(rng.standard_normal(exact.shape).astype(np.float32), 3.0)
    noise /= max(float(noise.std()), 1e-6)
    blurred = gaussian_filter(exact.astype(np.float32), 2.5)
    soft = blurred + 0.25 * noise * (blurred > 0.03)  # jagged edges, no specks far from the region
    rough = soft > _u(rng, 0.3, 0.5)
    ys, xs = np.nonzero(exact)
    if len(ys):
        i = int(rng.integers(len(ys)))
        half = int(rng.integers(5, 10))
        rough[max(ys[i] - half, 0) : ys[i] + half, max(xs[i] - half, 0) : xs[i] + half] = False
    if rng.random() < 0.6:
        cy, cx = np.nonzero(calc)
        if len(cy):
            j = int(rng.integers(len(cy)))
            r = _u(rng, 3.0, 7.0)
            yy, xx = np.ogrid[:rows, :cols]
            rough |= ((yy - cy[j]) ** 2 + (xx - cx[j]) ** 2 < r * r) & calc
    big = np.repeat(np.repeat(rough[2::4, 2::4], 4, axis=0), 4, axis=1)[:rows, :cols]
    out = np.zeros_like(rough)
    out[: big.shape[0], : big.shape[1]] = big
    return out
