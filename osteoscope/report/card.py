"""The model card of a run: ``model_card.md`` beside the weights, for whoever is handed them.

Written when the run is evaluated (again after every evaluation, so it lists them all): intended use, the
model, the data it was trained on, each evaluation's metrics with their 95% intervals, the operating point,
the known limits, and that osteoscope is not a medical device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from osteoscope.heads import make_head
from osteoscope.phantoms import is_phantom
from osteoscope.report.summary import data_section, decision_rule, file_hash, provenance, provenance_lines

if TYPE_CHECKING:
    from osteoscope.tasks import Task

MODEL_CARD = "model_card.md"
WEIGHTS = "best.pt"
FEW_PATIENTS = 100  # below this many test patients the card warns that the intervals are wide

NOT_A_DEVICE = (
    "**Not a medical device.** osteoscope is research software. These weights and their outputs are not "
    "approved for, and must not be used for, diagnosis, treatment or any other clinical decision."
)


def _limits(task: Task, data: str, evaluations: Sequence[Mapping[str, Any]]) -> list[str]:
    """The known limits that follow from the task, the training data and the evaluations."""
    limits = []
    if is_phantom(data):
        limits.append(
            "The training data are osteoscope phantoms (synthetic images drawn from simple shapes). These weights "
            "say nothing about real films or scans; train and evaluate on real data before drawing any conclusion."
            + (f" {task.phantom_gap}" if task.phantom_gap else "")
        )
    if not evaluations:
        limits.append("The run has not been evaluated on held-out patients: its performance is unknown.")
    for e in evaluations:
        if e["n_patients"] < FEW_PATIENTS:
            limits.append(
                f"The {e['split']} evaluation on `{e['data']}` holds only {e['n_patients']} patients: its intervals "
                "are wide and rare subgroups are barely represented."
            )
    limits += [
        "Validated only on the data listed here, from one source: performance at other sites, on other "
        "scanners, protocols or populations (age, sex, implants, other disorders) is unknown.",
        "The operating point was chosen on validation patients of the training source; at a new site check it "
        "(and the calibration) on local data before relying on a decision.",
        "Inputs unlike the training data (another body part, modality or view) can still get a confident score.",
    ]
    return limits


def model_card(task: Task, config: Mapping[str, Any], run_dir: Path, evaluations: Sequence[Mapping[str, Any]]) -> str:
    """The Markdown of a run's model card."""
    head = task.head
    data = str(config["data"]["path"])
    model = config["model"]["name"] or task.default_model
    parts = [
        f"# Model card: {model} for {task.name}",
        provenance_lines(provenance()),
        NOT_A_DEVICE,
        "## Intended use",
        f"Research on {task.description}: reproducing a published model or comparing models on one's own "
        f"data, with honest intervals. The model outputs {head.output_text()}. Out of scope: any clinical use.",
        "## Model",
        f"- model `{model}`, preset `{config['model']['preset']}`, options `{config['model']['options']}`\n"
        f"- weights `{WEIGHTS}` (SHA-256 `{file_hash(run_dir / WEIGHTS)}`), chosen on the validation "
        f"{head.monitor} ({head.mode}imised) over up to {config['train']['epochs']} epochs",
        "## Training data",
        f"`{data}`" + (" (synthetic phantom)" if is_phantom(data) else ""),
    ]
    internal = next((e for e in evaluations if e["split"] != "all"), None)
    if internal and internal.get("data_summary"):
        manifest = internal["provenance"]["manifest"]
        parts += [f"Manifest SHA-256 `{manifest['sha256']}`.", data_section(internal["data_summary"])]
    parts.append("## Evaluations (95% patient-level bootstrap intervals)")
    for e in evaluations:
        rows = [("all", e["overall"]), *e["subsets"].items()]
        parts += [
            f"### {e['split']} split of `{e['data']}`: {e['n_cases']} cases, {e['n_patients']} patients",
            f"Operating point: {decision_rule(e['operating_point'])}.",
            make_head(e["head"], e["names"]).table(rows),
        ]
        if e.get("calibration"):
            parts.append(f"Calibration: ECE {e['calibration']['ece']:.3f} ({e['calibration']['of']}).")
    if not evaluations:
        parts.append("None yet.")
    parts += ["## Known limits", "\n".join(f"- {line}" for line in _limits(task, data, evaluations)), NOT_A_DEVICE]
    return "\n\n".join(parts) + "\n"


def write_model_card(
    path: Path, task: Task, config: Mapping[str, Any], evaluations: Sequence[Mapping[str, Any]]
) -> Path:
    """Write ``model_card.md`` (``path``) for the run folder it sits in."""
    path.write_text(model_card(task, config, path.parent, evaluations))
    return path
