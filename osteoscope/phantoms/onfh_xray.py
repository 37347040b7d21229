"""AP pelvis radiograph phantom for osteonecrosis of the femoral head (task ``onfh-xray``).

Each study is a synthetic anteroposterior pelvis radiograph: soft-tissue outline and thighs, bowel gas,
the pelvic ring (iliac wings, iliac bodies and pelvic brim, sacrum with foramina, the lumbar spine,
obturator rings, pubic symphysis, ischial tuberosities), both acetabula with their sourcil and teardrop,
and both proximal femurs (head, neck, trochanters, shaft) with a cortical shell and oriented trabecular
texture. Bone is bright, soft tissue grey, air dark (stored inverted in a MONOCHROME1 DICOM file).

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

The film around that anatomy is randomised per study the way real AP pelvis films vary (knobs in
:class:`Realism`): the lumbar spine (L2-L5 with pedicles, spinous and transverse processes), mottled
faecal gas over the sacrum and iliac wings and gas-filled colon segments with haustra, a soft-tissue
envelope of varying habitus (thin to obese with a pannus) and skin folds, implants in some patients
(pedicle screws and rods, surgical clips, an IUD, cannulated screws in a femoral neck; no arthroplasty,
which would remove the head AsT needs), scatter, heel effect, detector blur and correlated noise,
DR processing (dynamic-range compression and unsharp masking), collimation (bright or black shutters,
tilted, off-centre), a burned-in lead side marker ("R"/"L" on the side it names, sometimes mirrored)
and burned-in text. Children (``child_fraction``) have a smaller pelvis drawn on the same canonical
frame (so the pixel spacing is smaller), a small faint ossification centre in each femoral head, open
physes and triradiate cartilage, and relatively more soft tissue.

The anatomy is rendered at most :data:`ANATOMY_MAX_SIDE` pixels per side and upsampled; noise, blur,
shutters, markers and text are added at the full ``image_size``, so a 2,500-px film stays fast.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

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
from osteoscope.phantoms._film import (
    Box,
    collimation_field,
    correlated_noise,
    overlaps,
    text_layer,
    text_size,
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
    "child",
    "pixel_spacing",
    "photometric",
    "marker",
    "marker_box",
    "implant",
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
_MU_METAL = 0.45  # attenuation per mm of steel/titanium: metal saturates to white
_TONE_PERCENTILES = (0.5, 5.0, 25.0, 50.0, 75.0, 95.0, 99.7)
ANATOMY_MAX_SIDE = 768  # anatomy is rendered at most this many pixels per side, then upsampled
DEFAULT_IMAGE_SIZE = (768, 1024)  # film-like, and the 1,000-study demo stays near 20 min
_INSTITUTIONS = ("ST ELSEWHERE HOSPITAL", "CITY GENERAL RADIOLOGY", "OSTEOSCOPE PHANTOM", "UNIV CLINIC DX-2")
_IMPLANTS = ("pedicle screws", "clips", "iud", "neck screw")


@dataclass(frozen=True)
class Realism:
    """How much of a real film's variation each study gets; every component is drawn per study.

    Fractions are probabilities per study (implants per patient); set one to 0 to switch that
    component off. ``Realism.clean()`` switches off every nuisance a detector must learn to ignore.

    Attributes:
        collimation: Share of studies with collimator shutters (bright or black borders).
        collimation_inset: Largest shutter inset per border, as a fraction of the image side.
        collimation_angle: Largest shutter tilt (degrees).
        marker: Share of studies with a burned-in lead side marker ("R"/"L").
        marker_mirrored: Share of markers that are mirrored.
        text: Share of studies with burned-in text (institution, date, view, exposure).
        implant: Share of adult patients with an implant (pedicle screws and rods, surgical clips,
            an IUD, or cannulated screws in one femoral neck); no arthroplasty.
        gas: Bowel gas amount, 0 (none) to 2 (a lot); 1 is typical.
        folds: Share of patients with skin folds (obese patients also get a pannus).
        rotation_sd: Standard deviation of the in-plane patient rotation (degrees).
        scatter: Scatter-to-primary ratio scale (0 = no scatter veil).
        noise: Quantum and electronic noise scale (0 = noiseless).
        monochrome1: Share of DICOM studies stored as MONOCHROME1 (``fmt="dicom"`` only).
        bits_stored: BitsStored values a DICOM study draws from (``fmt="dicom"`` only).
    """

    collimation: float = 0.7
    collimation_inset: float = 0.12
    collimation_angle: float = 4.0
    marker: float = 0.85
    marker_mirrored: float = 0.2
    text: float = 0.6
    implant: float = 0.12
    gas: float = 1.0
    folds: float = 0.5
    rotation_sd: float = 3.0
    scatter: float = 1.0
    noise: float = 1.0
    monochrome1: float = 0.3
    bits_stored: tuple[int, ...] = (10, 12, 14, 16)

    @classmethod
    def clean(cls) -> Realism:
        """No shutters, markers, text, implants, folds or gas: the anatomy, exposure and noise only."""
        return cls(collimation=0.0, marker=0.0, text=0.0, implant=0.0, gas=0.0, folds=0.0, monochrome1=0.0)

    @classmethod
    def from_options(cls, value: Realism | Mapping[str, Any] | None) -> Realism:
        """A :class:`Realism` from itself, a mapping of its fields (e.g. YAML) or ``None`` (defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            value.check()
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"realism must be a mapping of knobs, got {type(value).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ConfigError(f"unknown realism knob(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        options = dict(value)
        if "bits_stored" in options:
            options["bits_stored"] = tuple(int(b) for b in options["bits_stored"])
        realism = cls(**options)
        realism.check()
        return realism

    def check(self) -> None:
        """Reject fractions outside [0, 1], negative scales and unsupported bit depths."""
        for name in ("collimation", "marker", "marker_mirrored", "text", "implant", "folds", "monochrome1"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"realism.{name} must lie in [0, 1], got {getattr(self, name)!r}")
        for name in ("collimation_inset", "collimation_angle", "gas", "rotation_sd", "scatter", "noise"):
            if getattr(self, name) < 0:
                raise ConfigError(f"realism.{name} must not be negative, got {getattr(self, name)!r}")
        if self.collimation_inset > 0.3:
            raise ConfigError(f"realism.collimation_inset must be at most 0.3, got {self.collimation_inset!r}")
        if not self.bits_stored or any(b not in (8, 10, 12, 14, 16) for b in self.bits_stored):
            raise ConfigError(f"realism.bits_stored must be a non-empty subset of 8-16, got {self.bits_stored!r}")


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
    habitus: float = 0.5  # 0 thin to 1 obese
    folds: tuple[tuple[float, float, float, float], ...] = ()  # skin folds: x0, y0, curvature, depth (mm)
    pannus: tuple[float, float, float] | None = None  # lower edge y, half-width share, depth (mm)
    child: float | None = None  # a child's maturity in [0, 1]; None for an adult
    size: float = 1.0  # real mm per canonical mm (below 1 for a child)
    implant: str = ""  # one of _IMPLANTS, or empty
    implant_side: int = 1  # the side of a neck screw (-1 right, 1 left)
    implant_seed: int = 0  # where clips and the IUD sit, fixed for the patient


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
    gas: tuple[tuple[float, float, float, float, float], ...]  # faecal clusters: centre, semi-axes, gas share
    colon: tuple[tuple[float, tuple[tuple[float, float], ...]], ...]  # (radius, polyline) per colon segment
    heel_angle: float  # direction of the anode-cathode axis (rad)
    fov_scale: float  # field of view relative to 430 mm (on the canonical frame)


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
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    fmt: str = "png",
    stage_mix: dict[int, float] | None = None,
    positive_fraction: float = 0.5,
    child_fraction: float = 0.0,
    realism: Realism | Mapping[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``n`` synthetic AP pelvis studies with ONFH labels and return the manifest path.

    Args:
        out_dir: Folder to create; gets ``manifest.csv``, ``images/`` and ``masks/``.
        n: Number of studies (cases); patients have 1–3 studies each.
        seed: Everything is a deterministic function of the seed.
        subtlety: Lesion contrast knob in [0, 1]; 1 is hardest but still measurably abnormal.
        image_size: ``(rows, cols)``, 64 to 4,096 per side; an adult's field of view is about 430 mm wide.
        fmt: ``"png"`` (16-bit grey), ``"jpeg"`` (8-bit grey, quality 90) or ``"dicom"`` (DX, MONOCHROME1
            or MONOCHROME2, BitsStored drawn from ``realism.bits_stored``).
        stage_mix: Probabilities of ARCO stages 1–4 among positive patients' first studies.
        positive_fraction: Target share of positive studies.
        child_fraction: Share of patients who are children (ossification centres, open physes).
        realism: Film knobs (:class:`Realism` or a mapping of its fields); ``None`` takes the defaults.
        progress: Called as ``progress(i, n)`` after study ``i`` (1-based) is written.

    Returns:
        Path of the written ``manifest.csv``.
    """
    mix = _check_args(n, subtlety, image_size, fmt, stage_mix, positive_fraction, child_fraction)
    film = Realism.from_options(realism)
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
        anatomy = _draw_build(np.random.default_rng([seed, 5, patient.index]), anatomy, child_fraction, film)
        patient_id = f"p{patient.index + 1:0{width}d}"
        for k, stages in enumerate(patient.stages):
            case_id = f"{patient_id}_s{k + 1}"
            pose = _draw_pose(np.random.default_rng([seed, 2, patient.index, k]), anatomy, film)
            noise_rng = np.random.default_rng([seed, 3, patient.index, k])
            film_rng = np.random.default_rng([seed, 4, patient.index, k])
            study = _render(anatomy, lesions, stages, pose, image_size, subtlety, film, noise_rng, film_rng)
            rows.append(_write_case(out, case_id, patient_id, k, seed, fmt, study, stages, subtlety, anatomy))
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
    child_fraction: float,
) -> dict[int, float]:
    """Validate the options and return the normalised stage mix."""
    check_count_and_subtlety(n, subtlety)
    check_image_size(image_size)
    if max(image_size) > 4096:
        raise ConfigError(f"image_size must be at most 4096 per side, got {image_size!r}")
    if fmt not in ("png", "jpeg", "dicom"):
        raise ConfigError(f"fmt must be 'png', 'jpeg' or 'dicom', got {fmt!r}")
    for name, value in (("positive_fraction", positive_fraction), ("child_fraction", child_fraction)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must lie in [0, 1], got {value!r}")
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


def _draw_build(rng: np.random.Generator, anatomy: _Anatomy, child_fraction: float, film: Realism) -> _Anatomy:
    """Draw a patient's habitus, skin folds, pannus, age (adult or child) and implant.

    A child is drawn on the adult's canonical frame and shrunk by ``size`` (real mm per canonical mm),
    so every drawing routine serves both; the child-only parts (ossification centres, physes,
    triradiate cartilage) read ``child``, the maturity in [0, 1]. Every patient draws the same numbers,
    so changing one knob does not reshuffle the other patients.
    """
    is_child = rng.random() < child_fraction
    maturity = _uniform(rng, 0.0, 1.0)
    habitus = float(rng.beta(2.0, 2.4))
    n_folds = int(rng.integers(1, 4))
    folds = tuple(
        (
            _uniform(rng, -110.0, 20.0),
            _uniform(rng, -130.0, 90.0),
            _uniform(rng, -0.004, 0.004),
            _uniform(rng, 0.3, 1.0),
        )
        for _ in range(3)
    )[:n_folds]
    fold_depth = 4.0 + 14.0 * habitus  # mm of extra soft tissue beyond a fold line
    has_folds = rng.random() < film.folds
    pannus = (_uniform(rng, 10.0, 90.0), _uniform(rng, 0.6, 0.9), (habitus - 0.55) * _uniform(rng, 60.0, 140.0))
    implant_u = rng.random()
    kind = str(rng.choice(_IMPLANTS, p=[0.35, 0.3, 0.2, 0.15]))
    side = 1 if rng.random() < 0.5 else -1
    implant_seed = int(rng.integers(2**31))
    widen = 1.0 + (0.25 * (1.0 - maturity) if is_child else 0.0)
    return _Anatomy(
        hips=anatomy.hips,
        body_half_width=anatomy.body_half_width * (0.85 + 0.4 * habitus) * widen,
        body_depth=anatomy.body_depth * (0.8 + 0.6 * habitus) * widen,
        wing=anatomy.wing,
        inlet=anatomy.inlet,
        bone_density=anatomy.bone_density * (0.75 + 0.2 * maturity if is_child else 1.0),
        habitus=habitus,
        folds=tuple((x0, y0, c, w * fold_depth) for x0, y0, c, w in folds) if has_folds else (),
        pannus=pannus if has_folds and habitus > 0.55 and not is_child else None,
        child=maturity if is_child else None,
        size=0.42 + 0.4 * maturity if is_child else 1.0,
        implant=kind if implant_u < film.implant and not is_child else "",
        implant_side=side,
        implant_seed=implant_seed,
    )


def _draw_pose(rng: np.random.Generator, anatomy: _Anatomy, film: Realism) -> _Pose:
    """Draw positioning, exposure and bowel gas (faecal clusters and colon segments) for one study."""
    gas_rng = np.random.default_rng(rng.integers(2**63))  # so the pose does not depend on the gas knob
    n_faecal = round(film.gas * int(gas_rng.integers(1, 5)))
    gas = tuple(
        (
            _uniform(gas_rng, -110.0, 110.0),
            _uniform(gas_rng, -200.0, -40.0),
            _uniform(gas_rng, 20.0, 55.0),
            _uniform(gas_rng, 15.0, 40.0),
            _uniform(gas_rng, 0.25, 0.6),
        )
        for _ in range(n_faecal)
    )
    colon = []
    for _ in range(round(film.gas * int(gas_rng.integers(0, 4)))):
        start = np.array([_uniform(gas_rng, -150.0, 150.0), _uniform(gas_rng, -230.0, -60.0)])
        heading = _uniform(gas_rng, 0.0, 2.0 * math.pi)
        points = [tuple(start)]
        for _ in range(int(gas_rng.integers(2, 5))):
            heading += _normal(gas_rng, 0.0, 0.6)
            start = start + _uniform(gas_rng, 30.0, 60.0) * np.array([math.cos(heading), math.sin(heading)])
            points.append(tuple(start))
        colon.append((_uniform(gas_rng, 9.0, 22.0), tuple((float(px), float(py)) for px, py in points)))
    child = anatomy.child is not None
    return _Pose(
        rotation=math.radians(_normal(rng, 0.0, film.rotation_sd)),
        magnification=_normal(rng, 1.12, 0.03),
        shift=(_normal(rng, 0.0, 10.0), _normal(rng, 0.0, 12.0)),
        tilt=float(np.clip(_normal(rng, 0.0, 0.06), -0.15, 0.15)),
        yaw=float(np.clip(_normal(rng, 0.0, 0.03), -0.08, 0.08)),
        version={s: _normal(rng, 12.0, 8.0) for s in (-1, 1)},
        blur_mm=_uniform(rng, 0.15, 0.5),
        photons=_uniform(rng, 2.0e4, 8.0e4) * (1.0 - 0.5 * anatomy.habitus),
        tone_mid=_normal(rng, 0.0, 0.04),
        tone_width=_uniform(rng, 0.85, 1.15),
        gamma=_uniform(rng, 1.1, 1.8),
        white=_uniform(rng, 30000.0, 64000.0),
        black=_uniform(rng, 100.0, 1500.0),
        heel=_normal(rng, 0.0, 0.1),
        gas=gas,
        colon=tuple(colon),
        heel_angle=float(rng.choice([0.0, math.pi / 2])) + _normal(rng, 0.0, 0.1),
        fov_scale=_uniform(rng, 0.85, 1.05) if child else _uniform(rng, 0.92, 1.1),
    )


@dataclass
class _Film:
    """One rendered study: displayed pixels in [0, 1] (bone bright) and what the manifest records."""

    pixels: np.ndarray
    masks: dict[str, np.ndarray | None]
    boxes: dict[str, Box]
    spacing: float
    marker: str
    marker_box: str
    photometric: str
    bits: int
    black: float
    white: float


def _render(
    anatomy: _Anatomy,
    lesions: dict[str, _Lesion],
    stages: dict[str, int],
    pose: _Pose,
    image_size: tuple[int, int],
    subtlety: float,
    film: Realism,
    rng: np.random.Generator,
    film_rng: np.random.Generator,
) -> _Film:
    """Render one study: anatomy at a capped resolution, then exposure, noise and film effects at full size."""
    rows, cols = image_size
    scale = min(1.0, ANATOMY_MAX_SIDE / max(rows, cols))
    inner = (max(round(rows * scale), 64), max(round(cols * scale), 64))
    spacing = _FOV_WIDTH_MM * pose.fov_scale / cols  # canonical detector mm per full-size pixel
    grid = _make_grid(inner, spacing * cols / inner[1], pose)
    full_grid = _make_grid(image_size, spacing, pose)
    full = grid.full()
    soft = _soft_tissue(full.x, full.y, anatomy)
    _add_gas(grid, soft, pose, rng)
    bone = np.zeros(inner, dtype=np.float32)
    _draw_spine(grid, bone, anatomy, pose)
    # Scatter and DR processing take about a third of a lesion's displayed contrast; the factor 1.4
    # gives it back, so ``subtlety`` means what it meant on the clean phantom.
    contrast = 1.4 * (0.6 + 1.2 * (1.0 - subtlety) ** 1.3)  # 2.5 obvious, ~1.5 default, 0.84 hardest
    structure = 1.25 - 0.5 * subtlety
    masks: dict[str, np.ndarray | None] = {}
    boxes: dict[str, Box] = {}
    heads: dict[int, _Head] = {}
    for side, s in _SIDE_SIGN.items():
        hip = anatomy.hips[s]
        stage = stages[side]
        head = heads[s] = _head_geometry(hip, s, pose, stage, lesions.get(side), structure, anatomy.child)
        _draw_hemipelvis(grid, bone, anatomy, s, pose, head, stage)
        mask = _draw_femur(grid, bone, anatomy, hip, s, pose, head, stage, lesions.get(side), contrast, inner)
        masks[side] = None if mask is None else _upsample_mask(mask, image_size)
        boxes[side] = _head_box(full_grid, head, image_size)
    metal = _draw_implants(grid, anatomy, pose, heads)
    soft = np.maximum(soft, 0.0)
    log_signal = anatomy.size * (_MU_SOFT * soft + _MU_BONE * anatomy.bone_density * bone) + _MU_METAL * metal
    ignore = (metal > 0) | (soft < 40.0)  # the display window is set on the body, not on metal or air
    pixels = _expose(log_signal, ignore, pose, film, image_size, spacing * anatomy.size, anatomy.habitus, rng)
    marker, marker_box = _film_effects(pixels, film, film_rng, list(boxes.values()))
    photometric = "MONOCHROME1" if film_rng.random() < film.monochrome1 else "MONOCHROME2"
    bits = int(film_rng.choice(film.bits_stored))
    return _Film(
        pixels,
        masks,
        boxes,
        spacing * anatomy.size / pose.magnification,
        marker,
        marker_box,
        photometric,
        bits,
        pose.black / 65535.0,
        pose.white / 65535.0,
    )


def _upsample_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a boolean mask rendered at the anatomy resolution."""
    if mask.shape == size:
        return mask
    image = Image.fromarray(mask.astype(np.uint8) * 255).resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(image) > 127


def _resize(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of a float image to ``size`` (rows, cols); a no-op at the same size."""
    if values.shape == size:
        return values
    image = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32), mode="F")
    return np.asarray(image.resize((size[1], size[0]), Image.Resampling.BICUBIC), dtype=np.float32)


def _lowpass(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of ``sigma`` pixels, computed on a copy shrunk so that sigma is about 4 pixels.

    A wide blur of the full image costs seconds; the result is smooth, so a shrunk copy loses nothing.
    """
    factor = max(1, int(sigma / 4.0))
    if factor == 1:
        return gaussian_filter(values, sigma, truncate=2.0)
    rows, cols = values.shape
    small = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32), mode="F")
    small = small.resize((max(cols // factor, 1), max(rows // factor, 1)), Image.Resampling.BOX)
    blurred = gaussian_filter(np.asarray(small, dtype=np.float32), sigma / factor, truncate=2.0)
    return _resize(blurred, values.shape)


def _add_gas(grid: Grid, soft: np.ndarray, pose: _Pose, rng: np.random.Generator) -> None:
    """Remove soft-tissue path where bowel gas sits: mottled faecal clusters and tubular colon with haustra.

    Faecal gas is a thresholded smooth random field (bubbles of a few mm) inside an ellipse; a colon
    segment is a gas-filled tube along a polyline whose radius is pinched every ~2 cm (haustral folds).
    """
    spacing = float(np.hypot(*grid.matrix[:, 0]))
    for gx, gy, ga, gb, fill in pose.gas:
        crop = grid.crop(gx - ga, gy - ga, gx + ga, gy + ga)
        if crop is None:
            continue
        field = gaussian_filter(rng.standard_normal(crop.x.shape, dtype=np.float32), 2.0 / spacing, truncate=2.5)
        field /= max(float(field.std()), 1e-6)
        threshold = float(np.quantile(field, 1.0 - fill))
        bubbles = smoothstep(field, threshold, threshold + 0.6)
        envelope = smoothstep(1.0 - ellipse_radius(crop.x, crop.y, gx, gy, ga, gb, 0.3), 0.0, 0.4)
        soft[crop.rows, crop.cols] -= 18.0 * bubbles * envelope
    for radius, points in pose.colon:
        xs, ys = zip(*points, strict=True)
        crop = grid.crop(min(xs) - radius, min(ys) - radius, max(xs) + radius, max(ys) + radius)
        if crop is None:
            continue
        best = np.full(crop.x.shape, np.inf, dtype=np.float32)
        arc = np.zeros(crop.x.shape, dtype=np.float32)
        start = 0.0
        for p0, p1 in itertools.pairwise(points):
            dist, t = segment_distance(crop.x, crop.y, p0, p1)
            length = math.dist(p0, p1)
            closer = dist < best
            best = np.where(closer, dist, best)
            arc = np.where(closer, start + t * length, arc)
            start += length
        r = radius * (1.0 - 0.22 * np.abs(np.cos(arc * (math.pi / 20.0))) ** 6)
        soft[crop.rows, crop.cols] -= 0.8 * 2.0 * np.sqrt(np.maximum(r * r - best * best, 0.0))


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
    body = (1.0 - w) * trunk + w * thighs
    inside = smoothstep(body, 0.0, 20.0)
    for x0, y0, curve, depth in anatomy.folds:
        # A skin fold: a step in soft-tissue path along a gently curved line, fading out sideways.
        edge = y - (y0 + curve * (x - x0) ** 2)
        body = body + depth * smoothstep(edge, -1.5, 1.5) * smoothstep(90.0 - np.abs(x - x0), 0.0, 40.0) * inside
    if anatomy.pannus is not None:
        y_edge, width, depth = anatomy.pannus
        apron = smoothstep(y_edge - 0.002 * x * x - y, -2.0, 2.0) * smoothstep(y - y_edge + 170.0, 0.0, 60.0)
        body = body + depth * apron * smoothstep(width * hw - np.abs(x), 0.0, 50.0)
    return body.astype(np.float32)


@dataclass(frozen=True)
class _Head:
    """Study geometry of one femoral head (mm, anatomical frame)."""

    x: float
    y: float
    radius: float
    lesion_dir: tuple[float, float]
    flatten: float
    joint_space: float
    box_radius: float  # the whole (cartilaginous) head; ``radius`` is its ossified part
    child: float | None = None


def _head_geometry(
    hip: _Hip, s: int, pose: _Pose, stage: int, lesion: _Lesion | None, structure: float, child: float | None
) -> _Head:
    """Place the head for this study and decide how much of it has collapsed.

    A child's ossified head is the ossification centre, 12-65 % of the cartilaginous head's radius
    with maturity (an infant's is a speck or barely there); the box still covers the whole head.
    """
    angle = math.radians(lesion.angle if lesion else 20.0)
    direction = (s * math.sin(angle), -math.cos(angle))
    flatten = 0.0
    joint = hip.joint_space
    if lesion is not None and stage >= 3:
        flatten = structure * (0.8 if stage == 3 else lesion.collapse)
    if lesion is not None and stage == 4:
        joint *= 0.45
    x = s * hip.head_x * (1.0 + s * 0.3 * pose.yaw)
    ossified = hip.radius if child is None else hip.radius * (0.12 + 0.53 * child)
    return _Head(x, hip.head_y, ossified, direction, flatten, joint, hip.radius, child)


def _draw_spine(grid: Grid, bone: np.ndarray, anatomy: _Anatomy, pose: _Pose) -> None:
    """Add the sacrum (alae, foramina, median crest), coccyx and the lumbar spine L5-L2."""
    t = 1.0 + pose.tilt
    top, bottom = -138.0 * anatomy.inlet * t, -28.0 * anatomy.inlet * t
    for level in range(4):  # L5 up to L2
        _draw_vertebra(grid, bone, anatomy, level, top, t)
    crop = grid.crop(-66.0, top - 10.0, 66.0, bottom + 12.0)
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
    bone[crop.rows, crop.cols] += sacrum


def _draw_vertebra(grid: Grid, bone: np.ndarray, anatomy: _Anatomy, level: int, top: float, t: float) -> None:
    """One lumbar vertebra seen AP (``level`` 0 = L5): a rounded body with endplate rims, the pedicles
    as cortical rings, laminae, the spinous process as a midline teardrop and the transverse processes.
    L5 is foreshortened by the lordosis; the disc spaces are the gaps between the bodies."""
    k = anatomy.inlet
    b = (12.0 if level == 0 else 13.5) * t * k
    yc = top - 22.0 - 38.0 * level * t * k
    a = (27.0 - 1.3 * level) * k
    reach = (17.0, 15.0, 22.0, 19.0)[level] * k
    crop = grid.crop(-a - reach - 6.0, yc - b - 10.0, a + reach + 6.0, yc + b + 12.0)
    if crop is None:
        return
    x, y = crop.x, crop.y
    q = (np.abs(x) / a) ** 4 + (np.abs(y - yc) / b) ** 4
    body = 30.0 * np.maximum(1.0 - q, 0.0) ** 0.3
    rim = 5.0 * band(q**0.25 - 1.0, 0.06)
    parts = 0.35 * body + rim
    for sx in (-1, 1):
        ring = ellipse_radius(x, y, sx * 0.58 * a, yc - 0.3 * b, 0.17 * a, 0.32 * b)
        parts += 4.0 * band(ring - 1.0, 0.2) + 2.0 * smoothstep(1.0 - ring, 0.0, 0.3)
        angle = -sx * (0.25 if level == 0 else 0.08)
        parts += ellipsoid(x, y, sx * (a + 0.4 * reach), yc - 0.15 * b, 0.6 * reach, 4.5 * k, 4.0, angle)
    parts += ellipsoid(x, y, 0.0, yc + 0.25 * b, 0.7 * a, 0.55 * b, 4.0)
    spinous = ellipse_radius(x, y, 0.0, yc + 0.6 * b, 4.5 * k, 0.5 * b)
    parts += 3.0 * band(spinous - 1.0, 0.2) + 3.0 * smoothstep(1.0 - spinous, 0.0, 0.5)
    bone[crop.rows, crop.cols] += parts


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
    if head.child is not None:
        _draw_triradiate(grid, bone, s, head)


def _draw_triradiate(grid: Grid, bone: np.ndarray, s: int, head: _Head) -> None:
    """A child's triradiate cartilage: a lucent band across the acetabulum's medial wall (ilium from
    ischium and pubis), and the ischiopubic synchondrosis in the inferior ramus; both close with age."""
    hx, hy, r = s * head.x, head.y, head.box_radius
    crop = _mirrored_crop(grid, s, hx - r - 30.0, hy - r, hx + 2.0, hy + 90.0)
    if crop is None:
        return
    mx, y = s * crop.x, crop.y
    open_ = 0.9 - 0.5 * (head.child or 0.0)
    width = 1.2 + 1.5 * (1.0 - (head.child or 0.0))
    line = band(y - (hy - 0.5 * r) - 0.15 * (mx - hx), width) * smoothstep(hx - 0.6 * r - mx, 0.0, 4.0)
    ramus = band(mx - (hx - 0.55 * r) - 0.3 * (y - hy - 70.0), width) * band(y - hy - 70.0, 9.0)
    bone[crop.rows, crop.cols] *= 1.0 - open_ * np.maximum(line, ramus)


def _mirrored_crop(grid: Grid, s: int, mx0: float, y0: float, mx1: float, y1: float) -> Crop | None:
    """Crop given in mirrored coordinates (``mx = s * x``)."""
    x_lo, x_hi = sorted((s * mx0, s * mx1))
    return grid.crop(x_lo, y0, x_hi, y1)


def _draw_ilium(grid: Grid, bone: np.ndarray, anatomy: _Anatomy, s: int, pose: _Pose, head: _Head) -> None:
    """Ilium: a fan from the acetabular roof to the crest, thin in the fossa, thick along the sciatic
    buttress; the crest and the arcuate line are cortex seen edge-on."""
    hx, hy, r = s * head.x, head.y, head.box_radius
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
    hx, hy, r = s * head.x, head.y, head.box_radius
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
    if head.child is not None:
        # A young child's acetabular walls are mostly cartilage: no rim ring over the head.
        acetabulum *= _ossified_rim(head.child)
    roof = smoothstep(up, 0.1, 0.45) * smoothstep(0.6 - lat, 0.0, 0.2)
    sclerosis = 1.8 if stage == 4 else 1.0
    acetabulum += 16.0 * sclerosis * band(rad - cavity - 1.5, 1.3 * sclerosis) * roof
    if stage == 4:
        acetabulum += 6.0 * band(rad - cavity - 6.0, 4.0) * roof
    quadrilateral = ellipse_radius(mx, y, hx - r - 6.0, hy + 2.0, 12.0, r + 6.0)
    acetabulum += 6.0 * smoothstep(1.0 - quadrilateral, 0.0, 0.3)
    tear = ellipse_radius(mx, y, hx - r - 9.0, hy + 0.35 * r, 4.5, 10.0)
    teardrop = 7.0 * band(tear - 1.0, 0.2) * smoothstep(y, hy - 2.0, hy + 4.0)
    if head.child is not None:
        teardrop *= _ossified_rim(head.child)  # the teardrop appears in the first years
    acetabulum += teardrop
    bone[crop.rows, crop.cols] += acetabulum


def _ossified_rim(maturity: float) -> float:
    """Share of a child's acetabular walls and teardrop that is bone: 0.15 in an infant, 1 near maturity."""
    return 0.15 + 0.85 * float(smoothstep(np.float32(maturity), 0.2, 0.9))


def _draw_obturator(grid: Grid, bone: np.ndarray, s: int, pose: _Pose, head: _Head) -> None:
    """Obturator ring (superior and inferior rami, ischium) around the foramen, pubic body at the
    symphysis, ischial tuberosity below."""
    hx, hy, r = s * head.x, head.y, head.box_radius
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
    hx, hy, r, big = head.x, head.y, head.radius, head.box_radius
    beta = math.radians(hip.shaft_tilt)
    down = (-s * math.sin(beta), math.cos(beta))
    a = math.radians(hip.neck_shaft) + beta
    neck_dir = (-s * math.sin(a), math.cos(a))  # from the shaft towards the head
    version = pose.version[s]
    neck_len = hip.neck_length * math.cos(math.radians(version))
    jx, jy = hx - neck_len * neck_dir[0], hy - neck_len * neck_dir[1]
    x_lo, x_hi = sorted((hx - s * (big + 6.0), jx + s * (hip.shaft_radius + 34.0)))
    crop = grid.crop(x_lo, hy - big - 6.0, x_hi, 320.0)
    if crop is None:
        return None
    x, y = crop.x, crop.y
    rs, rn = hip.shaft_radius, hip.neck_radius
    cs = hip.shaft_cortex
    shaft_end = (jx + 300.0 * down[0], jy + 300.0 * down[1])
    shaft_top = (jx - 6.0 * down[0], jy - 6.0 * down[1])
    neck_mid = (hx - 0.45 * neck_len * neck_dir[0], hy - 0.45 * neck_len * neck_dir[1])
    gt = (jx + s * 0.55 * rs, jy - 27.0)
    # A young child's greater trochanter is still cartilage: its apophysis ossifies with maturity.
    gt_bone = 1.0 if head.child is None else float(smoothstep(np.float32(head.child), 0.3, 0.8))
    lt_size = float(np.clip(1.0 + (version - 12.0) / 25.0, 0.4, 1.6))
    lt = (jx + 40.0 * down[0] - s * 0.95 * rs, jy + 40.0 * down[1])
    outer = [
        tube(x, y, shaft_top, shaft_end, rs * 1.08, rs * 0.9),
        tube(x, y, (hx, hy), neck_mid, 0.8 * big, rn),
        tube(x, y, neck_mid, (jx, jy), rn, rs * 1.2),
        ellipsoid(x, y, jx + s * 2.0, jy + 10.0, rs * 1.3, 20.0, 18.0, -s * 0.25),
        gt_bone * ellipsoid(x, y, gt[0], gt[1], 14.0, 23.0, 16.0, -s * 0.25),
        ellipsoid(x, y, lt[0], lt[1], 7.0 * lt_size, 10.0, 7.0 * lt_size, s * 0.5),
    ]
    inner = [
        tube(x, y, shaft_top, shaft_end, rs * 1.08 - cs * 0.5, rs * 0.9 - cs),
        tube(x, y, (hx, hy), neck_mid, 0.8 * big - 1.5, rn - 2.0),
        tube(x, y, neck_mid, (jx, jy), rn - 2.0, rs * 1.2 - 2.0),
        ellipsoid(x, y, jx + s * 2.0, jy + 10.0, rs * 1.3 - 1.5, 18.5, 16.5, -s * 0.25),
        gt_bone * ellipsoid(x, y, gt[0], gt[1], 12.5, 21.5, 14.5, -s * 0.25),
        ellipsoid(x, y, lt[0], lt[1], 7.0 * lt_size - 1.2, 8.8, 7.0 * lt_size - 1.2, s * 0.5),
    ]
    dx, dy = x - hx, y - hy
    if head.child is not None:
        # Open physis: the metaphysis stops a cartilage gap short of the head; the capital epiphysis
        # is only its ossification centre, fainter than an adult head.
        toward_head = dx * neck_dir[0] + dy * neck_dir[1]
        gap = 2.0 + 2.5 * (1.0 - head.child)
        physis = smoothstep(-toward_head, 0.65 * big + gap, 0.65 * big + gap + 1.2)
        outer = [part * physis for part in outer]
        inner = [part * physis for part in inner]
    # Head: a ball, cut flat where the necrotic segment has collapsed; a dimple at the fovea.
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


def _head_box(grid: Grid, head: _Head, image_size: tuple[int, int]) -> Box:
    """Square box around a femoral head (half-side 1.3 head radii), end exclusive, clipped to the image."""
    col, row = grid.to_pixel(head.x, head.y)
    half = 1.3 * head.box_radius / float(np.hypot(*grid.matrix[:, 0]))
    rows, cols = image_size
    x0 = min(max(math.floor(col - half), 0), cols - 1)
    y0 = min(max(math.floor(row - half), 0), rows - 1)
    x1 = max(min(math.ceil(col + half) + 1, cols), x0 + 1)
    y1 = max(min(math.ceil(row + half) + 1, rows), y0 + 1)
    return x0, y0, x1, y1


def _draw_implants(grid: Grid, anatomy: _Anatomy, pose: _Pose, heads: dict[int, _Head]) -> np.ndarray:
    """Metal path length (mm) of the patient's implant, fixed in the patient's anatomy.

    Pedicle screws converge from the L5 pedicles and into the S1 alae with a rod on each side; clips are short bars in
    the pelvis away from the heads; an IUD is a T with a copper coil above the symphysis; neck screws
    are two or three parallel cannulated screws along one femoral neck into the head.
    """
    metal = np.zeros(grid.shape, dtype=np.float32)
    kind = anatomy.implant
    if not kind:
        return metal
    rng = np.random.default_rng(anatomy.implant_seed)
    bars: list[tuple[tuple[float, float], tuple[float, float], float]] = []  # (p0, p1, radius)
    if kind == "pedicle screws":
        t, k = 1.0 + pose.tilt, anatomy.inlet
        top = -138.0 * k * t
        heads_xy = []
        for yc in (top + 14.0 * t * k, top - 22.0 * t * k):  # S1 (into the sacral alae) and L5
            a = 27.0 * k
            for sx in (-1, 1):
                tip = (sx * 0.15 * a, yc - 0.1 * 12.0 * k)
                base = (sx * 0.75 * a, yc - 0.35 * 12.0 * k)
                bars.append((base, tip, 3.2))
                heads_xy.append((sx, base))
        for sx in (-1, 1):
            ends = [p for side, p in heads_xy if side == sx]
            lo, hi = min(ends, key=lambda q: q[1]), max(ends, key=lambda q: q[1])
            bars.append(((lo[0] + sx * 4.0, lo[1] - 12.0), (hi[0] + sx * 4.0, hi[1] + 10.0), 2.8))
    elif kind == "clips":
        for _ in range(int(rng.integers(3, 9))):
            for _attempt in range(20):
                cx, cy = _uniform(rng, -110.0, 110.0), _uniform(rng, -170.0, 40.0)
                if all(math.hypot(cx - h.x, cy - h.y) > 1.8 * h.box_radius for h in heads.values()):
                    break
            angle = _uniform(rng, 0.0, math.pi)
            d = (4.5 * math.cos(angle), 4.5 * math.sin(angle))
            bars.append(((cx - d[0], cy - d[1]), (cx + d[0], cy + d[1]), 0.9))
    elif kind == "iud":
        cx, cy = _normal(rng, 0.0, 8.0), _uniform(rng, -80.0, -45.0)
        bars += [((cx - 15.0, cy), (cx + 15.0, cy), 0.9), ((cx, cy), (cx, cy + 32.0), 1.0)]
        bars += [((cx - 1.6, cy + 8.0 + 2.0 * i), (cx + 1.6, cy + 8.0 + 2.0 * i), 0.5) for i in range(9)]
    else:  # neck screw
        s = anatomy.implant_side
        hip, head = anatomy.hips[s], heads[s]
        a = math.radians(hip.neck_shaft + hip.shaft_tilt)
        nd = (-s * math.sin(a), math.cos(a))  # from the shaft towards the head
        normal = (-nd[1], nd[0])
        for offset in (-6.0, 6.0) if rng.random() < 0.5 else (-8.0, 0.0, 8.0):
            tip = (
                head.x + 0.7 * head.box_radius * nd[0] + offset * normal[0],
                head.y + 0.7 * head.box_radius * nd[1] + offset * normal[1],
            )
            length = 0.7 * head.box_radius + hip.neck_length + 12.0  # to the lateral cortex below the trochanter
            tail = (tip[0] - length * nd[0], tip[1] - length * nd[1])
            bars.append((tail, tip, 3.3))
    for p0, p1, radius in bars:
        crop = grid.crop(
            min(p0[0], p1[0]) - radius,
            min(p0[1], p1[1]) - radius,
            max(p0[0], p1[0]) + radius,
            max(p0[1], p1[1]) + radius,
        )
        if crop is not None:
            metal[crop.rows, crop.cols] += tube(crop.x, crop.y, p0, p1, radius, radius)
    return metal


def _expose(
    log_signal: np.ndarray,
    ignore: np.ndarray,
    pose: _Pose,
    film: Realism,
    size: tuple[int, int],
    spacing: float,
    habitus: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Turn line integrals into a processed film in [0, 1], bone bright, at the full ``size``.

    Primary plus scatter (a low-frequency veil, more in thick patients) with the heel effect reach
    the detector, which blurs them and adds quantum noise (more where fewer photons arrive, i.e.
    behind bone), grain-correlated, and a little electronic noise. DR processing then compresses the
    dynamic range and sharpens edges (unsharp masking), and the display window is set from the
    body's percentiles (air and metal left out), as a DR console does. Low-frequency steps run at the
    anatomy resolution.
    """
    inner_spacing = spacing * size[1] / log_signal.shape[1]
    primary = np.exp(-log_signal)
    spr = film.scatter * (0.05 + 0.3 * habitus)
    scatter = spr * _lowpass(primary, 35.0 / inner_spacing)
    clean = -np.log(primary + scatter + np.float32(1e-4))
    low = _lowpass(clean, 25.0 / inner_spacing)
    detail = clean - gaussian_filter(clean, 2.0 / inner_spacing, truncate=2.5)
    drc, usm = 0.5 + 0.5 * (pose.tone_width - 0.85), 0.6 + 0.6 * (pose.gamma - 1.1)
    processed = clean - drc * low + usm * detail
    body = processed[~ignore] if (~ignore).sum() > 100 else processed
    knots = np.percentile(body, _TONE_PERCENTILES)
    knots = np.maximum.accumulate(knots + np.arange(len(knots)) * 1e-4)
    delta = _resize(processed - clean, size)
    intensity = np.exp(-_resize(log_signal, size)) + _resize(scatter, size)
    rows, cols = size
    u = (np.arange(cols, dtype=np.float32)[None, :] / cols - 0.5) * math.cos(pose.heel_angle)
    v = (np.arange(rows, dtype=np.float32)[:, None] / rows - 0.5) * math.sin(pose.heel_angle)
    intensity *= np.exp(np.float32(pose.heel) * (u + v))
    sigma = pose.blur_mm / spacing
    if sigma > 0.3:
        intensity = gaussian_filter(intensity, sigma, truncate=2.5)
    # Automatic exposure control: the dose is set so that the detector behind the patient gets the
    # same signal whatever the habitus, so quanta are counted relative to the median intensity.
    reference = float(np.median(primary + scatter))
    quanta = pose.photons * 1.42 * spacing * spacing / reference
    grain = 0.5 + 0.7 * (pose.blur_mm - 0.15) / 0.35
    noise = np.sqrt(np.maximum(intensity, 0.0) / quanta) * correlated_noise(rng, size, grain)
    noise += np.float32(0.01 * reference) * rng.standard_normal(size, dtype=np.float32)  # electronic
    intensity += np.float32(film.noise) * noise
    signal = -np.log(np.maximum(intensity, 1e-4)) + delta
    # Display curve: between a linear window and histogram equalisation of the film's percentiles;
    # air beside the body goes black, metal (beyond the top knot) saturates to white.
    lo, hi = knots[0], knots[-1]
    linear = (knots - lo) / max(hi - lo, 1e-3)
    equalised = np.asarray(_TONE_PERCENTILES) / 100.0
    mix = float(np.clip(0.2 + pose.tone_mid * 5.0, 0.0, 0.6))
    targets = 0.04 + 0.88 * (mix * equalised + (1.0 - mix) * linear)
    xs = np.append(knots, hi + 0.6 * (hi - lo))
    shaped = np.interp(signal, xs, np.append(targets, 1.0)).astype(np.float32)
    return np.clip(shaped, 0.0, 1.0) ** np.float32(pose.gamma)


def _film_effects(pixels: np.ndarray, film: Realism, rng: np.random.Generator, heads: list[Box]) -> tuple[str, str]:
    """Collimate, burn in text and a side marker (in place); return the marker letter and its box.

    Shutters keep both head boxes exposed. A marker names the patient's side it sits on ("R" on the
    image's left half, as the patient's right hip is) in a top or bottom corner, away from the heads.
    """
    rows, cols = pixels.shape
    draws = rng.random(5)
    keep = [(x0 - 4, y0 - 4, x1 + 4, y1 + 4) for x0, y0, x1, y1 in heads]
    field = np.ones(pixels.shape, dtype=np.float32)
    if draws[0] < film.collimation:
        field = collimation_field(rng, pixels.shape, keep, film.collimation_inset, film.collimation_angle)
        shutter = float(rng.choice([0.0, 0.93, 1.0], p=[0.35, 0.25, 0.4]))
        pixels *= field
        pixels += shutter * (1.0 - field)
    taken = [(x0 - 8, y0 - 8, x1 + 8, y1 + 8) for x0, y0, x1, y1 in heads]
    if draws[1] < film.text:
        size = max(8, int(rows * rng.uniform(0.018, 0.03)))
        lines = [
            str(rng.choice(_INSTITUTIONS)),
            f"{int(rng.integers(2012, 2026))}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}"
            f" {int(rng.integers(7, 20)):02d}:{int(rng.integers(0, 60)):02d}",
            str(rng.choice(["AP PELVIS", "PELVIS AP", "HIPS AP SUPINE", "BECKEN AP"])),
            f"{int(rng.integers(65, 86))} kV  {int(rng.integers(8, 40))} mAs",
        ][: int(rng.integers(1, 5))]
        corner = int(rng.integers(0, 4))
        level = float(rng.choice([1.0, 0.85]))
        y = int(0.02 * rows) if corner < 2 else rows - int(0.02 * rows) - len(lines) * int(1.25 * size)
        for line in lines:
            w, _ = text_size(line, size)
            x = int(0.02 * cols) if corner % 2 == 0 else cols - int(0.02 * cols) - w
            layer, box = text_layer(pixels.shape, line, size, (x, y), mirror=False)
            if not any(overlaps(box, other) for other in taken[:2]):
                np.maximum(pixels, layer * np.float32(level), out=pixels)
                taken.append(box)
            y += int(1.25 * size)
    marker, marker_box = "", ""
    if draws[2] < film.marker:
        letter = "R" if draws[3] < 0.5 else "L"
        size = max(10, int(rows * rng.uniform(0.05, 0.1)))
        w, h = text_size(letter, size)
        mirror = bool(draws[4] < film.marker_mirrored)
        for _ in range(30):
            # The patient's right is on the image's left half.
            fx = rng.uniform(0.02, 0.3) if letter == "R" else rng.uniform(0.7, 0.98)
            fy = rng.uniform(0.02, 0.2) if rng.random() < 0.6 else rng.uniform(0.78, 0.97)
            x, y = int(fx * cols - w / 2), int(fy * rows - h / 2)
            box = (x, y, x + w, y + h)
            inside = x >= 0 and x + w <= cols and y >= 0 and y + h <= rows
            if inside and field[y : y + h, x : x + w].min() > 0.9 and not any(overlaps(box, t) for t in taken):
                layer, box = text_layer(pixels.shape, letter, size, (x, y), mirror)
                np.maximum(pixels, layer * np.float32(rng.uniform(0.9, 1.0)), out=pixels)
                marker, marker_box = letter, " ".join(str(b) for b in box)
                break
    return marker, marker_box


def _write_case(
    out: Path,
    case_id: str,
    patient_id: str,
    study: int,
    seed: int,
    fmt: str,
    film: _Film,
    stages: dict[str, int],
    subtlety: float,
    anatomy: _Anatomy,
) -> dict[str, str]:
    """Write one study's image and masks; return its manifest row.

    PNG is 16-bit MONOCHROME2-like (bone bright), JPEG 8-bit at quality 90, DICOM stores
    ``film.bits`` bits, inverted when MONOCHROME1.
    """
    v = film.black + film.pixels * (film.white - film.black)
    photometric = "MONOCHROME2"
    if fmt == "png":
        image = f"images/{case_id}.png"
        write_png16(out / image, np.round(v * 65535.0).astype(np.uint16))
    elif fmt == "jpeg":
        image = f"images/{case_id}.jpg"
        Image.fromarray(np.round(v * 255.0).astype(np.uint8)).save(out / image, quality=90)
    else:
        image = f"images/{case_id}.dcm"
        photometric = film.photometric
        top = float(2**film.bits - 1)
        stored = np.round((1.0 - v if photometric == "MONOCHROME1" else v) * top).astype(np.uint16)
        _write_dicom(out / image, stored, film, patient_id, case_id, study, seed)
    mask_paths = {}
    for side in ("left", "right"):
        mask = film.masks[side]
        if mask is None:
            mask_paths[side] = ""
            continue
        mask_paths[side] = f"masks/{case_id}_{side}.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / mask_paths[side], compress_level=1)
    affected = [side for side in ("left", "right") if stages[side] > 0]
    side = "both" if len(affected) == 2 else (affected[0] if affected else "none")
    stage = max(stages.values())
    implant = anatomy.implant
    if implant == "neck screw":
        implant = f"neck screw {'left' if anatomy.implant_side == 1 else 'right'}"
    return {
        "case_id": case_id,
        "patient_id": patient_id,
        "image": image,
        "label": str(int(stage > 0)),
        "side": side,
        "stage": str(stage),
        "box_left": " ".join(str(b) for b in film.boxes["left"]),
        "box_right": " ".join(str(b) for b in film.boxes["right"]),
        "mask_left": mask_paths["left"],
        "mask_right": mask_paths["right"],
        "subtlety": f"{subtlety:g}",
        "child": str(int(anatomy.child is not None)),
        "pixel_spacing": f"{film.spacing:.5f}",
        "photometric": photometric,
        "marker": film.marker,
        "marker_box": film.marker_box,
        "implant": implant,
    }


def _write_dicom(
    path: Path, pixels: np.ndarray, film: _Film, patient_id: str, case_id: str, study: int, seed: int
) -> None:
    """Write a DX 'for presentation' DICOM file with deterministic UIDs and dates."""
    lo, hi = float(pixels.min()), float(pixels.max())
    spacing = film.spacing
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
            "PhotometricInterpretation": film.photometric,
            "BitsStored": film.bits,
            "HighBit": film.bits - 1,
            "PixelSpacing": [f"{spacing:.6f}", f"{spacing:.6f}"],
            "ImagerPixelSpacing": [f"{spacing:.6f}", f"{spacing:.6f}"],
            "RescaleIntercept": 0,
            "RescaleSlope": 1,
            "RescaleType": "US",
            "WindowCenter": f"{(lo + hi) / 2:.1f}",
            "WindowWidth": f"{max(hi - lo, 1.0):.1f}",
        },
    )
