"""K-fold cross-validation by patient: K ordinary run folders, every case scored exactly once out of fold.

Fold ``i`` holds out the patients of fold ``i`` as its test split; the other patients are split into train
and validation by the config's train/val fractions (stratified, seeded), so model selection and the decision
rule use validation patients only. Each fold is a normal run (``fold-<i>/``, evaluable, resumable). The
summary gives the mean ± SD of every headline figure over folds and the metrics with patient-level bootstrap
intervals on the pooled out-of-fold predictions; the two differ (AUC is not additive over folds), so both
are reported. A pooled binary threshold is the mean of the folds' validation-chosen thresholds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from osteoscope import jsonio
from osteoscope.config import ExperimentConfig
from osteoscope.data.splits import kfold_patients, split_patients
from osteoscope.engine.evaluate import evaluate_run, load_predictions
from osteoscope.engine.preflight import build_checked_model
from osteoscope.engine.runs import LAST_CHECKPOINT, load_task_manifest, log, setup_logging, task_of
from osteoscope.engine.trainer import train
from osteoscope.errors import ConfigError
from osteoscope.heads import interval
from osteoscope.metrics import aggregate_folds
from osteoscope.report.html import write_report
from osteoscope.report.summary import kfold_report

KFOLD_FILE = "kfold.json"


def fold_splits(config: ExperimentConfig, k: int) -> list[dict[str, str]]:
    """For each fold, the case -> train/val/test assignment (test = that fold's patients)."""
    task = task_of(config)
    cases = load_task_manifest(task, config.data.path, skip_bad=config.data.skip_bad).cases
    folds = kfold_patients(cases, k, seed=config.data.split_seed, stratum=task.stratum)
    train_share, val_share, _ = config.data.split_fractions
    if val_share <= 0:
        raise ConfigError("k-fold needs a validation share: data.split_fractions[1] > 0")
    assignments = []
    for i in range(k):
        rest = [case for case in cases if folds[case.case_id] != i]
        inner = split_patients(rest, (train_share, val_share, 0.0), config.data.split_seed + i, stratum=task.stratum)
        assignments.append({**inner, **{c.case_id: "test" for c in cases if folds[c.case_id] == i}})
    return assignments


def _estimates(result: dict[str, Any]) -> dict[str, float]:
    """The top-level point estimates of a head result (the figures a fold summary averages)."""
    return {k: v["estimate"] for k, v in result.items() if isinstance(v, dict) and "estimate" in v}


def cross_validate(
    config: ExperimentConfig, out_dir: str | Path, k: int = 5, *, n_boot: int = 2000, verbose: bool = True
) -> dict[str, Any]:
    """Train and evaluate ``k`` folds into ``out_dir/fold-<i>`` (resuming what exists) and pool them.

    Returns:
        The summary also written to ``kfold.json``: per fold the headline with its interval, ``folds``
        (mean, SD, min, max over folds of every top-level figure) and ``pooled`` (out-of-fold metrics).
    """
    out = Path(out_dir)
    task = task_of(config)
    build_checked_model(config, task)  # a bad model name, preset or option fails before the data are read
    head = task.head
    fold_results, predictions, thresholds = [], [], []
    for i, splits in enumerate(fold_splits(config, k), start=1):
        run_dir = out / f"fold-{i}"
        log.info("fold %d/%d: %d test cases", i, k, sum(v == "test" for v in splits.values()))
        train(config, run_dir, resume=(run_dir / LAST_CHECKPOINT).is_file(), verbose=verbose, splits=splits)
        eval_dir = run_dir / "eval-test"
        if (eval_dir / "metrics.json").is_file():
            result = json.loads((eval_dir / "metrics.json").read_text())
        else:
            result = evaluate_run(run_dir, split="test", n_boot=n_boot)
        fold_results.append(result)
        predictions.append(load_predictions(eval_dir))
        thresholds.append(result["operating_point"].get("threshold"))
    setup_logging(None, verbose=verbose)
    pooled = {key: np.concatenate([p[key] for p in predictions]) for key in predictions[0]}
    if len(set(pooled["case_id"])) != len(pooled["case_id"]):
        raise ConfigError("a case was scored in more than one fold; the folds are not disjoint")
    known = head.known(pooled["targets"])
    operating = head.operating_point(None, None)
    if all(t is not None for t in thresholds) and "threshold" in operating:
        operating = {"threshold": float(np.mean(thresholds)), "source": "mean of the folds' validation thresholds"}
    summary = {
        "task": task.name,
        "model": fold_results[0]["model"],
        "k": k,
        "n_cases": int(known.sum()),
        "n_patients": len(set(pooled["patient_id"][known])),
        "per_fold": [{"fold": i, head.headline: r["overall"][head.headline]} for i, r in enumerate(fold_results, 1)],
        "folds": aggregate_folds([_estimates(r["overall"]) for r in fold_results]),
        "pooled": head.evaluate(
            pooled["targets"][known], pooled["values"][known], pooled["patient_id"][known], operating, n_boot, 0
        ),
        "operating_point": operating,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / KFOLD_FILE).write_text(jsonio.dumps(summary, indent=2))
    write_report(kfold_report(summary, head), out / "report.md", f"{k}-fold cross-validation of {summary['model']}")
    log.info(
        "k-fold: %s pooled %s; fold mean %.4f ± %.4f",
        head.headline,
        interval(summary["pooled"][head.headline]),
        summary["folds"][head.headline]["mean"],
        summary["folds"][head.headline]["sd"],
    )
    return summary
