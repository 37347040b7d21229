"""AP pelvis radiograph phantom for osteonecrosis of the femoral head (task ``onfh-xray``).

Each study is a synthetic anteroposterior pelvis radiograph: soft-tissue outline and thighs, bowel gas,
the pelvic ring (iliac wings, iliac bodies and pelvic brim, sacrum with foramina, L5, obturator rings,
pubic symphysis, ischial tuberosities), both acetabula with their sourcil and teardrop, and both
proximal femurs (head, neck, trochanters, shaft) with a cortical shell and oriented trabecular texture.
Bone is bright, soft tissue grey, air dark; values are 16-bit.

Disease follows the AsT paper's premise (Chen et al., AAAI 2023 student abstract): ONFH shows as an
*asymmetry* of the two femoral heads, and early stages are close to invisible. Lesions sit in the
superolateral (weight-bearing) part of the head and change with the ARCO stage:

* stage 1: faint mottled density (patchy sclerosis and lucency) — no line, no blob;
* stage 2: sclerotic demarcating rim around the necrotic segment, mottled lucency inside;
* stage 3: subchondral lucent crescent under the articular surface, early flattening;
* stage 4: collapse (flattened head contour), denser segment, joint-space narrowing, acetabular
  sclerosis.

Normal anatomy is never perfectly symmetric (head size, bone density, trabecular pattern, leg rotation,
pelvic rotation and tilt, occasional bone islands), so early disease overlaps with normal variation.
Patients keep their anatomy (a fixed anatomy seed) over 1–3 studies; follow-ups get a new pose and
exposure and the disease may progress by one stage per side.

Choices the paper leaves open, all parameters: ``subtlety`` scales lesion contrast (0 = obvious,
1 = hardest but never invisible); bilateral disease (40 % of positive patients) always has unequal
severity; the stage mix draws the first study's stage, so follow-up progression shifts the realised
mix slightly towards later stages.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from osteoscope.data.manifest import MANIFEST_NAME, write_manifest
from osteoscope.errors import ConfigError
from osteoscope.phantoms._dicom import Study, dicom_uid, write_dicom
from osteoscope.phantoms._draw import (
    Crop,
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

TASK = "onfh-xray"
COLUMNS = (
    "case_id",
    "patient_id",
    "image",
    "label",
    "side",
    "stage",
    "box_left",
    "box_right",
    "mask_left",
    "mask_right",
    "subtlety",
)
DEFAULT_STAGE_MIX: dict[int, float] = {1: 0.25, 2: 0.30, 3: 0.25, 4: 0.20}

_FOV_WIDTH_MM = 430.0  # a 17-inch detector held landscape
_HEAD_ROW = 0.57  # fraction of the image height at which the hip centres sit
_STUDIES_PER_PATIENT = ((1, 0.55), (2, 0.30), (3, 0.15))
_BILATERAL = 0.4
_PROGRESSION = 0.35
_MU_SOFT = 0.02  # attenuation per mm of soft tissue
_MU_BONE = 0.03  # attenuation per mm of cortical-bone equivalent
_SIDE_SIGN = {"right": -1, "left": 1}  # patient's right hip is on the image's left


@dataclass(frozen=True)
class _Hip:
    """Fixed anatomy of one hip of one patient (mm, degrees)."""

    head_x: float
    head_y: float
    radius: float
    neck_shaft: float
    shaft_tilt: float
    neck_length: float
    neck_radius: float
    shaft_radius: float
    shaft_cortex: float
    density: float
    joint_space: float
    texture: tuple[FourierField, FourierField, FourierField]
    bone_island: tuple[float, float, float] | None


@dataclass(frozen=True)
class _Lesion:
    """Fixed geometry of a necrotic segment in one femoral head."""

    angle: float
    size: float
    collapse: float
    mottle: FourierField
    cysts: tuple[tuple[float, float, float], ...]


@dataclass(frozen=True)
class _Anatomy:
    """Fixed anatomy of one patient."""

    hips: dict[int, _Hip]
    body_half_width: float
    body_depth: float
    wing: float
    inlet: float
    bone_density: float


@dataclass(frozen=True)
class _Pose:
    """Positioning and exposure of one study."""

    rotation: float
    magnification: float
    shift: tuple[float, float]
    tilt: float
    yaw: float
    version: dict[int, float]
    blur_mm: float
    photons: float
    tone_mid: float
    tone_width: float
    gamma: float
    white: float
    black: float
    heel: float
    gas: tuple[tuple[float, float, float, float, float], ...]


@dataclass
class _Patient:
    """Study plan of one patient: stages per study and per patient side."""

    index: int
    n_studies: int
    primary: str = "right"
    stages: list[dict[str, int]] = field(default_factory=list)


def generate(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    *,
    subtlety: float = 0.5,
    image_size: tuple[int, int] = (384, 512),
    fmt: str = "png",
    stage_mix: dict[int, float] | None = None,
    positive_fraction: float = 0.5,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``n`` synthetic AP pelvis studies with ONFH labels and return the manifest path.

    Args:
        out_dir: Folder to create; gets ``manifest.csv``, ``images/`` and ``masks/``.
        n: Number of studies (cases); patients have 1–3 studies each.
        seed: Everything is a deterministic function of the seed.
        subtlety: Lesion contrast knob in [0, 1]; 1 is hardest but still measurably abnormal.
        image_size: ``(rows, cols)``; the field of view stays 430 mm wide.
        fmt: ``"png"`` (16-bit grayscale) or ``"dicom"`` (DX, MONOCHROME2, 16-bit).
        stage_mix: Probabilities of ARCO stages 1–4 among positive patients' first studies.
        positive_fraction: Target share of positive studies.
        progress: Called as ``progress(i, n)`` after study ``i`` (1-based) is written.

    Returns:
        Path of the written ``manifest.csv``.
    """
    mix = _check_args(n, subtlety, image_size, fmt, stage_mix, positive_fraction)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    patients = _plan(n, np.random.default_rng([seed, 0]), positive_fraction, mix)
    width = max(4, len(str(len(patients))))
    rows: list[dict[str, str]] = []
    done = 0
    for patient in patients:
        anat_rng = np.random.default_rng([seed, 1, patient.index])
        anatomy = _draw_anatomy(anat_rng)
        lesions = _draw_lesions(anat_rng, patient)
        patient_id = f"p{patient.index + 1:0{width}d}"
        for k, stages in enumerate(patient.stages):
            case_id = f"{patient_id}_s{k + 1}"
            pose = _draw_pose(np.random.default_rng([seed, 2, patient.index, k]), anatomy)
            noise_rng = np.random.default_rng([seed, 3, patient.index, k])
            pixels, masks, boxes, spacing = _render(anatomy, lesions, stages, pose, image_size, subtlety, noise_rng)
            rows.append(
                _write_case(out, case_id, patient_id, k, seed, fmt, pixels, masks, boxes, spacing, stages, subtlety)
            )
            done += 1
            if progress is not None:
                progress(done, n)
    return write_manifest(out / MANIFEST_NAME, rows, COLUMNS)


def _check_args(
    n: int,
    subtlety: float,
    image_size: tuple[int, int],
    fmt: str,
    stage_mix: dict[int, float] | None,
    positive_fraction: float,
) -> dict[int, float]:
    """Validate the options and return the normalised stage mix."""
    check_count_and_subtlety(n, subtlety)
    check_image_size(image_size)
    if fmt not in ("png", "dicom"):
        raise ConfigError(f"fmt must be 'png' or 'dicom', got {fmt!r}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ConfigError(f"positive_fraction must lie in [0, 1], got {positive_fraction!r}")
    mix = dict(DEFAULT_STAGE_MIX if stage_mix is None else stage_mix)
    if not mix or set(mix) - {1, 2, 3, 4} or min(mix.values()) < 0 or sum(mix.values()) <= 0:
        raise ConfigError(f"stage_mix must map stages 1-4 to non-negative weights, got {stage_mix!r}")
    total = sum(mix.values())
    return {k: v / total for k, v in sorted(mix.items())}


def _plan(n: int, rng: np.random.Generator, positive_fraction: float, mix: dict[int, float]) -> list[_Patient]:
    """Split ``n`` studies into patients and give positive patients per-side stages per study."""
    counts, probs = zip(*_STUDIES_PER_PATIENT, strict=True)
    patients: list[_Patient] = []
    total = 0
    while total < n:
        k = min(int(rng.choice(counts, p=probs)), n - total)
        patients.append(_Patient(len(patients), k))
        total += k
    target = round(positive_fraction * n)
    positives = 0
    stages = list(mix)
    weights = list(mix.values())
    for i in rng.permutation(len(patients)):
        patient = patients[i]
        # Every patient draws the same numbers, so one patient's plan does not shift the others'.
        first = int(rng.choice(stages, p=weights))
        bilateral = rng.random() < _BILATERAL
        primary = "right" if rng.random() < 0.5 else "left"
        lag = int(rng.integers(1, 3))
        steps = rng.random((patient.n_studies, 2)) < _PROGRESSION
        if positives + patient.n_studies > target:
            patient.stages = [{"right": 0, "left": 0} for _ in range(patient.n_studies)]
            continue
        positives += patient.n_studies
        patient.primary = primary
        other = "left" if primary == "right" else "right"
        current = {primary: first, other: max(first - lag, 1) if bilateral else 0}
        for k in range(patient.n_studies):
            if k > 0:
                for j, side in enumerate((primary, other)):
                    if current[side] and steps[k, j]:
                        current[side] = min(current[side] + 1, 4)
            patient.stages.append(dict(current))
    return patients


def _normal(rng: np.random.Generator, mean: float, sd: float) -> float:
    """One normal draw as a Python float, so that float32 arrays stay float32."""
    return float(rng.normal(mean, sd))


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """One uniform draw as a Python float, so that float32 arrays stay float32."""
    return float(rng.uniform(lo, hi))


def _draw_anatomy(rng: np.random.Generator) -> _Anatomy:
    """Draw one patient's anatomy: a shared build with small left-right differences."""
    scale = _normal(rng, 1.0, 0.05)
    radius = 24.0 * scale * _normal(rng, 1.0, 0.04)
    base = {
        "head_x": 92.0 * scale * _normal(rng, 1.0, 0.03),
        "neck_shaft": _normal(rng, 129.0, 4.0),
        "shaft_tilt": _normal(rng, 8.0, 1.5),
        "neck_length": 62.0 * scale * _normal(rng, 1.0, 0.05),
        "neck_radius": 0.64 * radius * _normal(rng, 1.0, 0.04),
        "shaft_radius": 15.5 * scale * _normal(rng, 1.0, 0.05),
        "shaft_cortex": _uniform(rng, 4.0, 6.5),
        "joint_space": _uniform(rng, 3.8, 5.0),
    }
    hips = {}
    for s in (-1, 1):
        trab_angle = _normal(rng, 0.0, 0.1)
        hips[s] = _Hip(
            head_x=base["head_x"] + _normal(rng, 0.0, 1.2),
            head_y=_normal(rng, 0.0, 1.2),
            radius=radius * _normal(rng, 1.0, 0.015),
            neck_shaft=base["neck_shaft"] + _normal(rng, 0.0, 1.5),
            shaft_tilt=base["shaft_tilt"] + _normal(rng, 0.0, 0.8),
            neck_length=base["neck_length"] * _normal(rng, 1.0, 0.02),
            neck_radius=base["neck_radius"] * _normal(rng, 1.0, 0.02),
            shaft_radius=base["shaft_radius"] * _normal(rng, 1.0, 0.02),
            shaft_cortex=base["shaft_cortex"] * _normal(rng, 1.0, 0.04),
            density=_normal(rng, 1.0, 0.03),
            joint_space=base["joint_space"] * _normal(rng, 1.0, 0.06),
            texture=(
                FourierField.random(rng, 6, (10.0, 30.0)),
                FourierField.random(rng, 6, (6.0, 18.0)),
                FourierField.random(rng, 8, (2.5, 6.0), anisotropy=2.0, angle=math.pi / 2 + trab_angle),
            ),
            bone_island=(
                (_uniform(rng, -0.5, 0.5), _uniform(rng, -0.5, 0.6), _uniform(rng, 1.5, 3.5))
                if rng.random() < 0.12
                else None
            ),
        )
    return _Anatomy(
        hips=hips,
        body_half_width=_uniform(rng, 160.0, 215.0) * scale,
        body_depth=_uniform(rng, 190.0, 270.0) * scale,
        wing=scale * _normal(rng, 1.0, 0.05),
        inlet=scale * _normal(rng, 1.0, 0.05),
        bone_density=_normal(rng, 1.0, 0.08),
    )


def _draw_lesions(rng: np.random.Generator, patient: _Patient) -> dict[str, _Lesion]:
    """Draw the fixed lesion geometry of every side that is ever diseased in this patient."""
    lesions = {}
    for side in ("right", "left"):
        angle = _uniform(rng, 10.0, 35.0)
        size = _uniform(rng, 0.45, 0.72)
        collapse = _uniform(rng, 2.5, 5.0)
        mottle = FourierField.random(rng, 10, (3.0, 8.0))
        cysts = tuple(
            (_uniform(rng, -0.6, 0.6), _uniform(rng, 0.15, 0.75), _uniform(rng, 1.5, 3.2))
            for _ in range(int(rng.integers(2, 5)))
        )
        if any(st[side] for st in patient.stages):
            # The second side of bilateral disease lags in stage and has the smaller segment.
            scale = 1.0 if side == patient.primary else 0.8
            lesions[side] = _Lesion(angle, size * scale, collapse, mottle, cysts)
    return lesions


def _draw_pose(rng: np.random.Generator, anatomy: _Anatomy) -> _Pose:
    """Draw positioning, exposure and bowel gas for one study."""
    gas = tuple(
        (
            _uniform(rng, -95.0, 95.0),
            _uniform(rng, -185.0, -40.0),
            _uniform(rng, 8.0, 28.0),
            _uniform(rng, 6.0, 20.0),
            _uniform(rng, 0.0, math.pi),
        )
        for _ in range(int(rng.integers(3, 9)))
    )
    return _Pose(
        rotation=math.radians(_normal(rng, 0.0, 2.0)),
        magnification=_normal(rng, 1.12, 0.03),
        shift=(_normal(rng, 0.0, 8.0), _normal(rng, 0.0, 8.0)),
        tilt=float(np.clip(_normal(rng, 0.0, 0.06), -0.15, 0.15)),
        yaw=float(np.clip(_normal(rng, 0.0, 0.03), -0.08, 0.08)),
        version={s: _normal(rng, 12.0, 8.0) for s in (-1, 1)},
        blur_mm=_uniform(rng, 0.35, 0.8),
        photons=_uniform(rng, 2.0e4, 8.0e4),
        tone_mid=_normal(rng, 0.0, 0.04),
        tone_width=_uniform(rng, 0.85, 1.15),
        gamma=_uniform(rng, 0.8, 1.2),
        white=_uniform(rng, 30000.0, 64000.0),
        black=_uniform(rng, 100.0, 1500.0),
        heel=_normal(rng, 0.0, 0.03),
        gas=gas,
    )


def _render(
    anatomy: _Anatomy,
    lesions: dict[str, _Lesion],
    stages: dict[str, int],
    pose: _Pose,
    image_size: tuple[int, int],
    subtlety: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[str, np.ndarray | None], dict[str, str], float]:
    """Render one study; return 16-bit pixels, lesion masks, head boxes and pixel spacing (mm)."""
    spacing = _FOV_WIDTH_MM / image_size[1]
    grid = _make_grid(image_size, spacing, pose)
    full = grid.full()
    soft = _soft_tissue(full.x, full.y, anatomy)
    for gx, gy, ga, gb, gang in pose.gas:
        crop = grid.crop(gx - ga, gy - ga, gx + ga, gy + ga)
        if crop is not None:
            soft[crop.rows, crop.cols] -= ellipsoid(crop.x, crop.y, gx, gy, ga, gb, 0.6 * gb, gang)
    bone = np.zeros(image_size, dtype=np.float32)
    _draw_spine(grid, bone, anatomy, pose)
    contrast = 0.6 + 1.2 * (1.0 - subtlety) ** 1.3  # 1.8 obvious, ~1.1 default, 0.6 hardest
    structure = 1.25 - 0.5 * subtlety
    masks: dict[str, np.ndarray | None] = {}
    boxes: dict[str, str] = {}
    for side, s in _SIDE_SIGN.items():
        hip = anatomy.hips[s]
        stage = stages[side]
        head = _head_geometry(hip, s, pose, stage, lesions.get(side), structure)
        _draw_hemipelvis(grid, bone, anatomy, s, pose, head, stage)
        masks[side] = _draw_femur(
            grid, bone, anatomy, hip, s, pose, head, stage, lesions.get(side), contrast, image_size
        )
        boxes[side] = _head_box(grid, head, image_size)
    soft = np.maximum(soft, 0.0)
    log_signal = _MU_SOFT * soft + _MU_BONE * anatomy.bone_density * bone
    pixels = _expose(log_signal, soft, full.x, pose, spacing, rng)
    return pixels, masks, boxes, spacing / pose.magnification


def _make_grid(image_size: tuple[int, int], spacing: float, pose: _Pose) -> Grid:
    """Map pixels to anatomy: detector mm, then undo shift, in-plane rotation and magnification."""
    rows, cols = image_size
    c, s = math.cos(pose.rotation), math.sin(pose.rotation)
    k = spacing / pose.magnification
    # detector (xd, yd) = m R p + shift  =>  p = R^-1 (d - shift) / m
    xd0 = (0.5 - cols / 2.0) * spacing - pose.shift[0]
    yd0 = (0.5 - _HEAD_ROW * rows) * spacing - pose.shift[1]
    origin = ((c * xd0 + s * yd0) / pose.magnification, (-s * xd0 + c * yd0) / pose.magnification)
    return Grid(image_size, origin, (c * k, -s * k), (s * k, c * k))


def _soft_tissue(x: np.ndarray, y: np.ndarray, anatomy: _Anatomy) -> np.ndarray:
    """Soft-tissue path length: an elliptic trunk that splits into two thighs below the hips."""
    hw, depth = anatomy.body_half_width, anatomy.body_depth
    trunk = depth * np.sqrt(np.maximum(1.0 - (x / hw) ** 2, 0.0))
    thigh_hw = hw * (0.56 - 0.0009 * np.maximum(y - 60.0, 0.0))
    thighs = np.zeros_like(trunk)
    for s in (-1, 1):
        q = (x - s * 0.5 * hw) / thigh_hw
        thighs = np.maximum(thighs, 0.8 * depth * np.sqrt(np.maximum(1.0 - q * q, 0.0)))
    w = smoothstep(y, 55.0, 150.0)
    return ((1.0 - w) * trunk + w * thighs).astype(np.float32)


@dataclass(frozen=True)
class _Head:
    """Study geometry of one femoral head (mm, anatomical frame)."""

    x: float
    y: float
    radius: float
    lesion_dir: tuple[float, float]
    flatten: float
    joint_space: float


def _head_geometry(hip: _Hip, s: int, pose: _Pose, stage: int, lesion: _Lesion | None, structure: float) -> _Head:
    """Place the head for this study and decide how much of it has collapsed."""
    angle = math.radians(lesion.angle if lesion else 20.0)
    direction = (s * math.sin(angle), -math.cos(angle))
    flatten = 0.0
    joint = hip.joint_space
    if lesion is not None and stage >= 3:
        flatten = structure * (0.8 if stage == 3 else lesion.collapse)
    if lesion is not None and stage == 4:
        joint *= 0.45
    x = s * hip.head_x * (1.0 + s * 0.3 * pose.yaw)
    return _Head(x, hip.head_y, hip.radius, direction, flatten, joint)


def _draw_spine(grid: Grid, bone: np.ndarray, anatomy: _Anatomy, pose: _Pose) -> None:
    """Add the sacrum (alae, foramina, median crest), coccyx and the lowest lumbar vertebra."""
    t = 1.0 + pose.tilt
    top, bottom = -138.0 * anatomy.inlet * t, -28.0 * anatomy.inlet * t
    crop = grid.crop(-66.0, top - 60.0, 66.0, bottom + 12.0)
    if crop is None:
        return
    x, y = crop.x, crop.y
    frac = np.clip((y - top) / (bottom - top), 0.0, 1.0)
    half = 14.0 + 40.0 * (1.0 - frac) ** 0.75
    ax = np.abs(x)
    promontory = top + 8.0 * (ax / 54.0) ** 2
    inside = (
        smoothstep(half - ax, 0.0, 8.0)
        * smoothstep(y - promontory, -4.0, 10.0)
        * smoothstep(-y, -bottom - 6.0, -bottom + 6.0)
    )
    sacrum = inside * (5.0 + 4.0 * (1.0 - frac)) + 2.5 * band(half - ax - 2.0, 2.0) * (frac < 0.7)
    for i, yy in enumerate((0.14, 0.34, 0.52, 0.68)):
        fy = top + yy * (bottom - top)
        for sx in (-1, 1):
            ring = ellipse_radius(x, y, sx * (19.0 - 2.5 * i), fy, 5.0 - 0.8 * i, 3.6 - 0.5 * i)
            sacrum += (2.0 * band(ring - 1.0, 0.25) - 2.5 * smoothstep(1.0 - ring, 0.0, 0.4)) * inside
    sacrum += 2.5 * band(x, 2.0) * inside
    body = ellipsoid(x, y, 0.0, top - 30.0, 27.0, 19.0, 14.0) * smoothstep(-y, -top + 10.0, -top + 13.0)
    rim = 6.0 * band(ellipse_radius(x, y, 0.0, top - 30.0, 27.0, 19.0) - 1.0, 0.06) * (y < top - 11.0)
    processes = sum(ellipsoid(x, y, sx * 40.0, top - 34.0, 22.0, 6.0, 4.0, -sx * 0.15) for sx in (-1, 1))
    bone[crop.rows, crop.cols] += sacrum + 0.45 * body + rim + processes


def _draw_hemipelvis(
    grid: Grid, bone: np.ndarray, anatomy: _Anatomy, s: int, pose: _Pose, head: _Head, stage: int
) -> None:
    """Add one hemipelvis: ilium, acetabulum (sourcil, walls, teardrop), obturator ring, pubis, ischium.

    Shapes are written in mirrored coordinates (``mx`` grows laterally) so both sides share one
    description; pelvic tilt stretches heights and pelvic rotation widths, unequally on the two sides.
    Each part is evaluated on its own crop to keep a study cheap.
    """
    _draw_ilium(grid, bone, anatomy, s, pose, head)
    _draw_acetabulum(grid, bone, s, head, stage)
    _draw_obturator(grid, bone, s, pose, head)


def _mirrored_crop(grid: Grid, s: int, mx0: float, y0: float, mx1: float, y1: float) -> Crop | None:
    """Crop given in mirrored coordinates (``mx = s * x``)."""
    x_lo, x_hi = sorted((s * mx0, s * mx1))
    return grid.crop(x_lo, y0, x_hi, y1)


def _draw_ilium(grid: Grid, bone: np.ndarray, anatomy: _Anatomy, s: int, pose: _Pose, head: _Head) -> None:
    """Ilium: a fan from the acetabular roof to the crest, thin in the fossa, thick along the sciatic
    buttress; the crest and the arcuate line are cortex seen edge-on."""
    hx, hy, r = s * head.x, head.y, head.radius
    t = 1.0 + pose.tilt
    yaw = 1.0 + s * pose.yaw
    w = anatomy.wing
    roof_y = hy - r - 5.0
    height = 118.0 * w * t
    crop = _mirrored_crop(grid, s, 34.0 * w, roof_y - height - 6.0, hx + 62.0 * w, roof_y + 36.0)
    if crop is None:
        return
    mx, y = s * crop.x, crop.y
    v = np.clip((roof_y - y) / height, 0.0, 1.2)
    lateral = hx + 0.45 * r + 44.0 * w * yaw * smoothstep(v, 0.05, 0.6) + 6.0 * v
    medial = hx - r - 8.0 + (56.0 * w * yaw - hx + r + 8.0) * smoothstep(v, 0.0, 0.5) - 10.0 * w * v
    crest_mid = 0.5 * (lateral + medial) + 10.0
    crest = roof_y - height + 38.0 * ((mx - crest_mid) / (62.0 * w)) ** 2
    across = smoothstep(mx - medial, 0.0, 4.0) * smoothstep(lateral - mx, 0.0, 4.0)
    below_crest = smoothstep(y - crest, 0.0, 4.0)
    inside = across * below_crest * smoothstep(roof_y + 34.0 - y, 0.0, 30.0)
    buttress_d = segment_distance(mx, y, (54.0 * w * yaw, roof_y - 0.6 * height), (hx - 10.0, hy - 12.0))[0]
    mottle = 1.0 + 0.1 * anatomy.hips[s].texture[0](0.5 * mx, 0.5 * y)
    ilium = inside * mottle * (4.5 + 7.0 * (1.0 - np.minimum(v, 1.0)) ** 2 + 9.0 * band(buttress_d, 14.0))
    ilium += 9.0 * band(y - crest - 2.0, 2.2) * across
    ilium += 5.0 * band(mx - medial - 1.5, 1.3) * below_crest * (y < roof_y + 18.0)
    ilium += 3.0 * band(lateral - mx - 1.5, 1.5) * below_crest * (y < roof_y)
    bone[crop.rows, crop.cols] += ilium


def _draw_acetabulum(grid: Grid, bone: np.ndarray, s: int, head: _Head, stage: int) -> None:
    """Acetabulum: walls overlapping the head, the dense roof (sourcil), quadrilateral plate, teardrop.

    At stage 4 the roof thickens (acetabular sclerosis); the narrower joint space comes from the head.
    """
    hx, hy, r = s * head.x, head.y, head.radius
    crop = _mirrored_crop(grid, s, hx - r - 26.0, hy - r - 22.0, hx + r + 8.0, hy + r + 14.0)
    if crop is None:
        return
    mx, y = s * crop.x, crop.y
    cavity = r + head.joint_space
    dx, dy = mx - hx, y - (hy - 0.5)
    rad = np.sqrt(dx * dx + dy * dy)
    up = -dy / np.maximum(rad, 1e-3)
    lat = dx / np.maximum(rad, 1e-3)
    walls = ellipse_radius(mx, y, hx - 7.0, hy - 4.0, r + 5.0, r + 10.0, 0.35)
    acetabulum = 9.0 * smoothstep(1.0 - walls, 0.0, 0.08) + 3.0 * band(walls - 1.0, 0.025)
    posterior = ellipse_radius(mx, y, hx - 2.0, hy - 2.0, r + 2.0, r + 6.0, 0.5)
    acetabulum += 3.0 * band(posterior - 1.0, 0.02) * (dy > -0.2 * r)
    roof = smoothstep(up, 0.1, 0.45) * smoothstep(0.6 - lat, 0.0, 0.2)
    sclerosis = 1.8 if stage == 4 else 1.0
    acetabulum += 16.0 * sclerosis * band(rad - cavity - 1.5, 1.3 * sclerosis) * roof
    if stage == 4:
        acetabulum += 6.0 * band(rad - cavity - 6.0, 4.0) * roof
    quadrilateral = ellipse_radius(mx, y, hx - r - 6.0, hy + 2.0, 12.0, r + 6.0)
    acetabulum += 6.0 * smoothstep(1.0 - quadrilateral, 0.0, 0.3)
    tear = ellipse_radius(mx, y, hx - r - 9.0, hy + 0.35 * r, 4.5, 10.0)
    acetabulum += 7.0 * band(tear - 1.0, 0.2) * smoothstep(y, hy - 2.0, hy + 4.0)
    bone[crop.rows, crop.cols] += acetabulum


def _draw_obturator(grid: Grid, bone: np.ndarray, s: int, pose: _Pose, head: _Head) -> None:
    """Obturator ring (superior and inferior rami, ischium) around the foramen, pubic body at the
    symphysis, ischial tuberosity below."""
    hx, hy, r = s * head.x, head.y, head.radius
    t = 1.0 + pose.tilt
    yaw = 1.0 + s * pose.yaw
    crop = _mirrored_crop(grid, s, 1.0, hy + 4.0, hx + 12.0, hy + 112.0)
    if crop is None:
        return
    mx, y = s * crop.x, crop.y
    oc = (47.0 * yaw, hy + 50.0 + 22.0 * pose.tilt)
    qo = ellipse_radius(mx, y, oc[0], oc[1], 24.0 * yaw, 31.0 * t, 0.4)
    ang = np.arctan2(y - oc[1], mx - oc[0])
    thick = 5.5 + 5.0 * np.clip(np.cos(ang - 0.4), 0.0, 1.0) ** 2 + 2.0 * np.clip(-np.sin(ang), 0.0, 1.0)
    dist = (qo - 1.0) * 28.0
    ring = 2.0 * np.sqrt(np.maximum(thick**2 - dist**2, 0.0))
    ring_in = 2.0 * np.sqrt(np.maximum((thick - 1.8) ** 2 - dist**2, 0.0))
    pubis = ellipsoid(mx, y, 14.0, oc[1] - 8.0, 13.0, 22.0 * t, 12.0) * smoothstep(mx, 2.0, 4.0)
    ischium = ellipsoid(mx, y, hx - 10.0, oc[1] + 26.0, 16.0, 12.0, 12.0, 0.3)
    ramus_d = segment_distance(mx, y, (hx - r + 2.0, hy + 10.0), (22.0, oc[1] - 26.0 * t))[0]
    ramus = 2.0 * np.sqrt(np.maximum(9.0**2 - ramus_d**2, 0.0))
    post = ellipsoid(mx, y, hx - 8.0, hy + 30.0, 13.0, 28.0, 12.0, -0.15)
    spongy = np.maximum.reduce([ring_in, pubis, ischium, ramus, post])
    bone[crop.rows, crop.cols] += 0.6 * (ring - ring_in) + 0.32 * spongy


def _draw_femur(
    grid: Grid,
    bone: np.ndarray,
    anatomy: _Anatomy,
    hip: _Hip,
    s: int,
    pose: _Pose,
    head: _Head,
    stage: int,
    lesion: _Lesion | None,
    contrast: float,
    image_size: tuple[int, int],
) -> np.ndarray | None:
    """Add one proximal femur with its lesion; return the lesion mask (``None`` when healthy)."""
    hx, hy, r = head.x, head.y, head.radius
    beta = math.radians(hip.shaft_tilt)
    down = (-s * math.sin(beta), math.cos(beta))
    a = math.radians(hip.neck_shaft) + beta
    neck_dir = (-s * math.sin(a), math.cos(a))  # from the shaft towards the head
    version = pose.version[s]
    neck_len = hip.neck_length * math.cos(math.radians(version))
    jx, jy = hx - neck_len * neck_dir[0], hy - neck_len * neck_dir[1]
    x_lo, x_hi = sorted((hx - s * (r + 6.0), jx + s * (hip.shaft_radius + 34.0)))
    crop = grid.crop(x_lo, hy - r - 6.0, x_hi, 320.0)
    if crop is None:
        return None
    x, y = crop.x, crop.y
    rs, rn = hip.shaft_radius, hip.neck_radius
    cs = hip.shaft_cortex
    shaft_end = (jx + 300.0 * down[0], jy + 300.0 * down[1])
    shaft_top = (jx - 6.0 * down[0], jy - 6.0 * down[1])
    neck_mid = (hx - 0.45 * neck_len * neck_dir[0], hy - 0.45 * neck_len * neck_dir[1])
    gt = (jx + s * 0.55 * rs, jy - 27.0)
    lt_size = float(np.clip(1.0 + (version - 12.0) / 25.0, 0.4, 1.6))
    lt = (jx + 40.0 * down[0] - s * 0.95 * rs, jy + 40.0 * down[1])
    outer = [
        tube(x, y, shaft_top, shaft_end, rs * 1.08, rs * 0.9),
        tube(x, y, (hx, hy), neck_mid, 0.8 * r, rn),
        tube(x, y, neck_mid, (jx, jy), rn, rs * 1.2),
        ellipsoid(x, y, jx + s * 2.0, jy + 10.0, rs * 1.3, 20.0, 18.0, -s * 0.25),
        ellipsoid(x, y, gt[0], gt[1], 14.0, 23.0, 16.0, -s * 0.25),
        ellipsoid(x, y, lt[0], lt[1], 7.0 * lt_size, 10.0, 7.0 * lt_size, s * 0.5),
    ]
    inner = [
        tube(x, y, shaft_top, shaft_end, rs * 1.08 - cs * 0.5, rs * 0.9 - cs),
        tube(x, y, (hx, hy), neck_mid, 0.8 * r - 1.5, rn - 2.0),
        tube(x, y, neck_mid, (jx, jy), rn - 2.0, rs * 1.2 - 2.0),
        ellipsoid(x, y, jx + s * 2.0, jy + 10.0, rs * 1.3 - 1.5, 18.5, 16.5, -s * 0.25),
        ellipsoid(x, y, gt[0], gt[1], 12.5, 21.5, 14.5, -s * 0.25),
        ellipsoid(x, y, lt[0], lt[1], 7.0 * lt_size - 1.2, 8.8, 7.0 * lt_size - 1.2, s * 0.5),
    ]
    # Head: a ball, cut flat where the necrotic segment has collapsed; a dimple at the fovea.
    dx, dy = x - hx, y - hy
    along = dx * head.lesion_dir[0] + dy * head.lesion_dir[1]
    keep = smoothstep(r - head.flatten - along, -0.6, 0.6) if head.flatten > 0 else 1.0
    fovea = sphere(x, y, hx - s * 0.97 * r, hy + 0.25 * r, 3.5)
    outer.append(np.maximum(sphere(x, y, hx, hy, r) * keep - fovea, 0.0))
    inner.append(np.maximum(sphere(x, y, hx, hy, r - 0.9) * keep - fovea, 0.0))
    out_t = np.maximum.reduce(outer)
    in_t = np.maximum.reduce(inner)
    cortex = np.maximum(out_t - in_t, 0.0)
    # Trabecular density: dense in the head, thinning through the neck, fatty marrow in the shaft.
    along_shaft = (x - jx) * down[0] + (y - jy) * down[1]
    rad = np.sqrt(dx * dx + dy * dy)
    density = 0.26 + 0.12 * smoothstep(-rad, -r - 4.0, -0.6 * r) - 0.2 * smoothstep(along_shaft, 30.0, 75.0)
    texture = _trabeculae(x, y, hip, s, hx, hy, jx, jy, down)
    spongy = in_t * density * (1.0 + 0.18 * texture) * hip.density
    total = cortex * hip.density + spongy
    if hip.bone_island is not None:
        bi_x, bi_y, bi_r = hip.bone_island
        total += 0.5 * sphere(x, y, hx + s * bi_x * r, hy + bi_y * r, bi_r)
    mask = None
    if lesion is not None and stage > 0:
        change, region = _lesion(x, y, head, lesion, stage, contrast, in_t, density)
        total += change
        mask = np.zeros(image_size, dtype=bool)
        mask[crop.rows, crop.cols] = region & (out_t > 0)
    bone[crop.rows, crop.cols] += total
    return mask


def _trabeculae(
    x: np.ndarray,
    y: np.ndarray,
    hip: _Hip,
    s: int,
    hx: float,
    hy: float,
    jx: float,
    jy: float,
    down: tuple[float, float],
) -> np.ndarray:
    """Zero-mean trabecular pattern: compressive rays, tensile arcs and fine marrow spaces.

    The compressive group fans from the medial calcar up into the weight-bearing head; the tensile
    group arcs from below the greater trochanter over the neck. Patterns are written in coordinates
    mirrored to a common side so the texture fields are the patient's own, not the image's.
    """
    waviness, breaks, fine = hip.texture
    mx = s * (x - hx)  # lateral is positive on both sides
    my = y - hy
    fx, fy = -0.35 * hip.radius, 2.6 * hip.radius
    ray = np.arctan2(mx - fx, fy - my)
    comp = np.cos(ray * 95.0 + 1.8 * waviness(mx, my))
    cx, cy = 0.45 * s * (jx - hx) - 5.0, 2.1 * hip.radius
    arc = np.sqrt((mx - cx) ** 2 + (my - cy) ** 2)
    tens = np.cos(arc * (2.0 * math.pi / 2.6) + 1.5 * waviness(my, mx))
    gate = 0.5 + 0.5 * np.tanh(1.5 * breaks(mx, my))
    comp_w = smoothstep(-np.sqrt(mx * mx + my * my), -1.6 * hip.radius, -0.3 * hip.radius)
    tens_w = (
        smoothstep(my, -hip.radius, -0.2 * hip.radius)
        * (1.0 - 0.6 * comp_w)
        * smoothstep(-(my - 2.2 * hip.radius), 0.0, 20.0)
    )
    lines = gate * (comp_w * np.maximum(comp, 0.0) ** 2 + 0.8 * tens_w * np.maximum(tens, 0.0) ** 2)
    return 1.6 * (lines - 0.2) + 0.25 * fine(mx, my)


def _lesion(
    x: np.ndarray,
    y: np.ndarray,
    head: _Head,
    lesion: _Lesion,
    stage: int,
    contrast: float,
    in_t: np.ndarray,
    density: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Density change of a necrotic segment at one ARCO stage, and the pixels it touches.

    The segment is a ball of radius ``size * R`` centred on the superolateral head surface; its
    projected depth is the chord through that ball, limited to the head.
    """
    hx, hy, r = head.x, head.y, head.radius
    qx, qy = hx + 0.95 * r * head.lesion_dir[0], hy + 0.95 * r * head.lesion_dir[1]
    rho = lesion.size * r
    dq = np.sqrt((x - qx) ** 2 + (y - qy) ** 2)
    chord = np.minimum(sphere(x, y, qx, qy, rho), in_t)
    # Mottle is evaluated in head-centred mirrored coordinates so it moves with the head.
    s = 1.0 if head.lesion_dir[0] >= 0 else -1.0
    mottle = np.tanh(1.3 * lesion.mottle(s * (x - hx), y - hy))
    edge = smoothstep(rho - dq, 0.0, 3.0)
    if stage == 1:
        change = 0.1 * (mottle + 0.5) * chord * edge
    else:
        change = 0.12 * (mottle + 0.2) * chord * edge
        shell = sphere(x, y, qx, qy, rho + 1.6) - sphere(x, y, qx, qy, rho)
        change += 0.5 * np.minimum(shell, in_t) * (in_t > 0)
        rad_dir = head.lesion_dir
        for u, v, cr in lesion.cysts:
            # u runs across the segment, v from the surface inwards, both as fractions of rho.
            px = qx - v * rho * rad_dir[0] - u * rho * rad_dir[1] * s
            py = qy - v * rho * rad_dir[1] + u * rho * rad_dir[0] * s
            change -= 0.2 * np.minimum(sphere(x, y, px, py, cr), chord)
    if stage >= 3:
        rad = np.sqrt((x - hx) ** 2 + (y - hy) ** 2)
        depth = r - 1.0 - head.flatten - 2.2
        crescent = band(rad - depth, 1.0) * smoothstep(rho - dq, 0.0, 2.0)
        change -= 0.3 * crescent * np.minimum(in_t, 2.0 * math.sqrt(2.0 * r * 2.5)) * (density / 0.3)
    if stage == 4:
        change += 0.08 * chord * edge
    region = (dq < rho + 1.6) & (in_t > 0)
    return contrast * change, region


def _head_box(grid: Grid, head: _Head, image_size: tuple[int, int]) -> str:
    """Square box around a femoral head with a margin, end exclusive, clipped to the image."""
    col, row = grid.to_pixel(head.x, head.y)
    half = 1.3 * head.radius / float(np.hypot(*grid.matrix[:, 0]))
    rows, cols = image_size
    x0 = min(max(math.floor(col - half), 0), cols - 1)
    y0 = min(max(math.floor(row - half), 0), rows - 1)
    x1 = max(min(math.ceil(col + half) + 1, cols), x0 + 1)
    y1 = max(min(math.ceil(row + half) + 1, rows), y0 + 1)
    return f"{x0} {y0} {x1} {y1}"


def _expose(
    log_signal: np.ndarray,
    soft: np.ndarray,
    x: np.ndarray,
    pose: _Pose,
    spacing: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Turn line integrals into a processed 16-bit radiograph.

    Quantum noise grows where fewer photons arrive (behind bone); the detector blurs signal and
    noise; the display curve compresses the thick soft tissue the way DR processing does.
    """
    noise = rng.standard_normal(log_signal.shape, dtype=np.float32)
    noisy = log_signal + noise * np.sqrt(np.exp(np.minimum(log_signal, 8.0)) / pose.photons)
    sigma = pose.blur_mm / spacing
    if sigma > 0.3:
        noisy = gaussian_filter(noisy, sigma, truncate=3.0)
    soft_part = _MU_SOFT * soft
    compressed = noisy - soft_part + 2.2 * np.tanh(soft_part / 2.2) + pose.heel * x / 200.0
    z = (compressed - 2.7 - pose.tone_mid) / (0.55 * pose.tone_width)
    z0 = (0.0 - 2.7 - pose.tone_mid) / (0.55 * pose.tone_width)
    lo = 1.0 / (1.0 + math.exp(-z0))
    v = np.clip((1.0 / (1.0 + np.exp(-z)) - lo) / (1.0 - lo), 0.0, 1.0) ** pose.gamma
    return np.round(pose.black + v * (pose.white - pose.black)).astype(np.uint16)


def _write_case(
    out: Path,
    case_id: str,
    patient_id: str,
    study: int,
    seed: int,
    fmt: str,
    pixels: np.ndarray,
    masks: dict[str, np.ndarray | None],
    boxes: dict[str, str],
    spacing: float,
    stages: dict[str, int],
    subtlety: float,
) -> dict[str, str]:
    """Write one study's image and masks; return its manifest row."""
    if fmt == "png":
        image = f"images/{case_id}.png"
        write_png16(out / image, pixels)
    else:
        image = f"images/{case_id}.dcm"
        _write_dicom(out / image, pixels, spacing, patient_id, case_id, study, seed)
    mask_paths = {}
    for side in ("left", "right"):
        mask = masks[side]
        if mask is None:
            mask_paths[side] = ""
            continue
        mask_paths[side] = f"masks/{case_id}_{side}.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / mask_paths[side], compress_level=1)
    affected = [side for side in ("left", "right") if stages[side] > 0]
    side = "both" if len(affected) == 2 else (affected[0] if affected else "none")
    stage = max(stages.values())
    return {
        "case_id": case_id,
        "patient_id": patient_id,
        "image": image,
        "label": str(int(stage > 0)),
        "side": side,
        "stage": str(stage),
        "box_left": boxes["left"],
        "box_right": boxes["right"],
        "mask_left": mask_paths["left"],
        "mask_right": mask_paths["right"],
        "subtlety": f"{subtlety:g}",
    }


def _write_dicom(
    path: Path, pixels: np.ndarray, spacing: float, patient_id: str, case_id: str, study: int, seed: int
) -> None:
    """Write a DX 'for presentation' DICOM file with deterministic UIDs and dates."""
    lo, hi = float(pixels.min()), float(pixels.max())
    write_dicom(
        path,
        pixels,
        sop_class="1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
        sop_uid=dicom_uid(TASK, seed, case_id, "sop"),
        series_uid=dicom_uid(TASK, seed, case_id, "series"),
        study=Study(patient_id, dicom_uid(TASK, seed, case_id, "study"), case_id, f"{2020 + study:04d}0101"),
        modality="DX",
        tags={
            "PresentationIntentType": "FOR PRESENTATION",
            "ImageType": ["DERIVED", "PRIMARY"],
            "BodyPartExamined": "PELVIS",
            "ViewPosition": "AP",
            "PatientOrientation": ["L", "F"],
            "PixelSpacing": [f"{spacing:.6f}", f"{spacing:.6f}"],
            "ImagerPixelSpacing": [f"{spacing:.6f}", f"{spacing:.6f}"],
            "RescaleIntercept": 0,
            "RescaleSlope": 1,
            "RescaleType": "US",
            "WindowCenter": f"{(lo + hi) / 2:.1f}",
            "WindowWidth": f"{max(hi - lo, 1.0):.1f}",
        },
    )
