"""Patient side from DICOM tags and a burned-in R/L marker (osteoscope.tasks.onfh_xray.sides)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import FileMetaDataset

from osteoscope.data.readers import read_image
from osteoscope.tasks.onfh_xray.sides import AP_CONVENTION, Marker, decide_sides, read_marker

WIDTH = 400


@pytest.mark.parametrize(
    ("tags", "right_on_left", "source"),
    [
        ({"PatientOrientation": ["L", "F"]}, True, "DICOM PatientOrientation"),
        ({"PatientOrientation": ["R", "F"]}, False, "DICOM PatientOrientation"),
        ({"PatientOrientation": ["R", "F"], "ViewPosition": "AP"}, False, "DICOM PatientOrientation"),
        ({"ViewPosition": "AP"}, True, "DICOM ViewPosition"),
        ({"ViewPosition": "PA"}, False, "DICOM ViewPosition"),
        ({}, True, AP_CONVENTION),
    ],
)
def test_side_from_tags(tags: dict, right_on_left: bool, source: str) -> None:
    decision = decide_sides(tags, None, WIDTH)
    assert (decision.right_on_image_left, decision.source, decision.flags) == (right_on_left, source, ())


def test_marker_decides_without_tags_and_is_flagged_against_them() -> None:
    r_on_right = Marker("R", False, (350.0, 40.0), 0.95)
    alone = decide_sides({}, r_on_right, WIDTH)
    assert (alone.right_on_image_left, alone.source) == (False, "burned-in marker")
    against = decide_sides({"PatientOrientation": ["L", "F"]}, r_on_right, WIDTH)
    assert against.right_on_image_left and against.source == "DICOM PatientOrientation"
    assert len(against.flags) == 1 and "contradicts DICOM PatientOrientation" in against.flags[0]
    agreeing = decide_sides({"ViewPosition": "PA"}, r_on_right, WIDTH)
    assert agreeing.flags == ()
    one_side = decide_sides({"ImageLaterality": "L"}, None, WIDTH)
    assert "ImageLaterality is L" in one_side.flags[0]


def test_tags_are_read_from_a_dicom_header_and_not_from_a_png(tmp_path: Path) -> None:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = pydicom.uid.DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.PatientOrientation = ["R", "F"]
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 8, 8, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.arange(64, dtype=np.uint16).tobytes()
    ds.save_as(tmp_path / "a.dcm", enforce_file_format=True)
    assert read_image(tmp_path / "a.dcm").meta["view_tags"] == {"PatientOrientation": ["R", "F"], "ViewPosition": "PA"}
    Image.new("L", (8, 8)).save(tmp_path / "b.png")
    assert "view_tags" not in read_image(tmp_path / "b.png").meta


def _film(letter: str, mirrored: bool, at: tuple[int, int], size: int, plate: bool) -> np.ndarray:
    """A noisy grey 'film' with a bright disc (a bone) and a glyph: bright on the film, or dark on a plate."""
    rng = np.random.default_rng(0)
    film = 0.3 + 0.03 * rng.standard_normal((300, WIDTH))
    yy, xx = np.mgrid[0:300, 0:WIDTH]
    film[np.hypot(xx - 200, yy - 170) < 40] = 0.8
    glyph = Image.new("L", (size * 2, size * 2), 0)
    ImageDraw.Draw(glyph).text((size // 3, 0), letter, fill=255, font=ImageFont.load_default(size))
    mask = np.asarray(glyph) > 127
    if mirrored:
        mask = mask[:, ::-1]
    x, y = at
    region = film[y : y + mask.shape[0], x : x + mask.shape[1]]
    if plate:
        region[:] = 1.0
        region[mask] = 0.2
    else:
        region[mask] = 1.0
    return np.clip(film, 0.0, 1.0)


@pytest.mark.parametrize(
    ("letter", "mirrored", "plate", "size"),
    [("R", False, False, 30), ("R", True, False, 24), ("L", False, True, 28), ("L", True, False, 36)],
)
def test_reads_rendered_markers_normal_and_mirrored(letter: str, mirrored: bool, plate: bool, size: int) -> None:
    at = (300, 20) if letter == "L" else (20, 20)
    marker = read_marker(_film(letter, mirrored, at, size, plate), 0.5)
    assert marker is not None and marker.letter == letter
    x, y = marker.centre  # in original pixels: twice the film's
    assert (x > WIDTH) == (letter == "L") and y < 0.3 * 600


def test_no_marker_on_a_film_without_one() -> None:
    rng = np.random.default_rng(1)
    film = 0.3 + 0.03 * rng.standard_normal((300, WIDTH))
    film[100:220, 150:260] = 0.9  # a bright block with straight edges and corners is not an "L"
    assert read_marker(np.clip(film, 0, 1), 1.0) is None
