"""Synthetic study generators, one per task: the embedded default data of osteoscope.

Each generator writes a dataset folder in the manifest format (``docs/manifest.md``) and returns the
path of its ``manifest.csv``; every output is a deterministic function of the seed. A task names its
generator (``Task.phantom``), so the tasks are the one list of what can be generated.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from osteoscope.errors import ConfigError

MARKER = "phantom.json"  # written beside the manifest: the dataset is synthetic (model cards say so)


def is_phantom(dataset: str | Path) -> bool:
    """Whether a dataset folder (or manifest, or a sub-folder such as ``pretext/``) was made by a phantom."""
    path = Path(dataset).resolve()
    folder = path.parent if path.suffix == ".csv" else path
    return any((f / MARKER).is_file() for f in (folder, folder.parent))


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
    manifest = generator(out_dir, n, seed=seed, **options)
    record = {"task": task, "n": n, "seed": seed, **{k: v for k, v in options.items() if k != "progress"}}
    (Path(out_dir) / MARKER).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return manifest
