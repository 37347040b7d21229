"""Lateral calcaneus radiograph phantom with six fracture subtypes (task ``calcaneus-multilabel``).

Each study is a synthetic lateral hindfoot radiograph, heel on the image's left, the foot tilted so the
calcaneal pitch is about 16–28°. Bones are rounded slabs under drawn lateral silhouettes (rasterised,
then a smoothed edge distance gives a chord-like thickness profile, a thin cortex and a bright rim):

* calcaneus: convex posterior tuberosity with its plantar processes, concave superior surface, convex
  posterior facet with dense subchondral bone, the crucial angle of Gissane with its cortical strut,
  anterior process and calcaneocuboid surface, the sustentaculum projected over the body; trabeculae in
  their groups (compressive fans from the posterior and anterior facets, tensile arcs along the plantar
  cortex) around the sparse neutral triangle;
* talus (dome, body, posterior process, neck over the sinus tarsi, head declining about 22°) across a
  subtalar joint space, its head overlapping the anterior process as on real films; navicular cupping the
  head, cuboid, cuneiforms, first metatarsal base;
* distal tibia (plafond over the dome, flared metaphysis, cortex thickening up the shaft, physeal scar,
  medial malleolus over the talus) and fibula with the lateral malleolus below the plafond;
* soft tissue under a skin outline: heel pad, Achilles tendon and the lucent Kager's fat pad triangle.

Exposure varies by study: dose (noise), blur, gain and gamma, a heel-effect ramp and the edge enhancement
of processed digital films. Bone is bright; values are 16-bit.

The upper outline of the calcaneus runs through the tuberosity top ``T``, the posterior-facet apex ``P``,
the angle of Gissane and the anterior-process top ``A``, so Böhler's angle (:func:`bohler_angle`, 180°
minus the angle TPA of the drawn outline, 20–40° in normal feet here) is explicit geometry and
fractures flatten it.

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
    inner_distance,
    polygon_labels,
    rounded_slab,
    segment_distance,
    smoothstep,
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
_MU_SOFT = 0.006
_REGION_MM = 2.2  # half-width of the fracture region around a line
_JOINT_MM = 1.8  # subtalar and tibiotalar joint spaces
_TILT0 = math.radians(6.0)  # typical tilt of the foot, at which the neighbouring bones are laid out
_CENTRE = (8.0, -3.0)  # image centre in world mm (calcaneus-centred, ground horizontal)
_DOME = (0.0, -12.5, 15.5)  # talar dome centre and radius, world offsets (mm) from the posterior facet apex
_HEAD = (33.0, -3.5, 10.0)  # talar head: the talar axis declines about 22 degrees


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
    tilt: float
    pad: float
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
    shift: np.ndarray
    blur_mm: float
    photons: float
    gain: float
    gamma: float
    white: float
    black: float
    heel: tuple[float, float]
    sharpen: float


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
    """Draw one patient's hindfoot: outline points giving a Böhler angle of about 22–38°."""
    s = float(np.clip(rng.normal(1.0, 0.06), 0.85, 1.15))
    return _Anatomy(
        scale=s,
        tub=(-37.0 * s, _u(rng, -11.5, -8.5) * s),
        facet=(_u(rng, -9.0, -4.0) * s, _u(rng, -21.0, -18.5) * s),
        gissane=(_u(rng, 6.0, 10.0) * s, _u(rng, -12.0, -9.0) * s),
        anterior=(_u(rng, 27.0, 32.0) * s, _u(rng, -15.5, -12.5) * s),
        floor=(_u(rng, 23.0, 26.0) * s, _u(rng, 16.0, 19.0) * s, _u(rng, 6.0, 9.0) * s),
        width=_u(rng, 36.0, 44.0) * s,
        density=_u(rng, 0.85, 1.15),
        soft=_u(rng, 0.85, 1.2),
        tilt=math.radians(_u(rng, 2.0, 10.0)),
        pad=_u(rng, 15.0, 22.0) * s,
        texture=(
            FourierField.random(rng, 6, (8.0, 25.0)),
            FourierField.random(rng, 12, (1.5, 4.0)),
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
        shift=np.array([rng.normal(0.0, 4.0), rng.normal(0.0, 4.0)]),
        blur_mm=_u(rng, 0.15, 0.4),
        photons=_u(rng, 3.0e3, 1.2e4),
        gain=_u(rng, 0.8, 1.1),
        gamma=_u(rng, 0.8, 1.2),
        white=_u(rng, 40000.0, 64000.0),
        black=_u(rng, 200.0, 2000.0),
        heel=(_u(rng, -0.12, 0.12), _u(rng, -0.08, 0.08)),
        sharpen=_u(rng, 0.15, 0.6),
    )


def _polyline_distance(x: np.ndarray, y: np.ndarray, pts: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Distance to a polyline."""
    return np.minimum.reduce([segment_distance(x, y, p, q)[0] for p, q in itertools.pairwise(pts)])


def _turn(angle: float) -> np.ndarray:
    """Matrix taking world coordinates (image-aligned, ground horizontal) to calcaneus coordinates."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _place(origin: tuple[float, float], offsets: list[tuple[float, float]], s: float) -> np.ndarray:
    """Calcaneus coordinates of points given as world offsets (mm, typical foot tilt) from ``origin``."""
    return np.asarray(origin) + s * np.asarray(offsets) @ _turn(_TILT0).T


def _arc(cx: float, cy: float, r: float, degrees: tuple[float, ...]) -> list[tuple[float, float]]:
    """Points of a circle at the given angles (degrees, counter-clockwise as seen, y down)."""
    return [(cx + r * math.cos(math.radians(d)), cy - r * math.sin(math.radians(d))) for d in degrees]


def _smooth_closed(points: np.ndarray, sigma: float, step: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Resample a closed polygon every ``step`` mm and round it with a Gaussian of ``sigma`` mm along it.

    Returns the smooth outline and, for every input vertex, the index of its resampled point.
    """
    closed = np.vstack([points, points[:1]])
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(closed, axis=0).T))])
    n = max(int(arc[-1] / step), 16)
    t = np.linspace(0.0, arc[-1], n, endpoint=False)
    dense = np.stack([np.interp(t, arc, closed[:, 0]), np.interp(t, arc, closed[:, 1])], axis=1)
    smooth = gaussian_filter1d(dense, sigma * n / arc[-1], axis=0, mode="wrap")
    return smooth, np.minimum((arc[:-1] * n / arc[-1]).astype(int), n - 1)


def _outline(a: _Anatomy, f: _Fracture | None, c: float) -> tuple[np.ndarray, np.ndarray]:
    """Lateral silhouette of the calcaneus and its upper surface (x-sorted), with fracture deformations.

    The upper surface runs through the tuberosity top ``T``, a shallow concavity, the convex posterior
    facet with apex ``P``, down to the angle of Gissane and up to the anterior process ``A`` (the points of
    Böhler's angle). Then the calcaneocuboid surface, the plantar surface with the anterior tubercle and
    the plantar processes of the tuberosity (the lowest point), and the convex posterior surface.
    """
    s = a.scale
    tx, ty = a.tub
    px, py = a.facet
    gx, gy = a.gissane
    ax, ay = a.anterior
    fl_t, fl_m, fl_a = a.floor
    if f is not None and "collapse_block" in f.labels:
        py += c * f.depression
    if f is not None and "tongue_block" in f.labels:
        py += c * 0.5 * f.tongue_lift
        ty -= c * f.tongue_lift
    upper = [
        (tx, ty),
        (tx + 0.45 * (px - tx), ty + 0.45 * (py - ty) + 2.5 * s),
        (px - 8.0 * s, py + 2.6 * s),
        (px - 3.5 * s, py + 0.5 * s),
        (px, py),
        (px + 4.0 * s, py + 1.4 * s),
        (gx - 1.5 * s, gy - 0.8 * s),
        (gx, gy),
        (gx + 0.5 * (ax - gx), 0.5 * (gy + ay) + 0.6 * s),
        (ax, ay),
    ]
    rest = [
        (ax + 3.0 * s, ay + 2.0 * s),
        (ax + 3.5 * s, ay + 7.0 * s),
        (ax + 2.5 * s, 0.5 * (ay + fl_a) + 4.0 * s),
        (ax + 0.5 * s, fl_a - 0.5 * s),
        (ax - 3.0 * s, fl_a + 0.8 * s),
        (ax - 10.0 * s, fl_a + 2.8 * s),
        (ax - 14.0 * s, fl_a + 2.2 * s),
        (0.5 * (ax + tx), fl_m + 1.0 * s),
        (tx + 8.0 * s, fl_t + 0.5 * s),
        (tx + 2.0 * s, fl_t + 1.8 * s),
        (tx - 2.5 * s, fl_t + 0.5 * s),
        (tx - 5.5 * s, fl_t - 4.0 * s),
        (tx - 7.5 * s, 0.5 * (ty + fl_t) + 4.0 * s),
        (tx - 7.5 * s, 0.5 * (ty + fl_t) - 4.0 * s),
        (tx - 5.5 * s, ty + 5.0 * s),
        (tx - 3.0 * s, ty + 1.2 * s),
    ]
    outline, index = _smooth_closed(np.array(upper + rest), 1.6 * s)
    roof = outline[index[0] : index[len(upper) - 1] + 1]
    return outline, roof[np.argsort(roof[:, 0])]


def bohler_angle(a: _Anatomy, f: _Fracture | None = None, c: float = 1.0) -> float:
    """Böhler's angle (degrees) of the drawn calcaneus: 180° minus the angle T-P-A of its upper outline.

    ``c`` is the fracture displacement fraction (1 at subtlety 0); collapse and tongue fractures flatten it.
    """
    _, roof = _outline(a, f, c)
    top = lambda x0, x1: roof[(roof[:, 0] >= x0) & (roof[:, 0] <= x1)]  # noqa: E731
    s = a.scale
    tub = min(top(a.tub[0] - 6 * s, a.tub[0] + 6 * s), key=lambda p: p[1])
    facet = min(top(a.facet[0] - 8 * s, a.facet[0] + 8 * s), key=lambda p: p[1])
    ant = min(top(a.anterior[0] - 6 * s, a.anterior[0] + 6 * s), key=lambda p: p[1])
    back, front = tub - facet, ant - facet
    cos = float(back @ front / (np.linalg.norm(back) * np.linalg.norm(front)))
    return 180.0 - math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def _neighbours(a: _Anatomy) -> dict[str, np.ndarray]:
    """Silhouettes (calcaneus coordinates) of the talus, navicular, cuboid and cuneiforms.

    They are placed from the unfractured calcaneus, so a depressed facet opens the subtalar joint.
    """
    s = a.scale
    px, py = a.facet
    _, roof = _outline(a, None, 0.0)
    under = roof[(roof[:, 0] > px - 11.0 * s) & (roof[:, 0] < px + 5.0 * s)] - (0.0, _JOINT_MM)
    talus = np.vstack(
        [
            under,
            _place(
                (px, py),
                [
                    (6.0, -1.5),
                    (11.0, -3.5),
                    (18.0, -1.0),
                    (25.0, 6.0),
                    *_arc(_HEAD[0], _HEAD[1], _HEAD[2], (-125, -85, -45, -10, 25, 60, 100)),
                    (25.0, -10.5),
                    (19.0, -13.5),
                    *_arc(_DOME[0], _DOME[1], _DOME[2], (12, 40, 65, 90, 115, 140, 160)),
                    (-14.0, -5.0),
                    (-14.0, -1.5),
                    (-11.0, -0.5),
                ],
                s,
            ),
        ]
    )
    navicular = _place(
        (px, py),
        [
            (38.0, -13.5),
            (49.0, -14.5),
            (56.5, -4.0),
            (56.0, 5.0),
            (47.5, 10.0),
            *_arc(_HEAD[0], _HEAD[1], _HEAD[2] + 2.3, (-55, -25, 5, 35, 65)),
        ],
        s,
    )
    cuboid = _place((px, py), [(42.5, 6.5), (52.0, 6.0), (62.0, 8.0), (64.0, 17.0), (58.0, 25.0), (46.0, 25.5)], s)
    cuneiforms = _place(
        (px, py), [(59.0, -14.0), (77.0, -13.0), (80.0, 0.0), (78.0, 11.0), (60.0, 10.0), (58.0, -3.0)], s
    )
    bones = {"talus": talus, "navicular": navicular, "cuboid": cuboid, "cuneiforms": cuneiforms}
    return {name: _smooth_closed(points, 1.2 * s)[0] for name, points in bones.items()}


def _struts(phase: np.ndarray, spacing: float, fields: tuple[np.ndarray, ...]) -> np.ndarray:
    """Broken, gently bent bright struts across ``phase`` (mm), at least 2.6 pixels apart (no moiré)."""
    warp, grain_a, grain_b = fields
    k = np.float32(2.0 * math.pi / max(1.5, 2.6 * spacing))
    breaks = np.clip(0.6 + 0.5 * grain_b, 0.1, 1.2)
    return np.maximum(np.cos(k * (phase + 0.9 * warp + 0.08 * grain_a)), 0.0) ** 3 * breaks


def _trabeculae(
    a: _Anatomy, x: np.ndarray, y: np.ndarray, spacing: float, fields: tuple[np.ndarray, ...]
) -> np.ndarray:
    """Cancellous density of the calcaneus (about 0.4): its trabecular groups and the neutral triangle.

    Two compressive groups fan down from the posterior facet (back to the tuberosity) and from the
    anterior facets (forward to the calcaneocuboid joint); the tensile group arcs, concave upward, along
    the plantar cortex; between them, under the angle of Gissane, lies the sparse neutral triangle.
    ``fields`` are the patient's smooth warp and two fine grain fields at these pixels; they bend the
    struts and break them into pieces. Strut spacing stays at least 2.6 pixels, so small images do not
    alias it into moiré.
    """
    s = a.scale
    px, py = a.facet
    gx, gy = a.gissane
    fl_m = a.floor[1]
    grain_a, grain_b = fields[1:]

    def struts(phase: np.ndarray) -> np.ndarray:
        return _struts(phase, spacing, fields)

    posterior = struts(np.arctan2(y - (py - 22.0 * s), x - (px + 3.0 * s)) * np.float32(36.0 * s))
    anterior = struts(np.arctan2(y - (gy - 24.0 * s), x - (gx + 2.0 * s)) * np.float32(34.0 * s))
    tensile = struts(np.hypot(x - (px + 4.0 * s), y - (py - 60.0 * s)))
    pattern = (
        smoothstep(-x, -(px + 6.0 * s), -(px - 4.0 * s)) * posterior
        + smoothstep(x, gx - 6.0 * s, gx + 4.0 * s) * anterior
        + smoothstep(y, 0.5 * (py + fl_m), fl_m - 2.0 * s) * tensile
    )
    neutral = np.exp(-(ellipse_radius(x, y, gx - 3.0 * s, gy + 11.0 * s, 7.0 * s, 6.0 * s) ** 2))
    marrow = 0.75 + 0.6 * pattern * (1.0 - 0.8 * neutral) + 0.06 * grain_a * grain_b
    return 0.4 * marrow * (1.0 - 0.4 * neutral)


def _soft_outline(a: _Anatomy, calcaneus_world: np.ndarray, dome: np.ndarray) -> np.ndarray:
    """Skin outline (world coordinates) of the leg, heel and midfoot around the bones."""
    s = a.scale
    post = calcaneus_world[np.argmin(calcaneus_world[:, 0])]
    low = calcaneus_world[np.argmax(calcaneus_world[:, 1])]
    dx, dy = dome
    skin = [
        (dx - 37.0 * s, dy - 250.0),
        (dx - 35.0 * s, dy - 35.0 * s),
        (post[0] - 11.0 * s, post[1] - 16.0 * s),
        (post[0] - 12.0 * s, post[1] + 2.0 * s),
        (post[0] - 7.0 * s, low[1] + 0.6 * a.pad),
        (low[0] + 2.0 * s, low[1] + a.pad),
        (low[0] + 45.0 * s, low[1] + a.pad + 1.0),
        (dx + 250.0, low[1] + a.pad - 4.0),
        (dx + 250.0, low[1] - 30.0 * s),
        (dx + 80.0 * s, dy + 2.0 * s),
        (dx + 44.0 * s, dy - 8.0 * s),
        (dx + 32.0 * s, dy - 40.0 * s),
        (dx + 29.0 * s, dy - 250.0),
    ]
    return _smooth_closed(np.array(skin), 4.0)[0]


def _tibia_outline(a: _Anatomy, dome: np.ndarray) -> np.ndarray:
    """Distal tibia (world coordinates): shaft, flared metaphysis, concave plafond over the talar dome."""
    s = a.scale
    dx, dy = dome
    r = _DOME[2] * s + _JOINT_MM + 0.6
    plafond = _arc(dx, dy + _DOME[2] * s, r, (35, 58, 80, 100, 122, 148))
    return np.array(
        [
            (dx - 12.5 * s, dy - 250.0),
            (dx + 12.0 * s, dy - 250.0),
            (dx + 13.0 * s, dy - 45.0 * s),
            (dx + 18.0 * s, dy - 12.0 * s),
            (dx + 19.5 * s, dy - 2.0 * s),
            *plafond,
            (dx - 19.0 * s, dy + 4.0 * s),
            (dx - 20.0 * s, dy - 8.0 * s),
            (dx - 14.0 * s, dy - 45.0 * s),
        ]
    )


def _kager(
    xw: np.ndarray,
    yw: np.ndarray,
    ach0: tuple[float, float],
    ach1: tuple[float, float],
    tub: np.ndarray,
    dome: np.ndarray,
    s: float,
) -> np.ndarray:
    """Kager's fat pad (0..1, world coordinates): the triangle in front of the Achilles tendon.

    Bounded behind by the tendon, below by the top of the calcaneal tuberosity, in front by the deep
    flexors, which meet the tendon about 55 mm up.
    """
    tendon = ach0[0] + (yw - ach0[1]) * np.float32((ach1[0] - ach0[0]) / (ach1[1] - ach0[1])) + 4.0 * s
    base_y = float(tub[1]) - 1.0
    front = (dome[0] - 16.0 * s) + (yw - base_y) * np.float32((dome[0] - 16.0 * s - ach0[0]) / (55.0 * s))
    return smoothstep(xw - tendon, 0.0, 2.5) * smoothstep(front - xw, 0.0, 5.0) * smoothstep(base_y - yw, 0.0, 3.0)


def _on_crop(
    grid: Grid,
    turn: np.ndarray,
    ends: list[tuple[float, float]],
    margin: float,
    shape: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> np.ndarray:
    """Evaluate ``shape(x_world, y_world)`` only on the pixels near the segment ``ends`` (world mm), 0 elsewhere.

    Long thin structures (fibula, tendon, metatarsal) cover a small part of the image; this keeps their
    cost proportional to their size.
    """
    out = np.zeros(grid.shape, dtype=np.float32)
    corners = (
        np.array([(x + dx, y + dy) for x, y in ends for dx in (-margin, margin) for dy in (-margin, margin)]) @ turn.T
    )
    crop = grid.crop(*corners.min(axis=0), *corners.max(axis=0))
    if crop is not None:
        u = np.float32(turn[0, 0]) * crop.x + np.float32(turn[1, 0]) * crop.y
        v = np.float32(turn[0, 1]) * crop.x + np.float32(turn[1, 1]) * crop.y
        out[crop.rows, crop.cols] = shape(u, v)
    return out


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
    s = a.scale
    cr, sr = math.cos(pose.rotation), math.sin(pose.rotation)
    du = np.array([pose.spacing * cr, pose.spacing * sr])
    dv = np.array([-pose.spacing * sr, pose.spacing * cr])
    origin = np.array(_CENTRE) + pose.shift - du * cols / 2 - dv * rows / 2
    turn = _turn(a.tilt)
    grid = Grid(image_size, tuple(turn @ origin), tuple(turn @ du), tuple(turn @ dv))
    crop = grid.full()
    x, y = crop.x, crop.y
    xw = np.float32(turn[0, 0]) * x + np.float32(turn[1, 0]) * y  # world = turn⁻¹ · calcaneus coordinates
    yw = np.float32(turn[0, 1]) * x + np.float32(turn[1, 1]) * y
    px = a.facet[0]
    gx, gy = a.gissane

    # Bones as rounded slabs under their lateral silhouettes; overlapping bones go in separate layers.
    outline, roof_pts = _outline(a, f, disp)
    roof = np.interp(x, roof_pts[:, 0], roof_pts[:, 1]).astype(np.float32)
    near = _neighbours(a)
    dome = turn.T @ _place(a.facet, [(_DOME[0], _DOME[1] - _DOME[2])], s)[0]
    layer_a = polygon_labels(grid, [outline, near["navicular"], near["cuneiforms"], _tibia_outline(a, dome) @ turn.T])
    layer_b = polygon_labels(grid, [near["talus"], near["cuboid"]])
    skin = polygon_labels(grid, [_soft_outline(a, outline @ turn, dome) @ turn.T]) > 0
    calc = layer_a == 1
    tibia = layer_a == 4
    width = a.width * (0.78 + 0.22 * smoothstep(x, a.tub[0] + 4.0 * s, px) - 0.32 * smoothstep(x, gx, a.anterior[0]))
    width = np.where(calc, width, np.array([0.0, 0.0, 27.0, 36.0, 34.0], np.float32)[layer_a] * s)
    radius = np.array([1.0, 14.0, 7.0, 8.0, 14.0], np.float32)[layer_a] * s
    wall = np.where(tibia, 0.9 + 2.6 * smoothstep(dome[1] - yw, 15.0, 50.0), 0.8)
    cortex_a, spongy_a = rounded_slab(inner_distance(layer_a, pose.spacing), width, radius, wall)
    cortex_b, spongy_b = rounded_slab(
        inner_distance(layer_b, pose.spacing),
        np.array([0.0, 30.0, 25.0], np.float32)[layer_b] * s,
        np.array([1.0, 12.0, 8.0], np.float32)[layer_b] * s,
        0.8,
    )

    # Calcaneus: cortex, trabecular groups, the dense subchondral (thalamic) bone under the posterior
    # facet, the cortical strut of the crucial angle, and the medial sustentaculum projected over the body.
    waves, fine = a.texture
    fields = (waves(x, y), fine(x, y), fine(y, x))
    sub_chondral = band(y - roof, 2.0) * smoothstep(x, px - 14.0 * s, px - 8.0 * s) * smoothstep(-x, -gx, -px)
    calc_t = 0.9 * cortex_a * calc + spongy_a * calc * (
        _trabeculae(a, x, y, pose.spacing, fields) + 0.25 * sub_chondral
    )
    calc_t += calc * (
        0.3 * ellipsoid(x, y, gx - 2.0 * s, gy + 2.0 * s, 9.0 * s, 4.0 * s, 5.0, -0.25)
        + 0.12 * ellipsoid(x, y, gx + 4.0 * s, gy + 6.5 * s, 12.0 * s, 4.5 * s, 8.0, -0.1)
    )
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
            sd = sd + 0.5 * fields[1]  # a broken fragment's edges are jagged, not ruled
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

    # Neighbours: talus, cuboid, navicular, cuneiforms, tibia with its medial malleolus and physeal scar,
    # fibula with the lateral malleolus reaching below the plafond, first metatarsal base.
    granular = 0.4 * (1.0 + 0.06 * fields[1] + 0.06 * fields[1] * fields[2])
    talar_centre = _place(a.facet, [(_DOME[0], _DOME[1] - 20.0)], s)[0]
    talar = 0.4 * (
        0.8 + 0.5 * _struts(np.arctan2(y - talar_centre[1], x - talar_centre[0]) * 30.0, pose.spacing, fields)
    )
    marrow = 1.0 - 0.7 * tibia * smoothstep(dome[1] - yw, 30.0 * s, 70.0 * s)
    streaks = 1.0 + 0.15 * tibia * np.cos(xw * np.float32(2.0 * math.pi / max(1.6, 2.6 * pose.spacing)) + fields[0])
    others = (
        0.9 * (cortex_a * ~calc + cortex_b)
        + spongy_a * ~calc * granular * marrow * streaks
        + spongy_b * np.where(layer_b == 1, talar, granular)
        + 0.25 * spongy_a * tibia * band(yw - (dome[1] - 22.0 * s), 0.8)
    )
    dxm, dym = dome
    fib_tip, fib_mid, fib_top = (
        (dxm - 9.0 * s, dym + 15.0 * s),
        (dxm - 11.0 * s, dym - 28.0 * s),
        (dxm - 13.0 * s, -250.0),
    )
    others += _on_crop(
        grid,
        turn,
        [fib_tip, fib_top],
        10.0 * s,
        lambda u, v: (
            0.8
            * np.maximum(
                tube(u, v, fib_tip, fib_mid, 6.5 * s, 9.0 * s, 2.0), tube(u, v, fib_mid, fib_top, 9.0 * s, 6.5 * s, 2.2)
            )
        ),
    )
    others += 0.3 * ellipsoid(xw, yw, dxm + 3.0 * s, dym + 9.0 * s, 9.0 * s, 12.0 * s, 7.0 * s)
    mt = turn.T @ _place(a.facet, [(82.0, -2.0), (170.0, 14.0)], s).T
    others += _on_crop(
        grid,
        turn,
        list(mt.T),
        7.0 * s,
        lambda u, v: 0.7 * tube(u, v, tuple(mt[:, 0]), tuple(mt[:, 1]), 7.0 * s, 5.0 * s, 1.8),
    )
    bone = calc_t + others * a.density

    # Soft tissue: rounded slab under the skin outline; Achilles tendon (denser) and Kager's fat pad
    # (lucent triangle between the tendon, the deep flexors and the calcaneus).
    post = (outline @ turn)[np.argmin(outline[:, 0])]
    ach0 = (float(post[0]) + 2.5 * s, float(post[1]) - 3.0 * s)
    ach1 = (dxm - 30.0 * s, dym - 250.0)
    soft = (
        rounded_slab(inner_distance(skin, pose.spacing), 64.0 * s, 28.0 * s)[1]
        + _on_crop(grid, turn, [ach0, ach1], 4.0 * s, lambda u, v: tube(u, v, ach0, ach1, 4.0 * s, 3.0 * s))
        - 22.0 * s * _kager(xw, yw, ach0, ach1, turn.T @ np.asarray(a.tub), dome, s)
    )
    soft = a.soft * np.maximum(soft, 0.0) * skin

    log_signal = (_MU_BONE * bone + _MU_SOFT * soft).astype(np.float32)
    ramp = np.float32(pose.heel[0]) * np.linspace(-0.5, 0.5, cols, dtype=np.float32)[None, :]
    log_signal *= 1.0 + ramp + np.float32(pose.heel[1]) * np.linspace(-0.5, 0.5, rows, dtype=np.float32)[:, None]
    noise = rng.standard_normal(log_signal.shape, dtype=np.float32)
    noisy = log_signal + noise * np.sqrt(np.exp(np.minimum(log_signal, 6.0)) / pose.photons)
    sigma = pose.blur_mm / pose.spacing
    if sigma > 0.3:
        noisy = gaussian_filter(noisy, sigma, truncate=3.0)
    v = np.clip(1.0 - np.exp(-pose.gain * np.maximum(noisy, 0.0)), 0.0, 1.0) ** pose.gamma
    v = np.clip(v + pose.sharpen * (v - gaussian_filter(v, 2.5 / pose.spacing, truncate=2.5)), 0.0, 1.0)
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
