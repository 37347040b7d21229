"""Evaluate a trained run on its held-out test patients (or an external dataset) with intervals.

What is measured follows the task's head (see :mod:`osteoscope.heads`). Where the head has a decision
rule to choose (the binary threshold, Youden's J), it was chosen on the run's validation split at the end of
training and stored in ``best.pt``; it is applied unchanged to the test cases and to external datasets, so
the evaluated cases inform nothing but the reported numbers. The fixed 0.5 threshold and Youden's J on the
evaluated cases themselves are reported beside it under ``alternative_operating_points``, labelled as
comparisons only. Intervals are 95% bootstrap intervals resampling whole patients (a patient's studies are
correlated).

Written to the output folder: ``metrics.json``, ``predictions.csv`` (one column per class or label, the
task's extra outputs, and the file of every saved map), ``predictions.npz`` (the same values as arrays, for
comparisons), the plots, ``maps/``, ``report.md`` and the self-contained ``report.html``. The run folder gets its
``model_card.md`` (from every evaluation but those of the validation split), and the figures go to its
TensorBoard files and MLflow run.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from osteoscope import jsonio
from osteoscope.config import config_to_dict
from osteoscope.data.datasets import CaseDataset
from osteoscope.data.fingerprints import HASHES_FILE, Fingerprints, load_hashes, save_hashes
from osteoscope.data.manifest import Case
from osteoscope.engine.inference import Inference, infer
from osteoscope.engine.loop import read_history, track_evaluation
from osteoscope.engine.preflight import report_columns
from osteoscope.engine.runs import (
    HISTORY_FILE,
    Run,
    check_cases,
    load_run,
    load_task_manifest,
    log,
    make_cache,
    report_skipped,
)
from osteoscope.errors import DataError
from osteoscope.heads import figures, interval, not_estimable
from osteoscope.report.card import MODEL_CARD, write_model_card
from osteoscope.report.summary import evaluation_context, example_cases, write_evaluation_report

EVAL_LOG = "evaluations.jsonl"
PREDICTIONS = "predictions.npz"


def select_cases(run: Run, cases: Sequence[Case], split: str) -> list[Case]:
    """The cases to evaluate: one split of the run's own data, or ``all`` cases of an external dataset.

    An external case that the run trained or validated on is an error naming that case; the same images under
    new ids are found after decoding, by :func:`refuse_training_images`.
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


def training_hashes(run: Run) -> dict[str, tuple[str, str, str, str]]:
    """Pixel hash -> (case, split, column, file) of the run's training and validation images.

    Read from ``RUN/pixel_hashes.csv``, which training writes while it checks its cases; a run trained
    before that file existed gets it now, once, by decoding its training and validation images (if its
    training data are gone, only the ids are compared, with a warning).
    """
    path = run.path / HASHES_FILE
    if not path.is_file():
        log.info("hashing the pixels of the run's training and validation images once (%s)", path.name)
        try:
            manifest = load_task_manifest(run.task, run.config.data.path, skip_bad=True)
        except DataError as error:
            log.warning("external images not compared with the training images (%s): %s", path.name, error)
            return {}
        seen = [case for case in manifest.cases if run.splits.get(case.case_id) in ("train", "val")]
        hashes: Fingerprints = {}
        check_cases(seen, run.task.builder(False, None), skip_bad=True, hashes=hashes)
        save_hashes(path, hashes, {case.case_id: run.splits[case.case_id] for case in seen})
    return load_hashes(path)


def refuse_training_images(run: Run, cases: Sequence[Case], hashes: Fingerprints) -> None:
    """Refuse an external set holding an image the run trained or validated on, under whatever ids: a
    DataError names the first such external case and file, the training case and file, and the count."""
    known = training_hashes(run)
    repeats = [
        (case.case_id, file, known[digest])
        for case in cases
        for digest, file in hashes.get(case.case_id, {}).values()
        if digest in known
    ]
    if repeats:
        case_id, file, (train_id, part, _, train_file) = repeats[0]
        more = f"; {len(repeats)} external image(s) in all repeat the run's images" if len(repeats) > 1 else ""
        raise DataError(
            f"its pixels are identical to those of {train_id!r}, a {part} case of the run (file {train_file}): "
            f"not an external test{more}",
            case_id=case_id,
            path=file,
        )


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
    """Evaluate a run and write its metrics, predictions, plots, maps and report.

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
    task, head = run.task, run.task.head
    out = Path(out_dir) if out_dir else run.path / f"eval-{split}"
    out.mkdir(parents=True, exist_ok=True)
    data = data or run.data_path()
    manifest = load_task_manifest(task, data, skip_bad=skip_bad)
    report_columns(task, manifest.columns)
    builder = task.builder(False, make_cache(run.config))
    hashes: Fingerprints = {}
    cases, bad = check_cases(select_cases(run, manifest.cases, split), builder, skip_bad=skip_bad, hashes=hashes)
    if split == "all":
        refuse_training_images(run, cases, hashes)
    report_skipped([*manifest.skipped, *bad])
    previous = _count_evaluations(run.path, split)
    if split == "test" and previous:
        log.warning(
            "the test split of this run has been evaluated %d time(s) before: report the first result", previous
        )

    operating = _operating_point(run, builder)
    pred = _predict(run, cases, builder, maps_dir=out / "maps")
    known = head.known(pred.targets)
    if not known.all():
        log.warning("%d case(s) without a label are left out of the metrics", int((~known).sum()))
    groups = np.array([case.patient_id for case in cases])
    targets, values = pred.targets[known], pred.values[known]
    scored = [case for case, keep in zip(cases, known, strict=True) if keep]
    result: dict[str, Any] = {
        "run": str(run.path),
        "model": run.model_name,
        "task": task.name,
        "head": head.kind,
        "names": list(head.names),
        "data": str(Path(data).resolve()),
        "split": split,
        "n_cases": len(scored),
        "n_patients": len(set(groups[known])),
        "operating_point": operating,
        "interval": f"95% percentile bootstrap over patients, {n_boot} replicates",
        "overall": head.evaluate(targets, values, groups[known], operating, n_boot, seed),
        "subsets": {},
        "extra": {},
        "alternative_operating_points": {
            name: {
                "note": "for comparison only: the result is the validated operating point above",
                "operating_point": point,
                "overall": head.evaluate(targets, values, groups[known], point, n_boot, seed),
            }
            for name, point in head.alternative_operating_points(targets, values).items()
        },
    }
    for name, keep in task.subsets().items():
        chosen = np.array([keep(case) for case in scored], dtype=bool)
        if chosen.any() and head.evaluable(targets[chosen]):
            result["subsets"][name] = head.evaluate(
                targets[chosen], values[chosen], groups[known][chosen], operating, n_boot, seed
            )
    if task.patient_aggregation:
        p_targets, p_values, patients = head.aggregate(targets, values, groups[known], task.patient_aggregation)
        if head.evaluable(p_targets):
            label = f"per patient ({task.patient_aggregation} of {len(scored)} images)"
            result["subsets"][label] = head.evaluate(p_targets, p_values, patients, operating, n_boot, seed)
    for extra in task.extra_evaluations(scored, {k: v[known] for k, v in pred.extras.items()}, groups[known]):
        extra_operating = extra.head.operating_point(None, None)
        result["extra"][extra.name] = {
            "head": extra.head.kind,
            "names": list(extra.head.names),
            "operating_point": extra_operating,
            **extra.head.evaluate(extra.targets, extra.values, extra.groups, extra_operating, n_boot, seed),
        }
    if missing := not_estimable({key: result[key] for key in ("overall", "subsets", "extra")}):
        shown = "; ".join(missing[:4]) + ("; ..." if len(missing) > 4 else "")
        log.warning(
            "%d figure(s) cannot be estimated (n/a in the report, null in metrics.json): %s", len(missing), shown
        )
    map_files = {name: [out / "maps" / file for file in files] for name, files in pred.maps.items()}
    result["maps"] = {
        e.name: {**e.metrics, "markdown": e.markdown} for e in task.evaluate_maps(cases, map_files, out, n_boot)
    }
    result["robustness"] = _robustness(run, scored, targets, values, groups[known], operating, n_boot, seed)
    result["plots"] = head.plots(
        {run.model_name: (targets, values)}, {run.model_name: result["overall"]}, out, groups=groups[known]
    )
    result.update(evaluation_context(task, manifest.path, manifest.cases, run.splits, split, targets, values))
    _write_predictions(out, run, cases, pred)
    (out / "metrics.json").write_text(jsonio.dumps(result, indent=2))
    config = config_to_dict(run.config)
    examples = example_cases(head, scored, targets, values, operating, lambda case: builder(case, None), out)
    history = read_history(run.path / HISTORY_FILE)
    write_evaluation_report(result, head, out / "report.md", history=history, config=config, examples=examples)
    with (run.path / EVAL_LOG).open("a") as handle:
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "split": split,
            "data": result["data"],
            "n_cases": len(cases),
            "out": str(out),
        }
        handle.write(jsonio.dumps(record) + "\n")
    if split != "val":  # a validation-split evaluation is a diagnostic: no card entry, and no val_* clash
        write_model_card(run.path / MODEL_CARD, task, config, _evaluations(run.path))
        tracked = figures(result["overall"], "external" if split == "all" else split)
        track_evaluation(run.path, f"eval-{split}", tracked, config, run.config.train.mlflow, task.name)
    log.info(
        "evaluated %d cases (%d patients): %s %s; written to %s",
        result["n_cases"],
        result["n_patients"],
        head.headline,
        interval(result["overall"][head.headline]),
        out,
    )
    return result


def _operating_point(run: Run, builder) -> dict[str, Any]:
    """The decision rule stored in the checkpoint, chosen on validation with the best weights at the end of
    training; for runs of older versions that lack it, chosen now on the run's own validation split."""
    if run.operating_point is not None:
        return run.operating_point
    log.warning("%s stores no operating point (an older run): choosing it on its validation split now", run.path)
    own = load_task_manifest(run.task, run.data_path(), skip_bad=True)
    val_cases = [case for case in own.cases if run.splits.get(case.case_id) == "val"]
    val = _predict(run, val_cases, builder) if val_cases else None
    return run.task.head.operating_point(*((val.targets, val.values) if val is not None else (None, None)))


def _robustness(
    run: Run,
    cases: Sequence[Case],
    targets: np.ndarray,
    values: np.ndarray,
    groups: np.ndarray,
    operating: dict[str, Any],
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """The model on the same cases under each of the task's test-time changes: metrics at the same decision
    rule, and the paired test against the unchanged cases."""
    head = run.task.head
    builder = run.task.builder(False, None)  # uncached: a cache holds the unchanged images under the same ids
    result = {}
    for name, change in run.task.test_variants().items():
        changed = _predict(run, [change(case) for case in cases], builder).values
        result[name] = {
            "overall": head.evaluate(targets, changed, groups, operating, n_boot, seed),
            "versus_unchanged": head.compare(targets, changed, values, operating, operating, groups, n_boot, seed),
        }
    return result


def _predict(run: Run, cases: Sequence[Case], builder, maps_dir: Path | None = None) -> Inference:
    return infer(
        run.model,
        CaseDataset(cases, builder),
        run.task,
        model_name=run.model_name,
        batch_size=2 * run.config.train.batch_size,
        maps_dir=maps_dir,
    )


def _evaluations(run_dir: Path) -> list[dict[str, Any]]:
    """The latest metrics of each output folder the run was evaluated into, validation splits left out."""
    records = [json.loads(line) for line in (run_dir / EVAL_LOG).read_text().splitlines() if line.strip()]
    folders = dict.fromkeys(Path(r["out"]) for r in records if r["split"] != "val")
    return [json.loads((f / "metrics.json").read_text()) for f in folders if (f / "metrics.json").is_file()]


def _count_evaluations(run_dir: Path, split: str) -> int:
    path = run_dir / EVAL_LOG
    if not path.is_file():
        return 0
    return sum(json.loads(line)["split"] == split for line in path.read_text().splitlines() if line.strip())


def _write_predictions(out: Path, run: Run, cases: Sequence[Case], pred: Inference) -> None:
    """``predictions.csv`` for people and ``predictions.npz`` (exact arrays) for comparisons."""
    head = run.task.head
    known = head.known(pred.targets)
    columns: dict[str, Sequence[Any]] = {
        "case_id": [c.case_id for c in cases],
        "patient_id": [c.patient_id for c in cases],
        "stage": [c.stage for c in cases],
        "side": [c.side for c in cases],
    }
    targets = head.target_columns(np.where(known.reshape(-1, *[1] * (pred.targets.ndim - 1)), pred.targets, -1))
    columns.update({k: v.tolist() for k, v in targets.items()})
    columns.update({k: [_number(x) for x in v] for k, v in head.columns(pred.values).items()})
    for key, values in pred.extras.items():
        for j, name in enumerate(run.task.extra_outputs[key]):
            columns[name] = [_number(x) for x in values[:, j]]
    columns.update({f"map_{name}": [f"maps/{f}" for f in files] for name, files in pred.maps.items()})
    with (out / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(zip(*columns.values(), strict=True))
    np.savez(
        out / PREDICTIONS,
        case_id=np.array(columns["case_id"]),
        patient_id=np.array(columns["patient_id"]),
        targets=pred.targets,
        values=pred.values,
    )


def _number(value: Any) -> Any:
    return f"{value:.6f}" if isinstance(value, float | np.floating) else value


def load_predictions(eval_dir: str | Path) -> dict[str, np.ndarray]:
    """The arrays an evaluation saved: ``case_id``, ``patient_id``, ``targets``, ``values``."""
    path = Path(eval_dir) / PREDICTIONS
    if not path.is_file():
        raise DataError("no saved predictions (evaluate the run first)", path=path)
    with np.load(path) as saved:
        return {key: saved[key] for key in saved.files}
