"""Synthetic study generators, one per task: the embedded default data of osteoscope.

Each generator writes a dataset folder in the manifest format (``docs/manifest.md``) and returns the
path of its ``manifest.csv``; every output is a deterministic function of the seed. A task names its
generator (``Task.phantom``), so the tasks are the one list of what can be generated.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from osteoscope.errors import ConfigError


def generate_phantom(task: str, out_dir: str | Path, n: int, seed: int = 0, **options: Any) -> Path:
    """Generate ``n`` synthetic studies for ``task`` into ``out_dir`` and return the manifest path.

    Raises:
        ConfigError: If the task is unknown or an option is not one the generator takes.
    """
    from osteoscope.tasks import get_task

    generator = get_task(task).phantom
    accepted = set(inspect.signature(generator).parameters) - {"out_dir", "n", "seed"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        takes = ", ".join(sorted(accepted))
        raise ConfigError(f"phantom {task!r} does not take option(s) {', '.join(unknown)}; it takes {takes}")
    return generator(out_dir, n, seed=seed, **options)
