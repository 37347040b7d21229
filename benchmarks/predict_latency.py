"""Latency of ``osteoscope predict`` on 2,500 px AP pelvis films, per study, split into its stages.

Target (issue 10): localisation plus AsT inference take at most **150 ms per study on 2 CPU cores** for a
2,500 px film, decode included.

What it does:

1. Generates onfh-xray phantom films at ``--size`` (default 2048 x 2500, rows x columns; the field of view
   stays 430 mm wide, so a femoral-head box is about 430 px wide): ``--train`` films to train on and ``--n``
   other films to time. The timed films are written as a 16-bit PNG (the phantom's own file) and copied to an
   8-bit JPEG (quality 90), an uncompressed 16-bit DX DICOM (with pixel spacing and a window, which the reader
   applies), a JPEG-baseline DICOM (8 bit) and, for the first ``--n-j2k`` films, a lossless JPEG 2000 DICOM.
2. Trains a small AsT run (the shipped config's model and ROI, ``--epochs`` epochs: accuracy does not matter
   here) and its head localiser (``--localizer-epochs``) on the training films.
3. For each format, after one warm-up study, times ``predict_study`` end to end (``total``, the number the
   target is about) and then, on the same film, each stage on its own, as predict runs them inside one
   :func:`~osteoscope.data.readers.decode_once` block (the formats take turns film by film, so a burst of
   load on a shared machine hits them alike):

   * ``decode``: :func:`~osteoscope.data.readers.read_image` at onfh-xray's ``study_min_side``;
   * ``localise``: the task's ``study_case`` (loading the localiser, finding and checking both heads, mapping
     the boxes to file pixels; the image comes from the block);
   * ``crop``: the sample builder (two head ROIs) and the out-of-distribution guard;
   * ``forward``: AsT on the two ROIs.

   Median and 90th percentile over the films, torch threads ``--threads`` (2), ``--ood flag`` so that every
   film is scored. For comparison, ``total_full_decode`` is ``predict_study`` with the film decoded at full
   resolution (one decode per study still; before issue 10 each study was decoded three times), and
   ``vs_full_decode`` says how far the reduced decode's boxes (file pixels) and probability are from it.
4. Reader only: :func:`read_image` in full and reduced, on the first film of each format, on a noisy
   3,000 px JPEG (the phantom plus Gaussian noise of 4 grey levels, whose entropy makes the codec work like on
   a real film) and on the real CR films of pydicom-data (``RG1_UNCR.dcm``; ``RG1_J2KR.dcm``, JPEG 2000).

Prints one JSON object and writes it, with a bar chart of the stage medians, to ``--out``
(default ``benchmarks/out/predict_latency/``). Timings on a shared machine are indicative; the lead re-runs
them on a quiet one.

Run: ``python -m benchmarks.predict_latency [--n 20] [--train 40]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pydicom
import torch
from PIL import Image as PILImage
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

from osteoscope.config import config_from_dict
from osteoscope.data.manifest import load_manifest
from osteoscope.data.readers import decode_once, read_image
from osteoscope.engine.inference import forward
from osteoscope.engine.predict import predict_study
from osteoscope.engine.runs import load_run
from osteoscope.engine.trainer import train
from osteoscope.phantoms import onfh_xray
from osteoscope.phantoms._dicom import Study, write_dicom
from osteoscope.tasks.base import StudyInputs
from osteoscope.tasks.onfh_xray import LOCALIZER_FILE, OnfhXray
from osteoscope.tasks.onfh_xray.localizer import train_localizer_on_manifest

TARGET_MS = 150.0
FORMATS = ("jpeg", "png16", "dicom", "dicom-jpeg", "dicom-j2k")
READER_REPEATS = 5
FIELD_OF_VIEW_MM = 430.0


def _pixels16(path: Path) -> np.ndarray:
    return np.asarray(PILImage.open(path)).astype(np.uint16)


def _write_copies(png: Path, folder: Path, index: int, j2k: bool) -> dict[str, Path]:
    """The film ``png`` as JPEG, DICOM (uncompressed 16 bit, JPEG baseline, optionally JPEG 2000)."""
    pixels = _pixels16(png)
    eight = (pixels >> 8).astype(np.uint8)
    stem = folder / png.stem
    paths = {"png16": png, "jpeg": stem.with_suffix(".jpg")}
    PILImage.fromarray(eight).save(paths["jpeg"], quality=90)
    spacing = f"{FIELD_OF_VIEW_MM / pixels.shape[1]:.6f}"
    lo, hi = float(pixels.min()), float(pixels.max())
    study = Study(f"bench{index}", pydicom.uid.generate_uid(), f"bench{index}", "20260101")
    paths["dicom"] = stem.with_name(stem.name + "_uncompressed.dcm")
    write_dicom(
        paths["dicom"],
        pixels,
        sop_class="1.2.840.10008.5.1.4.1.1.1.1",
        sop_uid=pydicom.uid.generate_uid(),
        series_uid=pydicom.uid.generate_uid(),
        study=study,
        modality="DX",
        tags={
            "BodyPartExamined": "PELVIS",
            "ViewPosition": "AP",
            "PixelSpacing": [spacing, spacing],
            "WindowCenter": f"{(lo + hi) / 2:.1f}",
            "WindowWidth": f"{max(hi - lo, 1.0):.1f}",
        },
    )
    ds = pydicom.dcmread(paths["dicom"])
    jpeg = folder / "frame.jpg"
    PILImage.fromarray(eight).save(jpeg, quality=90)
    ds.PixelData = encapsulate([jpeg.read_bytes()])
    ds["PixelData"].VR = "OB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.WindowCenter, ds.WindowWidth = "127.5", "255"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    paths["dicom-jpeg"] = stem.with_name(stem.name + "_jpeg.dcm")
    ds.save_as(paths["dicom-jpeg"], enforce_file_format=True)
    if j2k:
        ds = pydicom.dcmread(paths["dicom"])
        ds.compress(JPEG2000Lossless)
        paths["dicom-j2k"] = stem.with_name(stem.name + "_j2k.dcm")
        ds.save_as(paths["dicom-j2k"], enforce_file_format=True)
    return paths


def _stats(values: list[float]) -> dict[str, float]:
    """Median and 90th percentile, ms."""
    ms = np.asarray(values) * 1000
    return {"median": round(float(np.median(ms)), 1), "p90": round(float(np.percentile(ms, 90)), 1)}


def _inputs(path: Path) -> StudyInputs:
    return StudyInputs(images={"": path}, masks={}, boxes={}, files={})


def _stages(run: Any, path: Path) -> dict[str, float]:
    """Seconds of each stage of one study, run as ``predict_study`` runs them."""
    task = run.task
    times = {}
    with decode_once(task.study_min_side):
        started = time.perf_counter()
        read_image(path)
        times["decode"] = time.perf_counter() - started
        started = time.perf_counter()
        case = task.study_case(_inputs(path), run.path)
        times["localise"] = time.perf_counter() - started
        started = time.perf_counter()
        sample = task.builder(False, None)(case, None)
        task.check_study(case, run.record.get("input_profile"))
        times["crop"] = time.perf_counter() - started
    batch = torch.utils.data.default_collate([sample])
    started = time.perf_counter()
    with torch.no_grad():
        forward(run.model.eval(), batch, model_name=run.model_name, task=task)
    times["forward"] = time.perf_counter() - started
    return times


def _predict(run: Any, path: Path, full: bool = False) -> tuple[dict[str, Any], float]:
    """``predict_study`` on one film and its seconds; ``full`` decodes it at full resolution instead."""
    scale = property(lambda self: None) if full else OnfhXray.study_min_side
    with mock.patch.object(OnfhXray, "study_min_side", scale):
        started = time.perf_counter()
        result = predict_study(run, _inputs(path), ood="flag")
        return result, time.perf_counter() - started


def _predict_latency(run: Any, films: dict[str, list[Path]]) -> dict[str, Any]:
    """Per format: per-stage and end-to-end latency over its films (after one warm-up on the first), and how
    far the reduced decode's boxes and probabilities are from a full-resolution decode's. The formats take
    turns film by film, so a burst of load on a shared machine hits them alike."""
    runs: dict[str, dict[str, list]] = {fmt: {"reduced": [], "full": [], "stages": []} for fmt in films}
    for paths in films.values():
        _predict(run, paths[0])
        _predict(run, paths[0], full=True)
        _stages(run, paths[0])
    for index in range(max(len(paths) for paths in films.values())):
        for fmt, paths in films.items():
            if index < len(paths):
                runs[fmt]["reduced"].append(_predict(run, paths[index]))
                runs[fmt]["stages"].append(_stages(run, paths[index]))
                runs[fmt]["full"].append(_predict(run, paths[index], full=True))
    out = {}
    for fmt, timed in runs.items():
        pairs = list(zip(timed["reduced"], timed["full"], strict=True))
        total = _stats([seconds for _, seconds in timed["reduced"]])
        out[fmt] = {
            "n": len(pairs),
            "stages_ms": {stage: _stats([s[stage] for s in timed["stages"]]) for stage in timed["stages"][0]},
            "total_ms": total,
            "total_full_decode_ms": _stats([seconds for _, seconds in timed["full"]]),
            "met_median": total["median"] <= TARGET_MS,
            "met_p90": total["p90"] <= TARGET_MS,
            "vs_full_decode": {
                "max_box_shift_px": max(
                    float(np.abs(np.subtract(a["boxes"][k], b["boxes"][k])).max())
                    for (a, _), (b, _) in pairs
                    for k in a["boxes"]
                ),
                "max_probability_change": round(
                    max(abs(a["probability"] - b["probability"]) for (a, _), (b, _) in pairs), 6
                ),
            },
        }
    return out


def _timed(function: Callable[[], Any]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def _reader(path: Path, min_side: int) -> dict[str, Any]:
    """:func:`read_image` in full and at ``min_side``: median ms, and the reduced decode's scale and shape."""
    out: dict[str, Any] = {}
    for name, side in (("full", None), ("reduced", min_side)):
        image = read_image(path, min_side=side)
        out[f"{name}_ms"] = _stats([_timed(lambda side=side: read_image(path, min_side=side)) for _ in range(5)])[
            "median"
        ]
        if side is not None:
            out.update(decode_scale=image.meta.get("decode_scale"), shape=list(image.array.shape))
    out["file_shape"] = list(read_image(path, min_side=min_side).meta.get("file_shape", ()))
    return out


def _noisy_jpeg(png: Path, folder: Path) -> Path:
    """A 3,000 px JPEG of the phantom with Gaussian noise (4 grey levels), like a real film's entropy."""
    grey = _pixels16(png).astype(np.float32) / 257
    big = torch.nn.functional.interpolate(torch.from_numpy(grey)[None, None], size=(2458, 3000), mode="bilinear")
    noisy = big[0, 0].numpy() + np.random.default_rng(0).normal(0, 4, (2458, 3000))
    path = folder / "noisy-3000.jpg"
    PILImage.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20, help="films timed per format")
    parser.add_argument("--n-j2k", type=int, default=5, help="films timed as JPEG 2000 DICOM (slow to decode)")
    parser.add_argument("--train", type=int, default=40, help="films to train on")
    parser.add_argument("--size", type=int, nargs=2, default=(2048, 2500), metavar=("ROWS", "COLS"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--localizer-epochs", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "predict_latency")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    size = tuple(args.size)
    with tempfile.TemporaryDirectory(prefix="predict-latency-") as tmp:
        root = Path(tmp)
        onfh_xray.generate(root / "train", args.train, seed=0, image_size=size)
        onfh_xray.generate(root / "test", args.n, seed=1, image_size=size)
        config = {
            "task": "onfh-xray",
            "data": {"path": str(root / "train"), "options": {"roi_size": 64}},
            "model": {"name": "ast", "preset": "small"},
            "train": {"epochs": args.epochs, "batch_size": 16, "patience": 0, "threads": args.threads},
        }
        run_dir = train(config_from_dict(config), root / "run", verbose=False)
        train_localizer_on_manifest(root / "train", run_dir / LOCALIZER_FILE, epochs=args.localizer_epochs)
        run = load_run(run_dir)
        copies = root / "copies"
        copies.mkdir()
        films: dict[str, list[Path]] = {fmt: [] for fmt in FORMATS}
        for index, case in enumerate(load_manifest(root / "test").cases):
            for fmt, path in _write_copies(case.images["image"], copies, index, index < args.n_j2k).items():
                films[fmt].append(path)
        min_side = run.task.study_min_side
        results: dict[str, Any] = {
            "target_ms": TARGET_MS,
            "film": {"rows": size[0], "columns": size[1]},
            "study_min_side": min_side,
            "threads": args.threads,
            "formats": _predict_latency(run, {fmt: paths for fmt, paths in films.items() if paths}),
            "reader": {fmt: _reader(paths[0], min_side) for fmt, paths in films.items() if paths},
        }
        results["reader"]["jpeg-noisy-3000"] = _reader(_noisy_jpeg(films["png16"][0], copies), min_side)
        for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm"):
            found = get_testdata_file(name)
            if found is not None:
                results["reader"][f"pydicom-data {name}"] = _reader(Path(found), min_side)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    _plot(results, args.out / "stages.png")
    print(json.dumps(results, indent=2))
    return results


def _plot(results: dict[str, Any], path: Path) -> None:
    """Stacked bars of the stage medians per format, with the end-to-end median and the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    formats = list(results["formats"])
    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = np.zeros(len(formats))
    for stage in ("decode", "localise", "crop", "forward"):
        values = np.array([results["formats"][f]["stages_ms"][stage]["median"] for f in formats])
        ax.bar(formats, values, bottom=bottom, label=stage)
        bottom += values
    totals = [results["formats"][f]["total_ms"]["median"] for f in formats]
    ax.scatter(formats, totals, color="black", marker="_", s=400, label="predict, end to end (median)", zorder=3)
    ax.axhline(results["target_ms"], color="red", linestyle="--", label=f"target {results['target_ms']:.0f} ms")
    ax.set_ylabel("ms per study (median)")
    ax.set_title(
        f"predict on {results['film']['rows']}x{results['film']['columns']} px films, {results['threads']} threads"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
