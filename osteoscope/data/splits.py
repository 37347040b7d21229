"""Patient-level, label-stratified, seeded splits and k-fold assignment.

A patient's studies always stay together: every function here assigns patients, never single cases, and
:func:`check_patient_leakage` turns any violation into an error naming the patient.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from osteoscope.data.manifest import SPLITS, Case
from osteoscope.errors import DataError


def default_stratum(case: Case) -> int:
    """The stratum of a case: its first label (or -1 when unlabelled)."""
    for value in case.labels.values():
        if value is not None:
            return value
    return -1


def _patients_by_stratum(cases: Sequence[Case], stratum: Callable[[Case], int]) -> dict[int, list[str]]:
    """Group patient ids by the highest stratum among their cases (a patient ever positive counts as positive)."""
    patient_stratum: dict[str, int] = {}
    for case in cases:
        patient_stratum[case.patient_id] = max(patient_stratum.get(case.patient_id, -1), stratum(case))
    groups: dict[int, list[str]] = defaultdict(list)
    for patient in sorted(patient_stratum):
        groups[patient_stratum[patient]].append(patient)
    return dict(sorted(groups.items()))


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Split ``n`` items into parts proportional to ``fractions`` by largest remainder."""
    raw = np.asarray(fractions, dtype=float) / sum(fractions) * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def split_patients(
    cases: Sequence[Case],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    stratum: Callable[[Case], int] = default_stratum,
) -> dict[str, str]:
    """Assign each case to train/val/test by patient, stratified by label, reproducibly from ``seed``.

    Cases with a ``split`` given in the manifest keep it (all cases must then have one); the result is still
    checked for patient leakage.

    Returns:
        Mapping case_id -> split name.
    """
    if len(fractions) != len(SPLITS) or min(fractions) < 0 or sum(fractions) <= 0:
        raise ValueError(f"fractions must be three non-negative numbers (train, val, test), got {fractions}")
    given = [case.split for case in cases]
    if any(given):
        if not all(given):
            missing = next(case.case_id for case in cases if not case.split)
            raise DataError("the manifest gives a split for some cases but not all", case_id=missing)
        assignment = {case.case_id: case.split or "" for case in cases}
    else:
        rng = np.random.default_rng(seed)
        patient_split: dict[str, str] = {}
        for patients in _patients_by_stratum(cases, stratum).values():
            order = [patients[i] for i in rng.permutation(len(patients))]
            start = 0
            for name, count in zip(SPLITS, _allocate(len(order), fractions), strict=True):
                patient_split.update({p: name for p in order[start : start + count]})
                start += count
        assignment = {case.case_id: patient_split[case.patient_id] for case in cases}
    check_patient_leakage(cases, assignment)
    return assignment


def kfold_patients(
    cases: Sequence[Case], k: int = 5, seed: int = 0, stratum: Callable[[Case], int] = default_stratum
) -> dict[str, int]:
    """Assign each case a fold in ``0..k-1`` by patient, stratified by label, reproducibly from ``seed``."""
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    rng = np.random.default_rng(seed)
    patient_fold: dict[str, int] = {}
    offset = 0
    for patients in _patients_by_stratum(cases, stratum).values():
        order = [patients[i] for i in rng.permutation(len(patients))]
        patient_fold.update({p: (offset + i) % k for i, p in enumerate(order)})
        offset += len(order)
    return {case.case_id: patient_fold[case.patient_id] for case in cases}


def check_patient_leakage(cases: Sequence[Case], assignment: dict[str, str]) -> None:
    """Raise a :class:`DataError` naming the first patient whose cases sit in more than one split."""
    parts: dict[str, set[str]] = defaultdict(set)
    for case in cases:
        parts[case.patient_id].add(str(assignment[case.case_id]))
    for patient, names in sorted(parts.items()):
        if len(names) > 1:
            raise DataError(f"patient {patient!r} appears in more than one split: {', '.join(sorted(names))}")


def save_splits(path: str | Path, cases: Sequence[Case], assignment: dict[str, str]) -> Path:
    """Write ``case_id,patient_id,split`` so a run records exactly which cases it held out."""
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "patient_id", "split"])
        for case in cases:
            writer.writerow([case.case_id, case.patient_id, assignment[case.case_id]])
    return path


def read_split_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows (case_id, patient_id, split) of a file written by :func:`save_splits`."""
    path = Path(path)
    if not path.is_file():
        raise DataError("split file not found", path=path)
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def load_splits(path: str | Path) -> dict[str, str]:
    """Read a file written by :func:`save_splits` back into case_id -> split."""
    return {row["case_id"]: row["split"] for row in read_split_rows(path)}
