"""A study: several models (and variants, e.g. pretrained or not) compared on one task with equal footing.

One YAML names the task, the shared data and training budget, a tuning grid, the models and the reference::

    task: onfh-xray
    data: {path: runs/demo/data, options: {roi_size: 64}}
    train: {epochs: 30, batch_size: 32}
    tuning: {lr: [3.0e-4, 1.0e-3, 3.0e-3]}
    reference: ast
    readers:                             # optional, binary tasks: human readers' points on the ROC
      radiologist: {sensitivity: 0.82, specificity: 0.91}
    models:
      ast: {model: {name: ast, preset: small}}
      vit: {model: {name: vit, preset: small}}
      resnet18:
        model: {name: "timm:resnet18"}
        variants:                        # each variant is a model of its own in the comparison
          scratch: {}
          imagenet: {model: {options: {pretrained_path: weights/resnet18.pth}}}

A study can hold **stages** trained once before the models, e.g. a self-supervised pretext run on unlabelled
pairs, and models (or variants) that start from one with ``init_from: STAGE:PREFIX`` (the study's form of
``--init-from``; joining is checked for leakage into the test patients). ``contrasts`` adds paired tests
between two models besides those against the reference (e.g. an ablation's arms)::

    stages:
      pretext: {data: {path: runs/mr/data/pretext, options: {target: ct}}, train: {epochs: 20}}
    models:
      fusion:
        model: {name: mr-fusion}
        variants: {scratch: {}, ssl: {init_from: "pretext:encoder."}}
    contrasts: [[fusion-ssl, fusion-scratch]]

Equal footing, checked rather than assumed:

* one patient split for every run: it is drawn once into ``OUT/splits.csv`` and given to each run, and each
  run's own ``splits.csv`` is compared with it afterwards; a mismatch is an error naming the run;
* one budget: every model gets the same epochs, schedule and tuning grid (the grid's values of ``train``
  keys, e.g. ``lr``); a model entry may not override ``train`` or the data split;
* selection on validation only: for each model the grid point with the best validation monitor is chosen
  (recorded in the report with every grid point's score), and only that run is evaluated on the test
  patients, once.

The report (``report.md`` and the self-contained ``report.html``) gives each model's test metrics with 95%
patient-level intervals, their plots on the same test cases and training curves, paired tests against the
reference model (DeLong for a binary AUC, a paired bootstrap of macro AUROC or mAP otherwise, McNemar at the
chosen decision rules), and the compute cost of each model. Everything resumes run by run.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from osteoscope import jsonio
from osteoscope.config import ExperimentConfig, config_from_dict, read_yaml
from osteoscope.data.manifest import manifest_path
from osteoscope.data.splits import load_splits, save_splits, split_patients
from osteoscope.engine.checkpoint import load_checkpoint
from osteoscope.engine.cost import measure_in_subprocess
from osteoscope.engine.evaluate import evaluate_run, load_predictions
from osteoscope.engine.loop import read_history
from osteoscope.engine.preflight import build_checked_model
from osteoscope.engine.runs import (
    BEST_CHECKPOINT,
    HISTORY_FILE,
    LAST_CHECKPOINT,
    SPLITS_FILE,
    load_task_manifest,
    log,
    setup_logging,
    task_of,
)
from osteoscope.engine.stages import TRANSLATIONS_FIGURE
from osteoscope.engine.trainer import train
from osteoscope.errors import ConfigError, OsteoscopeError
from osteoscope.heads import BinaryHead, Head, interval, markdown_table
from osteoscope.report.html import write_report
from osteoscope.report.summary import (
    comparison_table,
    cost_table,
    provenance,
    provenance_lines,
    provenance_section,
    robustness_section,
    tests_table,
    training_section,
)

STUDY_KEYS = (
    "task",
    "data",
    "train",
    "loss",
    "model",
    "tuning",
    "reference",
    "readers",
    "models",
    "stages",
    "contrasts",
    "n_boot",
    "title",
)
STAGES_DIR = "stages"
RESULT_FILE = "study.json"


@dataclass
class Study:
    """A parsed study file (see the module docstring).

    Attributes:
        base: Config keys shared by every run (task, data, train, loss, model defaults).
        models: Model label -> config overrides of that model (variants already expanded).
        tuning: Train key -> values; every model is trained at every point of their product.
        reference: Label of the model the others are tested against.
        n_boot: Bootstrap replicates of intervals and paired tests.
        title: Heading of the report.
        readers: Human reader -> (sensitivity, specificity), marked on the ROC (binary tasks).
        stages: Stage name -> config overrides of a run trained once before the models (its own data and
            budget), e.g. a pretext stage.
        inits: Model label -> ``STAGE:PREFIX`` it starts from.
        contrasts: Extra (model, other model) pairs to test, besides every model against the reference.
    """

    base: dict[str, Any]
    models: dict[str, dict[str, Any]]
    tuning: dict[str, list[Any]] = field(default_factory=dict)
    reference: str = ""
    n_boot: int = 2000
    title: str = "Study"
    readers: dict[str, tuple[float, float]] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    inits: dict[str, str] = field(default_factory=dict)
    contrasts: list[tuple[str, str]] = field(default_factory=list)

    def grid(self) -> list[dict[str, Any]]:
        """The tuning grid's points, each a dict of train keys."""
        keys = list(self.tuning)
        return [dict(zip(keys, values, strict=True)) for values in itertools.product(*self.tuning.values())] or [{}]


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with nested ``update`` applied."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = (
            _merge(out.get(key, {}), value)
            if isinstance(value, Mapping) and isinstance(out.get(key), dict)
            else copy.deepcopy(value)
        )
    return out


def parse_study(values: Mapping[str, Any]) -> Study:
    """Validate a study mapping; unknown keys, train overrides per model and unknown grid keys are errors."""
    unknown = sorted(set(values) - set(STUDY_KEYS))
    if unknown:
        raise ConfigError(f"unknown study key(s): {', '.join(unknown)} (known: {', '.join(STUDY_KEYS)})")
    entries = values.get("models")
    if not isinstance(entries, Mapping) or not entries:
        raise ConfigError("a study needs `models`: a mapping of model label -> settings")
    base = {k: copy.deepcopy(values[k]) for k in ("task", "data", "train", "loss", "model") if k in values}
    stages = {str(k): dict(v or {}) for k, v in (values.get("stages") or {}).items()}
    models: dict[str, dict[str, Any]] = {}
    inits: dict[str, str] = {}
    for label, entry in entries.items():
        entry = dict(entry or {})
        variants = entry.pop("variants", None) or {"": {}}
        for variant, extra in variants.items():
            name = f"{label}-{variant}" if variant else str(label)
            merged = _merge(entry, extra or {})
            for key in merged:
                if key not in ("model", "loss", "data", "init_from"):
                    raise ConfigError(
                        f"study model {name!r}: {key!r} cannot differ between models (shared budget); "
                        "a model may set model, loss, data.options and init_from"
                    )
            if set(merged.get("data", {})) - {"options"}:
                raise ConfigError(f"study model {name!r}: only data.options may differ between models (one split)")
            if "init_from" in merged:
                inits[name] = str(merged.pop("init_from"))
                stage = inits[name].partition(":")[0]
                if stage not in stages:
                    raise ConfigError(
                        f"study model {name!r}: init_from {inits[name]!r} names no stage of the study "
                        f"(stages: {', '.join(stages) or 'none'}); write STAGE:PREFIX"
                    )
            models[name] = merged
    tuning = {str(k).removeprefix("train."): list(v) for k, v in (values.get("tuning") or {}).items()}
    train_keys = set(config_from_dict({}).train.__dataclass_fields__)
    bad = sorted(set(tuning) - train_keys)
    if bad:
        raise ConfigError(
            f"tuning key(s) {', '.join(bad)} are not train settings (known: {', '.join(sorted(train_keys))})"
        )
    reference = str(values.get("reference") or next(iter(models)))
    if reference not in models:
        raise ConfigError(f"study reference {reference!r} is not one of the models: {', '.join(models)}")
    contrasts: list[tuple[str, str]] = []
    for pair in values.get("contrasts") or []:
        pair = tuple(map(str, pair))
        if len(pair) != 2 or not set(pair) <= set(models) or pair[0] == pair[1]:
            raise ConfigError(f"study contrast {list(pair)}: give two different models of {', '.join(models)}")
        contrasts.append(pair)
    study = Study(
        base,
        models,
        tuning,
        reference,
        int(values.get("n_boot", 2000)),
        str(values.get("title", "Study")),
        parse_readers(values.get("readers") or {}),
        stages,
        inits,
        contrasts,
    )
    for name in study.stages:
        stage_config(study, name)
    for name in models:  # every run's config must be valid before anything is trained
        for point in study.grid():
            run_config(study, name, point)
    return study


def parse_readers(values: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """``{name: {sensitivity: s, specificity: p}}`` -> ``{name: (s, p)}``, each a proportion in [0, 1]."""
    if not isinstance(values, Mapping):
        raise ConfigError("study readers: a mapping of reader name -> {sensitivity, specificity}")
    readers = {}
    for name, point in values.items():
        if not isinstance(point, Mapping) or set(point) != {"sensitivity", "specificity"}:
            raise ConfigError(f"study reader {name!r}: give exactly sensitivity and specificity")
        sens, spec = float(point["sensitivity"]), float(point["specificity"])
        if not (0.0 <= sens <= 1.0 and 0.0 <= spec <= 1.0):
            raise ConfigError(f"study reader {name!r}: sensitivity and specificity are proportions in [0, 1]")
        readers[str(name)] = (sens, spec)
    return readers


def load_study(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Study:
    """Read a study YAML, with optional nested overrides (e.g. ``{"data": {"path": ...}}``)."""
    return parse_study(_merge(read_yaml(path, "study"), overrides or {}))


def run_config(study: Study, model: str, point: Mapping[str, Any], out: Path = Path()) -> ExperimentConfig:
    """The config of one run: shared base, the model's overrides, one grid point, and the stage it starts
    from (a run folder under ``out``)."""
    train = dict(point)
    if model in study.inits:
        stage, _, prefix = study.inits[model].partition(":")
        train["init_from"] = f"{out / STAGES_DIR / stage}:{prefix}"
    return config_from_dict(_merge(_merge(study.base, study.models[model]), {"train": train}))


def stage_config(study: Study, name: str) -> ExperimentConfig:
    """The config of a stage: the shared base with the stage's own data, model, loss and training."""
    return config_from_dict(_merge(study.base, study.stages[name]))


def train_stages(study: Study, out: Path, verbose: bool) -> dict[str, dict[str, Any]]:
    """Train each stage once (resumable) into ``OUT/stages/NAME``; its best validation monitor per stage."""
    done = {}
    for name in study.stages:
        run_dir = out / STAGES_DIR / name
        log.info("study: stage %s", name)
        train(stage_config(study, name), run_dir, resume=(run_dir / LAST_CHECKPOINT).is_file(), verbose=verbose)
        done[name] = best_record(run_dir)
    return done


def best_record(run_dir: Path) -> dict[str, Any]:
    """What a run's ``best.pt`` says of it: the monitor, its best value and epoch, and the run folder."""
    best = load_checkpoint(run_dir / BEST_CHECKPOINT)
    return {"monitor": best["monitor"], "value": float(best["value"]), "epoch": best["epoch"], "run": str(run_dir)}


def _point_name(point: Mapping[str, Any]) -> str:
    return "-".join(f"{k}-{v:g}" if isinstance(v, float) else f"{k}-{v}" for k, v in point.items()) or "run"


def _shared_split(study: Study, out: Path) -> dict[str, str]:
    """The one patient split of the study: read from ``OUT/splits.csv`` or drawn once and saved there."""
    path = out / SPLITS_FILE
    if path.is_file():
        return load_splits(path)
    config = run_config(study, next(iter(study.models)), study.grid()[0])
    task = task_of(config)
    cases = load_task_manifest(task, config.data.path, skip_bad=config.data.skip_bad).cases
    split = split_patients(cases, config.data.split_fractions, config.data.split_seed, stratum=task.stratum)
    out.mkdir(parents=True, exist_ok=True)
    save_splits(path, cases, split)
    return split


def check_split(run_dir: Path, shared: Mapping[str, str]) -> None:
    """Raise when a run's split differs from the study's shared split."""
    own = load_splits(run_dir / SPLITS_FILE)
    differ = sorted(c for c in own if shared.get(c) != own[c])
    if differ:
        raise OsteoscopeError(
            f"{run_dir} was trained on another split than the study ({len(differ)} case(s) differ, e.g. "
            f"{differ[0]}: {own[differ[0]]} vs {shared.get(differ[0], 'absent')}); remove that run to retrain it"
        )


def run_study(study: Study, out_dir: str | Path, *, verbose: bool = True, threads: int = 0) -> dict[str, Any]:
    """Train every model at every grid point, choose on validation, evaluate once, compare; resumable.

    Returns:
        The summary also written to ``study.json``.
    """
    out = Path(out_dir)
    for config in [stage_config(study, name) for name in study.stages]:
        build_checked_model(config, task_of(config))
    for name in study.models:  # every model builds before the data are read or a folder is written
        config = run_config(study, name, study.grid()[0])
        task = task_of(config)
        build_checked_model(config, task)
        if study.readers and not isinstance(task.head, BinaryHead):
            raise ConfigError("study readers (sensitivity, specificity) need a binary task")
    stages = train_stages(study, out, verbose)
    shared = _shared_split(study, out)
    tuning: dict[str, dict[str, Any]] = {}
    chosen: dict[str, Path] = {}
    head: Head | None = None
    for name in study.models:
        scores = {}
        for point in study.grid():
            config = run_config(study, name, point, out)
            task = task_of(config)
            head = task.head
            run_dir = out / name / _point_name(point)
            log.info("study: %s, %s", name, _point_name(point))
            train(config, run_dir, resume=(run_dir / LAST_CHECKPOINT).is_file(), verbose=verbose, splits=shared)
            check_split(run_dir, shared)
            scores[_point_name(point)] = {"point": point, **best_record(run_dir)}
        pick = (max if head.mode == "max" else min)(scores, key=lambda k: scores[k]["value"])
        tuning[name] = {"chosen": pick, "points": scores}
        chosen[name] = Path(scores[pick]["run"])
    setup_logging(None, verbose=verbose)
    results = {}
    for name, run_dir in chosen.items():
        metrics = run_dir / "eval-test" / "metrics.json"
        results[name] = (
            json.loads(metrics.read_text())
            if metrics.is_file()
            else evaluate_run(run_dir, split="test", n_boot=study.n_boot)
        )
    comparisons = compare_runs(study, chosen, results, head)
    costs = {}
    for name, run_dir in chosen.items():
        cost_file = run_dir / "cost.json"
        if not cost_file.is_file():
            cost_file.write_text(jsonio.dumps(measure_in_subprocess(run_dir, threads)))
        costs[name] = json.loads(cost_file.read_text())
    summary = {
        "title": study.title,
        "task": results[study.reference]["task"],
        "reference": study.reference,
        "tuning": {"grid": study.tuning, "budget": study.base.get("train", {}), "per_model": tuning},
        "results": {
            name: {
                "run": str(chosen[name]),
                "overall": r["overall"],
                "subsets": r["subsets"],
                "maps": r.get("maps", {}),
                "robustness": r.get("robustness", {}),
            }
            for name, r in results.items()
        },
        "comparisons": comparisons,
        "stages": stages,
        "costs": costs,
        "n_cases": results[study.reference]["n_cases"],
        "n_patients": results[study.reference]["n_patients"],
        "provenance": provenance(manifest_path(run_config(study, study.reference, study.grid()[0]).data.path)),
        "readers": {name: {"sensitivity": se, "specificity": sp} for name, (se, sp) in study.readers.items()},
        "plots": study_plots(chosen, results, head, out, study.readers),
    }
    (out / RESULT_FILE).write_text(jsonio.dumps(summary, indent=2))
    histories = {name: read_history(run_dir / HISTORY_FILE) for name, run_dir in chosen.items()}
    write_report(study_report(summary, head, results, histories, out), out / "report.md", summary["title"])
    return summary


def study_plots(
    chosen: Mapping[str, Path],
    results: Mapping[str, Mapping],
    head: Head,
    out: Path,
    readers: Mapping[str, tuple[float, float]] | None = None,
) -> dict[str, str]:
    """The head's plots of every chosen model on the shared test cases (e.g. all ROC curves in one figure,
    with the human readers' points)."""
    curves, groups = {}, None
    for name, run_dir in chosen.items():
        pred = load_predictions(run_dir / "eval-test")
        known = head.known(pred["targets"])
        curves[name] = (pred["targets"][known], pred["values"][known])
        groups = pred["patient_id"][known]
    return head.plots(curves, {name: r["overall"] for name, r in results.items()}, out, groups=groups, readers=readers)


def compare_runs(
    study: Study, chosen: Mapping[str, Path], results: Mapping[str, Mapping], head: Head
) -> list[dict[str, Any]]:
    """Paired tests of every model against the reference, and of the study's contrasts, on all test cases and
    on each subset."""
    predictions = {name: load_predictions(run / "eval-test") for name, run in chosen.items()}
    config = run_config(study, study.reference, study.grid()[0])
    task = task_of(config)
    subsets = {"all test cases": None, **task.subsets()}
    by_id = {c.case_id: c for c in load_task_manifest(task, config.data.path, skip_bad=True).cases}
    pairs = [(name, study.reference) for name in predictions if name != study.reference]
    pairs += [pair for pair in study.contrasts if pair not in pairs and pair[::-1] not in pairs]
    comparisons = []
    for name, other in pairs:
        pred, reference = predictions[name], predictions[other]
        if not np.array_equal(pred["case_id"], reference["case_id"]):
            raise OsteoscopeError(f"{name} and {other} were evaluated on different test cases")
        known = head.known(reference["targets"])
        for subset, keep in subsets.items():
            mask = known & np.array([keep is None or keep(by_id[c]) for c in reference["case_id"]])
            if not mask.any() or not head.evaluable(reference["targets"][mask]):
                continue
            test = head.compare(
                reference["targets"][mask],
                pred["values"][mask],
                reference["values"][mask],
                results[name]["operating_point"],
                results[other]["operating_point"],
                reference["patient_id"][mask],
                study.n_boot,
                0,
            )
            comparisons.append({"model": name, "reference": other, "subset": subset, **test})
    return comparisons


def maps_section(results: Mapping[str, Mapping]) -> str:
    """One table per map evaluation (e.g. patch attention against the lesion) with a row per model that has
    it: every interval figure of the evaluation, its plain figures (e.g. the level by chance), and its case
    count; then each model's own account of it (e.g. per stage) unless that links figures."""
    names = sorted({name for r in results.values() for name in r.get("maps", {})})
    parts = []
    for name in names:
        rows = {model: r["maps"][name] for model, r in results.items() if name in r.get("maps", {})}
        first = next(iter(rows.values()))
        keys = [k for k, v in first.items() if isinstance(v, Mapping) and "estimate" in v]
        plain = [k for k, v in first.items() if isinstance(v, float)]
        table = [
            [model, *(interval(m[k]) for k in keys), *(f"{m[k]:.3f}" for k in plain), m.get("cases", "")]
            for model, m in rows.items()
        ]
        header = ["model", *(k.replace("_", " ") for k in (*keys, *plain)), "cases"]
        parts += [f"## {name}", markdown_table(header, table)]
        if not any("![" in m.get("markdown", "") for m in rows.values()):  # figures would not resolve from here
            parts += [f"### {name}: {model}\n\n{m['markdown']}" for model, m in rows.items() if m.get("markdown")]
    return "\n\n".join(parts)


def stages_section(stages: Mapping[str, Mapping[str, Any]], out: Path) -> str:
    """The stages trained before the models: run, best validation monitor, and a pretext stage's figure."""
    if not stages:
        return ""
    rows = [[name, s["run"], s["monitor"], f"{s['value']:.4f}", s["epoch"]] for name, s in stages.items()]
    figures = [
        f"![{name}: held-out translations]({figure.relative_to(out)})"
        for name, s in stages.items()
        if (figure := Path(s["run"]) / TRANSLATIONS_FIGURE).is_file()
    ]
    return "\n\n".join(
        [
            "## Stages (trained once, before the models that start from them)",
            markdown_table(["stage", "run", "monitor", "best", "epoch"], rows),
            *figures,
        ]
    )


def readers_line(readers: Mapping[str, Mapping[str, float]]) -> str:
    """The human readers marked on the ROC, as given in the study file or on the command line."""
    if not readers:
        return ""
    shown = "; ".join(
        f"{n}: sensitivity {r['sensitivity']:.3f}, specificity {r['specificity']:.3f}" for n, r in readers.items()
    )
    return f"Readers marked on the ROC (as given, not measured here): {shown}."


def study_report(
    summary: Mapping[str, Any],
    head: Head,
    results: Mapping[str, Mapping],
    histories: Mapping[str, list[dict[str, Any]]],
    out: Path,
) -> str:
    """The Markdown report of a study (plots linked from ``out``, training curves drawn there)."""
    tuning_rows = [
        [name, point, f"{info['value']:.4f}", info["epoch"], "chosen" if point == t["chosen"] else ""]
        for name, t in summary["tuning"]["per_model"].items()
        for point, info in t["points"].items()
    ]
    monitor = next(iter(next(iter(summary["tuning"]["per_model"].values()))["points"].values()))["monitor"]
    subsets = sorted({s for r in results.values() for s in r["subsets"]})
    plots = "\n\n".join(f"![{name}]({Path(path).name})" for name, path in summary["plots"].items())
    contrasted = any(c["reference"] != summary["reference"] for c in summary["comparisons"])
    parts = [
        f"# {summary['title']}",
        provenance_lines(summary["provenance"]),
        f"Task {summary['task']}; {summary['n_cases']} test cases of {summary['n_patients']} patients, one "
        f"patient split for every run; reference model **{summary['reference']}**. Intervals: 95% percentile "
        "bootstrap over patients.",
        "## Test metrics (each model's validation-chosen run, evaluated once)",
        comparison_table(head, results),
        *[part for s in subsets for part in (f"### {s}", comparison_table(head, results, s))],
        "## Plots (all test cases)",
        readers_line(summary.get("readers") or {}),
        plots,
        training_section(histories, head, out, "training"),
        maps_section(results),
        robustness_section(head, results),
        stages_section(summary.get("stages") or {}, out),
        "## Paired tests against the reference" + (" and between contrasted models" if contrasted else ""),
        tests_table(summary["comparisons"]) if summary["comparisons"] else "(only one model)",
        "## Tuning: the same grid for every model, chosen on validation",
        f"Grid: {json.dumps(summary['tuning']['grid'])}; shared budget: {json.dumps(summary['tuning']['budget'])}",
        markdown_table(["model", "grid point", f"best {monitor}", "epoch", ""], tuning_rows),
        "## Compute cost",
        cost_table(summary["costs"]),
        "Parameters and MB of the saved weights; FLOPs of one case's forward pass (torch.utils.flop_counter, a "
        "multiply-add = 2 FLOPs); training seconds per epoch from the run's history; inference ms per case and "
        "peak resident memory measured in a fresh process: the process's peak (with the cost of importing torch) "
        "and what one training step at the run's batch size adds above the memory before it.",
        provenance_section(summary["provenance"]),
    ]
    return "\n\n".join(p for p in parts if p) + "\n"
