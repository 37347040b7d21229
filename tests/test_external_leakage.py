"""The external-set leakage check compares image content, not only case ids (finding 9 of issue 9).

Ten images the run trained or validated on come back as an "external" set under new case and patient ids,
half copied under new names and half re-encoded as DICOM with the same pixels: evaluation refuses them,
naming the external case and the training case. The training images' hashes are cached in the run, so
the check needs no training image on disk.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from osteoscope.config import config_from_dict
from osteoscope.data.fingerprints import HASHES_FILE, pixel_hash
from osteoscope.data.manifest import write_manifest as write_rows
from osteoscope.data.readers import read_image
from osteoscope.engine.evaluate import evaluate_run
from osteoscope.engine.trainer import train
from osteoscope.errors import DataError
from osteoscope.phantoms import generate_phantom


def as_dicom(png: Path, out: Path) -> Path:
    """The pixels of a 16-bit grey PNG as a DICOM file (no rescale, no window: the same decoded values)."""
    pixels = np.asarray(PILImage.open(png)).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.PatientID, ds.Modality = "someone-else", "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(out, enforce_file_format=True)
    return out


def write_manifest(folder: Path, rows: list[dict[str, str]]) -> Path:
    """A dataset folder whose manifest.csv holds ``rows`` (columns from the first row)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_rows(folder / "manifest.csv", rows, list(rows[0]))
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("leak")
    data = root / "data"
    generate_phantom("femur-fracture-xray", data, n=30, seed=0, subtlety=0.0, image_size=(64, 64), aff_fraction=0.4)
    config = {
        "task": "femur-fracture-xray",
        "data": {"path": str(data), "options": {"size": [32, 32], "crop_to_box": False}},
        "model": {"name": "timm:test_resnet"},
        "train": {"epochs": 1, "batch_size": 16, "threads": 2, "patience": 0},
    }
    return train(config_from_dict(config), root / "run", verbose=False)


def test_training_records_the_pixel_hashes_of_its_train_and_val_images(run: Path) -> None:
    with (run / HASHES_FILE).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    with (run / "splits.csv").open(newline="") as handle:
        splits = {r["case_id"]: r["split"] for r in csv.DictReader(handle)}
    assert {r["case_id"] for r in rows} == {c for c, part in splits.items() if part != "test"}
    assert all(r["split"] == splits[r["case_id"]] for r in rows)
    some = rows[0]
    assert some["sha256"] == pixel_hash(read_image(some["file"]).array)


def test_the_same_ten_images_under_new_ids_are_refused(run: Path, tmp_path: Path) -> None:
    with (run / HASHES_FILE).open(newline="") as handle:
        seen = list(csv.DictReader(handle))[:10]
    external = tmp_path / "external"
    (external / "images").mkdir(parents=True)
    rows = []
    for i, row in enumerate(seen):
        target = external / "images" / f"x{i:02d}"
        if i % 2:
            as_dicom(Path(row["file"]), target.with_suffix(".dcm"))
            target = target.with_suffix(".dcm")
        else:
            target = target.with_suffix(".png")
            shutil.copy(row["file"], target)
        rows.append({"case_id": f"ext-{i}", "patient_id": f"hospital-b-{i}", "image": str(target), "label": i % 2})
    write_manifest(external, rows)
    # the check needs the cached hashes only: the training images may be gone
    shutil.move(run.parent / "data", run.parent / "data-moved")
    try:
        with pytest.raises(DataError) as caught:
            evaluate_run(run, external, split="all", out_dir=tmp_path / "eval", n_boot=20)
    finally:
        shutil.move(run.parent / "data-moved", run.parent / "data")
    message = str(caught.value)
    assert caught.value.case_id == "ext-0" and str(external / "images" / "x00.png") in message
    assert repr(seen[0]["case_id"]) in message and "10 external image(s)" in message
    # one re-encoded DICOM alone is caught as well, and a run without the cache rebuilds it once
    write_manifest(tmp_path / "one", [rows[1]])
    (run / HASHES_FILE).unlink()
    with pytest.raises(DataError, match=repr(seen[1]["case_id"])) as caught:
        evaluate_run(run, tmp_path / "one", split="all", out_dir=tmp_path / "eval-one", n_boot=20)
    assert caught.value.case_id == "ext-1" and (run / HASHES_FILE).is_file()


def test_new_images_pass_the_check(run: Path, tmp_path: Path) -> None:
    generate_phantom("femur-fracture-xray", tmp_path / "new", n=10, seed=9, subtlety=0.0, image_size=(64, 64))
    with (tmp_path / "new" / "manifest.csv").open(newline="") as handle:
        rows = [
            {**r, "case_id": f"new-{r['case_id']}", "patient_id": f"new-{r['patient_id']}"}
            for r in csv.DictReader(handle)
        ]
    for row in rows:
        for column in ("image_ap", "image_lat", "mask_ap", "mask_lat"):
            row[column] = str(tmp_path / "new" / row[column])
    result = evaluate_run(run, write_manifest(tmp_path / "ext", rows), split="all", out_dir=tmp_path / "e", n_boot=20)
    assert result["n_cases"] == 2 * len(rows)
