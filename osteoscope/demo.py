"""The demo: hip phantom -> AsT and a ViT baseline trained alike -> held-out evaluation side by side.

Both models get the same patient-level split, epochs, batch size, optimiser and schedule. The comparison
reports 95% bootstrap intervals and a DeLong test on the same test cases. Re-running the demo reuses the
generated data and resumes or reuses finished runs, so an interrupted demo loses at most one epoch.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from osteoscope.config import ExperimentConfig, config_from_dict
from osteoscope.data.manifest import MANIFEST_NAME, load_manifest
from osteoscope.engine.evaluate import evaluate_run
from osteoscope.engine.localizer import train_localizer_on_manifest
from osteoscope.engine.predict import LOCALIZER_FILE, predict_images
from osteoscope.engine.runs import LAST_CHECKPOINT, SPLITS_FILE, make_console
from osteoscope.engine.trainer import train
from osteoscope.metrics import delong_test
from osteoscope.report.plots import plot_roc
from osteoscope.report.summary import comparison_report

DEMO_MODELS = ("ast", "vit")
LOCALIZER_EPOCHS = 12


def demo_config(data: Path, model: str, epochs: int) -> ExperimentConfig:
    """The shared training budget of the demo; only the model name differs between runs."""
    return config_from_dict(
        {
            "task": "onfh-xray",
            "data": {"path": str(data), "roi_size": 64},
            "model": {"name": model, "preset": "small"},
            "train": {
                "epochs": epochs,
                "batch_size": 32,
                "lr": 1e-3,
                "weight_decay": 0.05,
                "warmup_epochs": 1,
                "patience": 0,
                "seed": 0,
            },
        }
    )


def _test_predictions(eval_dir: Path) -> dict[str, dict[str, str]]:
    with (eval_dir / "predictions.csv").open() as handle:
        return {row["case_id"]: row for row in csv.DictReader(handle)}


def _compare(
    preds: dict[str, dict[str, dict[str, str]]], a: str, b: str, subset: str, stages: tuple[int, ...] | None
) -> dict[str, Any]:
    """DeLong test of two models' AUCs on the same test cases (negatives plus the given stages)."""
    rows = preds[a].items()
    ids = [c for c, row in rows if stages is None or row["label"] == "0" or int(row["stage"] or -1) in stages]
    labels = np.array([int(preds[a][c]["label"]) for c in ids])
    scores = [np.array([float(preds[m][c]["probability"]) for c in ids]) for m in (a, b)]
    return {"a": a, "b": b, "subset": subset, **delong_test(labels, *scores)}


def run_demo(
    out: str | Path, *, n: int = 1000, epochs: int = 40, subtlety: float = 0.75, console: Console | None = None
) -> dict[str, Any]:
    """Run the whole demo into ``out`` and print the comparison table.

    The phantom is made harder than its default (``subtlety`` 0.75) so that early-stage disease is a real
    test rather than a formality.

    Returns:
        The evaluation result of each model and the DeLong comparisons.
    """
    from osteoscope.phantoms import generate_phantom

    console = console or make_console()
    out = Path(out)
    data = out / "data"
    started = time.perf_counter()
    if not (data / MANIFEST_NAME).is_file():
        console.rule(f"1/4 generating {n} phantom pelvis radiographs (subtlety {subtlety})")
        generate_phantom("onfh-xray", data, n=n, seed=0, subtlety=subtlety)
    results: dict[str, dict[str, Any]] = {}
    for i, model in enumerate(DEMO_MODELS, start=2):
        run_dir = out / model
        console.rule(f"{i}/4 training {model} ({epochs} epochs, same split and budget)")
        train(demo_config(data, model, epochs), run_dir, resume=(run_dir / LAST_CHECKPOINT).is_file())
        results[model] = evaluate_run(run_dir, split="test")
    console.rule("4/4 head localiser and prediction on raw test images")
    train_ids = {
        row["case_id"] for row in csv.DictReader((out / "ast" / SPLITS_FILE).open()) if row["split"] == "train"
    }
    localizer = out / "ast" / LOCALIZER_FILE
    if not localizer.is_file():
        train_localizer_on_manifest(data, localizer, epochs=LOCALIZER_EPOCHS, case_ids=train_ids)
    preds = {m: _test_predictions(Path(results[m]["plots"]["roc"]).parent) for m in DEMO_MODELS}
    comparisons = [
        _compare(preds, "ast", "vit", "all test cases", None),
        _compare(preds, "ast", "vit", "early (ARCO I-II)", (1, 2)),
    ]
    curves = {
        m: (np.array([int(r["label"]) for r in p.values()]), np.array([float(r["probability"]) for r in p.values()]))
        for m, p in preds.items()
    }
    plot_roc(curves, out / "roc.png", title="Held-out test patients")
    cases = load_manifest(data).by_id()
    predictions = predict_images(out / "ast", [cases[cid].images["image"] for cid in list(preds["ast"])[:2]])
    report = comparison_report(list(results.values()), comparisons)
    title = "# Demo: AsT vs ViT on held-out phantom patients\n\n"
    (out / "report.md").write_text(title + report + "\n![ROC](roc.png)\n")
    (out / "predictions_sample.json").write_text(json.dumps(predictions, indent=2))
    console.print(report)
    console.print("[bold]predict on two raw test images (heads found by the localiser):[/bold]")
    console.print_json(json.dumps(predictions))
    console.print(f"demo finished in {(time.perf_counter() - started) / 60:.1f} min; report: {out / 'report.md'}")
    return {"results": results, "comparisons": comparisons}
