"""Hip CT phantom for avascular necrosis of the femoral head (task ``avnfh-ct``, SRANet seed).

Each case is a CT volume in Hounsfield units around one femoral head, stored as NIfTI with the voxel
spacing in the affine, or with ``fmt="dicom"`` as a CT series folder (one int16 HU file per slice, same
voxels and geometry). Tissue values vary per patient: air -1000, fat -115..-90, muscle 30..55 with a smooth
spread of 6-14 HU SD within the scan, trabecular bone ~200-400, cortical bone ~1350-1750 before
partial-volume blur, noise SD 15-30 HU; ``benchmarks/ct_realism.py`` compares them with real CT.

Anatomy per hip: femoral head, neck, greater and lesser trochanter and shaft (cortical shell of varying
thickness, textured trabecular interior with the thickened bundles that cross at the head centre, the
"asterisk" of a normal head on axial CT, and fatty marrow down the shaft), and the acetabular cup (thick
roof and posterior column, thin medial wall, a dense subchondral plate thickest under the roof, the
fat-padded cotyloid fossa) with ilium, ischium and pubic rami. ``full_region=True`` writes the whole hip
region instead (both hips, pelvis, sacrum, bowel gas, body outline).

Lesions follow the seed's ARCO criteria and sit in the superolateral, weight-bearing segment:

* stage 0: none;
* stage I: **no CT change by design** (the seed: "CT examination shows no abnormalities"); the case is
  labelled positive but is invisible on CT and has an empty lesion mask;
* stage II: sclerotic rim around the necrotic segment, mottled sclerosis and lucency, small cysts;
* stage III: additionally a subchondral lucent crescent, a subchondral plate break and early collapse;
* stage IV: marked collapse and a denser segment, an osteophyte, joint-space narrowing and acetabular
  sclerosis with a subchondral cyst.

Class balance and stage mix follow Table I of the seed (training cohort: 628 negative; stages I-IV
31/198/199/188), assigned by quota so small datasets match it too. A patient gives one or both hips
(the seed has 1,549 heads from 1,364 patients); both hips of one patient come from one scan.
Manifest ``box`` (``x0 y0 z0 x1 y1 z1``, end exclusive) indexes the array returned by
:func:`osteoscope.data.readers.read_image` (``(z, y, x)``, LPS axes); ``spacing`` is ``sx sy sz`` in mm.
``mask`` is a coarse bone mask (the bone geometry dilated by one voxel, like SRANet's thresholded
masks) and ``mask_lesion`` the exact femoral necrotic segment. ``subtlety`` scales lesion contrast,
size and collapse (1 = hardest, still measurably abnormal).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import binary_dilation, gaussian_filter, zoom

from osteoscope.data.manifest import MANIFEST_NAME, write_manifest
from osteoscope.errors import ConfigError
from osteoscope.phantoms._dicom import Study, decimal_string, dicom_uid, write_dicom
from osteoscope.phantoms._draw import check_count_and_subtlety, smoothstep

TASK = "avnfh-ct"
COLUMNS = (
    "case_id",
    "patient_id",
    "image",
    "mask",
    "mask_lesion",
    "box",
    "label",
    "stage",
    "side",
    "spacing",
    "subtlety",
)
STAGE_COUNTS: dict[int, int] = {0: 628, 1: 31, 2: 198, 3: 199, 4: 188}  # seed Table I, training cohort
_BOTH_HIPS = 0.14  # share of patients giving both hips (1 - 1364/1549 of the seed's heads, roughly)
_CROP_MM = 76.0
_CROP_MAX = 112
Vec = tuple[float, ...] | np.ndarray
_SIDE_SIGN = {"right": -1.0, "left": 1.0}  # LPS x points to the patient's left
_MUSCLE_SIGMA_MM = 8.0  # smoothness of the variation of muscle density within a scan
_FOSSA = (-0.852, 0.150, -0.501)  # unit direction of the cotyloid fossa from the head centre (hip frame)


@dataclass(frozen=True)
class _Hip:
    """Anatomy of one hip in its local frame (mm; u lateral, v posterior, w superior; head centre at 0)."""

    radius: float
    neck_dir: tuple[float, float, float]
    neck_len: float
    joint: float
    lesion_dir: tuple[float, float, float]
    lesion_size: float
    cysts: tuple[tuple[float, float, float, float], ...]
    waves: np.ndarray
    bundles: np.ndarray


@dataclass(frozen=True)
class _Patient:
    """Anatomy shared by both hips of one patient (mm and HU)."""

    half_width: float
    body_a: float
    body_b: float
    body_y: float
    fat: float
    trabecular: float
    cortical: float
    noise: float
    hips: dict[str, _Hip]
    planes: np.ndarray
    gas: tuple[tuple[float, float, float, float], ...]
    fat_hu: float
    muscle: float
    muscle_spread: float


def generate(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    *,
    subtlety: float = 0.5,
    full_region: bool = False,
    fmt: str = "nifti",
    voxel_scale: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``n`` synthetic hip CT cases (one femoral head each) and return the manifest path.

    Args:
        out_dir: Folder to create; gets ``manifest.csv``, ``images/`` and ``masks/``.
        n: Number of cases (femoral heads).
        seed: Everything is a deterministic function of the seed.
        subtlety: Lesion contrast knob in [0, 1]; 1 is hardest but still measurably abnormal.
        full_region: Write the whole hip region (both hips, pelvis) at a coarser spacing instead of a
            crop around one hip, so that cropping by ``box`` from a larger scan is exercised.
        fmt: ``"nifti"`` (one ``.nii.gz`` per image) or ``"dicom"`` (one CT series folder per image,
            one file per slice, int16 HU); masks are NIfTI either way.
        voxel_scale: Multiplies the voxel spacing (same field of view, fewer voxels): 3 gives volumes of
            about 30^3 that generate 20 times faster, for tests; fine texture is then averaged away.
        progress: Called as ``progress(i, n)`` after case ``i`` (1-based) is written.

    Returns:
        Path of the written ``manifest.csv``.
    """
    check_count_and_subtlety(n, subtlety)
    if not 1.0 <= voxel_scale <= 8.0:
        raise ConfigError(f"voxel_scale must lie in [1, 8], got {voxel_scale}")
    if fmt not in ("nifti", "dicom"):
        raise ConfigError(f"{TASK} writes fmt 'nifti' or 'dicom', got {fmt!r}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    plan = _plan(int(n), np.random.default_rng([seed, 0]))
    width = max(4, len(str(len(plan))))
    rows: list[dict[str, str]] = []
    for p, cases in enumerate(plan):
        patient = _draw_patient(np.random.default_rng([seed, 1, p]), subtlety)
        stages = {"left": 0, "right": 0}
        stages.update({side: stage for side, stage in cases})
        patient_id = f"p{p + 1:0{width}d}"
        shared = None
        for side, stage in cases:
            case_id = f"{patient_id}_{side[0]}"
            lesion_path = f"masks/{case_id}_lesion.nii.gz"
            if full_region and shared is not None:
                image, mask, boxes, spacing, lesions, affine = shared
                _save(out / lesion_path, lesions[side], affine, np.uint8)
            else:
                rng = np.random.default_rng([seed, 2, p, 0 if full_region else len(rows)])
                grid = _grid(patient, side, full_region, rng, voxel_scale)
                hu, bone, lesions, boxes = _render(patient, stages, grid, subtlety, rng)
                stem = patient_id if full_region else case_id
                mask = f"masks/{stem}_bone.nii.gz"
                affine = _affine(grid)
                volume = np.clip(np.round(hu), -1024, 3071).astype(np.int16)
                if fmt == "dicom":
                    image = f"images/{stem}"
                    _write_series(out / image, volume, affine, patient_id, stem, seed)
                else:
                    image = f"images/{stem}.nii.gz"
                    _save(out / image, volume, affine, np.int16)
                _save(out / mask, bone, affine, np.uint8)
                _save(out / lesion_path, lesions[side], affine, np.uint8)
                spacing = " ".join(f"{float(a[1] - a[0]):.4g}" for a in grid[::-1])
                shared = (image, mask, boxes, spacing, lesions, affine)
            rows.append(
                {
                    "case_id": case_id,
                    "patient_id": patient_id,
                    "image": image,
                    "mask": mask,
                    "mask_lesion": lesion_path,
                    "box": boxes[side],
                    "label": str(int(stage > 0)),
                    "stage": str(stage),
                    "side": side,
                    "spacing": spacing,
                    "subtlety": f"{subtlety:g}",
                }
            )
            if progress is not None:
                progress(len(rows), int(n))
    return write_manifest(out / MANIFEST_NAME, rows, COLUMNS)


def _plan(n: int, rng: np.random.Generator) -> list[list[tuple[str, int]]]:
    """Stages by Table I quota (largest remainder), shuffled, grouped into patients of one or two hips."""
    total = sum(STAGE_COUNTS.values())
    exact = {k: n * v / total for k, v in STAGE_COUNTS.items()}
    counts = {k: math.floor(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: counts[k] - exact[k])[: n - sum(counts.values())]:
        counts[k] += 1
    stages = rng.permutation([k for k, c in counts.items() for _ in range(c)]).tolist()
    plan: list[list[tuple[str, int]]] = []
    i = 0
    while i < n:
        both = i + 1 < n and rng.random() < _BOTH_HIPS
        first = "right" if rng.random() < 0.5 else "left"
        if both:
            plan.append([("right", stages[i]), ("left", stages[i + 1])])
            i += 2
        else:
            plan.append([(first, stages[i])])
            i += 1
    return plan


def _unit(v: np.ndarray) -> tuple[float, float, float]:
    """Normalise a 3-vector."""
    v = np.asarray(v, dtype=float)
    u = v / np.linalg.norm(v)
    return float(u[0]), float(u[1]), float(u[2])


def _draw_patient(rng: np.random.Generator, subtlety: float) -> _Patient:
    """Draw the fixed anatomy of one patient and the geometry of possible lesions in both heads."""
    half = rng.uniform(86.0, 96.0)
    hips = {}
    for side in ("right", "left"):
        r = rng.uniform(21.5, 25.5)
        incl = math.radians(rng.uniform(125.0, 135.0) - 90.0)
        ante = math.radians(rng.uniform(8.0, 18.0))
        neck = (math.cos(incl) * math.cos(ante), math.sin(ante) * math.cos(incl), -math.sin(incl))
        size = rng.uniform(0.38, 0.55) * (1.0 - 0.3 * subtlety)
        cysts = tuple(
            (*rng.uniform(-0.5, 0.5, 2), rng.uniform(0.25, 0.7), rng.uniform(1.5, 3.5))
            for _ in range(int(rng.integers(1, 4)))
        )
        hips[side] = _Hip(
            radius=r,
            neck_dir=neck,
            neck_len=rng.uniform(1.9, 2.15) * r,
            joint=rng.uniform(3.0, 4.5),
            lesion_dir=_unit(np.array([0.35, -0.3, 0.88]) + rng.normal(0, 0.12, 3)),
            lesion_size=size,
            cysts=cysts,
            waves=np.column_stack([rng.normal(0, 0.9, (3, 3)), rng.uniform(0, 2 * math.pi, 3)]),
            bundles=_bundles(rng),
        )
    a = half + rng.uniform(65.0, 95.0)
    return _Patient(
        half_width=half,
        body_a=a,
        body_b=rng.uniform(0.62, 0.75) * a,
        body_y=rng.uniform(15.0, 30.0),
        fat=rng.uniform(12.0, 40.0),
        trabecular=rng.uniform(200.0, 320.0),
        cortical=rng.uniform(1350.0, 1750.0),
        noise=rng.uniform(15.0, 30.0),
        hips=hips,
        planes=np.column_stack([rng.normal(0, 1, (4, 3)) * (2 * math.pi / 70.0), rng.uniform(0, 6.3, 4)]),
        gas=tuple(
            (rng.uniform(-45, 45), rng.uniform(-20, 40), rng.uniform(25, 60), rng.uniform(4, 12)) for _ in range(4)
        ),
        fat_hu=rng.uniform(-115.0, -90.0),
        muscle=rng.uniform(30.0, 55.0),
        muscle_spread=rng.uniform(6.0, 14.0),
    )


def _bundles(rng: np.random.Generator) -> np.ndarray:
    """Unit directions (K, 3) of the thickened trabecular bundles that cross at the head centre.

    On axial CT they form the "asterisk" of a normal femoral head: the principal compressive group runs
    from the superolateral weight-bearing surface down to the medial calcar; the others splay around it
    and across the head. Eight bundles: the main one, three near it, four across the head.
    """
    main = np.array([0.35, 0.0, 0.94])
    others = [main + rng.normal(0.0, 0.25, 3) for _ in range(3)]
    others += [np.array([math.cos(t), math.sin(t), rng.normal(0.0, 0.4)]) for t in rng.uniform(0, math.pi, 4)]
    return np.array([_unit(d) for d in [main, *others]])


def _centre(patient: _Patient, side: str) -> tuple[float, float, float]:
    """World position (mm, LPS) of one femoral head centre; the origin is midway between the hips."""
    return _SIDE_SIGN[side] * patient.half_width, 0.0, 0.0


def _grid(
    patient: _Patient, side: str, full_region: bool, rng: np.random.Generator, voxel_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World coordinates (mm, LPS) of the voxel centres along z, y and x (spacing times ``voxel_scale``)."""
    if full_region:
        s, dz = rng.uniform(1.5, 1.9) * voxel_scale, rng.choice([1.5, 2.0, 2.5]) * voxel_scale
        ax = patient.body_a + 12.0
        xs = np.arange(-ax, ax, s)
        ys = np.arange(patient.body_y - patient.body_b - 12.0, patient.body_y + patient.body_b + 12.0, s)
        zs = np.arange(-95.0, 80.0, dz)
    else:
        s, dz = rng.uniform(0.6, 1.0) * voxel_scale, float(rng.choice([0.625, 0.75, 0.8, 1.0])) * voxel_scale
        c = np.array(_centre(patient, side)) + rng.uniform(-3.0, 3.0, 3)
        nxy, nz = min(round(_CROP_MM / s), _CROP_MAX), min(round(_CROP_MM / dz), _CROP_MAX)
        xs = c[0] + (np.arange(nxy) - (nxy - 1) / 2) * s
        ys = c[1] + (np.arange(nxy) - (nxy - 1) / 2) * s
        zs = c[2] + (np.arange(nz) - (nz - 1) / 2) * dz
    return zs.astype(np.float32), ys.astype(np.float32), xs.astype(np.float32)


def _smax(a: np.ndarray, b: np.ndarray, k: float = 3.0) -> np.ndarray:
    """Smooth union of two signed distances (positive inside)."""
    h = np.clip(0.5 + 0.5 * (a - b) / k, 0.0, 1.0)
    return b + (a - b) * h + k * h * (1.0 - h)


def _capsule(u: np.ndarray, v: np.ndarray, w: np.ndarray, p0: Vec, p1: Vec, r0: float, r1: float) -> np.ndarray:
    """Signed distance (positive inside) of a tapered capsule."""
    e = np.subtract(p1, p0)
    t = np.clip(((u - p0[0]) * e[0] + (v - p0[1]) * e[1] + (w - p0[2]) * e[2]) / float(e @ e), 0.0, 1.0)
    d = np.sqrt((u - p0[0] - t * e[0]) ** 2 + (v - p0[1] - t * e[1]) ** 2 + (w - p0[2] - t * e[2]) ** 2)
    return r0 + (r1 - r0) * t - d


def _ball(u: np.ndarray, v: np.ndarray, w: np.ndarray, c: Vec, r: float) -> np.ndarray:
    """Signed distance (positive inside) of a ball."""
    return r - np.sqrt((u - c[0]) ** 2 + (v - c[1]) ** 2 + (w - c[2]) ** 2)


def _ellipsoid(u: np.ndarray, v: np.ndarray, w: np.ndarray, c: Vec, axes: Vec) -> np.ndarray:
    """Approximate signed distance of an axis-aligned ellipsoid."""
    q = ((u - c[0]) / axes[0]) ** 2 + ((v - c[1]) / axes[1]) ** 2 + ((w - c[2]) / axes[2]) ** 2
    return (1.0 - np.sqrt(q)) * min(axes)


def _render(
    patient: _Patient, stages: dict[str, int], grid: tuple[np.ndarray, ...], subtlety: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], dict[str, str]]:
    """Return HU volume, coarse bone mask, per-side lesion masks and per-side boxes on ``grid``."""
    zs, ys, xs = grid
    z, y, x = zs[:, None, None], ys[None, :, None], xs[None, None, :]
    shape = (len(zs), len(ys), len(xs))
    spacing = np.array([zs[1] - zs[0], ys[1] - ys[0], xs[1] - xs[0]], dtype=np.float32)
    # Soft tissue: air, subcutaneous fat, muscle with fat planes and uneven density (muscles differ, fat
    # infiltrates them), pelvic cavity with bladder and gas.
    ell = np.sqrt((x / patient.body_a) ** 2 + ((y - patient.body_y) / patient.body_b) ** 2)
    wave = sum(np.cos(pl[0] * x + pl[1] * y + pl[2] * z + pl[3]) for pl in patient.planes) / 2.0
    # Drawn from a child stream, so the lesion, texture and noise draws below do not depend on it.
    uneven = _random_field(rng.spawn(1)[0], shape, _MUSCLE_SIGMA_MM / spacing)
    muscle = patient.muscle + patient.muscle_spread * uneven
    hu = np.where(np.abs(wave) < 0.1, patient.fat_hu + 5.0, muscle).astype(np.float32)
    cavity = ((x / (patient.half_width - 38.0)) ** 2 + ((y - 10.0) / 55.0) ** 2 < 1.0) & (z > -30.0)
    hu = np.where(cavity, np.where(wave > 0.3, 30.0, patient.fat_hu + 10.0), hu)
    hu = np.where((x / 38.0) ** 2 + ((y + 30.0) / 30.0) ** 2 + ((z + 5.0) / 28.0) ** 2 < 1.0, 8.0, hu)
    for gx, gy, gz, gr in patient.gas:
        hu = np.where((x - gx) ** 2 + (y - gy) ** 2 + (z - gz) ** 2 < gr * gr, -1000.0, hu)
    hu = np.where(ell > 1.0 - patient.fat / patient.body_b, patient.fat_hu, hu)
    hu = np.where(ell > 1.0, -1000.0, hu).astype(np.float32)
    fem = np.full(shape, -50.0, np.float32)
    pel = np.full(shape, -50.0, np.float32)
    inner = np.full(shape, float(patient.trabecular), np.float32)
    cortex = np.full(shape, 1.5, np.float32)
    plate = np.full(shape, 1.0, np.float32)  # pelvic cortex: thin outside, the subchondral plate in the cup
    tex = _random_field(rng, shape, 0.8 / spacing)
    lesions: dict[str, np.ndarray] = {}
    boxes: dict[str, str] = {}
    # Sacrum (midline, posterior) belongs to the pelvis.
    pel = _smax(pel, _ellipsoid(x, y, z, (0.0, 85.0 + patient.body_y - 20.0, 60.0), (45.0, 24.0, 55.0)))
    for side, hip in patient.hips.items():
        s = _SIDE_SIGN[side]
        cx, cy, cz = _centre(patient, side)
        u, v, w = s * (x - cx), y - cy, z - cz
        stage = stages[side]
        r = hip.radius
        c = 1.0 - 0.6 * subtlety
        d = np.array(hip.lesion_dir)
        col = {3: rng.uniform(1.0, 2.5), 4: rng.uniform(3.5, 6.0)}.get(stage, 0.0) * (1.0 - 0.4 * subtlety)
        # Femur.
        j = np.array(hip.neck_dir) * hip.neck_len
        f = _ball(u, v, w, (0, 0, 0), r)
        f = _smax(f, _capsule(u, v, w, (0, 0, 0), j, 0.66 * r, 0.85 * r))
        f = _smax(f, _capsule(u, v, w, np.add(j, (0, 0, 8)), np.add(j, (-28, 0, -220)), 0.62 * r, 0.55 * r))
        f = _smax(f, _ellipsoid(u, v, w, np.add(j, (10, 8, 14)), (13.0, 17.0, 22.0)))
        f = _smax(f, _ball(u, v, w, np.add(j, (-0.55 * r, 10, -40)), 7.0))
        rad = np.sqrt(u * u + v * v + w * w)
        cosang = (u * d[0] + v * d[1] + w * d[2]) / np.maximum(rad, 1e-3)
        near = smoothstep(cosang, math.cos(math.radians(60)), math.cos(math.radians(25)))
        if stage == 4:
            f = _smax(f, _ball(u, v, w, 0.97 * r * np.array(_unit(np.array([0.75, -0.1, -0.6]))), 3.5), 1.5)
        if col > 0:
            f = np.where((near > 0) & (rad < r + 4.0), np.minimum(f, r - col * near - rad), f)
        fem = np.maximum(fem, f)
        head = rad < r + 2.0
        cortex = np.where(head, 1.1, np.where(f > -20, np.interp(w - j[2], [-60, -10], [6.0, 1.8]), cortex))
        marrow = smoothstep(-(w - j[2]), 25.0, 60.0)
        base = patient.trabecular + 20.0 * np.clip(1.0 - rad / r, 0, 1) * head
        inner = np.where(f > -20, base * (1 - marrow) - 60.0 * marrow, inner)
        inner = inner + _asterisk(u, v, w, hip.bundles, 0.9 * r)  # zero outside the head
        # Acetabulum and pelvis; stage IV narrows the joint by lowering the cup.
        drop = min(col + hip.joint - 1.0, hip.joint - 0.6) if stage == 4 else 0.0
        rin = r + hip.joint
        cw = w + drop
        rc = np.sqrt(u * u + v * v + cw * cw)
        a = _unit(np.array([0.75, -0.35, -0.55]))
        plane = (u * a[0] + v * a[1] + cw * a[2]) / 1.0
        # The cup: thick roof (the sourcil) and posterior column, thin medial wall; the cotyloid fossa
        # recesses its floor, padded with fat. Its articular face is a dense subchondral plate.
        up = np.clip(cw / np.maximum(rc, 1e-3), 0.0, 1.0)
        back = np.clip(v / np.maximum(rc, 1e-3), 0.0, 1.0)
        thick = 5.0 + 14.0 * up + 5.0 * back
        fossa = smoothstep((u * _FOSSA[0] + v * _FOSSA[1] + cw * _FOSSA[2]) / np.maximum(rc, 1e-3), 0.82, 0.9)
        floor = rin + 4.0 * fossa
        hu = np.where((rc >= rin) & (rc < floor), patient.fat_hu + 20.0, hu)
        p = np.minimum(np.minimum(rc - floor, rin + thick - rc), 0.1 * rin - plane)
        half = patient.half_width
        p = _smax(p, _capsule(u, v, cw, (-6, 6, 0.6 * r), (-2, 22, 80), 20.0, 14.0))
        p = _smax(p, _capsule(u, v, cw, (-6, 14, -10), (-12, 30, -62), 13.0, 11.0))
        p = _smax(p, _ball(u, v, cw, (-14, 34, -70), 15.0))
        p = _smax(p, _capsule(u, v, w, (-10, -14, -6), (-half + 8, -45, -30), 10.0, 8.0))
        p = _smax(p, _capsule(u, v, w, (-half + 8, -45, -42), (-16, 26, -66), 7.0, 7.0))
        p = _smax(p, _capsule(u, v, w, (-half + 8, -48, -26), (-half + 8, -44, -48), 6.0, 6.0))
        p = _smax(p, _ellipsoid(u, v, cw, (-18, 30, 85), (7.0, 50.0, 40.0)))
        if stage == 4:
            p = _smax(p, _ball(u, v, cw, (rin + 2.0) * np.array(_unit(np.array([0.85, -0.2, 0.45]))), 4.0), 1.5)
        p = np.minimum(p, rc - floor)
        pel = np.maximum(pel, p)
        plate = np.where((rc - floor < 4.0) & (p > 0), 1.0 + 1.0 * up, plate)
        hu = np.where(rad < rin + 0.5, np.maximum(hu, 85.0), hu)
        # Necrotic segment.
        q = 0.92 * r * d
        rho = hip.lesion_size * r
        dq = np.sqrt((u - q[0]) ** 2 + (v - q[1]) ** 2 + (w - q[2]) ** 2)
        lesion = np.zeros(shape, dtype=bool)
        if stage >= 2:
            inside = smoothstep(rho - dq, -0.5, 0.5)
            mottle = np.tanh(1.5 * sum(np.cos(k[0] * u + k[1] * v + k[2] * w + k[3]) for k in hip.waves))
            delta = 420.0 * np.exp(-(((dq - rho) / 1.4) ** 2)) + inside * (40.0 + 120.0 * mottle)
            e1 = _unit(np.cross(d, [0.0, 1.0, 0.0]))
            e2 = _unit(np.cross(d, e1))
            for a1, a2, depth, cr in hip.cysts:
                cc = q - depth * rho * d + a1 * rho * np.array(e1) + a2 * rho * np.array(e2)
                delta = delta - 300.0 * smoothstep(_ball(u, v, w, cc, cr), -0.5, 0.5)
            if stage >= 3:
                sd = r - col * near - rad
                delta = delta - 420.0 * np.exp(-(((sd - 2.6) / 0.9) ** 2)) * inside
                delta = delta - 1100.0 * np.exp(-(((dq - rho) / 0.6) ** 2)) * (sd < 2.5)
            if stage == 4:
                delta = delta + 220.0 * inside
            inner = inner + np.where(f > 0, c * delta, 0.0)
            lesion = (dq < rho + 1.5) & (f > 0)
        if stage == 4:
            roof = np.exp(-(((rc - rin) / 3.0) ** 2)) * smoothstep(cw / np.maximum(rc, 1e-3), 0.3, 0.7)
            cyst = smoothstep(_ball(u, v, cw, (rin + 4.0) * np.array([0.25, -0.1, 0.96]), 3.5), -0.5, 0.5)
            inner = inner + np.where(p > 0, c * (350.0 * roof - 300.0 * cyst), 0.0)
        lesions[side] = np.broadcast_to(lesion, shape)
        boxes[side] = _box((cx, cy, cz), 1.2 * r + 1.0, grid)
    femhu = np.where(fem < cortex, patient.cortical, inner + 60.0 * tex)
    pelhu = np.where(pel < plate, 0.95 * patient.cortical, np.where(pel > 0, inner - 40.0 + 60.0 * tex, 0))
    hu = np.where(fem > 0, femhu, np.where(pel > 0, pelhu, hu)).astype(np.float32)
    hu = gaussian_filter(hu, 0.45 / spacing)
    hu += patient.noise * _random_field(rng, shape, 0.6)
    bone = binary_dilation((fem > 0) | (pel > 0))
    return hu, bone, lesions, boxes


def _asterisk(u: np.ndarray, v: np.ndarray, w: np.ndarray, bundles: np.ndarray, reach: float) -> np.ndarray:
    """HU added by the trabecular bundles through the head centre: about 1 mm thick, fading out by ``reach``.

    ``u``, ``v``, ``w`` are the hip-frame coordinates along the grid's x, y and z axes (broadcastable 1-D
    arrays); the bundles are evaluated only in the box of half-width ``reach`` about the centre.
    """
    out = np.zeros(np.broadcast_shapes(u.shape, v.shape, w.shape), np.float32)
    near = [np.flatnonzero(np.abs(c.ravel()) < reach) for c in (w, v, u)]
    if any(len(k) == 0 for k in near):
        return out
    box = tuple(slice(k[0], k[-1] + 1) for k in near)
    ub, vb, wb = u[..., box[2]], v[:, box[1]], w[box[0]]
    rad2 = ub * ub + vb * vb + wb * wb
    lines = sum(np.exp(-np.maximum(rad2 - (ub * d[0] + vb * d[1] + wb * d[2]) ** 2, 0.0) / 0.8) for d in bundles)
    out[box] = 200.0 * np.minimum(lines, 1.0) * smoothstep(reach - np.sqrt(rad2), 0.0, 6.0)
    return out


def _random_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: np.ndarray | float) -> np.ndarray:
    """Gaussian-smoothed white noise (``sigma`` in voxels per axis), scaled to zero mean and unit SD.

    Along axes where it is smoother than 4 voxels the field is drawn on a grid ``sigma / 2`` times coarser
    and interpolated back: as smooth, at a fraction of the cost of filtering the full grid.
    """
    sigma = np.broadcast_to(np.asarray(sigma, dtype=float), (len(shape),))
    step = np.maximum(np.floor(sigma / 2.0), 1.0)
    coarse = [math.ceil(n / k) + 1 if k > 1 else n for n, k in zip(shape, step, strict=True)]
    field = gaussian_filter(rng.standard_normal(coarse, dtype=np.float32), sigma / step)
    if field.shape != shape:
        field = zoom(field, np.divide(shape, field.shape), order=1)
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _box(centre: tuple[float, float, float], half: float, grid: tuple[np.ndarray, ...]) -> str:
    """Voxel box ``x0 y0 z0 x1 y1 z1`` (end exclusive, clipped) around a ball in world mm."""
    lo, hi = [], []
    for c, axis in zip(centre[::-1], grid, strict=True):
        step = float(axis[1] - axis[0])
        n = len(axis)
        lo.append(min(max(math.floor((c - half - axis[0]) / step), 0), n - 1))
        hi.append(max(min(math.ceil((c + half - axis[0]) / step) + 1, n), lo[-1] + 1))
    return " ".join(str(v) for v in (*lo[::-1], *hi[::-1]))


def _affine(grid: tuple[np.ndarray, ...]) -> np.ndarray:
    """NIfTI (RAS) affine of an array stored as (x, y, z) with LPS voxel axes."""
    zs, ys, xs = grid
    affine = np.diag([-(xs[1] - xs[0]), -(ys[1] - ys[0]), zs[1] - zs[0], 1.0]).astype(np.float64)
    affine[:3, 3] = [-xs[0], -ys[0], zs[0]]
    return affine


def _save(path: Path, volume: np.ndarray, affine: np.ndarray, dtype: type) -> None:
    """Write a (z, y, x) volume as NIfTI with voxel axes (x, y, z)."""
    img = nib.Nifti1Image(np.ascontiguousarray(np.asarray(volume).transpose(2, 1, 0)).astype(dtype), affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)


def _write_series(folder: Path, volume: np.ndarray, affine: np.ndarray, patient_id: str, stem: str, seed: int) -> None:
    """Write a (z, y, x) int16 HU volume as a CT series folder, one file per axial slice.

    Positions, orientation and spacing come from the NIfTI ``affine`` (RAS, voxel axes x, y, z), so the
    series and the NIfTI place every voxel at the same point and read back as the same array. Both hips of
    a patient come from one scan: they share the study and the frame of reference.
    """
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3]  # columns: steps along voxel x, y, z, then voxel 0
    step = np.linalg.norm(lps[:, :3], axis=0)
    orientation = np.concatenate([lps[:, 0] / step[0], lps[:, 1] / step[1]])
    study = Study(patient_id, dicom_uid(TASK, seed, patient_id, "study"), patient_id, "20200101")
    series_uid = dicom_uid(TASK, seed, stem, "series")
    tags = {
        "ImageType": ["DERIVED", "PRIMARY", "AXIAL"],
        "BodyPartExamined": "HIP",
        "PatientPosition": "HFS",
        "FrameOfReferenceUID": dicom_uid(TASK, seed, patient_id, "frame"),
        "PositionReferenceIndicator": "",
        "ImageOrientationPatient": [decimal_string(v) for v in orientation],
        "PixelSpacing": [decimal_string(step[1]), decimal_string(step[0])],  # row spacing (y), column spacing (x)
        "SliceThickness": decimal_string(step[2]),
        "KVP": "120",
        "RescaleIntercept": "0",
        "RescaleSlope": "1",
        "RescaleType": "HU",
        "WindowCenter": "400",
        "WindowWidth": "1800",
    }
    width = len(str(len(volume)))
    for k, plane in enumerate(volume):
        position = lps[:, 3] + k * lps[:, 2]
        write_dicom(
            folder / f"{k + 1:0{width}d}.dcm",
            plane,
            sop_class="1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
            sop_uid=dicom_uid(TASK, seed, stem, "slice", str(k)),
            series_uid=series_uid,
            study=study,
            modality="CT",
            tags={
                **tags,
                "InstanceNumber": k + 1,
                "ImagePositionPatient": [decimal_string(v) for v in position],
                "SliceLocation": decimal_string(position[2]),
            },
        )
