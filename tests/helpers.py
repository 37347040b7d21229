"""Small helpers shared by the tests."""

from __future__ import annotations

import csv
from pathlib import Path


def read_rows(manifest: Path) -> list[dict[str, str]]:
    """The rows of a manifest as raw strings, exactly as written."""
    with manifest.open(newline="") as handle:
        return list(csv.DictReader(handle))


def box_of(text: str) -> tuple[int, ...]:
    """A manifest box cell as integers."""
    return tuple(int(v) for v in text.split())


def tiny_hip_run(root: Path, n: int, seed: int) -> Path:
    """A one-epoch tiny AsT run on ``n`` small, obvious hip phantoms under ``root`` (for predict-path tests)."""
    from osteoscope.config import config_from_dict
    from osteoscope.engine.trainer import train
    from osteoscope.phantoms import generate_phantom

    generate_phantom("onfh-xray", root / "hips", n=n, seed=seed, subtlety=0.0, image_size=(160, 208))
    config = {
        "data": {"path": str(root / "hips"), "options": {"roi_size": 32}},
        "model": {"name": "ast", "preset": "tiny"},
        "train": {"epochs": 1, "batch_size": 16, "patience": 0, "threads": 2},
    }
    return train(config_from_dict(config), root / "run", verbose=False)
