"""A corpus of malformed image files, written into a folder by the tests that need it.

Each maker writes one broken file (or folder) next to a valid ``template`` of the same kind and returns its
path: empty, truncated, broken compression, no pixel data, absurd header sizes, NaN volumes, degenerate
images, the wrong dimensionality and symbolic links that lead nowhere useful.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image as PILImage
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless

Maker = Callable[[Path, Path], Path]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(width: int, height: int, idat: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def empty(template: Path, out: Path) -> Path:
    path = out.with_suffix("".join(template.suffixes))
    path.write_bytes(b"")
    return path


def truncated(template: Path, out: Path) -> Path:
    path = out.with_suffix("".join(template.suffixes))
    data = template.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def png_broken_compression(template: Path, out: Path) -> Path:
    """A PNG with valid chunks (CRCs right) whose image data is not a zlib stream."""
    path = out.with_suffix(".png")
    path.write_bytes(_png(64, 64, b"\x78\x9c" + bytes(range(7, 250))))
    return path


def png_absurd_size(template: Path, out: Path) -> Path:
    """A PNG header claiming 100000 x 100000 pixels over a few bytes of data."""
    path = out.with_suffix(".png")
    path.write_bytes(_png(100_000, 100_000, zlib.compress(b"\x00" * 64)))
    return path


def png_tiny(template: Path, out: Path) -> Path:
    path = out.with_suffix(".png")
    PILImage.fromarray(np.full((1, 1), 200, np.uint8)).save(path)
    return path


def png_constant(template: Path, out: Path) -> Path:
    path = out.with_suffix(".png")
    PILImage.fromarray(np.zeros((64, 80), np.uint8)).save(path)
    return path


def nifti_volume(template: Path, out: Path) -> Path:
    """A valid 3-D NIfTI volume, given where a 2-D radiograph is expected."""
    path = out.with_suffix(".nii.gz")
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((40, 40, 20)).astype(np.float32), np.eye(4)), path)
    return path


def nifti_nan(template: Path, out: Path) -> Path:
    path = out.with_suffix(".nii.gz")
    image = nib.load(template)
    data = np.asarray(image.get_fdata(), dtype=np.float32)
    data[data.shape[0] // 2] = np.nan
    nib.save(nib.Nifti1Image(data, image.affine), path)
    return path


def nifti_absurd_size(template: Path, out: Path) -> Path:
    """An uncompressed NIfTI header claiming 30000^3 voxels over a few bytes of data."""
    path = out.with_suffix(".nii")
    image = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    header = image.header.copy()
    header.set_data_shape((30_000, 30_000, 30_000))
    raw = header.binaryblock + b"\x00" * 4 + np.zeros(8, np.float32).tobytes()
    path.write_bytes(raw)
    return path


def nifti_slice(template: Path, out: Path) -> Path:
    """A 2-D PNG given where a CT volume is expected."""
    return png_constant_texture(template, out)


def png_constant_texture(template: Path, out: Path) -> Path:
    path = out.with_suffix(".png")
    PILImage.fromarray(np.random.default_rng(1).integers(0, 255, (48, 48), dtype=np.uint8)).save(path)
    return path


def dicom_without_pixels(template: Path, out: Path) -> Path:
    path = out.with_suffix(".dcm")
    ds = pydicom.dcmread(template)
    del ds.PixelData
    ds.save_as(path)
    return path


def dicom_broken_compression(template: Path, out: Path) -> Path:
    """RLE Lossless pixel data that is not RLE (a header naming 0 segments, then noise)."""
    path = out.with_suffix(".dcm")
    ds = pydicom.dcmread(template)
    ds.PixelData = encapsulate([b"\x05\x00\x00\x00" + bytes(range(60)) * 3])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.save_as(path, enforce_file_format=True)
    return path


def dicom_absurd_size(template: Path, out: Path) -> Path:
    """A DICOM header claiming 65535 x 65535 pixels (the largest the tags hold) over 64 bytes of data."""
    path = out.with_suffix(".dcm")
    ds = pydicom.dcmread(template)
    ds.Rows = ds.Columns = 65535
    ds.PixelData = b"\x00" * 64
    ds.save_as(path)
    return path


def dicom_series_without_pixels(template: Path, out: Path) -> Path:
    """A CT series folder in which one slice has lost its pixel data."""
    shutil.copytree(template, out)
    first = sorted(out.iterdir())[len(list(out.iterdir())) // 2]
    ds = pydicom.dcmread(first)
    del ds.PixelData
    ds.save_as(first)
    return out


def dicom_series_truncated(template: Path, out: Path) -> Path:
    """A CT series folder in which one slice file is cut in half."""
    shutil.copytree(template, out)
    victim = sorted(out.iterdir())[len(list(out.iterdir())) // 2]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 200])
    return out


def dangling_symlink(template: Path, out: Path) -> Path:
    path = out.with_suffix("".join(template.suffixes))
    path.symlink_to(out.parent / "does-not-exist.png")
    return path


def symlink_to_folder(template: Path, out: Path) -> Path:
    folder = out.parent / f"{out.name}-folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image\n")
    path = out.with_suffix("".join(template.suffixes))
    path.symlink_to(folder, target_is_directory=True)
    return path


RADIOGRAPH_PNG: dict[str, Maker] = {
    "empty": empty,
    "truncated": truncated,
    "broken-compression": png_broken_compression,
    "absurd-size": png_absurd_size,
    "one-pixel": png_tiny,
    "constant": png_constant,
    "volume-as-radiograph": nifti_volume,
    "dangling-symlink": dangling_symlink,
    "symlink-to-folder": symlink_to_folder,
}
RADIOGRAPH_DICOM: dict[str, Maker] = {
    "empty": empty,
    "truncated": truncated,
    "no-pixel-data": dicom_without_pixels,
    "broken-compression": dicom_broken_compression,
    "absurd-size": dicom_absurd_size,
}
CT_NIFTI: dict[str, Maker] = {
    "empty": empty,
    "truncated": truncated,
    "nan-volume": nifti_nan,
    "absurd-size": nifti_absurd_size,
    "radiograph-as-volume": nifti_slice,
    "dangling-symlink": dangling_symlink,
}
CT_SERIES: dict[str, Maker] = {
    "series-no-pixel-data": dicom_series_without_pixels,
    "series-truncated-slice": dicom_series_truncated,
    "symlink-to-empty-folder": symlink_to_folder,
}
