"""Pixel fingerprints: a hash of each case's decoded images, to find one image under two case ids.

An external test set may hold a training image again under new case and patient ids (re-exported, renamed,
or converted from DICOM to PNG with the same pixels); comparing ids cannot see that. The hash is taken of the
decoded array (shape and float32 values), so it does not depend on the file format, its tags or its
compression, and it is recorded while the cases are checked (:func:`recording`, used by
:func:`osteoscope.engine.runs.check_cases`), so no image is decoded for it alone. A run keeps the hashes of
its training and validation images in ``pixel_hashes.csv``.

Only identical pixels match: an image that was resampled, cropped, windowed differently or saved lossily
(JPEG) has another hash.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import numpy as np

__all__ = ["HASHES_FILE", "Fingerprints", "load_hashes", "pixel_hash", "record", "recording", "save_hashes"]

HASHES_FILE = "pixel_hashes.csv"

#: case id -> image column -> (hash, file)
Fingerprints = dict[str, dict[str, tuple[str, str]]]

_table: ContextVar[Fingerprints | None] = ContextVar("osteoscope_pixel_hashes", default=None)


def pixel_hash(array: np.ndarray) -> str:
    """SHA-256 of an image's shape and float32 pixel values (hex)."""
    digest = hashlib.sha256(str(tuple(array.shape)).encode())
    digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return digest.hexdigest()


@contextmanager
def recording(table: Fingerprints) -> Iterator[Fingerprints]:
    """Collect into ``table`` the hash of every case image read inside the block (see :func:`record`)."""
    token = _table.set(table)
    try:
        yield table
    finally:
        _table.reset(token)


def record(case_id: str, column: str, array: np.ndarray, path: str | Path) -> None:
    """Add one decoded case image to the table of the enclosing :func:`recording`, if any (else nothing)."""
    table = _table.get()
    if table is not None:
        table.setdefault(case_id, {})[column] = (pixel_hash(array), str(path))


def save_hashes(
    path: str | Path, table: Mapping[str, Mapping[str, tuple[str, str]]], splits: Mapping[str, str]
) -> Path:
    """Write the hashes of the cases in ``splits`` (case id -> split) as CSV: case_id, split, column, hash, file."""
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["case_id", "split", "column", "sha256", "file"])
        for case_id, columns in table.items():
            if case_id in splits:
                for column, (digest, file) in columns.items():
                    writer.writerow([case_id, splits[case_id], column, digest, file])
    return path


def load_hashes(path: str | Path) -> dict[str, tuple[str, str, str, str]]:
    """Hash -> (case_id, split, column, file) from a file written by :func:`save_hashes`."""
    with Path(path).open(newline="") as handle:
        return {
            row["sha256"]: (row["case_id"], row["split"], row["column"], row["file"]) for row in csv.DictReader(handle)
        }
