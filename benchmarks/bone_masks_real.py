"""Check SRANet's coarse bone mask (:func:`osteoscope.tasks.avnfh_ct.masks.bone_mask`) on the real CTs and on
the avnfh-ct phantom.

* ``example_ct.nii.gz`` (pelvis, 3 mm, a metal screw in the patient's left femoral neck): the femoral heads
  are found with :func:`~osteoscope.tasks.avnfh_ct.heads.find_heads`; reported per head is the share of the
  ball of the found radius at its centre that the mask covers, on the whole volume and on the head's own box
  (the crop SRANet's masks are made on).
* ``dicom_series`` (upper abdomen, 20 native slices, no hips): the mask's volume and the share of dense bone
  it covers.
* For both: the metal voxels (>= ``metal_hu``) and how many of them the mask holds (should be none), and the
  share of dense bone (700 HU up to metal, further than 6 mm from metal) it covers.
* The phantom (``--n`` cases, seed 0): Dice of the mask with the phantom's own ``mask`` column (the true
  bone dilated by one voxel).

Prints one JSON object and writes overlay PNGs (axial and coronal through each head, mask in green, metal in
red) to ``--out``.

Run: ``python -m benchmarks.bone_masks_real [--n 6] [--out /tmp/masks-check]`` (about 30 s)
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from osteoscope.data.readers import read_image
from osteoscope.phantoms.avnfh_ct import generate
from osteoscope.tasks.avnfh_ct.heads import find_heads
from osteoscope.tasks.avnfh_ct.masks import BoneMaskParams, bone_mask, bone_threshold

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pelvis-ct"
DENSE_HU = 700.0
METAL_CLEARANCE_MM = 6.0


def _ball(shape: tuple[int, ...], centre: tuple[float, ...], spacing: tuple[float, ...], radius: float) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing, strict=True)) <= radius**2


def _volume_figures(volume: np.ndarray, spacing: tuple[float, ...], mask: np.ndarray, params: BoneMaskParams) -> dict:
    """Threshold, mask volume, metal and dense-bone coverage of one volume."""
    metal = volume >= params.metal_hu
    far = ndimage.distance_transform_edt(~metal, sampling=spacing) > METAL_CLEARANCE_MM if metal.any() else True
    dense = (volume >= DENSE_HU) & ~metal & far
    return {
        "shape": list(volume.shape),
        "threshold_hu": bone_threshold(volume, params),
        "mask_ml": round(float(mask.sum() * np.prod(spacing) / 1000), 1),
        "metal_voxels": int(metal.sum()),
        "metal_in_mask": int((mask & metal).sum()),
        "dense_bone_covered": round(float(mask[dense].mean()), 4),
    }


def _overlay(path: Path, volume: np.ndarray, spacing: tuple[float, ...], mask: np.ndarray, centres: dict) -> None:
    """Axial and coronal slices through each centre with the mask (green) and metal (red) outlined."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metal = volume >= BoneMaskParams().metal_hu
    fig = Figure(figsize=(10, 5 * len(centres)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(centres), 2, squeeze=False)
    for row, (label, centre) in zip(axes, centres.items(), strict=True):
        z, y = round(centre[0]), round(centre[1])
        views = [("axial", volume[z], mask[z], metal[z], spacing[1] / spacing[2], "upper", z)]
        views.append(("coronal", volume[:, y], mask[:, y], metal[:, y], spacing[0] / spacing[2], "lower", y))
        for ax, (name, image, inside, implant, aspect, origin, index) in zip(row, views, strict=True):
            ax.imshow(np.clip(image, -200, 1500), cmap="gray", aspect=aspect, origin=origin)
            ax.contour(inside, levels=[0.5], colors="lime", linewidths=0.7)
            if implant.any():
                ax.contour(implant, levels=[0.5], colors="red", linewidths=0.7)
            ax.set_title(f"{path.stem} {name} {index} ({label})", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def real_ct(out: Path, params: BoneMaskParams) -> dict:
    """Figures of the pelvis CT (with its heads) and the abdominal DICOM series."""
    results = {}
    image = read_image(DATA / "example_ct.nii.gz")
    start = time.perf_counter()
    mask = bone_mask(image.array, image.spacing, params).astype(bool)
    figures = {
        "seconds": round(time.perf_counter() - start, 2),
        **_volume_figures(image.array, image.spacing, mask, params),
    }
    centres = {}
    for head in find_heads(image.array, image.spacing):
        ball = _ball(image.array.shape, head.centre, image.spacing, head.radius_mm)
        x0, y0, z0, x1, y1, z1 = head.box
        crop = bone_mask(image.array[z0:z1, y0:y1, x0:x1], image.spacing, params).astype(bool)
        figures[f"head_{head.side}"] = {
            "centre": [round(c, 1) for c in head.centre],
            "radius_mm": round(head.radius_mm, 1),
            "metal_near": head.metal,
            "covered": round(float(mask[ball].mean()), 4),
            "covered_on_box_crop": round(float(crop[ball[z0:z1, y0:y1, x0:x1]].mean()), 4),
        }
        centres[f"{head.side} head"] = head.centre
    results["example_ct"] = figures
    _overlay(out / "example_ct.png", image.array, image.spacing, mask, centres)
    series = read_image(DATA / "dicom_series")
    start = time.perf_counter()
    mask = bone_mask(series.array, series.spacing, params).astype(bool)
    figures = {"seconds": round(time.perf_counter() - start, 2)}
    results["dicom_series"] = {**figures, **_volume_figures(series.array, series.spacing, mask, params)}
    middle = tuple(n / 2 for n in series.array.shape)
    _overlay(out / "dicom_series.png", series.array, series.spacing, mask, {"middle": middle})
    return results


def phantom_dice(n: int, out: Path, params: BoneMaskParams) -> dict:
    """Dice of the mask with the phantom's true coarse mask over ``n`` cases."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        generate(folder, n, seed=0)
        dice = {}
        with (folder / "manifest.csv").open(newline="") as handle:
            for i, row in enumerate(csv.DictReader(handle)):
                image = read_image(folder / row["image"])
                true = read_image(folder / row["mask"]).array > 0
                mask = bone_mask(image.array, image.spacing, params).astype(bool)
                dice[row["case_id"]] = round(float(2 * (mask & true).sum() / (mask.sum() + true.sum())), 4)
                if i == 0:
                    x0, y0, z0, x1, y1, z1 = (int(v) for v in row["box"].split())
                    centre = {"head": ((z0 + z1) / 2, (y0 + y1) / 2, (x0 + x1) / 2)}
                    _overlay(out / f"phantom_{row['case_id']}.png", image.array, image.spacing, mask, centre)
    values = list(dice.values())
    return {"dice": dice, "mean": round(float(np.mean(values)), 4), "min": min(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=6, help="phantom cases")
    parser.add_argument("--out", type=Path, default=Path("/tmp/masks-check"), help="folder for the overlay PNGs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    params = BoneMaskParams()
    results = {
        "params": params.__dict__,
        **real_ct(args.out, params),
        "phantom": phantom_dice(args.n, args.out, params),
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
