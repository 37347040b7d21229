"""Train the femoral-head localiser on phantoms and measure it on 10 real paediatric radiographs.

Generates ONFH radiograph phantoms in a temporary folder (or takes a trained localiser with ``--model``),
trains :func:`fit_localizer` on them, checks it on held-out phantoms (:func:`evaluate_localizer`), then
compares its head centres on the DDH pelvis radiographs (``shared/data/ddh-pelvis-xray``) with the
``fem_l`` / ``fem_r`` landmark points there.

The landmark files: the points were made by a model (Retuve), not by hand, and their left/right naming is
inconsistent (``fem_l`` is on the image's right in some files and on its left in others). So they are
assigned **by anatomy**: on an AP film the patient's right hip is on the image's left, so the landmark with
the smaller x is taken as the patient's right head and the other as the left, whatever its name. The target
(issue 10): on at least 9 of the 10 films both predicted centres lie within 25 % of the inter-head distance
(the distance between the two landmarks) of their landmark. The predicted side is checked too: these films
carry no side tags and the localiser reads no marker on them, so the side comes from the AP display
convention, which is right for them.

Prints one JSON object (per-film rows, the number of films meeting the target, mean localisation time) and
writes an overlay PNG into the output folder.

Run: ``python -m benchmarks.localizer_real [--n 600] [--epochs 14] [--children 0.4] [--model FILE] [--out DIR]``
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from osteoscope.data.readers import read_image
from osteoscope.errors import DataError
from osteoscope.phantoms.onfh_xray import generate
from osteoscope.tasks.onfh_xray.localizer import (
    Box,
    HeadLocalizer,
    evaluate_localizer,
    find_heads,
    fit_localizer,
    load_localizer,
    save_localizer,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ddh-pelvis-xray"
TOLERANCE = 0.25


def _box(cell: str) -> Box:
    x0, y0, x1, y1 = (int(v) for v in cell.split())
    return (x0, y0, x1, y1)


def phantom_samples(folder: Path) -> Iterator[tuple[np.ndarray, Box, Box]]:
    """Yield (image, box_left, box_right) from a generated phantom folder, one image at a time."""
    with (folder / "manifest.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            image = read_image(folder / row["image"]).array
            yield image, _box(row["box_left"]), _box(row["box_right"])


def real_cases() -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, grey image, patient-right landmark, patient-left landmark) for each DDH radiograph, the two
    ``fem_*`` points assigned by anatomy (smaller x = patient right on an AP film), not by their names."""
    cases = []
    for dcm in sorted((DATA / "dicom").glob("*.dcm")):
        points = json.loads((DATA / "landmarks" / f"{dcm.stem}.json").read_text())["landmark_list"][0]
        a, b = np.asarray(points["fem_l"], float), np.asarray(points["fem_r"], float)
        right, left = (a, b) if a[0] < b[0] else (b, a)
        cases.append((dcm.stem, read_image(dcm).array, right, left))
    return cases


def _centre(box: Box) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def evaluate_real(model: HeadLocalizer, overlay: Path | None) -> dict[str, object]:
    """Per film: distances of the predicted from the landmark centres as a share of the inter-head distance."""
    rows, times, drawn = [], [], []
    for name, image, right, left in real_cases():
        span = float(np.linalg.norm(left - right))
        start = time.perf_counter()
        try:
            heads = find_heads(model, image)
        except DataError as error:
            times.append(time.perf_counter() - start)
            rows.append({"image": name, "refused": error.reason, "meets_target": False})
            drawn.append((name, image, None, right, left))
            continue
        times.append(time.perf_counter() - start)
        frac = [float(np.linalg.norm(_centre(heads.right) - right)) / span,
                float(np.linalg.norm(_centre(heads.left) - left)) / span]  # fmt: skip
        pairs = ((heads.right, right), (heads.left, left))
        inside = [bool(b[0] <= p[0] < b[2] and b[1] <= p[1] < b[3]) for b, p in pairs]
        rows.append(
            {
                "image": name,
                "inter_head_px": round(span, 1),
                "error_frac_right_left": [round(f, 3) for f in frac],
                "landmarks_inside_boxes": inside,
                "radius_px": [round(h.radius, 1) for h in heads.found],
                "confidence": round(heads.confidence, 3),
                "side_source": heads.side_source,
                "meets_target": max(frac) <= TOLERANCE,
            }
        )
        drawn.append((name, image, heads, right, left))
    if overlay is not None:
        _draw(drawn, overlay)
    fracs = [f for r in rows for f in r.get("error_frac_right_left", [])]
    return {
        "films": len(rows),
        "meet_target": sum(r["meets_target"] for r in rows),
        "refused": sum("refused" in r for r in rows),
        "median_error_frac": float(np.median(fracs)) if fracs else None,
        "max_error_frac": float(np.max(fracs)) if fracs else None,
        "mean_find_heads_ms": round(1000 * float(np.mean(times[1:] if len(times) > 1 else times)), 1),
        "per_film": rows,
    }


def _draw(cases: list, path: Path) -> None:
    """A grid of the radiographs with predicted boxes (red: patient left, cyan: right) and landmarks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    cols = (len(cases) + 1) // 2
    fig, axes = plt.subplots(2, cols, figsize=(4 * cols, 8.4))
    for ax, (name, image, heads, right, left) in zip(axes.flat, cases, strict=False):
        ax.imshow(image, cmap="gray")
        if heads is not None:
            for box, colour in ((heads.left, "red"), (heads.right, "cyan")):
                x0, y0, x1, y1 = box
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=colour, lw=1.5))
        ax.plot(*right, "s", color="lime", ms=5)
        ax.plot(*left, "o", color="yellow", ms=5)
        ax.set_title(name if heads is not None else f"{name}: refused", fontsize=9)
        ax.axis("off")
    fig.suptitle("boxes: red = patient left, cyan = right; landmarks: green = right, yellow = left (by anatomy)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def train_on_phantoms(
    n: int, epochs: int, seed: int, image_size: tuple[int, int], child_fraction: float
) -> tuple[HeadLocalizer, dict]:
    """Generate ``n`` training and 40 held-out phantoms, train, and score on the held-out ones."""
    with tempfile.TemporaryDirectory() as tmp:
        train_dir, test_dir = Path(tmp) / "train", Path(tmp) / "test"
        start = time.perf_counter()
        generate(train_dir, n, seed, image_size=image_size, child_fraction=child_fraction)
        generate(test_dir, 40, seed + 1000, image_size=image_size, child_fraction=child_fraction)
        gen_s = time.perf_counter() - start
        losses: list[float] = []
        start = time.perf_counter()
        model = fit_localizer(
            phantom_samples(train_dir), epochs=epochs, seed=seed, progress=lambda e, n, loss, s: losses.append(loss)
        )
        train_s = time.perf_counter() - start
        held = list(phantom_samples(test_dir))
        model.held_out = evaluate_localizer(model, held)
    info = {
        "phantoms_train": n,
        "image_size": list(image_size),
        "child_fraction": child_fraction,
        "epochs": epochs,
        "generate_s": round(gen_s, 1),
        "train_s": round(train_s, 1),
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
        "phantom_held_out": model.held_out,
    }
    return model, info


def main() -> None:
    """Train (or load), evaluate on phantoms and the real DDH radiographs, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600, help="phantom studies to train on")
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, nargs=2, default=(448, 512), help="phantom rows cols")
    parser.add_argument("--children", type=float, default=0.4, help="share of child patients in the phantom")
    parser.add_argument("--model", type=Path, default=None, help="evaluate this saved localiser, no training")
    parser.add_argument("--save", type=Path, default=None, help="save the trained localiser here")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/localizer_real"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not (DATA / "dicom").is_dir():
        raise SystemExit(f"real data not found at {DATA}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.model is not None:
        model, result = load_localizer(args.model), {"model": str(args.model), "phantom_held_out": None}
        result["phantom_held_out"] = model.held_out
    else:
        model, result = train_on_phantoms(args.n, args.epochs, args.seed, tuple(args.size), args.children)
        if args.save is not None:
            save_localizer(model, args.save)
    result["real_ddh"] = evaluate_real(model, args.out / "ddh_overlay.png")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
