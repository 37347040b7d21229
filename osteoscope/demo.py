"""The demo: hip phantom -> a study of AsT against a ViT baseline with equal tuning -> held-out comparison.

The demo is an ordinary study (:mod:`osteoscope.engine.study`): both models get the same patient split,
epochs, batch size, optimiser, schedule and the same learning-rate grid chosen on validation; the report
gives 95% bootstrap intervals, DeLong and McNemar tests on the same test patients and each model's compute
cost. Then the femoral-head localiser is trained on the training patients and two raw test radiographs are
predicted without boxes. Re-running the demo reuses the generated data and resumes or reuses finished runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from osteoscope import jsonio
from osteoscope.data.manifest import MANIFEST_NAME, load_manifest
from osteoscope.data.splits import load_splits
from osteoscope.engine.evaluate import load_predictions
from osteoscope.engine.predict import predict_images
from osteoscope.engine.runs import SPLITS_FILE, make_console
from osteoscope.engine.study import parse_study, run_study
from osteoscope.errors import DataError
from osteoscope.tasks.onfh_xray import LOCALIZER_FILE
from osteoscope.tasks.onfh_xray.localizer import train_localizer_on_manifest

LOCALIZER_EPOCHS = 12
DEMO_THREADS = 2
"""torch's intra-op threads for every demo run. The demo is bit-for-bit reproducible across processes, hash
seeds and working directories, but not across thread counts: CPU kernels split their sums by thread, so
torch's default (one thread per core) gave another AsT figure on a machine with another core count."""


def demo_study(data: Path, epochs: int) -> dict[str, Any]:
    """The demo's study: AsT and ViT (small presets) on one split with one budget and one lr grid."""
    return {
        "title": "Demo: AsT vs ViT on held-out phantom patients",
        "task": "onfh-xray",
        "data": {"path": str(data), "options": {"roi_size": 64}},
        "train": {
            "epochs": epochs,
            "batch_size": 32,
            "weight_decay": 0.05,
            "warmup_epochs": 1,
            "patience": 0,
            "seed": 0,
            "threads": DEMO_THREADS,
        },
        "tuning": {"lr": [3e-4, 1e-3, 3e-3]},
        "reference": "ast",
        "models": {
            "ast": {"model": {"name": "ast", "preset": "small"}},
            "vit": {"model": {"name": "vit", "preset": "small"}},
        },
    }


def predict_or_refusal(run: Path, image: Path) -> dict[str, Any]:
    """The prediction for one raw image, or ``{"image", "refused"}`` with the reason when predict refuses it (e.g.
    the localiser finds no plausible pair of heads): a refusal is a result to show, not a reason to stop."""
    try:
        return predict_images(run, [image])[0]
    except DataError as error:
        return {"image": str(image), "refused": error.reason}


def run_demo(
    out: str | Path, *, n: int = 1000, epochs: int = 20, subtlety: float = 0.75, console: Console | None = None
) -> dict[str, Any]:
    """Run the whole demo into ``out`` and print the study report.

    The phantom is made harder than its default (``subtlety`` 0.75) so that early-stage disease is a real
    test rather than a formality.

    Returns:
        The study summary.
    """
    from osteoscope.phantoms import generate_phantom

    console = console or make_console()
    out = Path(out)
    data = out / "data"
    started = time.perf_counter()
    if not (data / MANIFEST_NAME).is_file():
        console.rule(f"1/3 generating {n} phantom pelvis radiographs (subtlety {subtlety})")
        generate_phantom("onfh-xray", data, n=n, seed=0, subtlety=subtlety)
    values = demo_study(data, epochs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    console.rule(f"2/3 study: AsT and ViT, {epochs} epochs at each of 3 learning rates, one split")
    summary = run_study(parse_study(values), out)
    console.rule("3/3 head localiser and prediction on raw test images")
    ast_run = Path(summary["results"]["ast"]["run"])
    train_ids = {case for case, part in load_splits(out / SPLITS_FILE).items() if part == "train"}
    localizer = ast_run / LOCALIZER_FILE
    if not localizer.is_file():
        train_localizer_on_manifest(data, localizer, epochs=LOCALIZER_EPOCHS, case_ids=train_ids)
    cases = load_manifest(data).by_id()
    test_ids = load_predictions(ast_run / "eval-test")["case_id"][:2]
    predictions = [predict_or_refusal(ast_run, cases[case].images["image"]) for case in test_ids]
    (out / "predictions_sample.json").write_text(jsonio.dumps(predictions, indent=2))
    console.print((out / "report.md").read_text())
    console.print("[bold]predict on two raw test images (heads found by the localiser):[/bold]")
    console.print_json(jsonio.dumps(predictions))
    console.print(f"demo finished in {(time.perf_counter() - started) / 60:.1f} min; report: {out / 'report.md'}")
    return summary
