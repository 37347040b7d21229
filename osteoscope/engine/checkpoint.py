"""Crash-safe checkpoints: write to a temporary file in the same folder, flush to disk, then rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from osteoscope.errors import DataError


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """Save ``state`` with ``torch.save`` so that ``path`` is always either the old or the new file.

    A process killed mid-write leaves at most a stray temporary file, never a truncated checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU, with a clear error when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError("checkpoint not found", path=path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a corrupt file
        raise DataError(f"checkpoint cannot be read ({type(error).__name__}: {error})", path=path) from None
