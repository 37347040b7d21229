"""Compare the Hounsfield units of the avnfh-ct phantom with real CT: tissue medians, spreads and noise.

Real references (``../shared/data/pelvis-ct``, beside the checkout):

* ``example_ct.nii.gz``: abdomen-pelvis CT at 3 mm with a hip implant. Measured in a 75 mm cube around
  the femoral head without the implant (found by viewing the slices; the metal lies in the other hip),
  metal (> 2000 HU) excluded. Reference for fat, muscle and bone values near the hip. Its muscle noise
  (about 14 HU) is that of a native thick-slice scan, so its 3 mm voxels were probably interpolated from the
  original, not averaged; the original slice thickness is unknown.
* ``dicom_series/``: 20 native slices (0.98 x 0.98 mm, 2 mm thick, Siemens, 120 kV, Br38f) of the upper
  abdomen with both humeri. The only real volume near the phantom's resolution: reference for noise and for
  cortical bone without heavy partial-volume averaging.

Phantom volumes (healthy and stage I crops, which have no CT change) are measured at their own voxel
size and after averaging down to each reference's voxel size, so that like is compared with like.

Tissue classes are HU windows used in body-composition CT: fat -190..-30 and skeletal muscle -29..150
(Mitsiopoulos et al. 1998); cancellous bone 150..600 (above the muscle window, below dense cortex);
cortical bone 700..2000 (2000 excludes metal). ``head core`` is the ball of radius 12 mm at the femoral
head centre, purely cancellous in a healthy head. ``noise`` is the median local SD in in-plane windows of
about 5 mm (at least 3 x 3 voxels) lying wholly inside the muscle window, so tissue edges do not count; in
the small real cube few such windows exist, so it is also given over the implant-free half of the slices.

Run: ``.venv/bin/python benchmarks/ct_realism.py [--n 24] [--seed 0]`` (about 30 s)
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import numpy as np
from scipy.ndimage import binary_erosion, uniform_filter, zoom

from osteoscope.data.readers import read_image
from osteoscope.phantoms.avnfh_ct import generate

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pelvis-ct"
REAL_CT = DATA / "example_ct.nii.gz"
REAL_SERIES = DATA / "dicom_series"
REAL_HEAD = (13, 58, 35)  # (z, y, x) voxel of the implant-free femoral head centre in example_ct.nii.gz
CUBE_MM = 75.0
HEAD_CORE_MM = 12.0
METAL_HU = 2000.0
WINDOWS: dict[str, tuple[float, float]] = {
    "fat": (-190.0, -30.0),
    "muscle": (-29.0, 150.0),
    "cancellous": (150.0, 600.0),
    "cortical": (700.0, METAL_HU),
}
Volume = tuple[np.ndarray, tuple[float, ...]]


def tissue_stats(volume: np.ndarray) -> dict[str, tuple[float, float, float]]:
    """(25th percentile, median, 75th percentile) of the HU in each tissue window; NaN when empty."""
    stats = {}
    for name, (lo, hi) in WINDOWS.items():
        values = volume[(volume >= lo) & (volume <= hi)]
        q1, median, q3 = np.percentile(values, [25, 50, 75]) if values.size else (np.nan,) * 3
        stats[name] = (float(q1), float(median), float(q3))
    return stats


def head_core(volume: np.ndarray, spacing: tuple[float, ...], centre: tuple[float, ...]) -> float:
    """Median HU in the ball of radius ``HEAD_CORE_MM`` around ``centre`` (voxel coordinates z, y, x)."""
    grids = np.ogrid[tuple(slice(0, n) for n in volume.shape)]
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing, strict=True))
    return float(np.median(volume[d2 <= HEAD_CORE_MM**2]))


def muscle_noise(volume: np.ndarray, spacing: tuple[float, ...], window_mm: float = 5.0) -> float:
    """Median SD of HU in in-plane windows of about ``window_mm`` that lie wholly inside the muscle window."""
    k = max(3, round(window_mm / spacing[1]) | 1)
    lo, hi = WINDOWS["muscle"]
    core = binary_erosion((volume >= lo) & (volume <= hi), np.ones((1, k, k), bool))
    a = volume.astype(np.float64)
    mean = uniform_filter(a, (1, k, k))
    var = (uniform_filter(a * a, (1, k, k)) - mean * mean) * (k * k / (k * k - 1))
    return float(np.median(np.sqrt(np.maximum(var[core], 0.0)))) if core.any() else float("nan")


def average_to(volume: np.ndarray, spacing: tuple[float, ...], target: tuple[float, ...]) -> np.ndarray:
    """Average a volume down to voxels of ``target`` mm (box filter, then linear interpolation)."""
    size = [max(1, round(t / s)) for s, t in zip(spacing, target, strict=True)]
    return zoom(uniform_filter(volume, size), [s / t for s, t in zip(spacing, target, strict=True)], order=1)


def real_hip(*, half_slab: bool = False) -> Volume:
    """The ``CUBE_MM`` cube around the implant-free femoral head of the real CT (metal set to -5000, outside
    every window), or with ``half_slab`` the implant-free half of the same slices, for a steadier noise figure."""
    image = read_image(REAL_CT)
    half = [round(CUBE_MM / s / 2) for s in image.spacing]
    box = [slice(c - h, c + h + 1) for c, h in zip(REAL_HEAD, half, strict=True)]
    if half_slab:
        box[1:] = [slice(None), slice(0, image.array.shape[2] // 2)]  # low x is the patient's right
    cube = image.array[tuple(box)]
    return np.where(cube > METAL_HU, -5000.0, cube).astype(np.float32), image.spacing


def phantom_cases(folder: Path, n: int, seed: int) -> list[tuple[np.ndarray, tuple[float, ...], tuple[float, ...]]]:
    """(volume, spacing, head centre voxel) of the cases without CT change among ``n`` generated crops."""
    manifest = generate(folder, n, seed=seed)
    cases = []
    with manifest.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if int(row["stage"]) > 1:
                continue
            image = read_image(folder / row["image"])
            x0, y0, z0, x1, y1, z1 = (int(v) for v in row["box"].split())
            cases.append((image.array, image.spacing, ((z0 + z1 - 1) / 2, (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2)))
    return cases


def _case_stats(volume: np.ndarray, spacing: tuple[float, ...]) -> dict[str, tuple[float, float, float]]:
    """Tissue quartiles plus the noise (as a degenerate quartile triple) of one volume."""
    noise = muscle_noise(volume, spacing)
    return {**tissue_stats(volume), "noise": (noise, noise, noise)}


Row = tuple[str, dict[str, tuple[float, float, float]]]


def measure(n: int, seed: int) -> list[Row]:
    """Rows of the table: (Q1, median, Q3) per statistic; a phantom row holds the medians over its cases,
    followed by a row with the lowest and highest case median (NaN in the middle).

    The series row keeps only cortex and noise: its soft tissue is liver and bowel, not hip muscle.
    """
    hip, hip_spacing = real_hip()
    series = read_image(REAL_SERIES)
    core = head_core(hip, hip_spacing, tuple((k - 1) / 2 for k in hip.shape))
    series_stats = _case_stats(series.array, series.spacing)
    table: list[Row] = [
        ("real hip 3 mm", {**_case_stats(hip, hip_spacing), "head core": (core,) * 3}),
        ("  implant-free half slab", {"noise": _case_stats(*real_hip(half_slab=True))["noise"]}),
        ("real series ~1 mm", {k: series_stats[k] for k in ("cortical", "noise")}),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        cases = phantom_cases(Path(tmp), n, seed)
    views = {"phantom at 3 mm": hip_spacing, "phantom at series grid": series.spacing, "phantom native": None}
    for view, target in views.items():
        rows = []
        for volume, spacing, centre in cases:
            a, s = (volume, spacing) if target is None else (average_to(volume, spacing, target), target)
            core = head_core(a, s, tuple(float(v) for v in np.multiply(centre, spacing) / s))
            rows.append({**_case_stats(a, s), "head core": (core,) * 3})
        keys = list(rows[0])
        table.append((view, {k: tuple(float(np.nanmedian([r[k][i] for r in rows])) for i in range(3)) for k in keys}))
        medians = {k: [r[k][1] for r in rows] for k in keys}
        spread = {k: (float(np.nanmin(m)), np.nan, float(np.nanmax(m))) for k, m in medians.items()}
        table.append((f"  {len(rows)} cases' medians", spread))
    return table


def main() -> None:
    """Print the real-vs-phantom table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24, help="phantom cases to generate (about half are healthy)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not REAL_CT.exists() or not REAL_SERIES.exists():
        raise SystemExit(f"real CT data not found under {DATA}")
    table = measure(args.n, args.seed)
    columns = [*WINDOWS, "head core", "noise"]
    print("cells: median [Q1, Q3] HU; phantom rows: medians over the cases of each case's median and quartiles")
    print(f"{'':32s}" + "".join(f"{c:>19s}" for c in columns))
    for source, stats in table:
        cells = []
        for c in columns:
            lo, mid, hi = stats.get(c, (np.nan,) * 3)
            if np.isnan(lo):
                cells.append("")
            elif np.isnan(mid):
                cells.append(f"{lo:.0f}..{hi:.0f}")
            else:
                cells.append(f"{mid:.0f}" if lo == hi else f"{mid:.0f} [{lo:.0f}, {hi:.0f}]")
        print(f"{source:32s}" + "".join(f"{cell:>19s}" for cell in cells))


if __name__ == "__main__":
    main()
