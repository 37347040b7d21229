"""Markdown reports: one evaluation, a k-fold cross-validation, and the tables of a study comparing models.

The tables come from the task's head (:meth:`osteoscope.heads.Head.table`), so one report writer serves
binary, multi-class, multi-label and pretext results alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from osteoscope.heads import NOT_ESTIMABLE, Head, interval, make_head, markdown_table


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


def write_evaluation_report(result: Mapping[str, Any], head: Head, path: str | Path) -> Path:
    """Write the Markdown report of one evaluation (metrics.json in words, with its plots)."""
    path = Path(path)
    rows = [("all", result["overall"]), *result["subsets"].items()]
    operating = result["operating_point"]
    rule = f"- decision rule: {operating['source']}" + (
        f", threshold {operating['threshold']:.4f}" if "threshold" in operating else ""
    )
    parts = [
        f"# Evaluation of {result['model']} ({result['task']})",
        f"- run: `{result['run']}`\n- data: `{result['data']}`, split **{result['split']}**: "
        f"{result['n_cases']} cases from {result['n_patients']} patients\n{rule}\n- intervals: {result['interval']}",
        head.table(rows),
    ]
    for name, extra in result["extra"].items():
        parts += [f"## {name}", make_head(extra["head"], extra["names"]).table([(name, extra)])]
    parts.append(_images(result.get("plots", {}), path.parent))
    path.write_text("\n\n".join(p for p in parts if p) + "\n")
    return path


def comparison_table(head: Head, results: Mapping[str, Mapping[str, Any]], subset: str | None = None) -> str:
    """One head table with a row per model, for all cases or for one named subset."""
    rows = [
        (name, r["overall"] if subset is None else r["subsets"][subset])
        for name, r in results.items()
        if subset is None or subset in r["subsets"]
    ]
    return head.table(rows)


def tests_table(comparisons: Sequence[Mapping[str, Any]]) -> str:
    """Paired tests of each model against the reference: difference, interval, p, McNemar."""
    rows = []
    for c in comparisons:
        mcnemar = c.get("mcnemar")
        estimable = all(number(c[k]) != "n/a" for k in ("difference", "ci_low", "ci_high"))
        rows.append(
            [
                f"{c['model']} vs {c['reference']}",
                c["subset"],
                f"{c['test']} ({c['metric']})",
                f"{c['difference']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]" if estimable else NOT_ESTIMABLE,
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
        f"{summary['n_cases']} cases of {summary['n_patients']} patients, each scored once out of fold.\n\n"
        f"## Per fold\n\n{per_fold}\n\n## Over folds\n\n{over}\n\n"
        f"## Pooled out-of-fold predictions\n\n{head.table([('pooled', summary['pooled'])])}\n"
    )
