"""The whole ``predict`` path, with automatic head localisation, on every real radiograph we have.

Trains (or takes via ``--run``) a small AsT run on the hip phantom with its femoral-head localiser
(``RUN/localizer.pt``), then predicts, one study per file, with
:func:`osteoscope.engine.predict.predict_study` (what ``osteoscope predict RUN FILE --ood flag`` does):

* the 10 real paediatric AP pelvis films of ``shared/data/ddh-pelvis-xray``;
* every CR radiograph of ``pydicom-data`` (RG1 chest PA and RG3 tibia/ankle, each in four encodings);
* the wrist/forearm JPEGs of ``shared/data/bone-fracture-yolo/train/images`` (all of them by default, or a
  fixed sample with ``--wrist N``: every k-th file in name order).

Each file ends in one of: **found** (both heads, scored, out-of-distribution guard passed), **flagged** (both
heads, scored, but the guard or the localiser flagged it: the reasons are kept), **refused** (a DataError or
ConfigError with its reason: no plausible pair of heads, an unreadable file ...), or **crashed** (any other
exception: must be 0). The pelvis films should be found or flagged; the non-pelvis films refused or flagged.
The OOD guard compares each film with the phantom's statistics, so real films are expected to be flagged by
it; the localiser's own outcome (pair found or refused, and why) is tallied separately.

Writes ``summary.json`` (also printed) and a contact sheet ``contact_sheet.png`` of the found boxes on the
real films (pelvis films first, then the non-pelvis films on which a pair was found) to the output folder.

Run: ``python -m benchmarks.predict_real [--run RUN] [--wrist N] [--out DIR]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from osteoscope.errors import ConfigError, DataError
from osteoscope.tasks.base import StudyInputs

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DDH = SHARED / "ddh-pelvis-xray" / "dicom"
WRIST = SHARED / "bone-fracture-yolo" / "train" / "images"
CR_FILES = [f"{name}_{enc}.dcm" for name in ("RG1", "RG3") for enc in ("UNCR", "UNCI", "J2KR", "J2KI")]


def files(wrist: int | None) -> list[tuple[str, Path]]:
    """(group, path) of every real radiograph: DDH pelvis, pydicom-data CR, wrist JPEGs (all or a sample)."""
    from pydicom.data import get_testdata_file

    out = [("ddh-pelvis", p) for p in sorted(DDH.glob("*.dcm"))]
    out += [("pydicom-cr", Path(get_testdata_file(name))) for name in CR_FILES]
    jpegs = sorted(WRIST.glob("*.jpg"))
    if wrist is not None and wrist < len(jpegs):
        jpegs = jpegs[:: max(1, len(jpegs) // wrist)][:wrist]
    return out + [("wrist", p) for p in jpegs]


def train_run(out: Path, n: int, ast_epochs: int, loc_epochs: int) -> Path:
    """A small AsT run on ``n`` phantoms and its localiser trained on the run's training split."""
    from osteoscope.cli import app
    from osteoscope.data.splits import load_splits
    from osteoscope.engine.runs import SPLITS_FILE
    from osteoscope.phantoms import generate_phantom
    from osteoscope.tasks.onfh_xray import LOCALIZER_FILE
    from osteoscope.tasks.onfh_xray.localizer import train_localizer_on_manifest

    data, run = out / "data", out / "run"
    generate_phantom("onfh-xray", data, n=n, seed=0, image_size=(448, 512), child_fraction=0.3)
    app(
        ["train", "--data", str(data), "--model", "ast", "--preset", "tiny", "--epochs", str(ast_epochs), "--out",
         str(run), "--set", "train.threads=1"],
        standalone_mode=False,
    )  # fmt: skip
    train_ids = {case for case, part in load_splits(run / SPLITS_FILE).items() if part == "train"}
    train_localizer_on_manifest(data, run / LOCALIZER_FILE, epochs=loc_epochs, case_ids=train_ids)
    return run


def classify(run, path: Path) -> tuple[str, dict[str, Any]]:
    """Outcome of one file through predict (``--ood flag``): found / flagged / refused / crashed, with details."""
    from osteoscope.engine.predict import predict_study

    inputs = StudyInputs(images={"": path}, masks={}, boxes={}, files={})
    start = time.perf_counter()
    try:
        result = predict_study(run, inputs, ood="flag")
    except (DataError, ConfigError) as error:
        return "refused", {"reason": str(error), "s": time.perf_counter() - start}
    except Exception as error:  # a crash is what this benchmark counts
        return "crashed", {"reason": f"{type(error).__name__}: {error}", "s": time.perf_counter() - start}
    info = result.get("study_info", {})
    detail = {"boxes": result.get("boxes"), "info": info, "s": time.perf_counter() - start}
    if result["ood"]["passed"]:
        return "found", detail
    detail["reasons"] = result["ood"]["reasons"]
    return "flagged", detail


def contact_sheet(rows: list[tuple[str, Path, dict[str, Any]]], path: Path) -> None:
    """A grid of the films with the found boxes (red = patient left, cyan = patient right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from osteoscope.data.readers import read_image

    cols = 6
    lines = max(1, (len(rows) + cols - 1) // cols)
    fig, axes = plt.subplots(lines, cols, figsize=(3 * cols, 3.2 * lines), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (group, file, detail) in zip(axes.flat, rows, strict=False):
        ax.imshow(read_image(file).array, cmap="gray")
        for column, colour in (("box_left", "red"), ("box_right", "cyan")):
            x0, y0, x1, y1 = detail["boxes"][column]
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=colour, lw=1.2))
        conf = detail["info"].get("localizer_confidence", "?")
        ax.set_title(f"{group}: {file.name[:22]}\nconf {conf}, {detail['info'].get('localizer_side_source', '')}",
                     fontsize=7)  # fmt: skip
    fig.suptitle("found boxes on real films (red = patient left, cyan = patient right)")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main() -> None:
    """Train or load a run, predict every real radiograph, tally, draw the contact sheet, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="an onfh-xray run with RUN/localizer.pt")
    parser.add_argument("--n", type=int, default=200, help="phantoms to train a new run on")
    parser.add_argument("--ast-epochs", type=int, default=2)
    parser.add_argument("--loc-epochs", type=int, default=15)
    parser.add_argument("--wrist", type=int, default=None, help="predict a fixed sample of N wrist films")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/predict_real"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    from osteoscope.engine.runs import load_run

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run or train_run(Path(tmp), args.n, args.ast_epochs, args.loc_epochs)
        run = load_run(run_dir)
        tallies: dict[str, Counter] = {}
        localizer: dict[str, Counter] = {}
        per_file, drawn, seconds = [], [], []
        for group, path in files(args.wrist):
            outcome, detail = classify(run, path)
            tallies.setdefault(group, Counter())[outcome] += 1
            located = "pair found" if "boxes" in detail else "other refusal"
            if "no plausible pair" in detail.get("reason", ""):
                located = "no plausible pair"
            localizer.setdefault(group, Counter())[located] += 1
            seconds.append(detail["s"])
            row = {"group": group, "file": path.name, "outcome": outcome}
            row.update({k: v for k, v in detail.items() if k in ("reason", "reasons", "boxes")})
            if "info" in detail:
                row["confidence"] = detail["info"].get("localizer_confidence")
                row["side_source"] = detail["info"].get("localizer_side_source")
            per_file.append(row)
            if "boxes" in detail and len(drawn) < 60:
                drawn.append((group, path, detail))
    drawn.sort(key=lambda r: r[0] != "ddh-pelvis")
    contact_sheet(drawn, args.out / "contact_sheet.png")
    summary = {
        "run": str(args.run)
        if args.run
        else f"new: {args.n} phantoms, AsT tiny {args.ast_epochs} epochs, localiser {args.loc_epochs} epochs",
        "predict_outcomes": {g: dict(c) for g, c in tallies.items()},
        "localizer_outcomes": {g: dict(c) for g, c in localizer.items()},
        "crashed": sum(c["crashed"] for c in tallies.values()),
        "median_predict_s": round(float(np.median(seconds)), 3),
        "refusal_reasons_sample": sorted({r["reason"].split(": ", 1)[-1][:160] for r in per_file if "reason" in r})[:8],
        "per_file": per_file,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "per_file"}, indent=1))
    for row in per_file:
        if row["group"] != "wrist":
            print(json.dumps(row))


if __name__ == "__main__":
    main()
