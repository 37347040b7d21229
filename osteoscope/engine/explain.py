"""Draw what a trained model looked at for chosen cases: the ``maps`` it returns (SRANet's patch attention),
drawn by the task over the case's image (:meth:`osteoscope.tasks.base.Task.draw_maps`), beside its score.

Cases come from the run's dataset by ``case_id`` (the manifest's annotations, e.g. a lesion mask, are drawn
too) or as raw studies named like ``predict``'s. Nothing is refused here: the out-of-distribution guard is
``predict``'s; the figure is for looking.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from osteoscope.data.manifest import Case, load_manifest
from osteoscope.engine.inference import forward
from osteoscope.engine.runs import Run, load_run, log
from osteoscope.errors import ConfigError, DataError
from osteoscope.tasks.base import StudyInputs


def explain_cases(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    case_ids: Sequence[str] = (),
    studies: Sequence[StudyInputs] = (),
    data: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Draw the model's maps for the cases ``case_ids`` of the run's dataset (or of ``data``) and for raw
    ``studies``; one PNG per case and map kind in ``out_dir``.

    Returns:
        Per case: its id, the head's scores and the figures written.
    """
    run = load_run(run_dir)
    cases = [*_dataset_cases(run, case_ids, data), *(run.task.study_case(study, run.path) for study in studies)]
    if not cases:
        raise ConfigError("give cases to explain: --case ID (from the run's dataset) or images as for predict")
    out = Path(out_dir)
    return [_explain(run, case, out) for case in cases]


def _dataset_cases(run: Run, case_ids: Sequence[str], data: str | Path | None) -> list[Case]:
    """The cases named from the dataset (``data``, else the run's), in the order asked."""
    if not case_ids:
        return []
    if data is None and not run.data_found:
        raise DataError(f"the dataset {run.config.data.path} of {run.path} is not found: give --data")
    by_id = {case.case_id: case for case in load_manifest(data or run.config.data.path).cases}
    missing = [case_id for case_id in case_ids if case_id not in by_id]
    if missing:
        raise DataError(f"case(s) not in the dataset: {', '.join(missing)}")
    return [by_id[case_id] for case_id in case_ids]


def _explain(run: Run, case: Case, out: Path) -> dict[str, Any]:
    task, head = run.task, run.task.head
    batch = default_collate([task.builder(False, None)(case, None)])
    with torch.no_grad():
        outputs = forward(run.model.eval(), batch, model_name=run.model_name, task=task)
    maps = {name: value[0].float().numpy() for name, value in (outputs.get("maps") or {}).items()}
    if not maps:
        raise ConfigError(f"model {run.model_name} returns no maps to draw (SRANet does: its patch attention)")
    values = head.case_values(outputs["logits"], batch["label"]).numpy()
    scores = {k: round(float(v[0]), 4) for k, v in head.columns(values).items() if np.issubdtype(v.dtype, np.number)}
    title = f"{case.case_id}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items())
    figures = task.draw_maps(case, maps, out, title)
    if not figures:
        raise ConfigError(f"{task} has no drawing for the maps {', '.join(maps)}")
    for figure in figures:
        log.info("%s: %s", case.case_id, figure)
    return {"case": case.case_id, "scores": scores, "figures": [str(f) for f in figures]}
