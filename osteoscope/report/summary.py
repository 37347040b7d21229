"""Reports: one evaluation, a k-fold cross-validation, and the tables of a study comparing models.

Each report is Markdown (``report.md``) and the same text rendered to a self-contained ``report.html``
(:mod:`osteoscope.report.html`). The tables, plots, example cases and calibration measure come from the
task's head (:class:`osteoscope.heads.Head`), so one report writer serves binary, multi-class, multi-label
and pretext results alike. Every report states when it was written, by which osteoscope version, and the
hash of the data manifest it describes.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from osteoscope import __version__
from osteoscope.heads import NOT_ESTIMABLE, Head, interval, make_head, markdown_table
from osteoscope.report.html import write_report

if TYPE_CHECKING:
    from osteoscope.data.manifest import Case
    from osteoscope.tasks import Task

PACKAGES = ("torch", "torchvision", "timm", "monai", "numpy", "scipy", "scikit-learn", "pydicom", "nibabel")
ECE_BINS = 10
EXAMPLES_PER_KIND = 2


def file_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes (the data manifest: which rows and labels a result is about)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def provenance(manifest: str | Path | None = None) -> dict[str, Any]:
    """When and with what a result was made: UTC time, osteoscope, Python and package versions, and the
    manifest's path and SHA-256."""
    versions = {"osteoscope": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "versions": versions}
    if manifest is not None:
        out["manifest"] = {"path": str(Path(manifest).resolve()), "sha256": file_hash(manifest)}
    return out


def provenance_lines(info: Mapping[str, Any]) -> str:
    """The one-line statement of date and version that heads every report."""
    return f"Written {info['date']} by osteoscope {info['versions']['osteoscope']}."


def provenance_section(info: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> str:
    """Markdown: package versions, the manifest hash and the run's config."""
    parts = ["## Provenance", provenance_lines(info)]
    if "manifest" in info:
        parts.append(f"Data manifest `{info['manifest']['path']}`, SHA-256 `{info['manifest']['sha256']}`.")
    parts.append(markdown_table(["package", "version"], sorted(info["versions"].items())))
    if config is not None:
        parts.append("Configuration of the run:\n\n```json\n" + json.dumps(config, indent=2) + "\n```")
    return "\n\n".join(parts)


def data_summary(task: Task, cases: Sequence[Case], splits: Mapping[str, str], split: str) -> dict[str, Any]:
    """Cases, patients and label balance per part of the data: the run's train/val/test split, or the one
    external dataset (``split`` ``all``)."""
    if split == "all":
        parts = {"external (all)": list(cases)}
    else:
        parts = {name: [c for c in cases if splits.get(c.case_id) == name] for name in ("train", "val", "test")}
    summary = {}
    for name, members in parts.items():
        targets = np.stack([task.target(c).numpy() for c in members]) if members else np.zeros((0,))
        summary[name] = {
            "cases": len(members),
            "patients": len({c.patient_id for c in members}),
            "balance": task.head.balance(targets) if members else {},
        }
    return summary


def data_section(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: the data summary as one table, a row per part (under a heading the caller gives)."""
    names = list(dict.fromkeys(name for part in summary.values() for name in part["balance"]))
    rows = [
        [part, info["cases"], info["patients"], *(info["balance"].get(n, 0) for n in names)]
        for part, info in summary.items()
    ]
    table = markdown_table(["split", "cases", "patients", *names], rows)
    return f"Label balance: the cases of each class (multi-label: the positive cases of each label).\n\n{table}"


def calibration_summary(head: Head, targets: np.ndarray, values: np.ndarray) -> dict[str, Any] | None:
    """The expected calibration error of the head's probabilities (None without probabilities)."""
    from osteoscope.metrics import expected_calibration_error

    pairs = head.calibration(targets, values)
    if pairs is None:
        return None
    outcome, probability, what = pairs
    ece = expected_calibration_error(outcome, probability, n_bins=ECE_BINS)
    return {"ece": ece, "n_bins": ECE_BINS, "of": what, "n": len(outcome)}


def evaluation_context(
    task: Task,
    manifest: Path,
    cases: Sequence[Case],
    splits: Mapping[str, str],
    split: str,
    targets: np.ndarray,
    values: np.ndarray,
) -> dict[str, Any]:
    """What an evaluation states beyond its metrics: provenance, the data summary, calibration."""
    return {
        "provenance": provenance(manifest),
        "data_summary": data_summary(task, cases, splits, split),
        "calibration": calibration_summary(task.head, targets, values),
    }


def sample_tiles(sample: Mapping[str, Any], limit: int = 5) -> list[tuple[str, np.ndarray]]:
    """The 2-D images of a model input sample: every channel of every image-like tensor (the middle slice
    of a volume), up to ``limit``, named like ``image[1]``."""
    tiles = []
    for key, value in sample.items():
        array = np.asarray(value, dtype=np.float32) if getattr(value, "ndim", 0) >= 3 else None
        if array is None:
            continue
        for c in range(array.shape[0]):
            tile = array[c] if array.ndim == 3 else array[c, array.shape[1] // 2]
            if tile.ndim == 2:
                tiles.append((key if array.shape[0] == 1 else f"{key}[{c}]", tile))
    return tiles[:limit]


def example_cases(
    head: Head,
    cases: Sequence[Case],
    targets: np.ndarray,
    values: np.ndarray,
    operating: Mapping[str, Any],
    build: Callable[[Case], Mapping[str, Any]],
    out: Path,
) -> str:
    """Markdown: the head's example cases (e.g. true and false positives and negatives) in a table, with the
    crops each was given to the model in ``examples.png``."""
    from osteoscope.report.plots import plot_case_examples

    picks = head.examples(targets, values, operating, EXAMPLES_PER_KIND)
    rows, figure_rows = [], []
    for kind, indices in picks.items():
        for i in indices:
            case = cases[i]
            truth, predicted = head.describe(targets[i]), head.describe_value(values[i], operating)
            rows.append([kind, case.case_id, case.patient_id, truth, predicted])
            tiles = sample_tiles(build(case))
            if tiles:
                figure_rows.append((f"{kind}: {case.case_id} (true {truth or '-'}; predicted {predicted})", tiles))
    if not rows:
        return ""
    parts = [
        "## Example cases",
        "The most confident cases of each kind at the decision rule, with the crops the model was given.",
        markdown_table(["kind", "case", "patient", "true", "predicted"], rows),
    ]
    if figure_rows:
        parts.append(f"![example cases]({plot_case_examples(figure_rows, out / 'examples.png').name})")
    return "\n\n".join(parts)


def number(value: float | None, spec: str = ".3f") -> str:
    """``value`` formatted by ``spec``, or "n/a" when it is None or NaN (a figure that could not be estimated)."""
    return "n/a" if value is None or math.isnan(value) else format(value, spec)


def _images(plots: Mapping[str, str], base: Path) -> str:
    """Markdown image links to plots, relative to the report's folder where possible."""
    lines = []
    for name, path in plots.items():
        file = Path(path)
        shown = file.relative_to(base) if file.is_relative_to(base) else file
        lines.append(f"![{name}]({shown})")
    return "\n\n".join(lines)


def training_section(histories: Mapping[str, Sequence[Mapping[str, Any]]], head: Head, out: Path, name: str) -> str:
    """Markdown: the training curves (training and validation loss, the monitored value per epoch)."""
    from osteoscope.report.plots import plot_training_curves

    if not any(histories.values()):
        return ""
    monitor = f"val_{head.monitor}"
    path = plot_training_curves(histories, monitor, out / f"{name}.png", mode=head.mode)
    caption = f"Loss per epoch and the validation {head.monitor} that chose the weights."
    return f"## Training\n\n{caption}\n\n![training]({path.name})"


def decision_rule(operating: Mapping[str, Any]) -> str:
    """The decision rule in words, with its threshold where it has one."""
    threshold = operating.get("threshold")
    return operating["source"] + (f", threshold {threshold:.4f}" if isinstance(threshold, float) else "")


def write_evaluation_report(
    result: Mapping[str, Any],
    head: Head,
    path: str | Path,
    *,
    history: Sequence[Mapping[str, Any]] = (),
    config: Mapping[str, Any] | None = None,
    examples: str = "",
) -> Path:
    """Write ``report.md`` and the self-contained ``report.html`` of one evaluation: data summary, training
    curves, metrics with intervals and n, plots, calibration, example cases (Markdown from
    :func:`example_cases`), provenance; returns the HTML path."""
    path = Path(path)
    rows = [("all", result["overall"]), *result["subsets"].items()]
    title = f"Evaluation of {result['model']} ({result['task']})"
    info = result.get("provenance")
    parts = [
        f"# {title}",
        provenance_lines(info) if info else "",
        f"- run: `{result['run']}`\n- data: `{result['data']}`, split **{result['split']}**: "
        f"{result['n_cases']} cases from {result['n_patients']} patients\n"
        f"- decision rule: {decision_rule(result['operating_point'])}\n- intervals: {result['interval']}",
        f"## Data\n\n{data_section(result['data_summary'])}" if result.get("data_summary") else "",
        training_section({result["model"]: history}, head, path.parent, "training"),
        "## Metrics",
        head.table(rows),
    ]
    for name, extra in result["extra"].items():
        parts += [f"## {name}", make_head(extra["head"], extra["names"]).table([(name, extra)])]
    calibration = result.get("calibration")
    if calibration:
        parts.append(
            f"Calibration: ECE {calibration['ece']:.3f} ({calibration['n_bins']} equal-width bins of the "
            f"{calibration['of']}, n = {calibration['n']})."
        )
    parts += ["## Plots", _images(result.get("plots", {}), path.parent), examples]
    parts += [f"## {name}\n\n{maps['markdown']}" for name, maps in result.get("maps", {}).items()]
    parts.append(robustness_section(head, {result["model"]: result}))
    if info:
        parts.append(provenance_section(info, config))
    return write_report("\n\n".join(p for p in parts if p) + "\n", path, title)[1]


def robustness_section(head: Head, results: Mapping[str, Mapping[str, Any]]) -> str:
    """The headline of each model on the unchanged test cases and under each test-time change (e.g. a protocol
    dropped), with the paired difference from unchanged; empty when no result has such changes."""
    results = {name: r for name, r in results.items() if r.get("robustness")}
    if not results:
        return ""
    changes = list(next(iter(results.values()))["robustness"])
    rows = []
    for name, r in results.items():
        cells = [name, interval(r["overall"][head.headline])]
        for change in changes:
            changed = r["robustness"][change]
            test = changed["versus_unchanged"]
            cells.append(
                f"{interval(changed['overall'][head.headline])}; {difference_text(test)}, "
                f"p {number(test['p_value'], '.3g')}"
            )
        rows.append(cells)
    caption = (
        f"{head.headline.replace('_', ' ')} on the unchanged test cases and with each change made at test time "
        "(same decision rule); after each: the paired difference from unchanged [95% CI] and its p."
    )
    return "\n\n".join(
        [
            "## Robustness: test cases changed at test time",
            caption,
            markdown_table(["model", "unchanged", *changes], rows),
        ]
    )


def comparison_table(head: Head, results: Mapping[str, Mapping[str, Any]], subset: str | None = None) -> str:
    """One head table with a row per model, for all cases or for one named subset."""
    rows = [
        (name, r["overall"] if subset is None else r["subsets"][subset])
        for name, r in results.items()
        if subset is None or subset in r["subsets"]
    ]
    return head.table(rows)


def difference_text(test: Mapping[str, Any]) -> str:
    """A paired test's difference with its 95% interval, e.g. ``+0.031 [-0.012, +0.074]``."""
    if not all(number(test[k]) != "n/a" for k in ("difference", "ci_low", "ci_high")):
        return NOT_ESTIMABLE
    return f"{test['difference']:+.3f} [{test['ci_low']:+.3f}, {test['ci_high']:+.3f}]"


def tests_table(comparisons: Sequence[Mapping[str, Any]]) -> str:
    """Paired tests of each model against the reference: difference, interval, p, McNemar."""
    rows = []
    for c in comparisons:
        mcnemar = c.get("mcnemar")
        rows.append(
            [
                f"{c['model']} vs {c['reference']}",
                c["subset"],
                f"{c['test']} ({c['metric']})",
                difference_text(c),
                number(c["p_value"], ".3g"),
                "" if mcnemar is None else f"b={mcnemar['b']}, c={mcnemar['c']}, p={mcnemar['p_value']:.3g}",
            ]
        )
    header = ["comparison", "cases", "test", "difference [95% CI]", "p", "McNemar at the chosen rules"]
    return markdown_table(header, rows)


def cost_table(costs: Mapping[str, Mapping[str, float]]) -> str:
    """Compute cost per model: size, FLOPs, training and inference time, peak memory."""
    header = [
        "model",
        "parameters (M)",
        "MB on disk",
        "GFLOPs / case",
        "train s / epoch",
        "inference ms / case",
        "peak MiB: process",
        "peak MiB: training step",
    ]
    rows = [
        [
            name,
            f"{c['params_m']:.3f}",
            f"{c['disk_mb']:.1f}",
            f"{c['gflops_per_case']:.3f}",
            f"{c['train_s_per_epoch']:.1f}",
            f"{c['infer_ms_per_case']:.2f}",
            f"{c['peak_mib']:.0f}",
            f"{c['step_peak_mib']:.0f}",
        ]
        for name, c in costs.items()
    ]
    return markdown_table(header, rows)


def kfold_report(summary: Mapping[str, Any], head: Head) -> str:
    """Markdown: per-fold headline, mean ± SD over folds, pooled out-of-fold table."""
    per_fold = markdown_table(
        ["fold", head.headline], [[f["fold"], interval(f[head.headline])] for f in summary["per_fold"]]
    )
    over = markdown_table(
        ["figure", "mean ± SD over folds", "min", "max"],
        [
            [name, f"{number(s['mean'])} ± {number(s['sd'])}", number(s["min"]), number(s["max"])]
            for name, s in summary["folds"].items()
        ],
    )
    return (
        f"# {summary['k']}-fold cross-validation of {summary['model']} ({summary['task']})\n\n"
        f"{provenance_lines(provenance())}\n\n"
        f"{summary['n_cases']} cases of {summary['n_patients']} patients, each scored once out of fold.\n\n"
        f"## Per fold\n\n{per_fold}\n\n## Over folds\n\n{over}\n\n"
        f"## Pooled out-of-fold predictions\n\n{head.table([('pooled', summary['pooled'])])}\n"
    )
