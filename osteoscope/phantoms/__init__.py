"""Synthetic study generators, one per task: the embedded default data of osteoscope.

Each generator writes a dataset folder in the manifest format (``docs/manifest.md``) and returns the
path of its ``manifest.csv``; every output is a deterministic function of the seed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from osteoscope.errors import ConfigError
from osteoscope.phantoms import avnfh_ct, calcaneus_multilabel, femur_fracture_xray, onfh_mr_staging, onfh_xray

PHANTOMS: dict[str, Callable[..., Path]] = {
    onfh_xray.TASK: onfh_xray.generate,
    calcaneus_multilabel.TASK: calcaneus_multilabel.generate,
    femur_fracture_xray.TASK: femur_fracture_xray.generate,
    onfh_mr_staging.TASK: onfh_mr_staging.generate,
    avnfh_ct.TASK: avnfh_ct.generate,
}


def generate_phantom(task: str, out_dir: str | Path, n: int, seed: int = 0, **options: Any) -> Path:
    """Generate ``n`` synthetic studies for ``task`` into ``out_dir`` and return the manifest path.

    Raises:
        ConfigError: If the task is unknown or an option is not one the generator takes.
    """
    if task not in PHANTOMS:
        known = ", ".join(sorted(PHANTOMS))
        raise ConfigError(f"unknown phantom task {task!r}; known tasks: {known}")
    generator = PHANTOMS[task]
    accepted = set(inspect.signature(generator).parameters) - {"out_dir", "n", "seed"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        takes = ", ".join(sorted(accepted))
        raise ConfigError(f"phantom {task!r} does not take option(s) {', '.join(unknown)}; it takes {takes}")
    return generator(out_dir, n, seed=seed, **options)
