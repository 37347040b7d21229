"""Evaluate a trained run on its held-out test patients (or an external dataset) with intervals.

The decision threshold is chosen on the run's validation split (Youden's J) and then applied unchanged to
the test cases, so the test set informs nothing but the reported numbers. Intervals are 95% bootstrap
intervals resampling whole patients (a patient's studies are correlated).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from osteoscope.data.datasets import CaseDataset, side_target
from osteoscope.data.manifest import Case
from osteoscope.engine.runs import Run, check_cases, load_run, load_task_manifest, log, predict_dataset, report_skipped
from osteoscope.errors import DataError
from osteoscope.metrics import binary_metrics, bootstrap_metrics, youden_threshold
from osteoscope.report.plots import plot_confusion_matrix, plot_roc
from osteoscope.report.summary import write_evaluation_report

EVAL_LOG = "evaluations.jsonl"


def select_cases(run: Run, cases: Sequence[Case], split: str) -> list[Case]:
    """The cases to evaluate: one split of the run's own data, or ``all`` cases of an external dataset.

    An external case that the run trained or validated on is an error naming that case.
    """
    if split != "all":
        chosen = [case for case in cases if run.splits.get(case.case_id) == split]
        if not chosen:
            raise DataError(
                f"no case of this dataset is in the run's {split} split (for another dataset use --split all)"
            )
        return chosen
    seen = {cid for cid, part in run.splits.items() if part in ("train", "val")}
    for case in cases:
        if case.case_id in seen:
            raise DataError("this case was used for training or validation of the run", case_id=case.case_id)
    return list(cases)


def _metrics_with_ci(
    labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, threshold: float, n_boot: int, seed: int
) -> dict[str, Any]:
    point = binary_metrics(labels, scores, threshold=threshold)
    intervals = bootstrap_metrics(labels, scores, threshold=threshold, groups=groups, n_boot=n_boot, seed=seed)
    return {**point, "ci95": {k: [v["low"], v["high"]] for k, v in intervals.items()}}


def evaluate_run(
    run_dir: str | Path,
    data: str | Path | None = None,
    *,
    split: str = "test",
    out_dir: str | Path | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    skip_bad: bool = False,
) -> dict[str, Any]:
    """Evaluate a run and write metrics.json, predictions.csv, roc.png, confusion.png and report.md.

    Args:
        run_dir: A run written by ``osteoscope train``.
        data: Dataset folder; defaults to the one the run was trained on.
        split: ``test`` (default), ``val``, or ``all`` for an external dataset.
        out_dir: Where to write; defaults to ``RUN/eval-<split>``.
        n_boot: Bootstrap replicates for the intervals.
        seed: Seed of the bootstrap.
        skip_bad: Skip unreadable cases (listed in the log) instead of stopping.

    Returns:
        The metrics dictionary that is also written to metrics.json.
    """
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir else run.path / f"eval-{split}"
    out.mkdir(parents=True, exist_ok=True)
    data = data or run.config.data.path
    manifest = load_task_manifest(run.task, data, skip_bad=skip_bad)
    builder = run.task.make_builder(run.config.data, False, {})
    cases, bad = check_cases(select_cases(run, manifest.cases, split), builder, skip_bad=skip_bad)
    report_skipped([*manifest.skipped, *bad])
    previous = _count_evaluations(run.path, split)
    if split == "test" and previous:
        log.warning(
            "the test split of this run has been evaluated %d time(s) before: report the first result", previous
        )

    val_cases = [case for case in manifest.cases if run.splits.get(case.case_id) == "val"]
    if split != "val" and val_cases:
        val = predict_dataset(run.model, CaseDataset(val_cases, builder))
        threshold, threshold_source = youden_threshold(val["label"], val["probability"]), "youden on validation split"
    else:
        threshold, threshold_source = 0.5, "fixed 0.5"
    pred = predict_dataset(run.model, CaseDataset(cases, builder))
    labels, scores = pred["label"].astype(int), pred["probability"]
    groups = np.array([case.patient_id for case in cases])
    result: dict[str, Any] = {
        "run": str(run.path),
        "model": run.config.model.name,
        "data": str(Path(data).resolve()),
        "split": split,
        "n_cases": len(cases),
        "n_patients": len(set(groups)),
        "threshold": threshold,
        "threshold_source": threshold_source,
        "interval": f"95% percentile bootstrap over patients, {n_boot} replicates",
        "overall": _metrics_with_ci(labels, scores, groups, threshold, n_boot, seed),
        "subsets": {},
    }
    stages = np.array([-1 if case.stage is None else case.stage for case in cases])
    for name, included in run.task.subsets.items():
        keep = (labels == 0) | np.isin(stages, included)
        if labels[keep].min(initial=1) == 0 and labels[keep].max(initial=0) == 1:
            result["subsets"][name] = _metrics_with_ci(
                labels[keep], scores[keep], groups[keep], threshold, n_boot, seed
            )
    if "side_probability" in pred:
        side_labels = np.array([side_target(case) for case in cases])
        known = side_labels >= 0
        if known.any() and len(np.unique(side_labels[known])) == 2:
            hip_groups = np.repeat(groups[:, None], 2, axis=1)[known]
            result["per_hip"] = _metrics_with_ci(
                side_labels[known].astype(int), pred["side_probability"][known], hip_groups, threshold, n_boot, seed
            )
    result["plots"] = {
        "roc": str(
            plot_roc(
                {run.config.model.name: (labels, scores)},
                out / "roc.png",
                operating_points={"threshold": _operating_point(result["overall"])},
            )
        ),
        "confusion": str(
            plot_confusion_matrix(result["overall"]["confusion_matrix"], ["no ONFH", "ONFH"], out / "confusion.png")
        ),
    }
    _write_predictions(out / "predictions.csv", cases, pred)
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=float))
    write_evaluation_report(result, out / "report.md")
    with (run.path / EVAL_LOG).open("a") as handle:
        handle.write(
            json.dumps(
                {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "split": split,
                    "data": result["data"],
                    "n_cases": len(cases),
                    "out": str(out),
                }
            )
            + "\n"
        )
    log.info(
        "evaluated %d cases (%d patients): AUC %.4f [%.4f, %.4f]; written to %s",
        len(cases),
        result["n_patients"],
        result["overall"]["auc"],
        *result["overall"]["ci95"]["auc"],
        out,
    )
    return result


def _operating_point(metrics: dict[str, Any]) -> tuple[float, float]:
    """(false-positive rate, true-positive rate) at the chosen threshold."""
    return 1.0 - metrics["specificity"], metrics["sensitivity"]


def _count_evaluations(run_dir: Path, split: str) -> int:
    path = run_dir / EVAL_LOG
    if not path.is_file():
        return 0
    return sum(json.loads(line)["split"] == split for line in path.read_text().splitlines() if line.strip())


def _write_predictions(path: Path, cases: Sequence[Case], pred: dict[str, np.ndarray]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        has_sides = "side_probability" in pred
        writer.writerow(
            [
                "case_id",
                "patient_id",
                "label",
                "stage",
                "side",
                "probability",
                *(["p_left", "p_right"] if has_sides else []),
            ]
        )
        for i, case in enumerate(cases):
            sides = [f"{v:.6f}" for v in pred["side_probability"][i]] if has_sides else []
            writer.writerow(
                [
                    case.case_id,
                    case.patient_id,
                    int(pred["label"][i]),
                    case.stage,
                    case.side,
                    f"{pred['probability'][i]:.6f}",
                    *sides,
                ]
            )
