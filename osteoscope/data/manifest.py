"""Read and validate ``manifest.csv``, the dataset format shared by every task (see docs/manifest.md)."""

from __future__ import annotations

import csv
import difflib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from osteoscope.data.readers import missing_reason
from osteoscope.errors import DataError

MANIFEST_NAME = "manifest.csv"
REQUIRED_COLUMNS = ("case_id", "patient_id")
ENGINE_COLUMNS = (*REQUIRED_COLUMNS, "split")  # read for every task; each task's schema names the rest
NEAR_MISS_CUTOFF = 0.75  # difflib similarity from which an unread column is taken for a misspelt known one
SIDES = ("none", "left", "right", "both")
SPLITS = ("train", "val", "test")

Box = tuple[int, ...]


@dataclass(frozen=True)
class Case:
    """One row of a manifest: a study with its files, labels and annotations.

    Dictionaries are keyed by the manifest column name (``image``, ``image_t1``, ``box_left``, ...);
    a missing file or box (empty cell) maps to ``None``.
    """

    case_id: str
    patient_id: str
    images: dict[str, Path | None]
    masks: dict[str, Path | None] = field(default_factory=dict)
    boxes: dict[str, Box | None] = field(default_factory=dict)
    labels: dict[str, int | None] = field(default_factory=dict)
    side: str | None = None
    stage: int | None = None
    split: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def series_of(self, column: str) -> str | None:
        """The SeriesInstanceUID to read from the DICOM folder in image ``column``, from the manifest column
        :func:`series_column` names (None: the folder must hold one series)."""
        return self.extra.get(series_column(column)) or None

    def files(self) -> list[tuple[str, Path]]:
        """All (column, path) pairs of files this case names, images first."""
        named = {**self.images, **self.masks}
        return [(column, path) for column, path in named.items() if path is not None]


@dataclass(frozen=True)
class SkippedCase:
    """A case left out under ``--skip-bad``, with the reason shown to the user."""

    case_id: str
    reason: str


@dataclass
class Manifest:
    """The validated cases of one dataset folder."""

    path: Path
    cases: list[Case]
    columns: list[str]
    skipped: list[SkippedCase] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.path.parent

    def by_id(self) -> dict[str, Case]:
        return {case.case_id: case for case in self.cases}

    def without(self, bad: Iterable[SkippedCase]) -> Manifest:
        """A copy with the given cases removed and recorded as skipped."""
        bad = list(bad)
        drop = {b.case_id for b in bad}
        kept = [case for case in self.cases if case.case_id not in drop]
        return Manifest(self.path, kept, self.columns, [*self.skipped, *bad])


def series_column(image_column: str) -> str:
    """The manifest column choosing the DICOM series of an image column: ``image`` -> ``series_uid``,
    ``image_t1`` -> ``series_uid_t1``."""
    return "series_uid" + image_column.removeprefix("image")


def manifest_path(path: str | Path) -> Path:
    """Resolve a dataset folder or a manifest file to the manifest file; the error says which is missing."""
    path = Path(path)
    if path.is_dir():
        if not (path / MANIFEST_NAME).is_file():
            raise DataError(f"the dataset folder holds no {MANIFEST_NAME}", path=path)
        return path / MANIFEST_NAME
    if not path.is_file():
        where = "" if path.is_absolute() else f" (a relative path, taken from the working directory {Path.cwd()})"
        raise DataError(f"no dataset folder or manifest file at this path{where}", path=path)
    return path


def nearest_name(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``name`` most likely misspells (difflib, case-insensitive), or None when none is close."""
    by_lower = {c.lower(): c for c in candidates}
    match = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=NEAR_MISS_CUTOFF)
    return by_lower[match[0]] if match else None


def unread_columns(columns: Sequence[str], known: Sequence[str]) -> dict[str, str | None]:
    """The header ``columns`` outside ``known``, each with the known column it is nearest to among those the
    header lacks (``stages`` -> ``stage``, ``box_lft`` -> ``box_left``), or None."""
    absent = [c for c in known if c not in columns]
    return {c: nearest_name(c, absent) for c in columns if c not in known}


def parse_box(text: str, *, case_id: str, column: str) -> Box | None:
    """Parse ``"x0 y0 x1 y1"`` (2D) or ``"x0 y0 z0 x1 y1 z1"`` (3D); empty means no box."""
    text = text.strip()
    if not text:
        return None
    try:
        values = tuple(round(float(v)) for v in text.replace(",", " ").split())
    except ValueError as error:
        raise DataError(f"column {column}: box {text!r} is not a list of numbers", case_id=case_id) from error
    if len(values) not in (4, 6):
        raise DataError(f"column {column}: box needs 4 (2D) or 6 (3D) numbers, got {len(values)}", case_id=case_id)
    half = len(values) // 2
    if any(hi <= lo for lo, hi in zip(values[:half], values[half:], strict=True)):
        raise DataError(f"column {column}: box {text!r} has an end not after its start", case_id=case_id)
    return values


def _parse_int(text: str, *, case_id: str, column: str, allowed: Sequence[int] | None) -> int | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError as error:
        raise DataError(f"column {column}: unknown label {text!r} (expected an integer)", case_id=case_id) from error
    if value != int(value):
        raise DataError(f"column {column}: unknown label {text!r} (expected an integer)", case_id=case_id)
    if allowed is not None and int(value) not in allowed:
        raise DataError(
            f"column {column}: unknown label {text!r} (allowed: {', '.join(map(str, allowed))})", case_id=case_id
        )
    return int(value)


def _resolve(root: Path, text: str) -> Path | None:
    text = text.strip()
    if not text:
        return None
    path = Path(text)
    return path if path.is_absolute() else root / path


def _row_to_case(row: dict[str, str], root: Path, label_values: dict[str, Sequence[int]]) -> Case:
    case_id = row["case_id"].strip()
    images, masks, boxes, labels, extra = {}, {}, {}, {}, {}
    for column, raw in row.items():
        value = raw or ""
        if column in REQUIRED_COLUMNS or column in ("side", "stage", "split"):
            continue
        if column == "image" or column.startswith("image_"):
            images[column] = _resolve(root, value)
        elif column == "mask" or column.startswith("mask_"):
            masks[column] = _resolve(root, value)
        elif column == "box" or column.startswith("box_"):
            boxes[column] = parse_box(value, case_id=case_id, column=column)
        elif column == "label" or column.startswith("label_"):
            labels[column] = _parse_int(value, case_id=case_id, column=column, allowed=label_values.get(column))
        else:
            extra[column] = value
    side = (row.get("side") or "").strip().lower() or None
    if side is not None and side not in SIDES:
        raise DataError(f"column side: unknown value {side!r} (allowed: {', '.join(SIDES)})", case_id=case_id)
    split = (row.get("split") or "").strip().lower() or None
    if split is not None and split not in SPLITS:
        raise DataError(f"column split: unknown value {split!r} (allowed: {', '.join(SPLITS)})", case_id=case_id)
    stage = _parse_int(row.get("stage") or "", case_id=case_id, column="stage", allowed=None)
    if all(path is None for path in images.values()):
        raise DataError("no image path given", case_id=case_id)
    return Case(case_id, row["patient_id"].strip(), images, masks, boxes, labels, side, stage, split, extra)


def _check_filled(case: Case, required: Sequence[str], any_of: Sequence[str]) -> None:
    """Raise a DataError naming the case when a required file column, or all of ``any_of``, is empty."""
    named = {**case.images, **case.masks}
    empty = [column for column in required if named.get(column) is None]
    if empty:
        raise DataError(f"no file given in column(s) {', '.join(empty)}", case_id=case.case_id)
    if any_of and all(named.get(column) is None for column in any_of):
        raise DataError(f"none of the columns {', '.join(any_of)} names a file", case_id=case.case_id)


def load_manifest(
    path: str | Path,
    *,
    required_labels: Sequence[str] = (),
    label_values: dict[str, Sequence[int]] | None = None,
    required_columns: Sequence[str] = (),
    any_of_columns: Sequence[str] = (),
    skip_bad: bool = False,
) -> Manifest:
    """Read and validate a manifest.

    Checks the required columns, unique case ids, parseable labels/boxes/sides and that every named file
    exists. Whole-manifest problems (missing columns, duplicate ids) always raise. A problem with one case
    raises a :class:`DataError` naming it, or with ``skip_bad`` the case is left out and listed in
    ``Manifest.skipped``.

    Args:
        path: The dataset folder or its manifest.csv.
        required_labels: Label columns the task needs; their absence from the header is an error.
        label_values: Allowed integer values per label column (others are "unknown labels").
        required_columns: File columns (images, masks) every case must fill.
        any_of_columns: Image columns of which every case must fill at least one (when the header has none
            of them, that is a missing-column error).
        skip_bad: Skip and record bad cases instead of raising.
    """
    path = manifest_path(path)
    label_values = label_values or {}
    columns, rows = read_rows(path)
    missing = [c for c in (*REQUIRED_COLUMNS, *required_labels, *required_columns) if c not in columns]
    if not any(c == "image" or c.startswith("image_") for c in columns):
        missing.append("image (or image_<key>)")
    elif any_of_columns and not any(c in columns for c in any_of_columns):
        missing.append(f"one of {', '.join(any_of_columns)}")
    if missing:
        raise DataError(f"manifest is missing column(s): {', '.join(missing)}", path=path)
    seen: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        case_id = (row.get("case_id") or "").strip()
        if not case_id:
            raise DataError(f"line {line}: empty case_id", path=path)
        if case_id in seen:
            raise DataError(f"duplicate case_id {case_id!r} on lines {seen[case_id]} and {line}", path=path)
        seen[case_id] = line
        if not (row.get("patient_id") or "").strip():
            raise DataError(f"line {line}: empty patient_id", case_id=case_id, path=path)
    cases: list[Case] = []
    skipped: list[SkippedCase] = []
    for row in rows:
        try:
            case = _row_to_case(row, path.parent, label_values)
            _check_filled(case, required_columns, any_of_columns)
            for _, file in case.files():
                if not file.exists():
                    raise DataError(missing_reason(file), case_id=case.case_id, path=file)
        except DataError as error:
            error = error if error.case_id else error.with_case(row["case_id"].strip())
            if not skip_bad:
                raise error from None
            skipped.append(SkippedCase(error.case_id or "", str(error)))
            continue
        cases.append(case)
    return Manifest(path, cases, columns, skipped)


def read_rows(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header (names stripped) and raw rows of a manifest file, unvalidated: for tools that rewrite a
    manifest and must keep every row and column as it was."""
    with Path(path).open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        reader.fieldnames = columns
        return columns, list(reader)


def write_manifest(path: str | Path, rows: Sequence[dict[str, object]], columns: Sequence[str]) -> Path:
    """Write manifest rows (values as given; ``None`` becomes an empty cell) to ``path``, atomically (a
    temporary file beside it, then a rename), so a crash mid-write never leaves a truncated manifest."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.tmp")
    with temp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row[c] for c in columns})
    os.replace(temp, path)
    return path


def format_box(box: Sequence[int]) -> str:
    """The manifest text of a box: space-separated integers."""
    return " ".join(str(int(v)) for v in box)
