"""Strict JSON out of the toolkit: no bare ``NaN`` or ``Infinity``, which strict parsers reject.

Metric results already say ``None`` with a reason where a figure cannot be estimated (see
:mod:`osteoscope.metrics.statistics`); any other non-finite float (a validation score of an epoch whose split
had one class, a test statistic without variance) is written as ``null`` too. numpy scalars and arrays become
plain numbers and lists. The dump itself runs with ``allow_nan=False``, so nothing non-standard gets through.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["dumps", "plain", "write_json"]


def plain(value: Any) -> Any:
    """``value`` with numpy types made Python ones and every NaN or infinite float made None."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def dumps(value: Any, **options: Any) -> str:
    """Strict JSON text of ``value`` (``json.dumps`` options such as ``indent`` pass through)."""
    return json.dumps(plain(value), allow_nan=False, **options)


def write_json(path: str | Path, value: Any) -> Path:
    """Write ``value`` as indented strict JSON to ``path``."""
    path = Path(path)
    path.write_text(dumps(value, indent=2) + "\n")
    return path
