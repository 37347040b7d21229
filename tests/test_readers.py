"""Tests for osteoscope.data.readers on real DICOM/NIfTI files and on PNG/JPEG/TIFF written here."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image as PILImage
from PIL.JpegImagePlugin import JpegImageFile
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_voi_lut, get_decoder
from pydicom.uid import MPEG2MPML, JPEG2000Lossless

from osteoscope.data.readers import Image, box_mm_to_voxels, box_to_decoded, box_to_file, read_image
from osteoscope.errors import DataError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DDH = DATA / "ddh-pelvis-xray" / "dicom"
CT_SERIES = DATA / "pelvis-ct" / "dicom_series"
CT_NIFTI = DATA / "pelvis-ct" / "example_ct.nii.gz"
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def pydicom_file(name: str) -> Path:
    """Path of a pydicom / pydicom-data test file, skipping when the package lacks it."""
    found = get_testdata_file(name)
    if found is None:
        pytest.skip(f"{name} not available: install pydicom-data (pip install pydicom-data)")
    return Path(found)


def shared(path: Path) -> Path:
    """A path under ../shared/data, skipping when that folder is absent."""
    if not path.exists():
        pytest.skip(f"{path} absent: real test data lives in ../shared/data beside the checkout")
    return path


# --------------------------------------------------------------------------- real DICOM radiographs


@pytest.mark.realdata
def test_ddh_rgb_radiographs_become_grey_luma() -> None:
    files = sorted(shared(DDH).glob("*.dcm"))
    assert len(files) == 10
    for file in files:
        image = read_image(file)
        rgb = pydicom.dcmread(file).pixel_array
        assert image.array.shape == (331, 331) and image.array.dtype == np.float32
        assert image.array.std() > 5.0, f"{file.name} is nearly constant"
        np.testing.assert_allclose(image.array, rgb.astype(np.float32) @ LUMA, atol=1e-3)
        assert image.meta["to_grey"] and image.meta["modality"] == "DX" and image.spacing == (1.0, 1.0)


def test_cr_tibia_nof_jpeg2000_variants_match_uncompressed() -> None:
    reference = read_image(pydicom_file("RG3_UNCR.dcm"), voi=False).array
    assert reference.shape == (1760, 1760)
    lossless = read_image(pydicom_file("RG3_J2KR.dcm"), voi=False)
    assert lossless.meta["transfer_syntax"].startswith("JPEG 2000")
    np.testing.assert_array_equal(lossless.array, reference)
    lossy = read_image(pydicom_file("RG3_J2KI.dcm"), voi=False).array
    diff = np.abs(lossy - reference)
    assert 0 < diff.mean() < 2.0 and diff.max() <= 32.0  # 10-bit image, irreversible wavelet


@pytest.mark.parametrize(
    ("uncompressed", "compressed"),
    [
        ("MR_small.dcm", "MR_small_RLE.dcm"),
        ("MR_small.dcm", "MR_small_jp2klossless.dcm"),
        ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm"),
        ("emri_small.dcm", "emri_small_jpeg_ls_lossless.dcm"),
        ("emri_small.dcm", "emri_small_jpeg_2k_lossless.dcm"),
        ("JPEG2000_UNC.dcm", "JPEG2000.dcm"),
    ],
)
def test_lossless_transfer_syntaxes_decode_exactly(uncompressed: str, compressed: str) -> None:
    reference = read_image(pydicom_file(uncompressed))
    decoded = read_image(pydicom_file(compressed))
    assert decoded.meta["transfer_syntax"] != reference.meta["transfer_syntax"]
    np.testing.assert_array_equal(decoded.array, reference.array)
    assert decoded.spacing == reference.spacing


def test_multiframe_dicom_is_a_volume_and_lossy_jpeg_is_close() -> None:
    volume = read_image(pydicom_file("emri_small_RLE.dcm"))
    assert volume.array.shape == (10, 64, 64) and len(volume.spacing) == 3
    reference = read_image(pydicom_file("MR2_UNCR.dcm")).array
    lossy = read_image(pydicom_file("MR2_J2KI.dcm")).array
    assert np.abs(lossy - reference).mean() < 0.01 * reference.max()
    assert read_image(pydicom_file("JPGExtended.dcm")).array.max() > 0  # JPEG extended 12-bit decodes


def test_monochrome1_is_inverted_after_windowing() -> None:
    path = pydicom_file("RG3_UNCR.dcm")
    ds = pydicom.dcmread(path)
    raw = ds.pixel_array.astype(np.float32)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.BitsStored == 10

    plain = read_image(path, voi=False)
    np.testing.assert_array_equal(plain.array, 1023.0 - raw)
    assert plain.meta["inverted"] and plain.meta["voi"] is None

    windowed = read_image(path)  # CR: VOI applied by default
    assert windowed.meta["voi"] == "window center 550 width 1024"
    expected = 1023.0 - apply_voi_lut(raw.astype(np.float64), ds)
    np.testing.assert_allclose(windowed.array, expected, atol=1e-3)
    assert windowed.meta["value_range"] == (0.0, 1023.0)


def test_ct_rescale_gives_hounsfield_units_and_voi_only_on_request() -> None:
    path = pydicom_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    image = read_image(path)
    np.testing.assert_array_equal(image.array, ds.pixel_array.astype(np.float32) - 1024.0)
    assert image.meta["rescale"] == (1.0, -1024.0) and image.meta["voi"] is None
    assert -1100 <= image.array.min() < -500 and 500 < image.array.max() < 3500  # air .. bone
    assert image.spacing == pytest.approx((0.661468, 0.661468))

    windowed_path = pydicom_file("693_UNCR.dcm")  # CT with a stored window
    hu = read_image(windowed_path)
    windowed = read_image(windowed_path, voi=True)
    assert hu.meta["voi"] is None and windowed.meta["voi"].startswith("window")
    assert np.unique(windowed.array).size < np.unique(hu.array).size  # the window clips


def test_dicom_without_preamble_or_extension_is_read(tmp_path: Path) -> None:
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.preamble = None
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    bare = tmp_path / "slice0001"
    pydicom.dcmwrite(bare, ds, enforce_file_format=False, implicit_vr=False, little_endian=True)
    assert bare.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_image(bare).array, read_image(pydicom_file("CT_small.dcm")).array)


# --------------------------------------------------------------------------- series and NIfTI


@pytest.mark.realdata
def test_ct_series_folder_is_sorted_by_position() -> None:
    volume = read_image(shared(CT_SERIES))
    assert volume.array.shape == (20, 512, 512)
    assert volume.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert volume.meta["format"] == "dicom-series" and volume.meta["files"] == 20
    z = {f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in CT_SERIES.iterdir()}
    lowest, highest = min(z, key=z.get), max(z, key=z.get)
    np.testing.assert_array_equal(volume.array[0], read_image(lowest).array)
    np.testing.assert_array_equal(volume.array[-1], read_image(highest).array)
    assert volume.array.min() >= -1024 and volume.meta["voi"] is None  # HU kept for CT


@pytest.mark.realdata
def test_series_folder_ignores_junk_and_rejects_two_series(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    files = sorted(shared(CT_SERIES).iterdir())[:3]
    folder = tmp_path / "series"
    folder.mkdir()
    for name, file in zip(["c", "a", "b"], files, strict=True):  # names in no particular order
        shutil.copy(file, folder / name)
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    (folder / "notes.txt").write_text("scanned on tuesday\n")
    with caplog.at_level("WARNING", logger="osteoscope.data.readers"):
        volume = read_image(folder)
    assert ".DS_Store" in caplog.text and "notes.txt" in caplog.text  # skipped files are named
    assert volume.array.shape == (3, 512, 512) and volume.spacing[0] == pytest.approx(2.0)
    np.testing.assert_array_equal(volume.array[2], read_image(files[0]).array)  # highest z last

    other = pydicom.dcmread(files[0])
    other.SeriesInstanceUID = "1.2.826.0.1.3680043.99.1"
    other.save_as(folder / "d")
    with pytest.raises(DataError, match=r"2 DICOM series.*1\.2\.826\.0\.1\.3680043\.99\.1") as err:
        read_image(folder)
    assert str(folder) in str(err.value)
    assert read_image(folder, series="1.2.826.0.1.3680043.99.1").array.shape == (1, 512, 512)
    with pytest.raises(DataError, match=r"'9\.9' is not in the folder.*1\.2\.826\.0\.1\.3680043\.99\.1"):
        read_image(folder, series="9.9")


@pytest.mark.realdata
def test_a_missing_slice_is_interpolated_with_a_warning_and_a_wide_gap_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The real 2 mm series without slice 6 is resampled to 20 regular slices (slice 6 between its neighbours);
    without slices 6-10 (a 12 mm gap) it is refused rather than invented."""
    full = read_image(shared(CT_SERIES))
    files = sorted(CT_SERIES.iterdir(), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
    one_gap, wide_gap = tmp_path / "one", tmp_path / "wide"
    for folder, dropped in ((one_gap, {6}), (wide_gap, {6, 7, 8, 9, 10})):
        folder.mkdir()
        for index, file in enumerate(files):
            if index not in dropped:
                shutil.copy(file, folder / file.name)
    with caplog.at_level("WARNING", logger="osteoscope.data.readers"):
        resampled = read_image(one_gap)
    assert "uneven slice spacing" in caplog.text and resampled.meta["resampled_to_regular_slices"]
    assert resampled.array.shape == full.array.shape and resampled.spacing == full.spacing
    np.testing.assert_allclose(resampled.array[6], (full.array[5] + full.array[7]) / 2, atol=1e-3)
    np.testing.assert_array_equal(resampled.array[7], full.array[7])
    with pytest.raises(DataError, match=r"slices missing: a gap of 12\.00 mm"):
        read_image(wide_gap)


@pytest.mark.realdata
def test_series_geometry_maps_voxels_to_each_slice_position_and_mm_boxes_back() -> None:
    """``index_to_lps`` puts voxel (k, 0, 0) at slice k's ImagePositionPatient, and a box given in mm (a voxel
    box's corner centres) comes back as that voxel box."""
    volume = read_image(shared(CT_SERIES))
    geometry = np.asarray(volume.meta["index_to_lps"])
    positions = sorted(
        (list(map(float, pydicom.dcmread(f).ImagePositionPatient)) for f in CT_SERIES.iterdir()), key=lambda p: p[2]
    )
    for k in (0, 7, 19):
        np.testing.assert_allclose(geometry @ [k, 0, 0, 1], [*positions[k], 1], atol=1e-3)
    box = (100, 120, 3, 300, 260, 15)  # x0 y0 z0 x1 y1 z1, end exclusive
    first = geometry @ [box[2], box[1], box[0], 1]
    last = geometry @ [box[5] - 1, box[4] - 1, box[3] - 1, 1]
    mm = (*np.minimum(first, last)[:3], *np.maximum(first, last)[:3])
    assert box_mm_to_voxels(mm, volume) == box
    with pytest.raises(DataError, match="outside the volume"):
        box_mm_to_voxels((900, 900, 900, 950, 950, 950), volume)


@pytest.mark.realdata
def test_nifti_is_zyx_in_dicom_patient_axes() -> None:
    import nibabel as nib

    image = read_image(shared(CT_NIFTI))
    assert image.array.shape == (112, 101, 122) and image.spacing == (3.0, 3.0, 3.0)
    ras = np.asarray(nib.load(CT_NIFTI).get_fdata(dtype=np.float32))  # stored as R, A, S
    np.testing.assert_array_equal(image.array, ras[::-1, ::-1, :].transpose(2, 1, 0))
    assert image.meta["orientation"] == "LPS"


# --------------------------------------------------------------------------- PNG / JPEG / TIFF


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_round_trip_is_exact(tmp_path: Path, dtype: type) -> None:
    rng = np.random.default_rng(0)
    source = rng.integers(0, np.iinfo(dtype).max, size=(40, 56), endpoint=True).astype(dtype)
    source[0, 0], source[0, 1] = 0, np.iinfo(dtype).max
    PILImage.fromarray(source).save(tmp_path / "x.png")
    image = read_image(tmp_path / "x.png")
    assert image.array.dtype == np.float32 and image.spacing == (1.0, 1.0)
    np.testing.assert_array_equal(image.array, source.astype(np.float32))
    assert image.meta["value_range"] == (0.0, float(np.iinfo(dtype).max))


def test_png_16bit_reads_fast(tmp_path: Path) -> None:
    source = np.random.default_rng(1).integers(0, 65535, size=(512, 640)).astype(np.uint16)
    PILImage.fromarray(source).save(tmp_path / "big.png")
    read_image(tmp_path / "big.png")
    times = []
    for _ in range(5):
        start = time.perf_counter()
        read_image(tmp_path / "big.png")
        times.append(time.perf_counter() - start)
    assert float(np.median(times)) < 0.04


def test_rgb_png_and_jpeg_become_grey(tmp_path: Path) -> None:
    rgb = np.zeros((32, 48, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    PILImage.fromarray(rgb).save(tmp_path / "c.png")
    image = read_image(tmp_path / "c.png")
    assert image.array.shape == (32, 48) and image.meta["to_grey"]
    np.testing.assert_allclose(image.array, 0.299 * 200 + 0.587 * 100 + 0.114 * 50, rtol=1e-6)

    grey = np.tile(np.linspace(0, 255, 64, dtype=np.float32), (48, 1)).astype(np.uint8)
    PILImage.fromarray(grey).save(tmp_path / "g.jpg", quality=95)
    jpeg = read_image(tmp_path / "g.jpg")
    assert jpeg.meta["format"] == "jpeg" and jpeg.array.shape == (48, 64)
    assert np.abs(jpeg.array - grey).max() <= 4.0


def test_tiff_grey_rgb_stack_and_min_is_white(tmp_path: Path) -> None:
    grey = np.arange(30 * 20, dtype=np.uint16).reshape(30, 20) * 97
    tifffile.imwrite(tmp_path / "g.tif", grey)
    np.testing.assert_array_equal(read_image(tmp_path / "g.tif").array, grey.astype(np.float32))

    rgb = np.zeros((10, 12, 3), dtype=np.uint8)
    rgb[..., 1] = 200
    tifffile.imwrite(tmp_path / "c.tiff", rgb, photometric="rgb")
    np.testing.assert_allclose(read_image(tmp_path / "c.tiff").array, 0.587 * 200, rtol=1e-6)

    stack = np.arange(4 * 6 * 5, dtype=np.uint8).reshape(4, 6, 5)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    assert read_image(tmp_path / "s.tif").array.shape == (4, 6, 5)

    tifffile.imwrite(tmp_path / "w.tif", grey, photometric="miniswhite")
    inverted = read_image(tmp_path / "w.tif")
    assert inverted.meta["inverted"]
    np.testing.assert_array_equal(inverted.array, 65535.0 - grey.astype(np.float32))


# --------------------------------------------------------------------------- errors


def test_missing_file_and_unsupported_extension(tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(DataError, match="file not found") as err:
        read_image(missing)
    assert str(missing) in str(err.value)
    odd = tmp_path / "scan.xyz"
    odd.write_bytes(b"\x00" * 200)
    with pytest.raises(DataError, match=r"unsupported file type '\.xyz'") as err:
        read_image(odd)
    assert str(odd) in str(err.value)


@pytest.mark.parametrize("name", ["fake.png", "fake.jpg", "fake.tif", "fake.dcm", "fake", "fake.nii.gz"])
def test_text_file_posing_as_image(tmp_path: Path, name: str) -> None:
    fake = tmp_path / name
    fake.write_text("patient list\nid,age\n1,54\n" * 20)
    with pytest.raises(DataError) as err:
        read_image(fake)
    assert str(fake) in str(err.value)


def test_dicom_without_pixel_data() -> None:
    path = pydicom_file("rtplan.dcm")
    with pytest.raises(DataError, match="without pixel data") as err:
        read_image(path)
    assert str(path) in str(err.value)


def test_corrupt_compressed_pixel_data_is_a_data_error() -> None:
    path = pydicom_file("JPEG2000-embedded-sequence-delimiter.dcm")
    with pytest.raises(DataError, match="cannot decode the pixel data") as err:
        read_image(path)
    assert str(path) in str(err.value)


def test_missing_decoder_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    path = pydicom_file("MR_small_jp2klossless.dcm")
    monkeypatch.setattr(get_decoder(JPEG2000Lossless), "_available", {})
    with pytest.raises(DataError, match="pylibjpeg-openjpeg") as err:
        read_image(path)
    assert str(path) in str(err.value) and "JPEG 2000" in str(err.value)


def test_transfer_syntax_nothing_decodes(tmp_path: Path) -> None:
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    ds.file_meta.TransferSyntaxUID = MPEG2MPML  # video: pydicom has no decoder for it
    ds.PixelData = encapsulate([bytes(64)])
    ds["PixelData"].VR = "OB"
    path = tmp_path / "video.dcm"
    ds.save_as(path)
    with pytest.raises(DataError, match="python-gdcm") as err:
        read_image(path)
    assert str(path) in str(err.value) and MPEG2MPML in str(err.value)


def test_folder_without_dicom(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(DataError, match="no DICOM image files") as err:
        read_image(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_image_rejects_inconsistent_construction() -> None:
    with pytest.raises(ValueError, match="float32"):
        Image(np.zeros((4, 4), dtype=np.float64), (1.0, 1.0), {})
    with pytest.raises(ValueError, match="spacing"):
        Image(np.zeros((2, 4, 4), dtype=np.float32), (1.0, 1.0), {})


# --------------------------------------------------------------------------- reduced-scale decoding


def film(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A smooth picture with edges and fine texture, 0..1: enough structure for a correlation to mean much."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]] / max(shape)
    picture = 0.4 + 0.3 * np.sin(9 * x + 4 * y) * np.cos(7 * y) + 0.2 * ((x - 0.6) ** 2 + (y - 0.4) ** 2 < 0.04)
    return np.clip(picture + rng.normal(0, 0.02, shape), 0, 1)


def block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """Mean of full ``factor`` x ``factor`` blocks (partial edge blocks dropped), float64."""
    h, w = (n // factor * factor for n in array.shape)
    return array[:h, :w].astype(np.float64).reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def test_jpeg_decodes_at_a_reduced_scale_through_draft_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "film.jpg"
    PILImage.fromarray((film((1203, 1001)) * 255).astype(np.uint8)).save(path, quality=95)
    decoded_sizes = []
    draft = JpegImageFile.draft
    monkeypatch.setattr(
        JpegImageFile, "draft", lambda self, mode, size: (draft(self, mode, size), decoded_sizes.append(self.size))[0]
    )
    full = read_image(path)
    image = read_image(path, min_side=250)  # 1001 // 4 = 250: a quarter keeps 250 px on the shorter side
    assert decoded_sizes == [(251, 301)], "the codec itself decodes at 1/4 (DCT scaling), no full decode"
    assert image.array.shape == (301, 251) and image.array.dtype == np.float32
    assert image.spacing == (4.0, 4.0) and image.meta["decode_scale"] == 4 and image.meta["file_shape"] == (1203, 1001)
    reference = block_mean(full.array, 4)
    assert np.corrcoef(reference.ravel(), image.array[:300, :250].ravel())[0, 1] > 0.995
    assert np.abs(reference - image.array[:300, :250]).mean() < 2.0  # same grey levels, 0..255
    assert read_image(path, min_side=251).meta["decode_scale"] == 2  # a quarter would leave 250 < 251
    assert read_image(path, min_side=2000).array.shape == (1203, 1001)  # smaller than asked: in full


def test_png_tiff_and_dicom_reduce_by_block_means_before_the_value_mapping(tmp_path: Path) -> None:
    values = (film((1203, 1001), seed=1) * 60000).astype(np.uint16)
    png, tiff = tmp_path / "film.png", tmp_path / "film.tif"
    PILImage.fromarray(values).save(png)
    tifffile.imwrite(tiff, values, photometric="miniswhite")
    for path, expected in ((png, values.astype(np.float64)), (tiff, 65535.0 - values)):
        image = read_image(path, min_side=120)  # 1001 // 8 = 125 >= 120
        assert image.array.shape == (151, 126) and image.spacing == (8.0, 8.0)
        np.testing.assert_allclose(image.array[:150, :125], block_mean(expected, 8), rtol=1e-5)
        np.testing.assert_allclose(image.array[150, 125], expected[1200:, 1000:].mean(), rtol=1e-5)  # partial block
    dicom = pydicom_file("RG1_UNCR.dcm")  # MONOCHROME1 CR, windowed then inverted
    full, image = read_image(dicom), read_image(dicom, min_side=400)
    assert image.meta["decode_scale"] == 4 and image.meta["inverted"] and image.meta["voi"] == full.meta["voi"]
    assert image.array.shape == tuple(-(-n // 4) for n in full.array.shape)
    assert image.spacing == tuple(4 * s for s in full.spacing)
    reference = block_mean(full.array, 4)
    h, w = reference.shape
    assert np.corrcoef(reference.ravel(), image.array[:h, :w].ravel())[0, 1] > 0.999


def test_decode_once_decodes_each_file_once_and_hands_out_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from osteoscope.data import readers

    path = tmp_path / "film.png"
    PILImage.fromarray((film((640, 800)) * 255).astype(np.uint8)).save(path)
    calls: list[tuple[Path, int | None]] = []
    read = readers._read
    monkeypatch.setattr(
        readers,
        "_read",
        lambda p, voi, min_side, series: (calls.append((p, min_side)), read(p, voi, min_side, series))[1],
    )
    with readers.decode_once(min_side=150):
        first = read_image(path)
        first.array[:] = 0  # a caller spoiling its copy does not spoil the next one's
        second = read_image(tmp_path / ".." / tmp_path.name / "film.png")
        assert read_image(path, min_side=640).meta["decode_scale"] == 1  # an explicit scale is another decode
    assert calls == [(path, 150), (path, 640)]
    assert second.array.shape == (160, 200) and second.array.max() > 0 and second.meta["decode_scale"] == 4
    read_image(path)
    read_image(path)
    assert len(calls) == 4 and calls[-1] == (path, None)  # outside the block: no cache, full resolution


def test_boxes_map_exactly_between_file_and_decoded_pixels(tmp_path: Path) -> None:
    values = np.full((1040, 1296), 1000, np.uint16)
    box = (600, 320, 840, 560)  # x0 y0 x1 y1 on a multiple of 8
    values[box[1] : box[3], box[0] : box[2]] = 30000
    path = tmp_path / "film.png"
    PILImage.fromarray(values).save(path)
    image = read_image(path, min_side=130)
    assert image.meta["decode_scale"] == 8
    ys, xs = np.nonzero(image.array > 15000)
    found = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert box_to_file(found, image) == box
    assert box_to_decoded(box, image) == (75.0, 40.0, 105.0, 70.0)
    assert box_to_file(box_to_decoded((601, 322, 843, 559), image), image) == (601, 322, 843, 559)


def test_jpeg_baseline_dicom_decodes_at_a_reduced_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Grey and YBR frames go through Pillow's draft mode; a JPEG holding untransformed RGB is decoded in full
    by pydicom (Pillow would take it for YCbCr) and block-averaged: every one is the full decode's picture."""
    ds = pydicom.dcmread(pydicom_file("RG1_UNCR.dcm"))  # MONOCHROME1 CR, 15 bit: re-encoded as 8-bit JPEG
    pixels = (ds.pixel_array >> 7).astype(np.uint8)
    jpeg = tmp_path / "frame.jpg"
    PILImage.fromarray(pixels).save(jpeg, quality=92)
    ds.PixelData = encapsulate([jpeg.read_bytes()])
    ds["PixelData"].VR = "OB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    for keyword in ("WindowCenter", "WindowWidth", "VOILUTSequence"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
    path = tmp_path / "cr_jpeg.dcm"
    ds.save_as(path, enforce_file_format=True)
    drafted = []
    draft = JpegImageFile.draft
    monkeypatch.setattr(
        JpegImageFile, "draft", lambda self, mode, size: (draft(self, mode, size), drafted.append(self.size))[0]
    )
    cases = [
        (path, 400, 4, True),  # 1841 // 4 = 460 >= 400
        (pydicom_file("SC_rgb_jpeg_dcmtk.dcm"), 20, 4, True),  # YBR_FULL, 100 x 100
        (pydicom_file("SC_jpeg_no_color_transform.dcm"), 20, 8, False),  # RGB, 256 x 256
    ]
    for file, min_side, factor, expect_draft in cases:
        drafted.clear()
        full, image = read_image(file), read_image(file, min_side=min_side)
        assert bool(drafted) == expect_draft, file.name
        assert image.meta["decode_scale"] == factor and image.meta["inverted"] == full.meta["inverted"]
        assert image.array.shape == tuple(-(-n // factor) for n in full.array.shape)
        reference = block_mean(full.array, factor)
        h, w = reference.shape
        assert np.abs(reference - image.array[:h, :w]).mean() < 0.02 * np.ptp(full.array), file.name
        assert np.corrcoef(reference.ravel(), image.array[:h, :w].ravel())[0, 1] > 0.98, file.name


def test_nifti_and_dicom_of_one_phantom_ct_share_their_patient_geometry(tmp_path: Path) -> None:
    """The CT phantom written as NIfTI and as a DICOM series (same voxels and geometry) gives one
    ``index_to_lps``, so a box in mm finds the same voxels in either file."""
    from osteoscope.phantoms.avnfh_ct import generate

    nifti = read_image(next((generate(tmp_path / "nii", n=1, seed=4).parent / "images").iterdir()))
    series_root = generate(tmp_path / "dcm", n=1, seed=4, fmt="dicom").parent / "images"
    dicom = read_image(next(p for p in series_root.iterdir() if p.is_dir()))
    np.testing.assert_array_equal(nifti.array, dicom.array)
    np.testing.assert_allclose(nifti.meta["index_to_lps"], dicom.meta["index_to_lps"], atol=1e-3)
    geometry = np.asarray(nifti.meta["index_to_lps"])
    centre = geometry @ [*(np.array(nifti.array.shape) / 2), 1]
    mm = (*(centre[:3] - 10), *(centre[:3] + 10))
    assert box_mm_to_voxels(mm, nifti) == box_mm_to_voxels(mm, dicom)
