"""Train the femoral-head localiser on phantoms and measure it on 10 real paediatric radiographs.

Generates ONFH radiograph phantoms in a temporary folder, trains :func:`fit_localizer` on them,
checks it on held-out phantoms, then compares its head centres on the DDH pelvis radiographs
(``shared/data/ddh-pelvis-xray``) with the ``fem_l`` / ``fem_r`` landmark points there. Those
points were made by a model, not by hand, and their left/right naming is inconsistent between
files, so distances are given both with the stored naming and with the best assignment of the
two predicted centres to the two points. Prints one JSON object; draws an overlay PNG.

Run: ``.venv/bin/python benchmarks/localizer_real.py [--n 300] [--epochs 30]``
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

from osteoscope.data.readers import read_image
from osteoscope.phantoms.onfh_xray import generate
from osteoscope.tasks.onfh_xray.localizer import Box, HeadLocalizer, fit_localizer, locate_heads

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ddh-pelvis-xray"


def _box(cell: str) -> Box:
    x0, y0, x1, y1 = (int(v) for v in cell.split())
    return (x0, y0, x1, y1)


def _centre(box: Box) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def _phantom_samples(folder: Path) -> Iterator[tuple[np.ndarray, Box, Box]]:
    """Yield (image, box_left, box_right) from a generated phantom folder, one image at a time."""
    with (folder / "manifest.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            image = read_image(folder / row["image"]).array
            yield image, _box(row["box_left"]), _box(row["box_right"])


def _phantom_errors(model: HeadLocalizer, folder: Path) -> dict[str, float]:
    """Centre error (pixels and fraction of box width) and box-width ratio on held-out phantoms."""
    errs, rel, ratio = [], [], []
    for image, left, right in _phantom_samples(folder):
        pred = locate_heads(model, image)
        for side, truth in (("left", left), ("right", right)):
            e = float(np.linalg.norm(_centre(pred[side]) - _centre(truth)))
            errs.append(e)
            rel.append(e / (truth[2] - truth[0]))
            ratio.append((pred[side][2] - pred[side][0]) / (truth[2] - truth[0]))
    return {
        "mean_centre_error_px": float(np.mean(errs)),
        "max_centre_error_px": float(np.max(errs)),
        "mean_error_over_box_width": float(np.mean(rel)),
        "median_box_width_ratio": float(np.median(ratio)),
    }


def _real_cases() -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, grey image, fem_l point, fem_r point) for each DDH radiograph."""
    cases = []
    for dcm in sorted((DATA / "dicom").glob("*.dcm")):
        landmarks = json.loads((DATA / "landmarks" / f"{dcm.stem}.json").read_text())["landmark_list"][0]
        image = read_image(dcm).array
        cases.append((dcm.stem, image, np.asarray(landmarks["fem_l"], float), np.asarray(landmarks["fem_r"], float)))
    return cases


def _evaluate_real(model: HeadLocalizer, overlay: Path | None) -> dict[str, object]:
    """Distances between predicted centres and landmark points on the real radiographs."""
    rows, times, drawn = [], [], []
    for name, image, fem_l, fem_r in _real_cases():
        start = time.perf_counter()
        pred = locate_heads(model, image)
        times.append(time.perf_counter() - start)
        p_left, p_right = _centre(pred["left"]), _centre(pred["right"])
        as_named = [np.linalg.norm(p_left - fem_l), np.linalg.norm(p_right - fem_r)]
        swapped = [np.linalg.norm(p_left - fem_r), np.linalg.norm(p_right - fem_l)]
        best = min(as_named, swapped, key=sum)
        span = float(np.linalg.norm(fem_l - fem_r))
        rows.append(
            {
                "image": name,
                "pred_left_xy": p_left.round(1).tolist(),
                "pred_right_xy": p_right.round(1).tolist(),
                "inter_head_px": round(span, 1),
                "named_px": [round(float(d), 1) for d in as_named],
                "best_px": [round(float(d), 1) for d in best],
                "best_frac": [round(float(d) / span, 3) for d in best],
                "sides_by_image_position_ok": bool(p_right[0] < p_left[0]),
            }
        )
        drawn.append((name, image, pred, fem_l, fem_r))
    best_all = np.array([d for r in rows for d in r["best_px"]])
    named_all = np.array([d for r in rows for d in r["named_px"]])
    frac_all = np.array([d for r in rows for d in r["best_frac"]])
    if overlay is not None:
        _draw(drawn, overlay)
    return {
        "per_image": rows,
        "best_assignment": {
            "mean_px": float(best_all.mean()),
            "median_px": float(np.median(best_all)),
            "mean_frac_inter_head": float(frac_all.mean()),
            "median_frac_inter_head": float(np.median(frac_all)),
            "max_frac_inter_head": float(frac_all.max()),
        },
        "as_named": {"mean_px": float(named_all.mean()), "median_px": float(np.median(named_all))},
        "mean_locate_ms": 1000 * float(np.mean(times[1:] if len(times) > 1 else times)),
    }


def _draw(cases: list[tuple[str, np.ndarray, dict[str, Box], np.ndarray, np.ndarray]], path: Path) -> None:
    """Save a grid of the radiographs with predicted boxes (red: patient left, cyan: right) and landmarks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(2, (len(cases) + 1) // 2, figsize=(4 * ((len(cases) + 1) // 2), 8.4))
    for ax, (name, image, pred, fem_l, fem_r) in zip(axes.flat, cases, strict=False):
        ax.imshow(image, cmap="gray")
        for side, colour in (("left", "red"), ("right", "cyan")):
            x0, y0, x1, y1 = pred[side]
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=colour, lw=1.5))
            ax.plot(*_centre(pred[side]), "+", color=colour, ms=10)
        ax.plot(*fem_l, "o", color="yellow", ms=5)
        ax.plot(*fem_r, "s", color="lime", ms=5)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle("boxes: predicted (red = patient left, cyan = right); yellow o fem_l, green square fem_r")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    """Generate phantoms, train, evaluate on phantoms and real radiographs, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="phantom studies to train on")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overlay", type=Path, default=Path("/tmp/localizer_real.png"))
    parser.add_argument("--save", type=Path, default=None, help="also save the trained model here")
    args = parser.parse_args()
    if not (DATA / "dicom").is_dir():
        raise SystemExit(f"real data not found at {DATA}")
    with tempfile.TemporaryDirectory() as tmp:
        train_dir, test_dir = Path(tmp) / "train", Path(tmp) / "test"
        start = time.perf_counter()
        generate(train_dir, args.n, args.seed)
        generate(test_dir, 40, args.seed + 1000)
        gen_s = time.perf_counter() - start
        losses: list[float] = []
        start = time.perf_counter()
        model = fit_localizer(
            _phantom_samples(train_dir),
            epochs=args.epochs,
            seed=args.seed,
            progress=lambda e, n, loss, score: losses.append(loss),
        )
        train_s = time.perf_counter() - start
        phantom = _phantom_errors(model, test_dir)
    if args.save is not None:
        from osteoscope.tasks.onfh_xray.localizer import save_localizer

        save_localizer(model, args.save)
    result = {
        "phantoms_train": args.n,
        "epochs": args.epochs,
        "generate_s": round(gen_s, 1),
        "train_s": round(train_s, 1),
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
        "phantom_held_out": phantom,
        "real_ddh": _evaluate_real(model, args.overlay),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
