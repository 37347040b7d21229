"""Markdown reports of evaluations: one run's report, and a side-by-side comparison of runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

TABLE_METRICS = ("auc", "sensitivity", "specificity", "precision", "f1", "accuracy")


def format_ci(metrics: dict[str, Any], name: str) -> str:
    """``0.912 [0.871, 0.948]`` for a metric with its 95% interval."""
    low, high = metrics["ci95"].get(name, (float("nan"), float("nan")))
    return f"{metrics[name]:.3f} [{low:.3f}, {high:.3f}]"


def metrics_table(rows: Sequence[tuple[str, dict[str, Any]]], names: Sequence[str] = TABLE_METRICS) -> str:
    """A Markdown table: one row per (label, metrics-with-ci) pair, one column per metric."""
    lines = ["| | n (pos) | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for label, metrics in rows:
        cells = [format_ci(metrics, name) for name in names]
        lines.append(f"| {label} | {metrics['n']} ({metrics['n_positive']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_evaluation_report(result: dict[str, Any], path: str | Path) -> Path:
    """Write the Markdown report of one evaluation (metrics.json in words, with its plots)."""
    path = Path(path)
    overall = result["overall"]
    rows = [("all", overall), *result["subsets"].items()]
    if "per_hip" in result:
        rows.append(("per hip (side scores)", result["per_hip"]))
    (tn, fp), (fn, tp) = overall["confusion_matrix"]
    text = f"""# Evaluation of {result["model"]}

- run: `{result["run"]}`
- data: `{result["data"]}`, split **{result["split"]}**: {result["n_cases"]} cases from {result["n_patients"]} patients
- threshold {result["threshold"]:.4f} ({result["threshold_source"]})
- intervals: {result["interval"]}

{metrics_table(rows)}

Confusion matrix at the threshold: TN {tn}, FP {fp}, FN {fn}, TP {tp}.

![ROC](roc.png)

![Confusion matrix](confusion.png)
"""
    path.write_text(text)
    return path


def comparison_report(results: Sequence[dict[str, Any]], comparisons: Sequence[dict[str, Any]] = ()) -> str:
    """Markdown comparing several evaluations on the same cases, with DeLong tests between them."""
    parts = ["## All test cases", metrics_table([(r["model"], r["overall"]) for r in results])]
    for subset in results[0]["subsets"]:
        parts += [
            f"## {subset}",
            metrics_table([(r["model"], r["subsets"][subset]) for r in results if subset in r["subsets"]]),
        ]
    for test in comparisons:
        parts.append(
            f"DeLong test {test['a']} vs {test['b']} ({test['subset']}): AUC difference {test['difference']:+.3f} "
            f"[{test['ci_low']:+.3f}, {test['ci_high']:+.3f}], p = {test['p_value']:.3g}"
        )
    return "\n\n".join(parts) + "\n"
