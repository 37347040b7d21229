"""Femur radiograph phantom for atypical vs normal femoral fractures (task ``femur-fracture-xray``).

Each study is a pair of synthetic radiographs of one fractured femur: an AP view and a lateral view,
portrait, with the proximal femur (head, neck, trochanters) and a piece of the acetabulum at the top, a
long shaft with bright cortices and a darker medullary canal, and the soft-tissue shadow of the thigh.

Fractures follow the seed project (Eklund & Schilcher, atypical femoral fractures under bisphosphonates):

* AFF (``label`` 1): ``transverse_lateral`` or ``short_oblique_lateral`` line in the subtrochanteric or
  diaphyseal region that starts at the lateral cortex (optionally turning into a short medial spike), a
  focal lateral cortical thickening ("beak") at the line, no comminution, little displacement;
* NFF (``label`` 0): ``spiral`` (helical S-shaped line), ``oblique`` or ``comminuted`` (main line plus a
  butterfly wedge and small chips) at any level from the trochanters to the distal shaft, displaced,
  shortened and angulated.

The image is built from rigid fragments: each fragment is the intact femur cut by the fracture surface
(in the femur's own frame) and moved by its own rotation and translation, so displacement, overlap and
the dark fracture gap come out of the same geometry in both views. Patients keep their anatomy and
fracture over 1–4 studies; follow-ups get a new pose, exposure and a slightly different displacement.

``subtlety`` in [0, 1] narrows the gap, shrinks the displacement and the beak; at 1 AFF still carries a
beak and a near-transverse line, NFF still an oblique, helical or multi-fragment one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from osteoscope.data.manifest import MANIFEST_NAME, write_manifest
from osteoscope.errors import ConfigError
from osteoscope.phantoms._draw import (
    FourierField,
    Grid,
    check_count_and_subtlety,
    check_image_size,
    ellipsoid,
    smoothstep,
    sphere,
    tube,
    write_png16,
)

TASK = "femur-fracture-xray"
COLUMNS = (
    "case_id",
    "patient_id",
    "image_ap",
    "image_lat",
    "label",
    "fracture_type",
    "box_ap",
    "box_lat",
    "mask_ap",
    "mask_lat",
    "subtlety",
)
AFF_TYPES = ("transverse_lateral", "short_oblique_lateral")
NFF_TYPES = ("spiral", "oblique", "comminuted")

_FOV_HEIGHT_MM = 430.0
_TOP_MM = -95.0  # femur-frame level (mm from the neck-shaft junction) at the top of the image
_STUDIES_PER_PATIENT = ((1, 0.5), (2, 0.25), (3, 0.15), (4, 0.1))
_MU_SOFT = 0.018
_MU_BONE = 0.055

Membership = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class _Anatomy:
    """Fixed anatomy of one patient's fractured femur (mm, femur frame: u lateral/anterior, v distal)."""

    right: bool
    head_radius: float
    neck_length: float
    neck_angle: float
    shaft_radius: float
    cortex: float
    bow: float
    density: float
    thigh_half_width: float
    thigh_depth: float
    texture: FourierField


@dataclass(frozen=True)
class _Fracture:
    """Fixed fracture of one patient: type, level, line shape, fragments and the AFF beak."""

    kind: str
    level: float
    slope: float
    spike: float
    pitch: float
    sign: int
    beak: float
    beak_width: float
    gap: float
    shift: tuple[float, float, float]
    angulation: float
    wedge: tuple[int, float, float] | None
    chips: tuple[tuple[float, float, float, float, float], ...]


@dataclass(frozen=True)
class _Pose:
    """Positioning and exposure of one study (both views)."""

    rotation: tuple[float, float]
    magnification: float
    shift: tuple[float, float]
    displacement: float
    blur_mm: float
    photons: float
    tone_mid: float
    tone_width: float
    gamma: float
    white: float
    black: float
    heel: float


def generate(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    *,
    subtlety: float = 0.5,
    image_size: tuple[int, int] = (384, 256),
    aff_fraction: float = 0.2,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``n`` synthetic femur fracture studies (AP + lateral) and return the manifest path.

    Args:
        out_dir: Folder to create; gets ``manifest.csv``, ``images/`` and ``masks/``.
        n: Number of studies (cases); patients have 1–4 studies each.
        seed: Everything is a deterministic function of the seed.
        subtlety: Fracture conspicuity knob in [0, 1]; 1 is hardest but AFF and NFF still differ.
        image_size: ``(rows, cols)`` of each view; the field of view stays 430 mm high.
        aff_fraction: Target share of AFF studies.
        progress: Called as ``progress(i, n)`` after study ``i`` (1-based) is written.

    Returns:
        Path of the written ``manifest.csv``.
    """
    _check_args(n, subtlety, image_size, aff_fraction)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    plan = _plan(int(n), np.random.default_rng([seed, 0]), aff_fraction)
    width = max(4, len(str(len(plan))))
    rows: list[dict[str, str]] = []
    for index, (n_studies, aff) in enumerate(plan):
        rng = np.random.default_rng([seed, 1, index])
        anatomy = _draw_anatomy(rng)
        fracture = _draw_fracture(rng, aff, subtlety)
        patient_id = f"p{index + 1:0{width}d}"
        for k in range(n_studies):
            case_id = f"{patient_id}_s{k + 1}"
            pose = _draw_pose(np.random.default_rng([seed, 2, index, k]), subtlety)
            noise_rng = np.random.default_rng([seed, 3, index, k])
            row = {"case_id": case_id, "patient_id": patient_id, "label": str(int(aff))}
            row["fracture_type"] = fracture.kind
            for view in ("ap", "lat"):
                pixels, mask = _render(anatomy, fracture, pose, view, image_size, noise_rng)
                row[f"image_{view}"] = f"images/{case_id}_{view}.png"
                row[f"mask_{view}"] = f"masks/{case_id}_{view}.png"
                row[f"box_{view}"] = _box(mask)
                write_png16(out / row[f"image_{view}"], pixels)
                Image.fromarray(mask.astype(np.uint8) * 255).save(out / row[f"mask_{view}"], compress_level=1)
            row["subtlety"] = f"{subtlety:g}"
            rows.append(row)
            if progress is not None:
                progress(len(rows), int(n))
    return write_manifest(out / MANIFEST_NAME, rows, COLUMNS)


def _check_args(n: int, subtlety: float, image_size: tuple[int, int], aff_fraction: float) -> None:
    """Reject options the generator cannot honour."""
    check_count_and_subtlety(n, subtlety)
    check_image_size(image_size)
    if not 0.0 <= aff_fraction <= 1.0:
        raise ConfigError(f"aff_fraction must lie in [0, 1], got {aff_fraction!r}")


def _plan(n: int, rng: np.random.Generator, aff_fraction: float) -> list[tuple[int, bool]]:
    """Split ``n`` studies into patients and mark whole patients AFF until the target share is met."""
    counts, probs = zip(*_STUDIES_PER_PATIENT, strict=True)
    sizes: list[int] = []
    while sum(sizes) < n:
        sizes.append(min(int(rng.choice(counts, p=probs)), n - sum(sizes)))
    target = round(aff_fraction * n)
    aff = [False] * len(sizes)
    done = 0
    for i in rng.permutation(len(sizes)):
        if done + sizes[i] <= target:
            aff[i] = True
            done += sizes[i]
    return list(zip(sizes, aff, strict=True))


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    """One uniform draw as a Python float, so that float32 arrays stay float32."""
    return float(rng.uniform(lo, hi))


def _draw_anatomy(rng: np.random.Generator) -> _Anatomy:
    """Draw one patient's femur and thigh."""
    scale = float(rng.normal(1.0, 0.06))
    return _Anatomy(
        right=bool(rng.random() < 0.5),
        head_radius=23.0 * scale * _u(rng, 0.94, 1.06),
        neck_length=58.0 * scale * _u(rng, 0.92, 1.08),
        neck_angle=_u(rng, 122.0, 136.0),
        shaft_radius=14.0 * scale * _u(rng, 0.92, 1.08),
        cortex=_u(rng, 4.0, 6.5),
        bow=_u(rng, 4.0, 12.0),
        density=_u(rng, 0.85, 1.1),
        thigh_half_width=_u(rng, 70.0, 100.0) * scale,
        thigh_depth=_u(rng, 55.0, 85.0) * scale,
        texture=FourierField.random(rng, 10, (2.0, 6.0), anisotropy=2.5, angle=math.pi / 2),
    )


def _draw_fracture(rng: np.random.Generator, aff: bool, subtlety: float) -> _Fracture:
    """Draw one patient's fracture; every patient draws the same numbers so plans stay independent."""
    kind = str(rng.choice(AFF_TYPES, p=(0.65, 0.35)) if aff else rng.choice(NFF_TYPES, p=(0.35, 0.35, 0.3)))
    sign = 1 if rng.random() < 0.5 else -1
    ease = 1.0 - 0.75 * subtlety
    if aff:
        angle = _u(rng, -6.0, 6.0) if kind == "transverse_lateral" else sign * _u(rng, 14.0, 28.0)
        level = _u(rng, 15.0, 230.0)
        spike = _u(rng, 20.0, 45.0) if rng.random() < 0.5 else 0.0
        beak = _u(rng, 2.2, 3.6) * (1.0 - 0.45 * subtlety)
        shift = (_u(rng, -5.0, 5.0), _u(rng, -3.0, 6.0), _u(rng, -5.0, 5.0))
        angulation = _u(rng, -4.0, 4.0)
    else:
        angle = sign * _u(rng, 35.0, 58.0) if kind == "oblique" else _u(rng, -25.0, 25.0)
        level = _u(rng, -5.0, 210.0) if kind == "spiral" else _u(rng, -10.0, 270.0)
        spike = 0.0
        beak = 0.0
        shift = (_u(rng, -16.0, 16.0), _u(rng, -4.0, 18.0), _u(rng, -16.0, 16.0))
        angulation = _u(rng, -12.0, 12.0)
    wedge = None
    chips: tuple[tuple[float, float, float, float, float], ...] = ()
    if kind == "comminuted":
        wedge = (sign, _u(rng, 14.0, 30.0), _u(rng, 14.0, 30.0))
        chips = tuple(
            (_u(rng, -0.8, 0.8), _u(rng, -6.0, 6.0), _u(rng, 2.5, 5.0), _u(rng, -5.0, 5.0), _u(rng, -5.0, 5.0))
            for _ in range(int(rng.integers(2, 5)))
        )
    return _Fracture(
        kind=kind,
        level=level,
        slope=math.tan(math.radians(angle)),
        spike=math.tan(math.radians(spike)),
        pitch=_u(rng, 5.0, 8.0) * 14.0,
        sign=sign,
        beak=beak,
        beak_width=_u(rng, 8.0, 14.0),
        gap=_u(rng, 1.2, 2.2) * (1.0 - 0.55 * subtlety),
        shift=(shift[0] * ease, shift[1] * ease, shift[2] * ease),
        angulation=angulation * ease,
        wedge=wedge,
        chips=chips,
    )


def _draw_pose(rng: np.random.Generator, subtlety: float) -> _Pose:
    """Draw positioning and exposure of one study; follow-ups vary the displacement a little."""
    return _Pose(
        rotation=(math.radians(float(rng.normal(0.0, 2.5))), math.radians(float(rng.normal(0.0, 2.5)))),
        magnification=float(rng.normal(1.1, 0.03)),
        shift=(float(rng.normal(0.0, 8.0)), float(rng.normal(0.0, 6.0))),
        displacement=_u(rng, 0.75, 1.25),
        blur_mm=_u(rng, 0.4, 0.9),
        photons=_u(rng, 1.5e4, 6.0e4),
        tone_mid=float(rng.normal(0.0, 0.1)),
        tone_width=_u(rng, 0.85, 1.2),
        gamma=_u(rng, 0.8, 1.2),
        white=_u(rng, 30000.0, 64000.0),
        black=_u(rng, 100.0, 1500.0),
        heel=float(rng.normal(0.0, 0.05)),
    )


def _make_grid(image_size: tuple[int, int], pose: _Pose, view: str, mirror: bool) -> Grid:
    """Map pixels to the femur frame: detector mm, undo shift, rotation, magnification and mirroring."""
    rows, cols = image_size
    spacing = _FOV_HEIGHT_MM / rows
    rot = pose.rotation[0 if view == "ap" else 1]
    c, s = math.cos(rot), math.sin(rot)
    k = spacing / pose.magnification
    m = -1.0 if mirror else 1.0
    # The shaft sits a little off-centre, towards the lateral side, so the head fits in the field.
    xd0 = (0.5 - cols / 2.0) * spacing - pose.shift[0] - m * 18.0
    yd0 = 0.5 * spacing - pose.shift[1] + _TOP_MM * pose.magnification
    origin = (m * (c * xd0 + s * yd0) / pose.magnification, (-s * xd0 + c * yd0) / pose.magnification)
    return Grid(image_size, origin, (m * c * k, -s * k), (m * s * k, c * k))


def _femur(u: np.ndarray, v: np.ndarray, a: _Anatomy, f: _Fracture, view: str) -> tuple[np.ndarray, np.ndarray]:
    """Projected bone (cortex + density-weighted cancellous bone) of the intact femur, and its outline.

    The shaft is an annulus whose lateral (AP) or anterior (lateral view) half can carry the AFF beak:
    a local periosteal and endosteal thickening centred on the fracture level.
    """
    rs, cs = a.shaft_radius, a.cortex
    axis = a.bow * (1.0 - ((v - 170.0) / 230.0) ** 2) if view == "lat" else 0.0
    x = u - axis
    flare = 7.0 * smoothstep(-v, -45.0, 5.0) + 9.0 * smoothstep(v, 330.0, 420.0)
    cortex = 1.8 + (cs - 1.8) * smoothstep(v, 0.0, 90.0) * (1.0 - 0.6 * smoothstep(v, 300.0, 380.0))
    bump = f.beak * np.exp(-(((v - f.level) / f.beak_width) ** 2)) * (0.7 if view == "lat" else 1.0)
    side = x > 0
    r_out = rs + flare + np.where(side, bump, 0.0)
    r_in = rs + flare - cortex - np.where(side, 0.6 * bump, 0.0)
    shaft_gate = smoothstep(v, -40.0, -20.0)
    outer = 2.0 * np.sqrt(np.maximum(r_out**2 - x**2, 0.0)) * shaft_gate
    inner = 2.0 * np.sqrt(np.maximum(r_in**2 - x**2, 0.0)) * shaft_gate
    # Proximal femur: head, neck, trochanteric mass, greater and lesser trochanter.
    ang = math.radians(180.0 - a.neck_angle)
    if view == "ap":
        nd = (-math.sin(ang), -math.cos(ang))
        head = (a.neck_length * nd[0], a.neck_length * nd[1])
        gt, lt = (0.55 * rs, -28.0), (-rs - 2.0, 32.0)
    else:
        head = (-4.0, -a.neck_length * math.cos(ang))
        gt, lt = (-4.0, -24.0), (-rs * 0.6, 32.0)
    rh = a.head_radius
    neck_mid = (0.55 * head[0], 0.55 * head[1])
    shapes = [
        (sphere(u, v, head[0], head[1], rh), sphere(u, v, head[0], head[1], rh - 1.2)),
        (tube(u, v, head, neck_mid, 0.78 * rh, 0.66 * rh), tube(u, v, head, neck_mid, 0.78 * rh - 2, 0.66 * rh - 2)),
        (tube(u, v, neck_mid, (0.0, 0.0), 0.66 * rh, rs + 7), tube(u, v, neck_mid, (0.0, 0.0), 0.66 * rh - 2, rs + 5)),
        (ellipsoid(u, v, 2.0, 0.0, rs + 6.0, 40.0, 14.0), ellipsoid(u, v, 2.0, 0.0, rs + 4.5, 38.5, 12.5)),
        (
            ellipsoid(u, v, gt[0], gt[1], 14.0, 24.0, 16.0, -0.25),
            ellipsoid(u, v, gt[0], gt[1], 12.5, 22.5, 14.5, -0.25),
        ),
        (ellipsoid(u, v, lt[0], lt[1], 7.0, 10.0, 7.0, 0.5), ellipsoid(u, v, lt[0], lt[1], 5.8, 8.8, 5.8, 0.5)),
    ]
    p_out = np.maximum.reduce([o for o, _ in shapes])
    p_in = np.maximum.reduce([i for _, i in shapes])
    proximal = smoothstep(-v, -45.0, -5.0)
    texture = 1.0 + 0.12 * a.texture(u, v)
    spongy = p_in * (0.13 * texture) * proximal + inner * (0.1 * texture * smoothstep(-v, -70.0, -10.0) + 0.06)
    cort = np.maximum(p_out - p_in, 0.0) * proximal + np.maximum(outer - inner, 0.0)
    total = a.density * (cort + spongy)
    return np.maximum(total, 0.0), np.maximum(p_out * proximal, outer)


def _line(f: _Fracture, u: np.ndarray, rs: float, view: str) -> np.ndarray:
    """Level of the fracture surface at position ``u`` across the shaft (distal side is below it)."""
    if f.kind == "spiral":
        turn = 1.0 if view == "ap" else -0.7
        return f.level + turn * f.sign * f.pitch / (2.0 * math.pi) * np.arcsin(np.clip(u / (rs + 4.0), -1.0, 1.0))
    slope = f.slope if view == "ap" else 0.6 * f.slope
    level = f.level + slope * u
    if f.spike > 0.0:
        level = level + f.spike * np.maximum(-0.25 * rs - u, 0.0)
    return level


def _fragments(f: _Fracture, rs: float, view: str) -> list[tuple[Membership, tuple[float, float, float]]]:
    """Fragments as (membership in the femur frame, rigid move (du, dv, degrees)); proximal stays put."""
    half = 0.5 * f.gap

    def split(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return v - _line(f, u, rs, view)

    def wedge(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        if f.wedge is None:
            return np.zeros_like(u)
        side, up, down = f.wedge
        across = side * u / rs  # 1 at the wedge's cortex, 0 at the axis
        d = split(u, v)
        reach = np.clip((across + 0.15) / 1.15, 0.0, None)
        inside = np.minimum(np.minimum(up * reach + d, down * reach - d), (across + 0.15) * 8.0)
        return smoothstep(inside, half, half + 0.8)

    def chips(u: np.ndarray, v: np.ndarray, i: int) -> np.ndarray:
        cu, cv, r, _, _ = f.chips[i]
        d = np.sqrt((u - cu * rs) ** 2 + (v - _line(f, np.full_like(u, cu * rs), rs, view) - cv) ** 2)
        return smoothstep(r - d, half, half + 0.6)

    def all_chips(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        out = wedge(u, v)
        for i in range(len(f.chips)):
            out = np.maximum(out, chips(u, v, i))
        return out

    du = f.shift[0] if view == "ap" else f.shift[2]
    distal_move = (du, -f.shift[1], f.angulation)
    parts: list[tuple[Membership, tuple[float, float, float]]] = [
        (lambda u, v: smoothstep(-split(u, v), half, half + 0.6) * (1.0 - all_chips(u, v)), (0.0, 0.0, 0.0)),
        (lambda u, v: smoothstep(split(u, v), half, half + 0.6) * (1.0 - all_chips(u, v)), distal_move),
    ]
    if f.wedge is not None:
        out = f.wedge[0] * (0.35 * abs(f.shift[0]) + 2.0)  # the butterfly drifts away from the axis
        parts.append((wedge, (0.5 * du + out, -0.4 * f.shift[1], 8.0)))
    for i, (_, _, _, mu, mv) in enumerate(f.chips):
        parts.append((lambda u, v, i=i: chips(u, v, i), (0.4 * du + mu, -0.3 * f.shift[1] + mv, 20.0 * mu)))
    return parts


def _render(
    a: _Anatomy, f: _Fracture, pose: _Pose, view: str, image_size: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Render one view; return 16-bit pixels and the fracture-line mask."""
    mirror = a.right if view == "ap" else not a.right
    grid = _make_grid(image_size, pose, view, mirror)
    full = grid.full()
    u0, v0 = full.x, full.y
    # Thigh soft tissue, wider towards the hip; a piece of the acetabulum and ischium at the top.
    hw = a.thigh_half_width * (1.0 + 0.5 * smoothstep(-v0, -60.0, 40.0))
    q = (u0 + (12.0 if view == "ap" else 0.0)) / hw
    soft = (2.0 * a.thigh_depth * np.sqrt(np.maximum(1.0 - q * q, 0.0))).astype(np.float32)
    rs = a.shaft_radius
    ang = math.radians(180.0 - a.neck_angle)
    hu, hv = (-a.neck_length * math.sin(ang), -a.neck_length * math.cos(ang)) if view == "ap" else (-4.0, -40.0)
    rr = np.sqrt((u0 - hu) ** 2 + (v0 - hv) ** 2)
    roof = smoothstep(-(v0 - hv), -8.0, 4.0)
    socket = smoothstep(rr, a.head_radius + 2.0, a.head_radius + 4.0)
    pelvis = ellipsoid(u0, v0, hu - 45.0, hv - 35.0, 60.0, 30.0, 6.0) * socket
    pelvis = pelvis + 5.0 * np.exp(-(((rr - a.head_radius - 4.5) / 1.6) ** 2)) * roof
    bone = pelvis.astype(np.float32) * 0.45
    mask = np.zeros(image_size, dtype=bool)
    scale = pose.displacement
    pixel_mm = _FOV_HEIGHT_MM / image_size[0] / pose.magnification
    # Fragments are evaluated only on the window that can hold the femur, displaced fragments included.
    win = grid.crop(-rs - 80.0, _TOP_MM - 40.0, rs + 50.0, _TOP_MM + _FOV_HEIGHT_MM + 60.0)
    if win is None:
        raise ConfigError("the femur fell outside the image; use a larger image_size")
    sub_bone = bone[win.rows, win.cols]
    sub_mask = mask[win.rows, win.cols]
    for k, (member, (du, dv, deg)) in enumerate(_fragments(f, rs, view)):
        t = math.radians(deg * scale)
        c, s = math.cos(t), math.sin(t)
        pivot = f.level
        # Pull image points back into the fragment's own frame (rotation about the fracture centre).
        x = win.x - du * scale
        y = win.y - dv * scale - pivot
        fu = c * x + s * y
        fv = -s * x + c * y + pivot
        thick, outline = _femur(fu, fv, a, f, view)
        weight = member(fu, fv)
        sub_bone += (thick * weight).astype(np.float32)
        near = np.abs(fv - _line(f, fu, rs, view)) < max(0.5 * f.gap + 1.5, pixel_mm)
        sub_mask |= near & (outline > 0.5) & (weight > 0.01)
        if k >= 2:  # wedge and chips: outline every small fragment
            sub_mask |= (weight > 0.05) & (weight < 0.95) & (outline > 0.5)
    spacing = _FOV_HEIGHT_MM / image_size[0]
    log_signal = _MU_SOFT * soft + _MU_BONE * bone
    return _expose(log_signal, soft, u0, pose, spacing, rng), mask


def _expose(
    log_signal: np.ndarray, soft: np.ndarray, u: np.ndarray, pose: _Pose, spacing: float, rng: np.random.Generator
) -> np.ndarray:
    """Turn line integrals into a processed 16-bit radiograph (quantum noise, blur, display curve)."""
    noise = rng.standard_normal(log_signal.shape, dtype=np.float32)
    noisy = log_signal + noise * np.sqrt(np.exp(np.minimum(log_signal, 8.0)) / pose.photons)
    sigma = pose.blur_mm / spacing
    if sigma > 0.3:
        noisy = gaussian_filter(noisy, sigma, truncate=3.0)
    soft_part = _MU_SOFT * soft
    compressed = noisy - soft_part + 1.4 * np.tanh(soft_part / 1.4) + pose.heel * u / 200.0
    z = (compressed - 2.0 - pose.tone_mid) / (0.7 * pose.tone_width)
    z0 = (-2.0 - pose.tone_mid) / (0.7 * pose.tone_width)
    lo = 1.0 / (1.0 + math.exp(-z0))
    v = np.clip((1.0 / (1.0 + np.exp(-z)) - lo) / (1.0 - lo), 0.0, 1.0) ** pose.gamma
    return np.round(pose.black + v * (pose.white - pose.black)).astype(np.uint16)


def _box(mask: np.ndarray) -> str:
    """Bounding box ``x0 y0 x1 y1`` (end exclusive) of a mask with a 3-pixel margin, clipped."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise ConfigError("the fracture line covers no pixel; use a larger image_size")
    h, w = mask.shape
    return f"{max(cols.min() - 3, 0)} {max(rows.min() - 3, 0)} {min(cols.max() + 4, w)} {min(rows.max() + 4, h)}"
