"""Multi-protocol hip MR phantom with paired CT for ARCO staging of ONFH (task ``onfh-mr-staging``).

Models the setting of the attention-fusion paper (Med Phys 2023;50:5528): one hip imaged with five MR
protocols (T1, T2, PD fat-saturated, STIR, T1 fat-saturated), four-way ARCO staging (I–IV), a few
labelled studies and many more unlabelled MR–CT pairs for an MR→CT translation pretext.

Each study is one **2-D coronal slice** through the femoral head, not a volume. This matches the paper's
2-D, VGG-based setting: its precursor (ISMRM 2022 abstract #1431) extracted femoral-head regions from coronal
pelvic MR slices, and the staging signs all show on the mid-coronal slice; 2-D also keeps hundreds of studies
to seconds. One anatomy is drawn as soft tissue fractions (air, subcutaneous and intermuscular fat, muscle,
cortex, fatty femoral marrow, red pelvic marrow, cartilage, labrum, joint fluid and lesion tissues) and
rendered through a table of tissue signals per protocol, so every image of a study shows the same anatomy with
its own contrast: fat is bright on T1 and T2 and dark on the fat-suppressed PDfs, STIR and T1fs; fluid is
bright on T2, PDfs and STIR and darker than muscle on T1 and T1fs; bone-marrow oedema is darker than fatty
marrow on T1 and bright on PDfs and STIR; cortex and sclerosis are dark on all. The CT is the same tissue map
in Hounsfield units (oedema is invisible on CT), stored as a 16-bit PNG holding HU + 1024.

Images are in radiological orientation (the patient's right hip has its lateral side on the image's
left); left hips are mirrored. The necrotic segment sits in the superolateral, weight-bearing head:

* stage I: a single band-like T1-dark line around a segment that keeps near-fatty signal;
* stage II: the double-line sign — a dark sclerotic rim outside a T2-bright granulation rim, and a
  sclerotic rim on CT;
* stage III: a fluid crescent under the subchondral plate, flattening of the head over the segment,
  bone-marrow oedema of head and neck on STIR/PDfs, joint effusion;
* stage IV: more collapse plus secondary osteoarthritis — joint-space narrowing, acetabular
  subchondral sclerosis, a roof cyst, acetabular oedema, osteophytes and a larger effusion.

Choices the paper leaves open, all parameters: lesion size grows with stage (the mask area is
ordered by stage); ``subtlety`` (0 = obvious, 1 = hardest but still ordered) lowers the signal change of
the necrotic segment and its reactive line, thins the sclerotic rim and the fluid crescent, shortens the
oedema and lessens collapse. Dense tissues (sclerosis, fluid) stay dense where present even when subtle, so
the tissue contrast holds in every pixel they fill and a thin band loses contrast only by partial volume.
Normal variation includes head size, slice position, red-marrow islands (mildly STIR-bright, an oedema
mimic), a physeal scar, intramuscular fat streaks, coil shading and noise. Labelled patients contribute one
hip or, in 30 % of them, both hips as two studies with independent stages. The pretext set holds separate
patients, one study each, a fifth of them normal and the rest stages I–IV, all protocols present.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from osteoscope.data.manifest import write_manifest
from osteoscope.errors import ConfigError
from osteoscope.phantoms._draw import (
    FourierField,
    band,
    check_count_and_subtlety,
    ellipse_radius,
    segment_distance,
    smoothstep,
    write_png16,
)

TASK = "onfh-mr-staging"
PROTOCOLS = ("t1", "t2", "pdfs", "stir", "t1fs")
IMAGE_COLUMNS = tuple(f"image_{p}" for p in PROTOCOLS)
COLUMNS = ("case_id", "patient_id", *IMAGE_COLUMNS, "image_ct", "label", "stage", "side", "mask", "subtlety")
PRETEXT_COLUMNS = ("case_id", "patient_id", *IMAGE_COLUMNS, "image_ct")
CT_OFFSET = 1024  # stored CT pixel = HU + CT_OFFSET

_FOV_MM = 150.0
_MR_SCALE = 3000.0  # stored MR pixel = relative signal x scale
_BILATERAL = 0.3
_PRETEXT_STAGES = (0.2, 0.2, 0.2, 0.2, 0.2)  # stage 0 (normal) .. 4

# Tissue signals (T1, T2, PDfs, STIR, T1fs; relative) and CT attenuation (HU).
_TISSUES: dict[str, tuple[float, float, float, float, float, float]] = {
    "air": (0.0, 0.0, 0.0, 0.0, 0.0, -1000.0),
    "fat": (0.95, 0.80, 0.08, 0.05, 0.10, -100.0),
    "muscle": (0.33, 0.22, 0.28, 0.22, 0.30, 50.0),
    "cortex": (0.03, 0.03, 0.03, 0.03, 0.03, 1250.0),
    "marrow": (0.85, 0.68, 0.12, 0.08, 0.14, 230.0),
    "red": (0.55, 0.42, 0.30, 0.26, 0.35, 330.0),
    "cartilage": (0.38, 0.42, 0.46, 0.36, 0.40, 110.0),
    "fluid": (0.08, 0.95, 0.90, 0.97, 0.07, 10.0),
    "labrum": (0.05, 0.05, 0.06, 0.05, 0.05, 90.0),
    "necrotic": (0.62, 0.50, 0.22, 0.18, 0.20, 300.0),
    "sclerosis": (0.06, 0.06, 0.07, 0.06, 0.06, 800.0),
    "granulation": (0.20, 0.88, 0.72, 0.78, 0.22, 80.0),
    "interface": (0.18, 0.45, 0.42, 0.45, 0.18, 280.0),
    "oedema": (0.22, 0.62, 0.82, 0.90, 0.20, 250.0),
}
TISSUES = tuple(_TISSUES)
_TABLE = np.array(list(_TISSUES.values()), dtype=np.float32)  # (tissue, 5 protocols + CT)
_NOISE = (0.015, 0.02, 0.025, 0.03, 0.02)  # relative noise SD per protocol


@dataclass(frozen=True)
class _Anatomy:
    """Fixed anatomy of one hip in canonical coordinates (mm, head centre at the origin, +x medial)."""

    radius: float
    slice_offset: float
    neck_angle: float
    neck_length: float
    neck_radius: float
    shaft_x: float
    cartilage: float
    ilium: tuple[float, float, float, float]
    roof: tuple[float, float, float, float]
    medial_wall: tuple[float, float, float, float]
    skin_x: float
    fat_thickness: float
    planes: FourierField
    fat_wobble: FourierField
    islands: FourierField
    texture: FourierField
    shift: tuple[float, float]


@dataclass(frozen=True)
class _Disease:
    """Lesion geometry and severity of one hip; stage 0 is a normal hip."""

    stage: int
    angle: float
    depth: float
    collapse: float
    effusion: float
    oedema: float
    contrast: float
    wobble: FourierField
    mottle: FourierField


def generate(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    *,
    subtlety: float = 0.5,
    image_size: int = 96,
    unlabelled_pairs: int | None = None,
    missing_fraction: float = 0.15,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``n`` labelled multi-protocol MR studies and a pretext set of MR–CT pairs; return the manifest.

    Args:
        out_dir: Folder to create; gets ``manifest.csv``, ``images/``, ``masks/`` and ``pretext/`` (its
            own dataset folder with ``manifest.csv`` and ``images/``).
        n: Number of labelled studies.
        seed: Everything is a deterministic function of the seed.
        subtlety: Lesion contrast knob in [0, 1]; 1 is hardest but still ordered by stage.
        image_size: Side of the square images in pixels; the field of view stays 150 mm.
        unlabelled_pairs: Number of pretext MR–CT pairs; ``None`` means ``3 * n``.
        missing_fraction: Share of labelled studies that miss exactly one (random) protocol.
        progress: Called as ``progress(i, total)`` after each written study, labelled then pretext.

    Returns:
        Path of the labelled ``manifest.csv``.
    """
    pairs = 3 * n if unlabelled_pairs is None else unlabelled_pairs
    _check_args(n, subtlety, image_size, pairs, missing_fraction)
    out = Path(out_dir)
    pretext = out / "pretext"
    for folder in (out / "images", out / "masks", pretext / "images"):
        folder.mkdir(parents=True, exist_ok=True)
    plan_rng = np.random.default_rng([seed, 0])
    studies = _plan(n, plan_rng)
    missing = np.full(n, -1)
    chosen = plan_rng.permutation(n)[: round(missing_fraction * n)]
    missing[chosen] = plan_rng.integers(0, len(PROTOCOLS), size=len(chosen))
    total = n + pairs
    width = max(4, len(str(max(n, pairs))))
    rows = []
    for i, (patient, side, stage) in enumerate(studies):
        rng = np.random.default_rng([seed, 1, i])
        patient_id = f"p{patient + 1:0{width}d}"
        case_id = f"{patient_id}_{side}"
        study = _synth_study(rng, stage, subtlety, image_size, side)
        row = _write_images(out, case_id, study, int(missing[i]))
        mask_path = f"masks/{case_id}.png"
        Image.fromarray(study["mask"].astype(np.uint8) * 255).save(out / mask_path, compress_level=1)
        rows.append(
            {
                "case_id": case_id,
                "patient_id": patient_id,
                **row,
                "label": str(stage - 1),
                "stage": str(stage),
                "side": side,
                "mask": mask_path,
                "subtlety": f"{subtlety:g}",
            }
        )
        if progress is not None:
            progress(i + 1, total)
    manifest = write_manifest(out / "manifest.csv", rows, COLUMNS)
    pre_rows = []
    stage_rng = np.random.default_rng([seed, 2])
    pre_stages = stage_rng.choice(5, size=pairs, p=_PRETEXT_STAGES)
    pre_sides = stage_rng.random(pairs) < 0.5
    for k in range(pairs):
        patient_id = f"u{k + 1:0{width}d}"
        side = "left" if pre_sides[k] else "right"
        study = _synth_study(np.random.default_rng([seed, 3, k]), int(pre_stages[k]), subtlety, image_size, side)
        row = _write_images(pretext, patient_id, study, -1)
        pre_rows.append({"case_id": patient_id, "patient_id": patient_id, **row})
        if progress is not None:
            progress(n + k + 1, total)
    write_manifest(pretext / "manifest.csv", pre_rows, PRETEXT_COLUMNS)
    return manifest


def _check_args(n: int, subtlety: float, image_size: int, pairs: int, missing_fraction: float) -> None:
    """Raise :class:`ConfigError` on options outside their range."""
    check_count_and_subtlety(n, subtlety)
    if int(image_size) != image_size or image_size < 48:
        raise ConfigError(f"image_size must be an integer of at least 48, got {image_size!r}")
    if int(pairs) != pairs or pairs < 0:
        raise ConfigError(f"unlabelled_pairs must be a non-negative integer, got {pairs!r}")
    if not 0.0 <= missing_fraction <= 1.0:
        raise ConfigError(f"missing_fraction must lie in [0, 1], got {missing_fraction!r}")


def _plan(n: int, rng: np.random.Generator) -> list[tuple[int, str, int]]:
    """Return ``(patient index, side, stage)`` per labelled study; some patients give both hips."""
    studies: list[tuple[int, str, int]] = []
    patient = 0
    while len(studies) < n:
        side = "right" if rng.random() < 0.5 else "left"
        both = rng.random() < _BILATERAL
        stages = rng.integers(1, 5, size=2)
        studies.append((patient, side, int(stages[0])))
        if both and len(studies) < n:
            studies.append((patient, "left" if side == "right" else "right", int(stages[1])))
        patient += 1
    return studies


def _draw_anatomy(rng: np.random.Generator) -> _Anatomy:
    """Draw one hip's anatomy and its soft-tissue layout."""
    radius = float(rng.normal(23.0, 1.5))
    offset = float(rng.uniform(0.0, 6.0))
    return _Anatomy(
        radius=radius,
        slice_offset=offset,
        neck_angle=math.radians(float(rng.normal(40.0, 4.0))),
        neck_length=float(rng.normal(44.0, 3.0)),
        neck_radius=float(rng.normal(14.5, 1.0)),
        shaft_x=float(rng.normal(-40.0, 2.5)),
        cartilage=float(rng.uniform(1.6, 2.1)),
        ilium=(float(rng.normal(24.0, 2.0)), -60.0, float(rng.normal(20.0, 1.5)), 40.0),
        roof=(float(rng.normal(8.0, 2.0)), -16.0, float(rng.normal(26.0, 2.0)), 20.0),
        medial_wall=(float(rng.normal(34.0, 2.0)), float(rng.normal(14.0, 2.0)), 20.0, float(rng.normal(30.0, 2.0))),
        skin_x=float(rng.normal(-84.0, 5.0)),
        fat_thickness=float(rng.uniform(6.0, 18.0)),
        planes=FourierField.random(rng, 6, (60.0, 140.0), anisotropy=2.5, angle=math.pi / 2),
        fat_wobble=FourierField.random(rng, 4, (50.0, 120.0)),
        islands=FourierField.random(rng, 6, (12.0, 30.0)),
        texture=FourierField.random(rng, 12, (3.0, 8.0), anisotropy=6.0, angle=math.pi / 2),
        shift=(float(rng.normal(14.0, 4.0)), float(rng.normal(-12.0, 4.0))),
    )


def _draw_disease(rng: np.random.Generator, stage: int, subtlety: float) -> _Disease:
    """Draw lesion geometry and severity for an ARCO ``stage`` (0 = normal)."""
    collapse = {3: rng.uniform(1.2, 3.0), 4: rng.uniform(3.5, 6.0)}.get(stage, 0.0)
    effusion = (
        rng.uniform(0.0, 0.2),
        rng.uniform(0.1, 0.3),
        rng.uniform(0.1, 0.4),
        rng.uniform(0.4, 0.8),
        rng.uniform(0.6, 1.0),
    )[stage]
    return _Disease(
        stage=stage,
        angle=math.radians(float(rng.uniform(5.0, 30.0))),
        depth=float(0.22 + 0.08 * stage + rng.uniform(-0.04, 0.04)),
        collapse=float(collapse) * (1.0 - 0.35 * subtlety),
        effusion=float(effusion),
        oedema=float(rng.uniform(0.8, 0.95)) if stage >= 3 else 0.0,
        contrast=1.0 - 0.55 * subtlety,
        wobble=FourierField.random(rng, 4, (15.0, 40.0)),
        mottle=FourierField.random(rng, 8, (4.0, 10.0)),
    )


class _Canvas:
    """Tissue fractions per pixel; painting a tissue with opacity ``alpha`` covers what lies below."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.weights = np.zeros((len(TISSUES), *shape), dtype=np.float32)
        self.weights[TISSUES.index("air")] = 1.0

    def paint(self, tissue: str, alpha: np.ndarray) -> None:
        """Composite ``tissue`` over the current fractions with per-pixel opacity ``alpha`` in [0, 1]."""
        a = np.clip(alpha, 0.0, 1.0).astype(np.float32)
        self.weights *= 1.0 - a
        self.weights[TISSUES.index(tissue)] += a


def _ellipse_sd(x: np.ndarray, y: np.ndarray, e: tuple[float, float, float, float]) -> np.ndarray:
    """Approximate signed distance (mm) to an axis-aligned ellipse ``(cx, cy, a, b)``."""
    return (ellipse_radius(x, y, e[0], e[1], e[2], e[3]) - 1.0) * min(e[2], e[3])


def _smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Union of two signed distances with a fillet of size ``k`` mm, so bones merge without a waist."""
    t = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * t - k * t * (1.0 - t)


def _synth_study(rng: np.random.Generator, stage: int, subtlety: float, size: int, side: str) -> dict[str, np.ndarray]:
    """Draw and render one hip: five MR protocols, CT in HU, the tissue map and the lesion mask.

    Returns a dict with the float images ``t1`` … ``t1fs`` (relative signal) and ``ct`` (HU), the
    integer ``tissue`` map (index into :data:`TISSUES` of the dominant tissue), its ``fraction`` of the pixel
    (so checks can pick nearly pure pixels) and the boolean ``mask``.
    """
    anatomy = _draw_anatomy(rng)
    disease = _draw_disease(rng, stage, subtlety)
    canvas, mask = _layout(anatomy, disease, size)
    signal = np.tensordot(_TABLE.T, canvas.weights, axes=1)  # (6, rows, cols)
    study: dict[str, np.ndarray] = {}
    bias = FourierField.random(rng, 3, (250.0, 500.0))
    spacing = _FOV_MM / size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) * spacing
    shading = 1.0 + 0.08 * bias(xx, yy) / 1.4
    for p, name in enumerate(PROTOCOLS):
        gain = float(rng.uniform(0.9, 1.1))
        clean = gaussian_filter(signal[p], 0.5) * shading * gain
        sd = _NOISE[p]
        noisy = np.hypot(clean + sd * rng.standard_normal(clean.shape), sd * rng.standard_normal(clean.shape))
        study[name] = noisy.astype(np.float32)
    ct = gaussian_filter(signal[5], 0.6) + float(rng.uniform(10.0, 18.0)) * rng.standard_normal((size, size))
    study["ct"] = ct.astype(np.float32)
    study["tissue"] = np.argmax(canvas.weights, axis=0)
    study["fraction"] = canvas.weights.max(axis=0)
    study["mask"] = mask
    if side == "left":
        study = {k: np.ascontiguousarray(v[:, ::-1]) for k, v in study.items()}
    return study


def _layout(anatomy: _Anatomy, disease: _Disease, size: int) -> tuple[_Canvas, np.ndarray]:
    """Paint the tissue fractions of one coronal slice and return them with the lesion mask."""
    a = anatomy
    spacing = _FOV_MM / size
    idx = (np.arange(size, dtype=np.float32) + 0.5) * spacing - _FOV_MM / 2
    x = idx[None, :] - np.float32(a.shift[0]) + np.zeros((size, 1), np.float32)
    y = idx[:, None] - np.float32(a.shift[1]) + np.zeros((1, size), np.float32)
    h = 0.6 * spacing

    def occ(sd: np.ndarray) -> np.ndarray:
        return smoothstep(-sd, -h, h)

    canvas = _Canvas((size, size))
    radius = math.sqrt(a.radius**2 - a.slice_offset**2)
    oa = disease.stage == 4
    lift = 1.2 * oa  # the head migrates up into the narrowed joint
    hx, hy = 0.0, -lift
    dist = np.sqrt((x - hx) ** 2 + (y - hy) ** 2)
    # Body: air lateral to the skin, subcutaneous fat, muscle with intermuscular fat planes.
    skin = a.skin_x + 0.002 * y**2
    canvas.paint("fat", occ(skin - x))
    canvas.paint("muscle", occ(skin + a.fat_thickness * (1.0 + 0.3 * a.fat_wobble(x, y)) - x))
    canvas.paint("fat", 0.8 * band(a.planes(x, y), 0.12))
    # Pelvis outline; pelvic fat medially with obturator internus along the wall.
    sd_body = _smooth_min(
        _smooth_min(_ellipse_sd(x, y, a.ilium), _ellipse_sd(x, y, a.roof), 10.0), _ellipse_sd(x, y, a.medial_wall), 10.0
    )
    canvas.paint("fat", occ(a.medial_wall[0] + a.medial_wall[2] - 4.0 - x))
    canvas.paint("muscle", occ(sd_body - 8.0) * occ(a.radius + 10.0 - x))
    # Fine intramuscular fat streaks along the (craniocaudal) fibres, so muscle is not a flat grey.
    canvas.paint("fat", 0.12 * canvas.weights[TISSUES.index("muscle")] * smoothstep(a.texture(x, y), 0.0, 2.0))
    # Joint capsule with fluid (an effusion distends it along the neck).
    ca, sa = math.cos(a.neck_angle), math.sin(a.neck_angle)
    neck_end = (-a.neck_length * ca, a.neck_length * sa)
    neck_d, _ = segment_distance(x, y, (hx, hy), neck_end)
    e = disease.effusion
    sd_capsule = np.minimum(dist - radius - 2.0 - 4.0 * e, neck_d - a.neck_radius - 6.0 * e)
    canvas.paint("fluid", 0.9 * occ(sd_capsule))  # a layer of fluid, thick when the effusion is large
    # Acetabulum: socket, fossa with pulvinar fat, cartilage of both sides, labrum at the lateral lip.
    socket = radius + 2.0 * a.cartilage
    up = smoothstep(-(y - hy) / np.maximum(dist, 1e-3), 0.3, 0.8)
    thin = 1.0 - 0.65 * up if oa else np.ones_like(up)
    fossa = (radius * 0.75 + 4.0, radius * 0.55)
    sd_fossa = np.sqrt((x - fossa[0]) ** 2 + (y - fossa[1]) ** 2) - 7.0
    in_socket = occ(dist - socket) * occ(sd_body)
    canvas.paint("fluid", in_socket)
    canvas.paint("fat", occ(sd_fossa) * occ(sd_body))
    canvas.paint("cartilage", in_socket * occ(socket - a.cartilage * thin - dist) * occ(-sd_fossa))
    lip_angle = math.atan2(a.roof[0] - a.roof[2] * 0.9, -(socket + 1.0))
    lip = (socket + 1.5) * np.array([math.sin(lip_angle), -abs(math.cos(lip_angle))])
    canvas.paint("labrum", occ(np.sqrt((x - lip[0]) ** 2 + (y - lip[1]) ** 2) - 2.6))
    # Femur: head (flattened over the necrotic segment), neck, trochanters, shaft.
    dx, dy = -math.sin(disease.angle), -math.cos(disease.angle)
    proj = (x - hx) * dx + (y - hy) * dy
    perp = -(x - hx) * dy + (y - hy) * dx
    sd_head = np.maximum(dist - radius, proj - (radius - disease.collapse))
    trochanter = (neck_end[0] - 10.0, neck_end[1] - 14.0, 13.0, 17.0)
    shaft_top = (a.shaft_x, neck_end[1] + 4.0)
    shaft_d, _ = segment_distance(x, y, shaft_top, (a.shaft_x - 6.0, 140.0))
    lesser = (a.shaft_x + 15.0, neck_end[1] + 20.0, 9.0, 7.0)
    # Filleted unions give the concave calcar curve and the trochanteric flare instead of sharp corners.
    sd_neck_shaft = _smooth_min(neck_d - a.neck_radius, shaft_d - 15.0, 12.0)
    sd_proximal = _smooth_min(sd_neck_shaft, _ellipse_sd(x, y, trochanter), 6.0)
    sd_femur = np.minimum(sd_head, _smooth_min(sd_proximal, _ellipse_sd(x, y, lesser), 4.0))
    if oa:
        osteophyte = np.sqrt((x - radius * 0.55) ** 2 + (y - radius * 0.9) ** 2) - 4.0
        sd_femur = np.minimum(sd_femur, osteophyte)
    canvas.paint("cartilage", occ(sd_head - a.cartilage * thin) * occ(a.neck_radius - 2.0 - neck_d))
    canvas.paint("cortex", occ(sd_femur))
    wall = 0.9 + 3.5 * smoothstep(y, neck_end[1], neck_end[1] + 40.0)
    marrow = occ(sd_femur + wall)
    canvas.paint("marrow", marrow)
    canvas.paint("red", marrow * 0.45 * np.clip(a.islands(x, y) - 0.4, 0.0, 1.0) * occ(radius * 0.3 - proj))
    physis = band(proj + 0.3 * radius - 0.02 * perp**2, 0.6)
    canvas.paint("sclerosis", marrow * 0.5 * physis * occ(dist - radius))
    if disease.oedema > 0:  # before the lesion, whose sclerotic rim is dense bone and stays free of oedema
        extent = 8.0 + 16.0 * disease.contrast  # mm down the neck beyond the head; shorter when subtle
        wobble = disease.wobble(x, y) / 1.4
        margin = 4.0 * wobble  # an irregular lower edge
        reach = 1.0 - smoothstep(dist - 0.8 * radius + margin, extent, extent + 12.0)
        patchy = 0.75 + 0.25 * wobble
        viable = proj < radius * (1.0 - disease.depth)
        strength = disease.oedema * (0.7 + 0.3 * disease.contrast)
        canvas.paint("oedema", marrow * strength * reach * patchy * viable)
    mask = _paint_lesion(canvas, disease, x, y, dist, proj, perp, sd_head, radius, marrow, occ)
    # Pelvic bone, cut by the socket and the fossa.
    sd_pelvis = np.maximum.reduce([sd_body, socket - dist, -sd_fossa])
    canvas.paint("cortex", occ(sd_pelvis))
    pelvic_marrow = occ(sd_pelvis + 1.6)
    canvas.paint("red", pelvic_marrow)
    canvas.paint("marrow", pelvic_marrow * 0.2 * smoothstep(a.islands(x, y), -0.5, 1.5))
    if oa:
        thick = _thickness(disease)
        canvas.paint("oedema", 0.8 * band(dist - socket - 9.0, 5.0 * thick) * up * pelvic_marrow)
        rim = 4.0 * thick  # subchondral sclerosis of the roof, a solid band like the femoral rim
        canvas.paint("sclerosis", 0.95 * occ(np.abs(dist - socket - 0.5 - rim / 2) - rim / 2) * up * pelvic_marrow)
        cyst = np.sqrt((x - 0.3 * radius) ** 2 + (y + socket + 5.0) ** 2) - 2.8
        canvas.paint("fluid", occ(cyst) * pelvic_marrow)
    return canvas, mask


def _thickness(disease: _Disease) -> float:
    """Width factor of the dense lesion tissues (sclerosis, fluid, oedema bands).

    Subtle lesions get thinner bands rather than fainter ones: sclerosis and fluid stay dense where present,
    so their contrast is right in every pixel they fill, and a thin band loses contrast by partial volume.
    """
    return 0.5 + 0.5 * disease.contrast


def _paint_lesion(
    canvas: _Canvas,
    disease: _Disease,
    x: np.ndarray,
    y: np.ndarray,
    dist: np.ndarray,
    proj: np.ndarray,
    perp: np.ndarray,
    sd_head: np.ndarray,
    radius: float,
    marrow: np.ndarray,
    occ: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Paint the necrotic segment for the disease's stage; return its mask (segment plus reactive rim)."""
    if disease.stage == 0:
        return np.zeros(x.shape, dtype=bool)
    c = disease.contrast
    thick = _thickness(disease)
    level = proj + 0.35 * perp**2 / radius - radius * (1.0 - disease.depth) + 1.2 * disease.wobble(x, y) / 1.4
    inside = marrow * occ(dist - radius + 0.5)
    core = inside * smoothstep(level, 0.0, 1.0)
    mottle = disease.mottle(x, y) / 1.4
    canvas.paint("necrotic", core * c * (0.45 + 0.12 * disease.stage))
    if disease.stage >= 3:
        sparse = 0.6 * (1.0 - c)  # subtle lesions have fewer sclerotic and cystic patches
        canvas.paint("sclerosis", core * 0.9 * smoothstep(mottle, 0.4 + sparse, 0.9 + sparse))
        canvas.paint("fluid", core * 0.9 * smoothstep(-mottle, 0.7 + sparse, 1.2 + sparse))
    line = 0.9 * (0.4 + 0.6 * c)  # the reactive line stays the dominant tissue of its pixels when subtle
    rim = 2.0  # how far outside the segment (level 0) the reactive rim reaches, mm
    if disease.stage == 1:
        canvas.paint("interface", inside * line * band(level, 1.0))
    else:
        canvas.paint("granulation", inside * line * band(level - 1.0, 0.8))
        rim = 3.2 * thick  # the sclerotic rim is a solid band of dense bone just outside the segment
        canvas.paint("sclerosis", inside * 0.95 * occ(np.abs(level + rim / 2) - rim / 2))
    if disease.stage >= 3:
        depth = -sd_head
        canvas.paint("fluid", inside * 0.95 * band(depth - 1.8, 0.8 * thick) * smoothstep(level, 0.5, 2.0))
    return (level > -rim) & (dist < radius) & (marrow > 0.5)


def _write_images(folder: Path, case_id: str, study: dict[str, np.ndarray], missing: int) -> dict[str, str]:
    """Write the five MR images (one dropped if ``missing`` >= 0) and the CT; return their manifest cells."""
    row = {}
    for p, name in enumerate(PROTOCOLS):
        if p == missing:
            row[f"image_{name}"] = ""
            continue
        path = f"images/{case_id}_{name}.png"
        write_png16(folder / path, np.clip(np.round(study[name] * _MR_SCALE), 0, 65535).astype(np.uint16))
        row[f"image_{name}"] = path
    path = f"images/{case_id}_ct.png"
    write_png16(folder / path, np.clip(np.round(study["ct"] + CT_OFFSET), 0, 65535).astype(np.uint16))
    row["image_ct"] = path
    return row
