"""Import DICOM MR studies as cases of ``onfh-mr-staging``: one study folder becomes one manifest row.

A study folder is searched recursively; its DICOM image files are grouped by SeriesInstanceUID (other files
are skipped and named in the log). Each MR series is given to a protocol (``t1``, ``t2``, ``pdfs``,
``stir``, ``t1fs``) by the first matching rule of a YAML mapping: the user's ``--mapping`` file first, then
the shipped :data:`DEFAULT_MAPPING` (its header comment is the format's reference). Nothing is guessed: a
series no rule matches is listed as unassigned, and two series matching one protocol are listed as
duplicates and stop the import until ``--pick PROTOCOL=SERIES`` or a rule says which one is meant.

Every protocol is then resampled onto the grid of one reference protocol (``--reference``, default ``t1``,
else the first present), from the patient geometry of the series (ImagePositionPatient,
ImageOrientationPatient, PixelSpacing, as :func:`~osteoscope.data.readers.read_image` reads a series), with
linear interpolation and zero outside the series (a voxel is a box: a point half a voxel past the last
centre still takes the edge value, as in ITK/SimpleITK's ``Resample``). The volumes are written as NIfTI,
``images/<case_id>_<protocol>.nii.gz``, all with the reference's affine, and the row names them in the
``image_<protocol>`` columns, with ``patient_id`` (DICOM PatientID unless given), ``label`` (ARCO 0-3, or
empty) and ``head_slice`` (the slice through the femoral head, or empty for the middle one).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import yaml
from nibabel.orientations import io_orientation
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from scipy.ndimage import map_coordinates

from osteoscope.data.manifest import MANIFEST_NAME, nearest_name, read_rows, write_manifest
from osteoscope.data.readers import Image, read_image
from osteoscope.errors import ConfigError, DataError
from osteoscope.tasks.onfh_mr_staging import STAGES

#: The mapping shipped with the package; a ``--mapping`` file is tried before it.
DEFAULT_MAPPING = Path(str(resources.files(__package__) / "protocols.yaml"))
#: The protocol name of a rule that leaves a series out on purpose.
IGNORE = "ignore"
IMAGE_FOLDER = "images"
#: The axes of a volume as read (:func:`~osteoscope.data.readers.read_image` orients NIfTI to patient axes).
PLANES = ("axial", "coronal", "sagittal")
_LOG = logging.getLogger(__name__)
_MAPPING_KEYS = ("protocols", "fat_suppression", "rules")
_PROTOCOL_NAME = re.compile(r"[a-z0-9]+")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_ZYX_TO_IJK = np.eye(4)[[2, 1, 0, 3]]  # swaps the first and third index (its own inverse)
_NOT_DICOM = (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError)

Patterns = tuple[re.Pattern[str], ...]


# --------------------------------------------------------------------------- the mapping


@dataclass(frozen=True)
class Rule:
    """One rule of a mapping: the series whose tags all match ``conditions`` (and whose fat suppression is
    ``fat_suppressed`` unless None) is ``protocol``; ``source`` names the file and rule number for the log."""

    protocol: str
    conditions: tuple[tuple[str, Patterns], ...]
    fat_suppressed: bool | None
    source: str


@dataclass(frozen=True)
class ProtocolMap:
    """Rules in priority order, the protocol names (the manifest's ``image_<name>`` columns, in this order)
    and the tag patterns of which any makes a series fat-suppressed."""

    protocols: tuple[str, ...]
    fat_suppression: tuple[tuple[str, Patterns], ...]
    rules: tuple[Rule, ...]

    def is_fat_suppressed(self, header: Dataset) -> bool:
        """Whether any ``fat_suppression`` pattern matches the series' tags."""
        return any(_matches(header, keyword, patterns) for keyword, patterns in self.fat_suppression)

    def match(self, header: Dataset) -> Rule | None:
        """The first rule whose every condition holds for the series with this header, or None."""
        fat = self.is_fat_suppressed(header)
        for rule in self.rules:
            if rule.fat_suppressed not in (None, fat):
                continue
            if all(_matches(header, keyword, patterns) for keyword, patterns in rule.conditions):
                return rule
        return None


def load_mapping(extra: str | Path | None = None) -> ProtocolMap:
    """The default mapping, with the rules of ``extra`` (a user's YAML file) tried first, its protocols added
    after the defaults' and its ``fat_suppression`` keywords replacing the defaults' ones.

    Raises:
        ConfigError: a file is missing, not YAML, or not of the documented form (naming the file, rule and key).
    """
    default = _read_yaml(DEFAULT_MAPPING)
    user = _read_yaml(Path(extra)) if extra is not None else {}
    protocols = list(_protocol_names(default, DEFAULT_MAPPING))
    if extra is not None:
        protocols += [p for p in _protocol_names(user, Path(extra)) if p not in protocols]
    fat = dict(_conditions(default.get("fat_suppression", {}), f"protocol mapping {DEFAULT_MAPPING} fat_suppression"))
    if extra is not None:
        fat.update(_conditions(user.get("fat_suppression", {}), f"protocol mapping {extra} fat_suppression"))
    rules = [*_rules(user, Path(extra), protocols)] if extra is not None else []
    rules += _rules(default, DEFAULT_MAPPING, protocols)
    return ProtocolMap(tuple(protocols), tuple(fat.items()), tuple(rules))


def _read_yaml(path: Path) -> dict[str, Any]:
    """A mapping file's top-level dict, its keys checked."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"protocol mapping {path}: file not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"protocol mapping {path}: not readable YAML: {' '.join(str(exc).split())}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"protocol mapping {path}: expected the keys {', '.join(_MAPPING_KEYS)} at the top")
    for key in data:
        if key not in _MAPPING_KEYS:
            near = nearest_name(str(key), _MAPPING_KEYS)
            hint = f" (did you mean {near}?)" if near else f" (known: {', '.join(_MAPPING_KEYS)})"
            raise ConfigError(f"protocol mapping {path}: unknown key {key!r}{hint}")
    if not isinstance(data.get("fat_suppression", {}), dict):
        raise ConfigError(f"protocol mapping {path}: fat_suppression must map DICOM keywords to patterns")
    return data


def _protocol_names(data: Mapping[str, Any], path: Path) -> list[str]:
    names = data.get("protocols", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and _PROTOCOL_NAME.fullmatch(n) for n in names):
        raise ConfigError(f"protocol mapping {path}: protocols must be a list of lower-case names (letters, digits)")
    if IGNORE in names:
        raise ConfigError(f"protocol mapping {path}: {IGNORE!r} is not a protocol name (rules use it to skip)")
    return names


def _conditions(conditions: Mapping[str, Any], where: str) -> list[tuple[str, Patterns]]:
    """DICOM keyword -> compiled case-insensitive patterns, each keyword and pattern checked."""
    out = []
    for keyword, value in conditions.items():
        if tag_for_keyword(str(keyword)) is None:
            raise ConfigError(f"{where}: {keyword!r} is not a DICOM keyword (e.g. SeriesDescription, ScanOptions)")
        patterns = value if isinstance(value, list) else [value]
        if not patterns or not all(isinstance(p, str) for p in patterns):
            raise ConfigError(f"{where}: {keyword} must be a regular expression or a list of them")
        try:
            out.append((str(keyword), tuple(re.compile(p, re.IGNORECASE) for p in patterns)))
        except re.error as exc:
            raise ConfigError(f"{where}: {keyword}: bad regular expression ({exc})") from None
    return out


def _rules(data: Mapping[str, Any], path: Path, protocols: Sequence[str]) -> list[Rule]:
    rules = data.get("rules", [])
    if not isinstance(rules, list):
        raise ConfigError(f"protocol mapping {path}: rules must be a list")
    out = []
    for number, raw in enumerate(rules, start=1):
        where = f"protocol mapping {path} rule {number}"
        if not isinstance(raw, dict) or "protocol" not in raw:
            raise ConfigError(f"{where}: a rule is a mapping with a protocol and at least one condition")
        conditions = dict(raw)
        protocol, fat = str(conditions.pop("protocol")), conditions.pop("fat_suppressed", None)
        if protocol != IGNORE and protocol not in protocols:
            raise ConfigError(
                f"{where}: protocol {protocol!r} is none of {', '.join(protocols)} (add it under protocols, "
                f"or use {IGNORE} to leave the series out)"
            )
        if fat is not None and not isinstance(fat, bool):
            raise ConfigError(f"{where}: fat_suppressed must be true or false")
        if not conditions and fat is None:
            raise ConfigError(f"{where}: the rule has no condition, so it would take every series")
        out.append(Rule(protocol, tuple(_conditions(conditions, where)), fat, f"{path.name} rule {number}"))
    return out


def _tag_text(header: Dataset, keyword: str) -> str:
    """A tag's value as the rules see it: multi-valued tags joined by a backslash, a missing tag ``""``."""
    value = header.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def _matches(header: Dataset, keyword: str, patterns: Patterns) -> bool:
    text = _tag_text(header, keyword)
    return any(p.search(text) for p in patterns)


# --------------------------------------------------------------------------- scanning a study


@dataclass(frozen=True)
class Series:
    """One DICOM image series of a study folder: its first file's header and all its files."""

    uid: str
    header: Dataset
    files: tuple[Path, ...]

    @property
    def number(self) -> str:
        return str(self.header.get("SeriesNumber", "") or "")

    @property
    def description(self) -> str:
        return str(self.header.get("SeriesDescription", "") or "")

    @property
    def modality(self) -> str:
        return str(self.header.get("Modality", "") or "").upper()

    def __str__(self) -> str:
        return f'series {self.number or "(no number)"} "{self.description}" (UID {self.uid or "missing"})'


def scan_study(folder: str | Path) -> list[Series]:
    """The image series of a study folder, searched recursively, ordered by series number.

    Files that are not DICOM, and DICOM files without pixel data (DICOMDIR, reports), are skipped and named
    in the log.

    Raises:
        DataError: the folder is missing, empty or holds no DICOM image file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("not a folder (give the folder of one DICOM study)", path=folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise DataError("the study folder holds no files", path=folder)
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    not_dicom, not_images = [], []
    for file in files:
        try:
            ds = pydicom.dcmread(file, defer_size=1024)  # pixel data is not read, only noted
        except _NOT_DICOM:
            not_dicom.append(str(file.relative_to(folder)))
            continue
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            not_images.append(str(file.relative_to(folder)))
            continue
        groups.setdefault(str(ds.get("SeriesInstanceUID", "") or ""), []).append((file, ds))
    if not_dicom:
        _LOG.warning("%s: skipped %d non-DICOM file(s): %s", folder, len(not_dicom), ", ".join(not_dicom))
    if not_images:
        _LOG.info("%s: skipped %d DICOM file(s) without pixel data: %s", folder, len(not_images), ", ".join(not_images))
    if not groups:
        raise DataError(f"the study folder holds no DICOM image file ({len(files)} other file(s))", path=folder)
    series = [Series(uid, items[0][1], tuple(f for f, _ in items)) for uid, items in groups.items()]
    return sorted(series, key=lambda s: (int(s.number) if s.number.lstrip("-").isdigit() else 1 << 30, s.uid))


# --------------------------------------------------------------------------- assigning series to protocols


@dataclass
class StudyPlan:
    """How the series of one study folder are assigned to protocols.

    Attributes:
        folder: The study folder.
        assigned: Protocol -> its one series.
        reasons: SeriesInstanceUID -> why it was assigned (the rule, or the ``--pick``).
        duplicates: Protocol -> the several series that match it (nothing is imported while any are left).
        unassigned: Series no rule matched, with the reason (no rule, or not MR).
        ignored: Series left out on purpose, with the reason (an ``ignore`` rule, or another series picked).
        picked: The protocols whose ``--pick`` matched a series of this study.
    """

    folder: Path
    assigned: dict[str, Series] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    duplicates: dict[str, list[Series]] = field(default_factory=dict)
    unassigned: list[tuple[Series, str]] = field(default_factory=list)
    ignored: list[tuple[Series, str]] = field(default_factory=list)
    picked: set[str] = field(default_factory=set)

    def lines(self) -> list[str]:
        """The assignment in words, one line per protocol or left-out series, for the terminal."""
        lines = [f"{p}: {s} by {self.reasons[s.uid]}" for p, s in self.assigned.items()]
        for protocol, series in self.duplicates.items():
            lines.append(f"{protocol}: DUPLICATES {'; '.join(map(str, series))}")
        lines += [f"unassigned: {s} ({why})" for s, why in self.unassigned]
        lines += [f"ignored: {s} ({why})" for s, why in self.ignored]
        return lines

    def check(self) -> None:
        """Raise a DataError for duplicates (naming every series and how to choose) or when no protocol is
        assigned at all (naming the unassigned series)."""
        if self.duplicates:
            listed = "; ".join(
                f"{protocol} matches {len(series)} series: {', '.join(map(str, series))}"
                for protocol, series in self.duplicates.items()
            )
            protocol = next(iter(self.duplicates))
            raise DataError(
                f"{listed}. Nothing is guessed: choose one with --pick {protocol}=SERIES_NUMBER (or =UID), or add "
                f"a rule to a --mapping file (e.g. protocol: {IGNORE} for the one not meant)",
                path=self.folder,
            )
        if not self.assigned:
            listed = "; ".join(f"{s} ({why})" for s, why in self.unassigned) or "none"
            raise DataError(
                f"no series was assigned to a protocol; unassigned: {listed}. Add a rule to a --mapping file or "
                "give --pick PROTOCOL=SERIES_NUMBER",
                path=self.folder,
            )


def plan_study(folder: str | Path, mapping: ProtocolMap, picks: Mapping[str, str] | None = None) -> StudyPlan:
    """Assign the series of a study folder to protocols by ``mapping``; ``picks`` (protocol -> SeriesNumber or
    SeriesInstanceUID) override the rules for their protocol in this study when it holds that series.

    Raises:
        DataError: the folder holds no DICOM image, no MR series, or a pick matches two of its series.
    """
    folder = Path(folder)
    series = scan_study(folder)
    if not any(s.modality == "MR" for s in series):
        found = ", ".join(sorted({s.modality or "(none)" for s in series}))
        raise DataError(f"the study folder holds no MR series (modalities found: {found})", path=folder)
    plan = StudyPlan(folder)
    candidates: dict[str, list[Series]] = {}
    for s in series:
        if s.modality != "MR":
            plan.unassigned.append((s, f"modality {s.modality or '(none)'}, not MR"))
            continue
        rule = mapping.match(s.header)
        if rule is None:
            plan.unassigned.append((s, "no rule matched"))
        elif rule.protocol == IGNORE:
            plan.ignored.append((s, rule.source))
        else:
            candidates.setdefault(rule.protocol, []).append(s)
            plan.reasons[s.uid] = rule.source
    for protocol, wanted in (picks or {}).items():
        chosen = [s for s in series if wanted in (s.uid, s.number)]
        if len(chosen) > 1:
            raise DataError(
                f"--pick {protocol}={wanted} matches {len(chosen)} series: {', '.join(map(str, chosen))}; "
                "pick by SeriesInstanceUID instead",
                path=folder,
            )
        if not chosen:
            continue
        (pick,) = chosen
        twice = [p for p in plan.picked if candidates[p] == [pick]]
        if twice:
            raise DataError(f"--pick {twice[0]}=... and --pick {protocol}={wanted} both choose {pick}", path=folder)
        plan.unassigned = [(s, why) for s, why in plan.unassigned if s is not pick]
        plan.ignored = [(s, why) for s, why in plan.ignored if s is not pick]
        for others in candidates.values():
            if pick in others:
                others.remove(pick)
        plan.ignored += [
            (s, f"--pick {protocol}={wanted} chose {pick.number or pick.uid}") for s in candidates.get(protocol, [])
        ]
        candidates[protocol] = [pick]
        plan.reasons[pick.uid] = f"--pick {protocol}={wanted}"
        plan.picked.add(protocol)
    for protocol in mapping.protocols:
        found = candidates.get(protocol, [])
        if len(found) == 1:
            plan.assigned[protocol] = found[0]
        elif found:
            plan.duplicates[protocol] = found
    return plan


# --------------------------------------------------------------------------- resampling and writing


def series_image(series: Series) -> Image:
    """Read a series as a volume with its patient geometry (``meta["index_to_lps"]``).

    Raises:
        DataError: the series is spread over several folders, is unreadable, or lacks the geometry tags.
    """
    folders = sorted({f.parent for f in series.files})
    if len(folders) > 1:
        raise DataError(
            f"{series} is spread over {len(folders)} folders ({', '.join(map(str, folders))}); put its files in one",
            path=folders[0],
        )
    try:
        image = read_image(folders[0], voi=False, series=series.uid)
    except DataError as error:
        raise DataError(f"{series}: {error.reason}", path=error.path) from None
    if "index_to_lps" not in image.meta:
        raise DataError(
            f"{series} gives no ImagePositionPatient/ImageOrientationPatient/PixelSpacing, so its place in the "
            "patient is unknown and it cannot be resampled onto the reference grid",
            path=folders[0],
        )
    return image


def resample(moving: Image, reference: Image) -> tuple[np.ndarray, float]:
    """``moving`` resampled onto ``reference``'s grid by linear interpolation in patient coordinates, zero
    outside ``moving``; and the share of the reference's voxels it covers. Both need ``meta["index_to_lps"]``.

    A voxel is a box: points up to half a voxel past the outer centres take the edge value (as ITK does), so
    a one-slice series still fills its slab.
    """
    to_moving = np.linalg.inv(np.asarray(moving.meta["index_to_lps"])) @ np.asarray(reference.meta["index_to_lps"])
    shape = reference.array.shape
    last = np.asarray(moving.array.shape, float)[:, None] - 1
    in_plane = np.indices(shape[1:], dtype=np.float64).reshape(2, -1)
    out = np.zeros(shape, np.float32)
    covered = 0
    for z in range(shape[0]):
        index = np.vstack([np.full(in_plane.shape[1], float(z)), in_plane])
        coords = to_moving[:3, :3] @ index + to_moving[:3, 3:]
        inside = np.all((coords >= -0.5 - 1e-6) & (coords <= last + 0.5 + 1e-6), axis=0)
        if inside.any():
            points = np.clip(coords[:, inside], 0, last)
            out[z].reshape(-1)[inside] = map_coordinates(moving.array, points, order=1, prefilter=False)
            covered += int(inside.sum())
    return out, covered / out.size


def _nifti_affine(index_to_lps: np.ndarray) -> np.ndarray:
    """The NIfTI (i, j, k) -> RAS affine of a (z, y, x) volume with this index -> patient LPS map."""
    return _LPS_TO_RAS @ np.asarray(index_to_lps, float) @ _ZYX_TO_IJK


def write_volume(volume: np.ndarray, index_to_lps: np.ndarray, path: Path) -> Path:
    """Write a (z, y, x) float32 volume with its index -> patient LPS map as NIfTI (RAS affine, qform and
    sform), so :func:`~osteoscope.data.readers.read_image` places it in the patient exactly."""
    affine = _nifti_affine(index_to_lps)
    nifti = nib.Nifti1Image(np.ascontiguousarray(volume.transpose(2, 1, 0), dtype=np.float32), affine)
    nifti.set_qform(affine, code=1)
    nifti.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nifti, path)
    return path


def read_axes(index_to_lps: np.ndarray) -> tuple[int, int, int]:
    """For each axis (z, y, x) of a volume with this geometry, the axis it becomes when its NIfTI is read
    back (the reader turns volumes to patient axes: 0 axial, 1 coronal, 2 sagittal)."""
    orientation = io_orientation(_nifti_affine(index_to_lps))
    return tuple(2 - int(orientation[2 - axis, 0]) for axis in range(3))  # type: ignore[return-value]


# --------------------------------------------------------------------------- the import


@dataclass(frozen=True)
class ImportedCase:
    """One study written into the dataset: its row's values and the plan it followed."""

    case_id: str
    patient_id: str
    reference: str
    images: dict[str, str]
    head_slice: int | None
    plan: StudyPlan


def plan_studies(
    folders: Sequence[str | Path], mapping: ProtocolMap, picks: Mapping[str, str] | None = None
) -> list[StudyPlan]:
    """The plan of every study folder (duplicates listed, not raised); a pick that names a protocol the
    mapping lacks, or that matches no series of any study, is a ConfigError."""
    picks = dict(picks or {})
    for protocol, wanted in picks.items():
        if protocol not in mapping.protocols:
            raise ConfigError(
                f"--pick {protocol or '(no protocol)'}={wanted}: give PROTOCOL=SERIES with a protocol of "
                f"{', '.join(mapping.protocols)}"
            )
    plans = [plan_study(folder, mapping, picks) for folder in folders]
    for protocol, wanted in picks.items():
        if not any(protocol in plan.picked for plan in plans):
            raise ConfigError(f"--pick {protocol}={wanted} matches no SeriesNumber or SeriesInstanceUID in any study")
    return plans


def import_studies(
    folders: Sequence[str | Path],
    out: str | Path,
    *,
    mapping: str | Path | None = None,
    reference: str = "t1",
    picks: Mapping[str, str] | None = None,
    label: int | None = None,
    patient_id: str | None = None,
    case_id: str | None = None,
    head_slice: int | None = None,
    slice_axis: int = 0,
    progress: Callable[[int, int, ImportedCase], None] | None = None,
) -> list[ImportedCase]:
    """Import each study folder as one case into the dataset ``out`` (created, or appended to).

    Every study is planned before anything is written, so duplicates or unassigned studies stop the import
    with nothing half done; then each study is resampled and written, and the manifest rewritten atomically.

    Args:
        folders: DICOM study folders (searched recursively), one case each.
        out: Dataset folder: ``images/`` and ``manifest.csv`` go there (new rows are appended).
        mapping: A YAML file of rules tried before the default ones (:func:`load_mapping`).
        reference: The protocol whose grid the others are resampled onto; a study without it falls back to
            its first protocol in mapping order (logged).
        picks: Protocol -> SeriesNumber or SeriesInstanceUID, overriding the rules in the studies that hold it.
        label: ARCO stage 0-3 of every study (None: the ``label`` cell stays empty).
        patient_id: The ``patient_id`` of every study (None: the DICOM PatientID).
        case_id: The case id (one study only; default the study folder's name).
        head_slice: Index of the slice through the femoral head along ``slice_axis`` of the written volumes
            (one study only; None leaves the cell empty, which the task reads as the middle slice).
        slice_axis: The axis ``head_slice`` counts along: 0 axial, 1 coronal, 2 sagittal (the task's
            ``data.options.slice_axis``).
        progress: Called as ``progress(i, n, case)`` after each of the ``n`` studies is written.

    Raises:
        ConfigError: an option is invalid (label, reference, pick, several folders with one case id...).
        DataError: a study cannot be imported (no MR, duplicates, nothing assigned, unreadable or unplaceable
            series, no PatientID, a case id already in the manifest); the message names the study and series.
    """
    folders = [Path(f) for f in folders]
    if not folders:
        raise ConfigError("give at least one study folder")
    if len(folders) > 1 and (case_id is not None or head_slice is not None):
        raise ConfigError("--case-id and --head-slice describe one study: import the studies one at a time")
    if label is not None and label not in range(len(STAGES)):
        raise ConfigError(f"--label must be 0-{len(STAGES) - 1} ({', '.join(STAGES)}), got {label}")
    if slice_axis not in range(3):
        raise ConfigError(f"--slice-axis must be 0 (axial), 1 (coronal) or 2 (sagittal), got {slice_axis}")
    protocol_map = load_mapping(mapping)
    if reference not in protocol_map.protocols:
        raise ConfigError(f"--reference {reference!r} is none of the protocols {', '.join(protocol_map.protocols)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give the dataset folder")
    columns = ["case_id", "patient_id", *(f"image_{p}" for p in protocol_map.protocols), "label", "head_slice"]
    rows: list[dict[str, Any]] = []
    manifest = out / MANIFEST_NAME
    if manifest.is_file():
        existing, rows = read_rows(manifest)
        columns = [*existing, *(c for c in columns if c not in existing)]
    case_ids = [case_id] if case_id is not None else [f.resolve().name for f in folders]
    _check_case_ids(case_ids, {(row.get("case_id") or "").strip() for row in rows}, manifest)

    plans = plan_studies(folders, protocol_map, picks)
    for plan in plans:
        plan.check()
    done = []
    for i, (plan, name) in enumerate(zip(plans, case_ids, strict=True), start=1):
        case = _import_study(plan, name, out, reference, protocol_map, label, patient_id, head_slice, slice_axis)
        rows.append(
            {
                "case_id": case.case_id,
                "patient_id": case.patient_id,
                **{f"image_{p}": path for p, path in case.images.items()},
                "label": label,
                "head_slice": case.head_slice,
            }
        )
        write_manifest(manifest, rows, columns)
        done.append(case)
        if progress is not None:
            progress(i, len(plans), case)
    return done


def _check_case_ids(case_ids: Sequence[str], existing: set[str], manifest: Path) -> None:
    """Refuse empty, repeated or already present case ids, and two ids that would name the same files."""
    stems: dict[str, str] = {}
    for case_id in case_ids:
        if not case_id.strip():
            raise ConfigError("a case id is empty")
        if case_id in existing:
            raise DataError(
                f"case {case_id!r} is already in the manifest; give another --case-id or remove its row", path=manifest
            )
        stem = _UNSAFE.sub("_", case_id)
        if stem in stems:
            raise DataError(
                f"the studies {stems[stem]!r} and {case_id!r} would share the case id or file names; "
                "import them one at a time with --case-id"
            )
        stems[stem] = case_id


def _import_study(
    plan: StudyPlan,
    case_id: str,
    out: Path,
    reference: str,
    mapping: ProtocolMap,
    label: int | None,
    patient_id: str | None,
    head_slice: int | None,
    slice_axis: int,
) -> ImportedCase:
    """Resample and write one planned study; its row's values."""
    if reference not in plan.assigned:
        fallback = next(p for p in mapping.protocols if p in plan.assigned)
        _LOG.warning("%s: no %s series; the reference grid is %s's", plan.folder, reference, fallback)
        reference = fallback
    patient = patient_id or _patient_of(plan)
    _warn_mixed_studies(plan, reference)
    base = series_image(plan.assigned[reference])
    geometry = np.asarray(base.meta["index_to_lps"])
    axes = read_axes(geometry)
    plane = PLANES[axes[0]]
    _LOG.info(
        "case %s: the reference %s is %s, %d %s slices: axis %d of the written volumes",
        case_id,
        reference,
        plan.assigned[reference],
        base.array.shape[0],
        plane,
        axes[0],
    )
    if head_slice is not None:
        count = base.array.shape[axes.index(slice_axis)]
        if not 0 <= head_slice < count:
            raise DataError(
                f"--head-slice {head_slice} is outside the {count} {PLANES[slice_axis]} slices (0-{count - 1}) of the "
                f"reference {reference}",
                case_id=case_id,
            )
        if slice_axis != axes[0]:
            _LOG.warning(
                "case %s: the reference %s was acquired %s; %s slices (axis %d) are reformatted across its slices",
                case_id,
                reference,
                plane,
                PLANES[slice_axis],
                slice_axis,
            )
    stem = _UNSAFE.sub("_", case_id)
    images = {}
    for protocol, series in plan.assigned.items():
        if protocol == reference:
            volume = base.array
        else:
            volume, share = resample(series_image(series), base)
            if share == 0:
                raise DataError(
                    f"{protocol} ({series}) does not overlap the reference {reference} at all: the series do not "
                    "share patient coordinates",
                    case_id=case_id,
                    path=plan.folder,
                )
            _LOG.info(
                "case %s: %s resampled onto the %s grid, covering %.0f%% of it",
                case_id,
                protocol,
                reference,
                100 * share,
            )
        relative = f"{IMAGE_FOLDER}/{stem}_{protocol}.nii.gz"
        write_volume(volume, geometry, out / relative)
        images[protocol] = relative
    return ImportedCase(case_id, patient, reference, images, head_slice, plan)


def _patient_of(plan: StudyPlan) -> str:
    """The DICOM PatientID shared by the assigned series; a DataError when it is missing or they differ."""
    ids = {str(s.header.get("PatientID", "") or "").strip() for s in plan.assigned.values()}
    if len(ids) > 1:
        listed = "; ".join(f"{p}: {s.header.get('PatientID', '')!r}" for p, s in plan.assigned.items())
        raise DataError(
            f"the series belong to different PatientIDs ({listed}); check the folder, or give --patient-id",
            path=plan.folder,
        )
    (patient,) = ids
    if not patient:
        raise DataError("the series give no PatientID; give --patient-id", path=plan.folder)
    return patient


def _warn_mixed_studies(plan: StudyPlan, reference: str) -> None:
    """Log a warning for assigned series from another study or frame of reference than the reference's: their
    patient coordinates may not correspond (the patient may have moved between them)."""
    base = plan.assigned[reference].header
    for protocol, series in plan.assigned.items():
        for keyword in ("StudyInstanceUID", "FrameOfReferenceUID"):
            if str(series.header.get(keyword, "")) != str(base.get(keyword, "")):
                _LOG.warning(
                    "%s: %s (%s) has another %s than the reference %s: the patient may have moved between them",
                    plan.folder,
                    protocol,
                    series,
                    keyword,
                    reference,
                )
