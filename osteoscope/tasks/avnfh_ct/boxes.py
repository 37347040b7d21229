"""Fill the femoral-head ``box`` column of a CT dataset with :func:`find_heads`, or check the finder against
the boxes a dataset already has (``osteoscope boxes ct``).

A manifest row is one femoral head. Which head a row wants: its ``side`` column (right/left) when given,
else ``--side``; a volume showing one head needs neither. Two heads found and no side is an error, except
with ``side="both"``, which splits an unlabelled row into two rows (``<case_id>_r``, ``<case_id>_l``) of the
same image. Every automatic box also fills the row's ``auto_box`` cell (side, radius and cup cover of the
head), so automatic and hand-drawn boxes stay apart. A head with metal near it (an implant, a screw) still
gets its box, flagged in the log and in that cell. Every other column and row is kept as it was; the
manifest is replaced atomically.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from osteoscope.data.manifest import Case, format_box, load_manifest, manifest_path, write_manifest
from osteoscope.data.readers import read_image
from osteoscope.errors import ConfigError, DataError
from osteoscope.tasks.avnfh_ct.heads import FoundHead, HeadFinder, find_heads

SIDE_CHOICES = ("right", "left", "both")
AUTO_COLUMN = "auto_box"  # not box_...: the manifest reads every box_<name> column as a box
_SUFFIX = {"right": "_r", "left": "_l"}


@dataclass(frozen=True)
class BoxResult:
    """What the command did with one manifest row: ``status`` is filled, kept, skipped or checked;
    ``error_mm`` the centre error against the row's own box (check only), ``metal`` whether an implant is
    near the head boxed."""

    case_id: str
    status: str
    message: str
    error_mm: float | None = None
    metal: bool = False


Progress = Callable[[int, int, BoxResult], None]


def fill_boxes(
    dataset: str | Path,
    *,
    overwrite: bool = False,
    skip_bad: bool = False,
    side: str | None = None,
    finder: HeadFinder | None = None,
    progress: Progress | None = None,
) -> list[BoxResult]:
    """Write automatic boxes into the manifest of ``dataset`` for the rows without one (all rows with
    ``overwrite``); see the module docstring for the side rule.

    Raises:
        DataError: a bad row or a volume without the wanted head (unless ``skip_bad``, which leaves the row
            as it was and reports it), a row wanting a side the finder cannot tell.
        ConfigError: an unknown ``side``.
    """
    path, columns, rows, cases, results = _open(dataset, skip_bad, side)
    heads = _HeadCache(finder)
    out_rows: list[dict[str, str]] = []
    for i, row in enumerate(rows, start=1):
        case_id = row["case_id"].strip()
        case = cases.get(case_id)
        new_rows = [row]
        if case_id in results:
            result = results[case_id]
        elif case.boxes.get("box") is not None and not overwrite:
            result = BoxResult(case_id, "kept", "has a box (--overwrite replaces it)")
        else:
            try:
                new_rows, result = _box_rows(row, case, heads, side)
            except DataError as error:
                result = _failed(error, case_id, skip_bad)
        out_rows.extend(new_rows)
        results[case_id] = result
        if progress is not None:
            progress(i, len(rows), result)
    taken = sorted(c for c, k in Counter(r["case_id"] for r in out_rows).items() if k > 1)
    if taken:
        raise DataError(f"--side both would repeat case id(s) {', '.join(taken)}: rename them first", path=path)
    if any(r.status == "filled" for r in results.values()):
        added = [c for c in ("side", "box", AUTO_COLUMN) if c not in columns and any(r.get(c) for r in out_rows)]
        tmp = path.with_name(f".{path.name}.tmp")
        write_manifest(tmp, out_rows, [*columns, *added])
        os.replace(tmp, path)
    return [results[row["case_id"].strip()] for row in rows]


def check_boxes(
    dataset: str | Path,
    *,
    skip_bad: bool = False,
    side: str | None = None,
    finder: HeadFinder | None = None,
    progress: Progress | None = None,
) -> list[BoxResult]:
    """The finder's centre error (mm) against the box of every row that has one; writes nothing.

    Raises:
        DataError: as :func:`fill_boxes`; a dataset without a single box.
        ConfigError: ``side="both"``, which splits rows and has nothing to check.
    """
    if side == "both":
        raise ConfigError("--side both splits rows when filling boxes; --check compares one head per row")
    _, _, rows, cases, results = _open(dataset, skip_bad, side)
    ids = [row["case_id"].strip() for row in rows]
    boxed = [c for c in ids if c in results or cases[c].boxes.get("box") is not None]
    if not boxed:
        raise DataError("no row has a box to check against", path=manifest_path(dataset))
    heads = _HeadCache(finder)
    for i, case_id in enumerate(boxed, start=1):
        if case_id not in results:
            case = cases[case_id]
            try:
                if len(case.boxes["box"]) != 6:
                    raise DataError("column box: a CT box has 6 numbers, x0 y0 z0 x1 y1 z1", case_id=case_id)
                head, spacing = _wanted_head(case, heads, side)
                truth = np.array(case.boxes["box"], dtype=float)
                centre = (truth[:3] + truth[3:] - 1.0) / 2.0  # x, y, z of the box's middle voxel
                error = float(np.linalg.norm((np.array(head.centre) - centre[::-1]) * np.asarray(spacing)))
                message = f"centre error {error:.1f} mm ({_describe(head)})"
                results[case_id] = BoxResult(case_id, "checked", message, error, head.metal > 0)
            except DataError as error:
                results[case_id] = _failed(error, case_id, skip_bad)
        if progress is not None:
            progress(i, len(boxed), results[case_id])
    return [results[c] for c in boxed]


def summary(results: Sequence[BoxResult], *, check: bool = False) -> str:
    """One line: how many rows were filled, kept and skipped; with ``check`` the median and max error."""
    count = {s: sum(r.status == s for r in results) for s in ("filled", "kept", "skipped", "checked")}
    skipped = f", skipped {count['skipped']}" if count["skipped"] else ""
    if check:
        errors = [r.error_mm for r in results if r.error_mm is not None]
        if not errors:
            return f"no head found for any of the {len(results)} boxed rows{skipped}"
        heads = f"{len(errors)} head" + ("s" if len(errors) != 1 else "")
        return (
            f"centre error over {heads}: median {np.median(errors):.1f} mm, max {max(errors):.1f} mm, "
            f"{sum(e <= 10.0 for e in errors)} within 10 mm{skipped}"
        )
    metal = sum(r.status == "filled" and r.metal for r in results)
    flagged = f" ({metal} near metal: check them)" if metal else ""
    return f"rows filled {count['filled']}{flagged}, kept {count['kept']}{skipped}"


def _open(
    dataset: str | Path, skip_bad: bool, side: str | None
) -> tuple[Path, list[str], list[dict[str, str]], dict[str, Case], dict[str, BoxResult]]:
    """The manifest's path, header and raw rows (written back as they are), its valid cases by id, and a
    result for each row the validation skipped."""
    if side is not None and side not in SIDE_CHOICES:
        raise ConfigError(f"--side must be one of {', '.join(SIDE_CHOICES)}, got {side!r}")
    manifest = load_manifest(dataset, required_columns=("image",), skip_bad=skip_bad)
    with manifest.path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        reader.fieldnames = [c.strip() for c in reader.fieldnames or []]
        rows = [{k: v or "" for k, v in row.items()} for row in reader]
    skipped = {s.case_id: BoxResult(s.case_id, "skipped", s.reason) for s in manifest.skipped}
    return manifest.path, manifest.columns, rows, manifest.by_id(), skipped


class _HeadCache:
    """The heads found in each image, found once per image: both hips of one scan share it."""

    def __init__(self, finder: HeadFinder | None) -> None:
        self.finder = finder or HeadFinder()
        self.found: dict[Path, tuple[list[FoundHead], tuple[float, ...]] | DataError] = {}

    def __call__(self, path: Path) -> tuple[list[FoundHead], tuple[float, ...]]:
        """The heads of the CT at ``path`` and its spacing (z, y, x) mm."""
        if path not in self.found:
            try:
                image = read_image(path)
                if image.array.ndim != 3:
                    raise DataError("not a 3-D volume: femoral-head boxes need a CT", path=path)
                self.found[path] = (find_heads(image.array, image.spacing, self.finder), image.spacing)
            except DataError as error:
                self.found[path] = error
        found = self.found[path]
        if isinstance(found, DataError):
            raise found
        return found


def _wanted_head(case: Case, heads: _HeadCache, side: str | None) -> tuple[FoundHead, tuple[float, ...]]:
    """The head a row wants (its side column, else ``side``) and the volume's spacing."""
    found, spacing = heads(case.images["image"])
    want = case.side if case.side in _SUFFIX else side
    if len(found) == 1:
        if want in _SUFFIX and found[0].side not in ("", want):
            raise DataError(
                f"the scan shows the {found[0].side} femoral head only, not the {want} one (a metal implant "
                "there, or a head the finder missed): give the box in the manifest",
                case_id=case.case_id,
            )
        return found[0], spacing
    if want not in _SUFFIX:
        raise DataError(
            "two femoral heads found (right and left) and the row gives no side: add a side column "
            "or pass --side right|left|both",
            case_id=case.case_id,
        )
    return next(h for h in found if h.side == want), spacing


def _box_rows(
    row: dict[str, str], case: Case, heads: _HeadCache, side: str | None
) -> tuple[list[dict[str, str]], BoxResult]:
    """The row with its box and note filled, or (``side="both"``, no side column, two heads) two rows."""
    if side == "both" and case.side not in _SUFFIX:
        found, _ = heads(case.images["image"])
        if len(found) == 2:
            if case.labels.get("label") is not None or case.stage is not None:
                raise DataError(
                    "a labelled row belongs to one femoral head: give its side rather than --side both",
                    case_id=case.case_id,
                )
            rows = [{**row, "case_id": case.case_id + _SUFFIX[h.side], "side": h.side, **_cells(h)} for h in found]
            message = "; ".join(
                f"{r['case_id']}: box {r['box']} ({_describe(h)})" for r, h in zip(rows, found, strict=True)
            )
            metal = any(h.metal for h in found)
            return rows, BoxResult(case.case_id, "filled", f"split into two rows, {message}", metal=metal)
    head, _ = _wanted_head(case, heads, side)
    filled = {**row, **_cells(head)}
    message = f"box {filled['box']} ({_describe(head)})"
    return [filled], BoxResult(case.case_id, "filled", message, metal=head.metal > 0)


def _cells(head: FoundHead) -> dict[str, str]:
    """The ``box`` and ``auto_box`` cells of an automatic box."""
    return {"box": format_box(head.box), AUTO_COLUMN: _describe(head)}


def _describe(head: FoundHead) -> str:
    """Side, radius and cup cover of a found head, and the metal near it."""
    where = f"{head.side} head" if head.side else "head"
    text = f"{where}, r {head.radius_mm:.1f} mm, cup cover {head.cover:.2f}"
    if head.metal:
        text += f", metal nearby ({head.metal} voxels): check the box"
    return text


def _failed(error: DataError, case_id: str, skip_bad: bool) -> BoxResult:
    """A row the finder could not box: raised, or with ``skip_bad`` reported and left as it was."""
    error = error if error.case_id else error.with_case(case_id)
    if not skip_bad:
        raise error
    return BoxResult(case_id, "skipped", str(error))
