"""DICOM writing shared by the phantoms: file meta, deterministic UIDs, patient and study tags, pixels.

A phantom gives the modality-specific tags (projection view, CT geometry and rescale, ...); this module
fills in what every file needs, so that all phantoms write DICOM the same way and every UID is a
deterministic function of the seed (the same seed writes byte-identical files).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

_PIXEL_REPRESENTATION = {np.dtype(np.uint16): 0, np.dtype(np.int16): 1}


def dicom_uid(task: str, seed: int, *parts: str) -> str:
    """A UID derived from the task, the seed and ``parts`` (e.g. a case id and ``"series"``)."""
    return generate_uid(entropy_srcs=["osteoscope", task, str(seed), *parts])


def decimal_string(value: float) -> str:
    """``value`` as a DICOM decimal string (at most 16 characters, as precise as that allows)."""
    return format_number_as_ds(float(value))


@dataclass(frozen=True)
class Study:
    """The patient and study a file belongs to; files of one study share its UID."""

    patient_id: str
    study_uid: str
    study_id: str
    study_date: str


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    sop_class: str,
    sop_uid: str,
    series_uid: str,
    study: Study,
    modality: str,
    tags: dict[str, Any],
) -> None:
    """Write one single-frame MONOCHROME2 image of uint16 or int16 ``pixels`` (rows, columns), 16 bits stored.

    ``tags`` may override these (e.g. ``PhotometricInterpretation`` MONOCHROME1, ``BitsStored`` 12 with
    ``HighBit`` 11); the caller then stores pixels that match them.

    Args:
        path: File to write (Part 10 format, explicit VR little endian).
        pixels: The stored values; ``int16`` is written as signed pixels (e.g. Hounsfield units).
        sop_class: SOP Class UID (e.g. CT Image Storage).
        sop_uid: SOP Instance UID of this file.
        series_uid: Series Instance UID shared by the files of one series.
        study: Patient and study identity.
        modality: DICOM Modality (``DX``, ``CT``, ...).
        tags: Further attributes by DICOM keyword; they may override the defaults set here.
    """
    if pixels.ndim != 2 or pixels.dtype not in _PIXEL_REPRESENTATION:
        raise ValueError(f"pixels must be a 2-D uint16 or int16 array, got {pixels.dtype} {pixels.shape}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = study.patient_id
    ds.PatientName = f"Phantom^{study.patient_id}"
    ds.StudyID = study.study_id[-16:]
    ds.StudyDate = study.study_date
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = _PIXEL_REPRESENTATION[pixels.dtype]
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<")).tobytes()
    ds.save_as(path, enforce_file_format=True)
