"""How far the onfh-xray phantom is from real radiographs, on statistics a head detector is sensitive to.

Sets compared:

* ``real DDH``: the 10 real paediatric AP pelvis films in ``../shared/data/ddh-pelvis-xray`` (beside the
  checkout). Head centres are their ``fem_l``/``fem_r`` landmarks, assigned to the patient's side by image
  position (the smaller x is the patient's right), because the files name them inconsistently.
* ``real CR``: the pydicom-data computed radiographs RG1 (chest) and RG3 (tibia), both MONOCHROME1; not
  pelvises, so they serve the whole-film statistics only.
* ``old phantom``: the geometric generator before issue 10 (``git show OLD_COMMIT:osteoscope/phantoms/onfh_xray.py``,
  imported from a temporary copy; needs the git history), at its default 384 x 512.
* ``new adult`` / ``new child``: this checkout's generator at its default size, ``child_fraction`` 0 and 1.

Every film is read with ``osteoscope.data.readers.read_image`` (MONOCHROME1 inverted, VOI applied), resized
so that its longer side is ``WORK`` pixels (the scale a localiser works at; the DDH films are 331 px), and
normalised by its 1st and 99th percentiles. Then:

* ``hist``: the normalised intensity histogram; the distance to the pooled real DDH films is the
  Wasserstein-1 distance (in normalised units; 0 = same distribution) and the histogram intersection
  (1 = same);
* ``nps``: the radially averaged noise power spectrum of the high-pass residual (film minus its 2-pixel
  Gaussian blur) over 64-pixel Hann-windowed tiles, as a curve over cycles/pixel and its log-log slope
  between 0.08 and 0.45 cycles/pixel (white noise: 0 before the high-pass; anatomy-dominated films fall
  off steeply); ``residual_sd`` is that residual's standard deviation;
* ``edges``: the share of pixels whose Sobel gradient magnitude exceeds ``EDGE_T`` (normalised units per
  pixel), over the whole film and over squares of half-side 0.2 x the inter-head distance around each head
  centre, and their ratio (how much more structured the hip region is than the film).

Output: JSON on stdout and in ``OUT/xray_realism.json``; a figure ``OUT/xray_realism.png`` with the
histograms, NPS curves, edge densities and example films and head crops of every set side by side.

Run: ``PYTHONPATH=. .venv/bin/python -m benchmarks.xray_realism [--n 12] [--out benchmarks/out/xray_realism]``
(about a minute).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, sobel
from scipy.stats import wasserstein_distance

from osteoscope.data.readers import read_image
from osteoscope.phantoms import onfh_xray

REPO = Path(__file__).resolve().parents[1]
OLD_COMMIT = "0bd248d"  # main before issue 10: the geometric hip phantom the gap is measured against
DDH = REPO.parent / "shared" / "data" / "ddh-pelvis-xray"
WORK = 384
EDGE_T = 0.08
TILE = 64
BINS = np.linspace(0.0, 1.0, 41)
FREQ = np.linspace(0.0, 0.5, 17)
Film = tuple[np.ndarray, list[tuple[float, float]]]  # working-scale image, head centres (x, y) right then left


def to_work(pixels: np.ndarray, heads: list[tuple[float, float]]) -> Film:
    """Resize so the longer side is ``WORK`` pixels and normalise by the 1st/99th percentiles."""
    rows, cols = pixels.shape
    k = WORK / max(rows, cols)
    size = (max(round(cols * k), 8), max(round(rows * k), 8))
    small = np.asarray(Image.fromarray(pixels.astype(np.float32), mode="F").resize(size, Image.Resampling.BOX))
    lo, hi = np.percentile(small, (1.0, 99.0))
    norm = np.clip((small - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)
    return norm, [(x * k, y * k) for x, y in heads]


def real_ddh() -> list[Film]:
    """The DDH films with their head landmarks, right (image left) first."""
    films = []
    for path in sorted((DDH / "dicom").glob("*.dcm")):
        marks = json.loads((DDH / "landmarks" / f"{path.stem}.json").read_text())["landmark_list"][0]
        heads = sorted([tuple(map(float, marks["fem_l"])), tuple(map(float, marks["fem_r"]))])
        films.append(to_work(read_image(path).array, heads))
    return films


def real_cr() -> list[Film]:
    """RG1 (chest) and RG3 (tibia) from pydicom-data, no heads."""
    from pydicom.data import get_testdata_file

    return [to_work(read_image(get_testdata_file(name)).array, []) for name in ("RG1_UNCR.dcm", "RG3_UNCR.dcm")]


def old_module(folder: Path) -> ModuleType:
    """The phantom generator of :data:`OLD_COMMIT`, imported from a copy in ``folder``."""
    source = subprocess.run(
        ["git", "show", f"{OLD_COMMIT}:osteoscope/phantoms/onfh_xray.py"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = folder / "onfh_xray_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("onfh_xray_main", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def phantom_films(generate, folder: Path, n: int, seed: int, **options: object) -> list[Film]:
    """Generate ``n`` studies and return them with head centres from the manifest boxes."""
    manifest = generate(folder, n, seed=seed, **options)
    films = []
    with manifest.open() as fh:
        for row in csv.DictReader(fh):
            heads = []
            for key in ("box_right", "box_left"):
                x0, y0, x1, y1 = map(float, row[key].split())
                heads.append(((x0 + x1) / 2.0, (y0 + y1) / 2.0))
            films.append(to_work(read_image(folder / row["image"]).array, heads))
    return films


def nps(image: np.ndarray) -> np.ndarray:
    """Radially averaged power spectrum of the high-pass residual over interior tiles, per ``FREQ`` bin."""
    residual = image - gaussian_filter(image, 2.0)
    window = np.outer(np.hanning(TILE), np.hanning(TILE)).astype(np.float32)
    f = np.fft.fftfreq(TILE)
    radius = np.hypot(*np.meshgrid(f, f, indexing="ij"))
    index = np.digitize(radius, FREQ) - 1
    rows, cols = image.shape
    power = np.zeros(len(FREQ) - 1)
    count = 0
    for r in range(rows // 10, rows - rows // 10 - TILE + 1, TILE // 2):
        for c in range(cols // 10, cols - cols // 10 - TILE + 1, TILE // 2):
            tile = residual[r : r + TILE, c : c + TILE]
            spectrum = np.abs(np.fft.fft2((tile - tile.mean()) * window)) ** 2 / (TILE * TILE)
            for b in range(len(FREQ) - 1):
                power[b] += spectrum[index == b].mean() if np.any(index == b) else 0.0
            count += 1
    return power / max(count, 1)


def edge_share(image: np.ndarray, heads: list[tuple[float, float]]) -> tuple[float, float | None]:
    """Share of strong-gradient pixels over the film and around the heads (``None`` without heads)."""
    grad = np.hypot(sobel(image, 0), sobel(image, 1)) / 8.0
    strong = grad > EDGE_T
    if len(heads) != 2:
        return float(strong.mean()), None
    half = 0.2 * float(np.hypot(heads[1][0] - heads[0][0], heads[1][1] - heads[0][1]))
    shares = []
    for x, y in heads:
        y0, y1 = max(int(y - half), 0), min(int(y + half) + 1, image.shape[0])
        x0, x1 = max(int(x - half), 0), min(int(x + half) + 1, image.shape[1])
        shares.append(float(strong[y0:y1, x0:x1].mean()))
    return float(strong.mean()), float(np.mean(shares))


def measure(films: list[Film], reference: np.ndarray | None) -> dict[str, object]:
    """Every statistic of one set; histogram distances against ``reference`` values when given."""
    values = np.concatenate([f.ravel() for f, _ in films])
    hist = np.histogram(values, BINS)[0] / values.size
    curves = np.array([nps(f) for f, _ in films])
    curve = curves.mean(axis=0)
    centres = (FREQ[:-1] + FREQ[1:]) / 2.0
    fit = (centres > 0.08) & (centres < 0.45)
    slope = float(np.polyfit(np.log(centres[fit]), np.log(curve[fit] + 1e-12), 1)[0])
    edges = [edge_share(f, h) for f, h in films]
    heads = [e[1] for e in edges if e[1] is not None]
    result: dict[str, object] = {
        "n": len(films),
        "hist": hist.round(4).tolist(),
        "nps": curve.tolist(),
        "nps_slope": round(slope, 2),
        "residual_sd": round(float(np.mean([np.std(f - gaussian_filter(f, 2.0)) for f, _ in films])), 4),
        "edges_whole": round(float(np.mean([e[0] for e in edges])), 4),
        "edges_heads": round(float(np.mean(heads)), 4) if heads else None,
    }
    if heads:
        result["edges_ratio"] = round(float(np.mean(heads)) / max(float(result["edges_whole"]), 1e-6), 2)
    if reference is not None:
        rng = np.random.default_rng(0)
        a = rng.choice(values, min(values.size, 200_000), replace=False)
        b = rng.choice(reference, min(reference.size, 200_000), replace=False)
        ref_hist = np.histogram(reference, BINS)[0] / reference.size
        result["hist_wasserstein_to_ddh"] = round(float(wasserstein_distance(a, b)), 4)
        result["hist_intersection_to_ddh"] = round(float(np.minimum(hist, ref_hist).sum()), 3)
    return result


def figure(sets: dict[str, list[Film]], stats: dict[str, dict[str, object]], path: Path) -> None:
    """Histograms, NPS curves, edge densities, and an example film and head crop of each set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(sets)
    fig = plt.figure(figsize=(4.0 * len(names), 11.0))
    grid = fig.add_gridspec(3, len(names))
    ax = fig.add_subplot(grid[0, : len(names) // 3 or 1])
    centres = (BINS[:-1] + BINS[1:]) / 2.0
    for name in names:
        ax.plot(centres, stats[name]["hist"], label=name)
    ax.set(title="intensity histogram (1-99 % normalised)", xlabel="normalised value", ylabel="share")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(grid[0, len(names) // 3 or 1 : 2 * len(names) // 3 or 2])
    freq = (FREQ[:-1] + FREQ[1:]) / 2.0
    for name in names:
        ax.loglog(freq, stats[name]["nps"], label=f"{name} (slope {stats[name]['nps_slope']})")
    ax.set(title=f"NPS of high-pass residual at {WORK} px", xlabel="cycles / pixel", ylabel="power")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(grid[0, 2 * len(names) // 3 or 2 :])
    x = np.arange(len(names))
    ax.bar(x - 0.2, [stats[n]["edges_whole"] for n in names], 0.4, label="whole film")
    ax.bar(x + 0.2, [stats[n]["edges_heads"] or 0.0 for n in names], 0.4, label="around the heads")
    ax.set_xticks(x, names, rotation=20, fontsize=7)
    ax.set(title=f"edge density (|grad| > {EDGE_T})")
    ax.legend(fontsize=7)
    for i, name in enumerate(names):
        image, heads = sets[name][min(1, len(sets[name]) - 1)]
        ax = fig.add_subplot(grid[1, i])
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        for hx, hy in heads:
            ax.plot(hx, hy, "r+", markersize=10)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
        ax = fig.add_subplot(grid[2, i])
        if heads:
            half = int(0.25 * np.hypot(heads[1][0] - heads[0][0], heads[1][1] - heads[0][1]))
            hx, hy = int(heads[0][0]), int(heads[0][1])
            crop = image[max(hy - half, 0) : hy + half, max(hx - half, 0) : hx + half]
            ax.set_title("patient's right head", fontsize=9)
        else:
            h, w = image.shape
            crop = image[h // 3 : h // 3 + h // 4, w // 3 : w // 3 + w // 4]
            ax.set_title("central crop", fontsize=9)
        ax.imshow(crop, cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    """Generate the phantom sets, measure every set, print and write JSON and the figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12, help="phantom studies per phantom set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "xray_realism")
    args = parser.parse_args()
    if not DDH.is_dir():
        raise SystemExit(f"needs the real DDH films in {DDH}")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sets = {"real DDH": real_ddh(), "real CR (RG1, RG3)": real_cr()}
        sets["old phantom"] = phantom_films(old_module(root).generate, root / "old", args.n, args.seed)
        sets["new adult"] = phantom_films(onfh_xray.generate, root / "adult", args.n, args.seed)
        sets["new child"] = phantom_films(onfh_xray.generate, root / "child", args.n, args.seed, child_fraction=1.0)
    reference = np.concatenate([f.ravel() for f, _ in sets["real DDH"]])
    stats = {name: measure(films, None if name == "real DDH" else reference) for name, films in sets.items()}
    summary = {name: {k: v for k, v in s.items() if k not in ("hist", "nps")} for name, s in stats.items()}
    report = {"work_px": WORK, "edge_threshold": EDGE_T, "summary": summary, "curves": stats}
    (args.out / "xray_realism.json").write_text(json.dumps(report, indent=2) + "\n")
    figure(sets, stats, args.out / "xray_realism.png")
    print(json.dumps({"work_px": WORK, "edge_threshold": EDGE_T, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
