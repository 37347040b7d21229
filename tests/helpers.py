"""Small helpers shared by the phantom tests."""

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
