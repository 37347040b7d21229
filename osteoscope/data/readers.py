"""Read medical images (DICOM file or series, NIfTI, PNG, JPEG, TIFF) into one float32 form.

Every reader returns an :class:`Image`: a grey float32 array, 2-D ``(y, x)`` or 3-D
``(z, y, x)``, the spacing in mm along the same axes, and a ``meta`` dict saying what was
done to the stored values (rescale, windowing, inversion, colour to grey). All failures are
raised as :class:`~osteoscope.errors.DataError` naming the file, so a bad case in a dataset of
thousands reports itself in one line instead of a library traceback.

Intensity conventions:
    * Bone is bright: DICOM MONOCHROME1 and TIFF min-is-white are inverted.
    * Colour images become grey by ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B).
    * ``meta["value_range"]`` is the (low, high) range the values can take (from the bit
      depth, rescale and windowing), or ``None`` when unknown (float data, NIfTI); use it to
      normalise without looking at the data.
    * NIfTI volumes are reoriented to the DICOM patient axes (x toward the patient's left,
      y toward posterior, z toward superior) so they display like a DICOM axial series.

Reduced-scale decoding (``read_image(path, min_side=N)``, 2-D images): the image is returned at the coarsest
of the reductions 1/2, 1/4, 1/8 (:data:`DECODE_SCALES`) at which its shorter side keeps at least ``N``
pixels, or in full when even 1/2 would leave fewer. A JPEG (a file, or the frame of a JPEG-baseline DICOM) is
decoded straight at that scale by the codec's DCT scaling (Pillow's draft mode), so the full-size picture is
never made; PNG, TIFF and other DICOM are decoded in full and their stored values then averaged over
``f x f`` blocks (area). Both come before any value mapping (DICOM rescale, VOI LUT or window, MONOCHROME1
inversion, colour to grey), so every later step runs on the small array. Output pixel ``i`` covers file
pixels ``[i * f, (i + 1) * f)`` (the last block may be partial), so a box maps between the two frames by
multiplying or dividing its edges by ``f`` (:func:`box_to_file`, :func:`box_to_decoded`).
``meta["decode_scale"]`` is ``f``, ``meta["file_shape"]`` the file's full ``(rows, columns)``, and
``spacing`` is that of the returned array (``f`` times the file's).

One decode per study: inside ``with decode_once(min_side=N):`` every :func:`read_image` of the same file
with the same arguments returns a copy of the first decode, and a read without ``min_side`` uses ``N``;
``predict`` wraps each study in it, so the localiser, the sample builder and the out-of-distribution guard
share one reduced decode. Outside the block nothing is cached.
"""

from __future__ import annotations

import gzip
import io
import logging
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pydicom.uid
import tifffile
from nibabel.filebasedimages import ImageFileError
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform
from PIL import Image as PILImage
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_windowing, get_decoder

from osteoscope.errors import DataError

__all__ = [
    "DECODE_SCALES",
    "MAX_VOXELS",
    "MIN_SIDE",
    "PROJECTION_MODALITIES",
    "Image",
    "box_to_decoded",
    "box_to_file",
    "check_image",
    "decode_once",
    "decode_scale",
    "file_shape",
    "missing_reason",
    "read_image",
]

#: DICOM modalities for which ``read_image(voi=None)`` applies the stored VOI LUT/window.
PROJECTION_MODALITIES = frozenset({"CR", "DX", "RF", "XA", "MG"})
#: Largest number of pixels/voxels a file may claim (2 GiB as float32); a larger header is refused before
#: any pixel is decoded, so a corrupt size field cannot exhaust memory.
MAX_VOXELS = 2**29
#: Smallest side, in pixels, of an image a model is given (:func:`check_image`): smaller is no radiograph,
#: CT or MR but a thumbnail, an icon or a failed export.
MIN_SIDE = 8
#: Reductions a reduced-scale decode chooses from (those of JPEG's DCT scaling), finest first.
DECODE_SCALES = (1, 2, 4, 8)
#: A DICOM series whose largest gap between slice positions exceeds this many times the median gap (missing
#: slices) is refused: interpolating across it would invent anatomy. Smaller unevenness is resampled.
MAX_SLICE_GAP = 3.0

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PIL_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
_TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
_DICOM_SUFFIXES = frozenset({"", ".dcm", ".dicom", ".ima"})
_LOG = logging.getLogger(__name__)
_SUPPORTED = "DICOM (.dcm, no extension, or a series folder), NIfTI (.nii, .nii.gz), PNG, JPEG, TIFF"
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True, eq=False)
class Image:
    """A grey image or volume with its physical spacing.

    Attributes:
        array: float32, 2-D ``(y, x)`` or 3-D ``(z, y, x)``.
        spacing: mm per pixel/voxel along the array's axes; 1.0 where the file does not say.
        meta: what the file was and what was applied to its values (see module docstring).
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.dtype != np.float32 or self.array.ndim not in (2, 3):
            raise ValueError(f"Image.array must be 2-D or 3-D float32, got {self.array.dtype} {self.array.shape}")
        if len(self.spacing) != self.array.ndim:
            raise ValueError(f"Image.spacing {self.spacing} does not match array shape {self.array.shape}")


@dataclass
class _Study:
    """The decodes of one :func:`decode_once` block."""

    min_side: int | None
    images: dict[tuple[str, bool | None, int | None], Image] = field(default_factory=dict)


_STUDY: ContextVar[_Study | None] = ContextVar("osteoscope_decode_once", default=None)


@contextmanager
def decode_once(min_side: int | None = None) -> Iterator[None]:
    """Within the block, decode each file once: a repeated :func:`read_image` with the same file and
    arguments returns a copy of the first decode (a copy, so no caller can change what the next one sees; it
    costs well under a millisecond at a reduced scale), and a read that gives no ``min_side`` uses this one.
    The decodes are dropped when the block ends.

    ``predict`` wraps each study in it with the task's :attr:`~osteoscope.tasks.base.Task.study_min_side`.
    """
    token = _STUDY.set(_Study(min_side))
    try:
        yield
    finally:
        _STUDY.reset(token)


def read_image(
    path: str | Path, *, voi: bool | None = None, min_side: int | None = None, series: str | None = None
) -> Image:
    """Read one image file, or a folder holding one DICOM series, as a grey float32 :class:`Image`.

    Args:
        path: DICOM file (with or without extension), DICOM series folder, ``.nii``/``.nii.gz``,
            PNG (8/16 bit), JPEG or TIFF. The format is taken from the content where it has a
            signature, else from the extension.
        voi: DICOM only. ``True`` applies the stored VOI LUT or window, ``False`` keeps modality
            values (e.g. HU), ``None`` applies it for projection radiography
            (:data:`PROJECTION_MODALITIES` or no modality) and not otherwise.
        min_side: 2-D images only (volumes are always read in full): decode at the coarsest scale of
            :data:`DECODE_SCALES` whose shorter side keeps at least this many pixels (see the module
            docstring); ``None`` decodes in full, or at the enclosing :func:`decode_once` block's value.
        series: DICOM series folders only: the SeriesInstanceUID to read when the folder holds several
            series; ``None`` requires exactly one. Files that are not DICOM are skipped and named in
            the ``osteoscope.data.readers`` log (warning).

    Returns:
        The image; ``meta`` records format, source path and every value transform applied, and with
        ``min_side`` the ``decode_scale`` and ``file_shape``.

    Raises:
        DataError: the path is missing, unreadable, not an image, or in an unsupported format; a
            series folder holds several series and ``series`` is None, or ``series`` is not among
            them (the message lists the UIDs).
    """
    study = _STUDY.get()
    if min_side is None and study is not None:
        min_side = study.min_side
    if min_side is not None and min_side < 1:
        raise ValueError(f"min_side must be at least 1, got {min_side}")
    if study is None:
        return _read(Path(path), voi, min_side, series)
    key = (str(Path(path).resolve()), voi, min_side, series)
    if key not in study.images:
        study.images[key] = _read(Path(path), voi, min_side, series)
    image = study.images[key]
    return Image(image.array.copy(), image.spacing, dict(image.meta))


def _read(path: Path, voi: bool | None, min_side: int | None, series: str | None = None) -> Image:
    """:func:`read_image` without the :func:`decode_once` bookkeeping."""
    if not path.exists():
        raise DataError(missing_reason(path), path=path)
    if path.is_dir():
        return _read_dicom_series(path, voi, series)
    if series is not None:
        raise DataError(f"series {series!r} was given but the path is a file, not a DICOM series folder", path=path)
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError as exc:
        raise DataError(f"cannot read the file: {exc.strerror or exc}", path=path) from exc
    if not head:
        raise DataError("the file is empty (0 bytes)", path=path)

    name = path.name.lower()
    suffix = path.suffix.lower()
    if name.endswith((".nii", ".nii.gz")):
        return _read_nifti(path)
    if head[128:132] == b"DICM":
        return _read_dicom_file(path, voi, force=False, min_side=min_side)
    if head.startswith((_PNG_MAGIC, _JPEG_MAGIC)):
        return _read_pil(path, min_side)
    if head.startswith(_TIFF_MAGICS):
        return _read_tiff(path, min_side)
    if suffix in _PIL_SUFFIXES or suffix in _TIFF_SUFFIXES:
        raise DataError(f"not a valid {suffix[1:].upper()} image: the content has no image signature", path=path)
    if suffix in _DICOM_SUFFIXES or suffix[1:].isdigit():
        return _read_dicom_file(path, voi, force=True, min_side=min_side)
    raise DataError(f"unsupported file type {suffix!r}; supported: {_SUPPORTED}", path=path)


def decode_scale(image: Image) -> int:
    """The reduction ``f`` an image was decoded at (1: full resolution)."""
    return int(image.meta.get("decode_scale", 1))


def file_shape(image: Image) -> tuple[int, ...]:
    """The shape of the image as stored in its file (the array's shape unless it was decoded reduced)."""
    return tuple(image.meta.get("file_shape", image.array.shape))


def box_to_file(box: Sequence[float], image: Image) -> tuple[int, ...]:
    """A ``x0 y0 x1 y1`` box in the decoded array's pixels as file pixels (edges times the decode scale,
    exact), so what a reduced decode found is reported in the coordinates of the manifest and ``--box``."""
    factor = decode_scale(image)
    return tuple(round(v * factor) for v in box)


def box_to_decoded(box: Sequence[float], image: Image) -> tuple[float, ...]:
    """A box in file pixels as (fractional) pixels of the decoded array: edges divided by the decode scale."""
    factor = decode_scale(image)
    return tuple(v if factor == 1 else v / factor for v in box)


def _reduction(shape: Sequence[int], min_side: int | None) -> int:
    """The coarsest factor of :data:`DECODE_SCALES` that keeps ``min_side`` pixels on the shorter side."""
    if min_side is None:
        return 1
    return max(f for f in DECODE_SCALES if f == 1 or min(shape) // f >= min_side)


def _block_mean(raw: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor x factor`` blocks of the first two axes in float32 (a partial last block averages the
    pixels it has); a third axis (colour samples) is kept."""
    import torch
    import torch.nn.functional as F

    planes = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))
    planes = planes[None] if raw.ndim == 2 else planes.permute(2, 0, 1)
    out = F.avg_pool2d(planes[None], factor, ceil_mode=True)[0].numpy()
    return out[0] if raw.ndim == 2 else np.ascontiguousarray(out.transpose(1, 2, 0))


def _reduce_stored(raw: np.ndarray, factor: int) -> np.ndarray:
    """:func:`_block_mean` of stored values, rounded back to their integer type so that the value mappings
    that follow (DICOM LUTs index tables with them) see the kind of values they expect."""
    if factor == 1:
        return raw
    mean = _block_mean(raw, factor)
    if raw.dtype.kind in "ui":
        return np.rint(mean).astype(raw.dtype)
    return mean.astype(raw.dtype, copy=False)


def _reduced_meta(meta: dict[str, Any], full: Sequence[int], factor: int, min_side: int | None) -> dict[str, Any]:
    """``meta`` with the decode scale and the file's shape, when a reduced decode was asked for."""
    if min_side is not None:
        meta.update(decode_scale=factor, file_shape=tuple(int(n) for n in full[:2]))
    return meta


def missing_reason(path: Path) -> str:
    """Why ``path`` does not exist, in words: a broken symbolic link says where it points."""
    if path.is_symlink():
        return f"broken symbolic link (it points to {path.readlink()}, which does not exist)"
    return "file not found"


def _check_claimed_size(shape: tuple[int, ...], path: Path) -> None:
    """Refuse a header whose size is empty or beyond :data:`MAX_VOXELS`, before anything is decoded."""
    total = int(np.prod(np.asarray(shape, dtype=np.float64)))
    size = " x ".join(str(int(n)) for n in shape)
    if total == 0:
        raise DataError(f"the header gives an empty image ({size})", path=path)
    if total > MAX_VOXELS:
        raise DataError(
            f"the header claims {size} = {total:.3g} pixels, more than the limit of {MAX_VOXELS:.3g} "
            "(a corrupt header, or not a single image)",
            path=path,
        )


def check_image(image: Image, *, ndim: int | None = None) -> Image:
    """Refuse an image no model can learn from or score, naming its file: the wrong dimensionality (a
    volume where a radiograph is expected, or the reverse), a side shorter than :data:`MIN_SIDE`, NaN or
    infinite values, or one constant value everywhere (a blank export). Returns ``image`` unchanged."""
    arr, path = image.array, image.meta.get("path")
    kind = {2: "2-D image", 3: "3-D volume"}
    if ndim is not None and arr.ndim != ndim:
        raise DataError(f"expected a {kind[ndim]}, got a {kind[arr.ndim]} of shape {arr.shape}", path=path)
    if min(arr.shape) < MIN_SIDE:
        size = " x ".join(str(n) for n in arr.shape[::-1])
        raise DataError(
            f"the {kind[arr.ndim]} is only {size} pixels (x by y{' by z' if arr.ndim == 3 else ''}): too small "
            f"to diagnose from (each side needs at least {MIN_SIDE})",
            path=path,
        )
    low, high = float(arr.min()), float(arr.max())  # NaN propagates, so two passes find NaN and infinity
    if not (np.isfinite(low) and np.isfinite(high)):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise DataError(f"{bad} of {arr.size} values are NaN or infinite", path=path)
    if low == high:
        raise DataError(f"the {kind[arr.ndim]} is blank: every pixel has the value {low:g}", path=path)
    return image


# --------------------------------------------------------------------------- PNG / JPEG / TIFF


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Grey from the first three channels of a channel-last array (BT.601 weights)."""
    return rgb[..., :3].astype(np.float32) @ _LUMA


def _read_pil(path: Path, min_side: int | None = None) -> Image:
    """PNG/JPEG via Pillow; 16-bit grey PNG stays exact (Pillow mode ``I;16``). A reduced JPEG is decoded at
    that scale (draft mode); a reduced PNG is decoded in full and block-averaged."""
    try:
        with PILImage.open(path) as pil:
            full = pil.size[::-1]
            _check_claimed_size(full, path)
            factor = _reduction(full, min_side)
            fmt = (pil.format or "").lower()
            mode = pil.mode
            if factor > 1 and fmt in ("jpeg", "mpo"):
                pil.draft(mode, (full[1] // factor, full[0] // factor))
            drafted = round(full[1] / pil.size[0])
            if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                pil = pil.convert("RGBA" if mode in ("P", "PA") else "RGB")
            raw = np.asarray(pil)
    except PILImage.DecompressionBombError as exc:
        raise DataError(f"the header claims an absurd size: {exc}", path=path) from exc
    except (OSError, ValueError, SyntaxError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot decode the image: {exc}", path=path) from exc

    if raw.dtype == np.bool_:
        value_range: tuple[float, float] | None = (0.0, 1.0)
    elif raw.dtype.kind == "u":
        value_range = (0.0, float(np.iinfo(raw.dtype).max))
    else:
        value_range = None
    bit_depth = int(raw.dtype.itemsize * 8) if raw.dtype != np.bool_ else 1
    values = _block_mean(raw, factor // drafted) if factor // drafted > 1 else raw
    to_grey = raw.ndim == 3
    if to_grey:
        arr = _luma(values) if raw.shape[2] >= 3 else values[..., 0].astype(np.float32)
    else:
        arr = values.astype(np.float32, copy=False)
    meta = {
        "format": "jpeg" if fmt in ("jpeg", "mpo") else fmt,
        "path": str(path),
        "photometric": mode,
        "bit_depth": bit_depth,
        "to_grey": to_grey,
        "inverted": False,
        "value_range": value_range,
        "spacing_known": False,
    }
    return Image(arr, (float(factor), float(factor)), _reduced_meta(meta, full, factor, min_side))


def _read_tiff(path: Path, min_side: int | None = None) -> Image:
    """TIFF via tifffile: grey, RGB (to luma) or a page stack (returned as a volume; never reduced). A reduced
    2-D TIFF is decoded in full and block-averaged."""
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            _check_claimed_size(series.shape, path)
            raw = series.asarray()
            axes = series.axes
            photometric = tif.pages[0].photometric
    except DataError:
        raise
    except Exception as exc:  # tifffile raises many types (IndexError, ZeroDivisionError) on corrupt files
        raise DataError(f"cannot decode the TIFF image: {exc}", path=path) from exc

    to_grey = "S" in axes and raw.shape[axes.index("S")] > 1
    if "S" in axes:
        raw = np.moveaxis(raw, axes.index("S"), -1)
        arr = _luma(raw) if raw.shape[-1] >= 3 else raw[..., 0].astype(np.float32)
    else:
        arr = raw.astype(np.float32)
    arr = np.squeeze(arr) if arr.ndim > 2 else arr
    if arr.ndim not in (2, 3):
        raise DataError(f"TIFF with axes {axes!r} and shape {raw.shape} is not a 2-D image or 3-D stack", path=path)
    full = arr.shape
    factor = _reduction(full, min_side) if arr.ndim == 2 else 1
    if factor > 1:
        arr = _block_mean(arr, factor)

    value_range = (0.0, float(np.iinfo(raw.dtype).max)) if raw.dtype.kind == "u" else None
    inverted = photometric == tifffile.PHOTOMETRIC.MINISWHITE
    if inverted:
        lo, hi = value_range or (float(arr.min()), float(arr.max()))
        arr = np.float32(lo + hi) - arr
    meta = {
        "format": "tiff",
        "path": str(path),
        "photometric": getattr(photometric, "name", str(photometric)),
        "bit_depth": int(raw.dtype.itemsize * 8),
        "to_grey": to_grey,
        "inverted": inverted,
        "value_range": value_range,
        "spacing_known": False,
    }
    if arr.ndim == 2:
        meta = _reduced_meta(meta, full, factor, min_side)
    return Image(np.ascontiguousarray(arr, dtype=np.float32), (float(factor),) * arr.ndim, meta)


# --------------------------------------------------------------------------- NIfTI


def _read_nifti(path: Path) -> Image:
    """NIfTI via nibabel, reoriented to DICOM patient axes (L, P, S) and returned as (z, y, x)."""
    try:
        img = nib.load(path)
        if img.ndim == 4 and img.shape[3] == 1:
            img = img.slicer[..., 0]
        if img.ndim != 3:
            raise DataError(f"NIfTI of shape {img.shape} is not a 3-D volume", path=path)
        _check_claimed_size(img.shape, path)
        ornt = ornt_transform(io_orientation(img.affine), axcodes2ornt(("L", "P", "S")))
        img = img.as_reoriented(ornt)
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except (ImageFileError, OSError, EOFError, ValueError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"cannot read the NIfTI file: {exc}", path=path) from exc

    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    ras_to_lps, ijk_to_zyx = np.diag([-1.0, -1.0, 1.0, 1.0]), np.eye(4)[[2, 1, 0, 3]]
    meta = {
        "format": "nifti",
        "path": str(path),
        "orientation": "LPS",
        "affine": img.affine.tolist(),
        "index_to_lps": (ras_to_lps @ img.affine @ ijk_to_zyx).tolist(),
        "to_grey": False,
        "inverted": False,
        "value_range": None,
        "spacing_known": True,
    }
    return Image(np.ascontiguousarray(data.transpose(2, 1, 0)), zooms[::-1], meta)


# --------------------------------------------------------------------------- DICOM


def _install_hint(uid: pydicom.uid.UID) -> str:
    """Name the pip package that decodes ``uid``."""
    if uid in pydicom.uid.JPEG2000TransferSyntaxes:
        return "pip install pylibjpeg pylibjpeg-openjpeg"
    if uid in pydicom.uid.JPEGLSTransferSyntaxes or uid in pydicom.uid.JPEGTransferSyntaxes:
        return "pip install pylibjpeg pylibjpeg-libjpeg"
    if uid in pydicom.uid.RLETransferSyntaxes:
        return "pip install pylibjpeg pylibjpeg-rle (or numpy, for pydicom's own RLE decoder)"
    return "python-gdcm may decode it: pip install python-gdcm"


def _transfer_syntax(ds: Dataset) -> pydicom.uid.UID:
    """The dataset's transfer syntax, inferred from its encoding when the file has no meta header."""
    uid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if uid:
        return pydicom.uid.UID(uid)
    implicit, little = ds.original_encoding
    if implicit:
        uid = pydicom.uid.ImplicitVRLittleEndian
    else:
        uid = pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian
    ds.file_meta.TransferSyntaxUID = uid
    return uid


def _decode_pixels(ds: Dataset, path: Path, reduce_by: int = 1) -> tuple[np.ndarray, int]:
    """Decode the stored pixels, turning absurd sizes, missing decoders and corrupt data into DataError.

    With ``reduce_by`` > 1 a single-frame JPEG baseline image is decoded at that reduction by the codec's DCT
    scaling (:func:`_draft_jpeg_frame`). Returns the pixels and the reduction already made (1: full size).
    """
    try:
        frames, samples = int(ds.get("NumberOfFrames", 1) or 1), int(ds.get("SamplesPerPixel", 1) or 1)
        claimed = (
            *([frames] if frames > 1 else []),
            int(ds.Rows),
            int(ds.Columns),
            *([samples] if samples > 1 else []),
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise DataError(f"DICOM image without a valid size (Rows, Columns): {exc}", path=path) from exc
    _check_claimed_size(claimed, path)
    uid = _transfer_syntax(ds)
    # Pillow treats a 3-component JPEG as YCbCr, so it decodes grey and YBR_FULL(_422) frames as pydicom does
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if reduce_by > 1 and frames == 1 and uid == pydicom.uid.JPEGBaseline8Bit and photometric != "RGB":
        drafted = _draft_jpeg_frame(ds, reduce_by)
        if drafted is not None:
            return drafted
    try:
        available = get_decoder(uid).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise DataError(
            f"pixel data uses transfer syntax {uid.name} ({uid}), which no installed decoder reads; "
            f"{_install_hint(uid)}",
            path=path,
        )
    try:
        return ds.pixel_array, 1
    except Exception as exc:  # decoders and plugins raise many types for corrupt data
        raise DataError(f"cannot decode the pixel data ({uid.name}): {exc}", path=path) from exc


def _draft_jpeg_frame(ds: Dataset, factor: int) -> tuple[np.ndarray, int] | None:
    """The one JPEG baseline frame of ``ds`` decoded by Pillow at up to ``factor`` reduction (draft mode), and
    the reduction made; None when Pillow cannot read it as the header describes (pydicom's decoder then
    decodes it, or reports why not). Colour comes out as RGB, as pydicom gives it."""
    rows, columns, samples = int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1) or 1)
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        with PILImage.open(io.BytesIO(frame)) as pil:
            pil.draft(pil.mode, (columns // factor, rows // factor))
            raw = np.asarray(pil.convert("RGB") if pil.mode in ("YCbCr", "CMYK") else pil)
    except (OSError, ValueError, SyntaxError, EOFError, StopIteration):
        return None
    done = round(columns / raw.shape[1])
    expected = (-(-rows // done), -(-columns // done), *((samples,) if samples > 1 else ()))
    return (raw, done) if raw.shape == expected and raw.dtype == np.uint8 else None


def _view_tags(ds: Dataset) -> dict[str, Any]:
    """The tags that say how a projection film is oriented, by DICOM keyword, those present and non-empty:
    ``PatientOrientation`` (a list of strings), ``ViewPosition`` and ``ImageLaterality`` (upper case)."""
    tags: dict[str, Any] = {}
    for name in ("PatientOrientation", "ViewPosition", "ImageLaterality"):
        value = ds.get(name)
        if value not in (None, ""):
            tags[name] = [str(v) for v in value] if name == "PatientOrientation" else str(value).strip().upper()
    return tags


def _stored_range(ds: Dataset) -> tuple[float, float] | None:
    """Range of values after the modality LUT, as pydicom's windowing assumes it."""
    if "PixelData" not in ds or "BitsStored" not in ds:
        return None
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = sorted((lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)))
    return lo, hi


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """In-plane (row, column) spacing in mm from the usual places, or None."""
    for source in (ds, *_shared_pixel_measures(ds)):
        for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
            value = source.get(keyword)
            if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
                return float(value[0]), float(value[1])
    return None


def _shared_pixel_measures(ds: Dataset) -> list[Dataset]:
    """Pixel Measures items of an enhanced multi-frame object, if any."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    if not shared:
        return []
    return list(shared[0].get("PixelMeasuresSequence") or [])


def _is_projection(ds: Dataset) -> bool:
    """True for projection radiography, where the stored window is part of the image's meaning."""
    modality = str(ds.get("Modality", "") or "").upper()
    return modality == "" or modality in PROJECTION_MODALITIES


def _dicom_values(
    ds: Dataset, path: Path, voi: bool | None, min_side: int | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Decoded pixels → grey float32 with modality LUT, optional VOI and MONOCHROME1 inversion. A reduced
    single-frame image is block-averaged right after decoding (after a palette lookup), before the rest."""
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise DataError(
            f"DICOM without pixel data (SOP class {ds.get('SOPClassUID', 'unknown')!s}); not an image",
            path=path,
        )
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    full = (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))
    factor = _reduction(full, min_side) if frames == 1 else 1
    raw, done = _decode_pixels(ds, path, factor if photometric != "PALETTE COLOR" else 1)
    meta: dict[str, Any] = {
        "format": "dicom",
        "path": str(path),
        "modality": str(ds.get("Modality", "") or "") or None,
        "body_part": str(ds.get("BodyPartExamined", "") or "") or None,
        "view_tags": _view_tags(ds),
        "photometric": photometric,
        "transfer_syntax": _transfer_syntax(ds).name,
        "bit_depth": int(ds.get("BitsStored", raw.dtype.itemsize * 8)),
        "frames": frames,
        "rescale": None,
        "voi": None,
        "inverted": False,
        "to_grey": False,
    }

    if photometric == "PALETTE COLOR":
        raw = apply_color_lut(raw, ds)
    if frames == 1:
        raw = _reduce_stored(raw, factor // done)
        _reduced_meta(meta, full, factor, min_side)
    colour = int(ds.get("SamplesPerPixel", 1)) > 1 or photometric == "PALETTE COLOR"
    if colour:
        # pydicom has already turned YBR into RGB; a colour image has no modality/VOI LUT.
        bits = int(ds.BitsStored) if photometric != "PALETTE COLOR" else raw.dtype.itemsize * 8
        meta.update(to_grey=True, value_range=(0.0, float(2**bits - 1)))
        return _luma(raw), meta

    values = apply_modality_lut(raw, ds)
    if ds.get("ModalityLUTSequence"):
        meta["rescale"] = "modality LUT"
    elif "RescaleSlope" in ds or "RescaleIntercept" in ds:
        meta["rescale"] = (float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0)))
    value_range = _stored_range(ds)

    if voi if voi is not None else _is_projection(ds):
        if ds.get("VOILUTSequence"):
            values = apply_voi(values, ds)
            bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
            value_range = (0.0, float(2**bits - 1))
            meta["voi"] = "VOI LUT"
        elif "WindowCenter" in ds and "WindowWidth" in ds and value_range is not None:
            values = apply_windowing(values, ds)
            center = ds.WindowCenter[0] if ds["WindowCenter"].VM > 1 else ds.WindowCenter
            width = ds.WindowWidth[0] if ds["WindowWidth"].VM > 1 else ds.WindowWidth
            meta["voi"] = f"window center {float(center):g} width {float(width):g}"

    values = np.asarray(values, dtype=np.float32)
    if photometric == "MONOCHROME1":
        lo, hi = value_range or (float(values.min()), float(values.max()))
        values = np.float32(lo + hi) - values
        meta["inverted"] = True
    meta["value_range"] = value_range
    return values, meta


def _read_dicom_file(path: Path, voi: bool | None, *, force: bool, min_side: int | None = None) -> Image:
    """One DICOM file: 2-D image, or a (frames, y, x) volume for multi-frame objects."""
    try:
        ds = pydicom.dcmread(path, force=force)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise DataError(f"not a readable DICOM file: {exc}", path=path) from exc
    if force and not any(k in ds for k in (*_PIXEL_KEYWORDS, "SOPClassUID", "Rows")):
        raise DataError("not a DICOM file (no DICOM header or image attributes found)", path=path)

    values, meta = _dicom_values(ds, path, voi, min_side)
    in_plane = _pixel_spacing(ds)
    meta["spacing_known"] = in_plane is not None
    in_plane = in_plane or (1.0, 1.0)
    if values.ndim == 2:
        factor = meta.get("decode_scale", 1)
        return Image(values, (in_plane[0] * factor, in_plane[1] * factor), meta)
    between = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness")
    return Image(values, (float(between) if between else 1.0, *in_plane), meta)


def _read_dicom_series(folder: Path, voi: bool | None, uid: str | None = None) -> Image:
    """A folder of single-frame DICOM slices → (z, y, x) volume of one series sorted along the normal.

    ``uid`` picks the series by SeriesInstanceUID; without it the folder must hold one series.
    Non-DICOM files (.DS_Store, notes, thumbnails) are skipped and named in one log warning.
    """
    series: dict[str, list[tuple[Path, Dataset]]] = {}
    skipped: list[str] = []
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(file)
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError):
            skipped.append(file.name)
            continue
        if "Rows" in ds and not any(k in ds for k in _PIXEL_KEYWORDS):
            raise DataError("a slice of the series has image attributes but no pixel data", path=file)
        if any(k in ds for k in _PIXEL_KEYWORDS):
            series.setdefault(str(ds.get("SeriesInstanceUID", "") or ""), []).append((file, ds))
    if skipped:
        _LOG.warning("%s: skipped %d non-DICOM file(s): %s", folder, len(skipped), ", ".join(skipped))
    if not series:
        raise DataError("folder holds no DICOM image files", path=folder)
    listing = "; ".join(f"{key or '(no UID)'} ({len(items)} files)" for key, items in series.items())
    if uid is not None:
        if uid not in series:
            raise DataError(f"series {uid!r} is not in the folder; SeriesInstanceUIDs: {listing}", path=folder)
        series = {uid: series[uid]}
    elif len(series) > 1:
        raise DataError(
            f"folder holds {len(series)} DICOM series, expected one (pick one with series=UID); "
            f"SeriesInstanceUIDs: {listing}",
            path=folder,
        )
    (slices,) = series.values()

    positions = _slice_positions([ds for _, ds in slices])
    if positions is not None:
        order = np.argsort(positions, kind="stable")
        sorted_pos = positions[order]
        gaps = np.diff(sorted_pos)
        if gaps.size and gaps.min() < 1e-4:
            raise DataError(
                "two slices share one position (several acquisitions or echoes in one series?)", path=folder
            )
        dz = float(np.median(gaps)) if gaps.size else None
    else:
        order = np.argsort([int(ds.get("InstanceNumber", 0) or 0) for _, ds in slices], kind="stable")
        gaps, dz = np.empty(0), None
    first = slices[int(order[0])][1]
    if dz is None:
        between = first.get("SpacingBetweenSlices") or first.get("SliceThickness")
        dz = float(between) if between else 1.0
    if voi is None:
        voi = _is_projection(first)

    _check_claimed_size((len(slices), int(first.get("Rows", 0) or 0), int(first.get("Columns", 0) or 0)), folder)
    planes = []
    for index in order:
        file, ds = slices[int(index)]
        values, slice_meta = _dicom_values(ds, file, voi)
        if values.ndim != 2:
            raise DataError("series folder contains a multi-frame or colour file; expected grey slices", path=file)
        if planes and values.shape != planes[0].shape:
            raise DataError(f"slice shape {values.shape} differs from {planes[0].shape}", path=file)
        planes.append(values)

    volume = np.stack(planes)
    uneven = bool(gaps.size and np.ptp(gaps) > 0.01 * dz)
    if uneven:
        volume = _regular_slices(volume, sorted_pos, dz, folder)
    in_plane = _pixel_spacing(first)
    slice_meta.update(
        format="dicom-series",
        path=str(folder),
        files=len(planes),
        series_uid=next(iter(series)) or None,
        sorted_by="position" if positions is not None else "instance number",
        uneven_slice_spacing=uneven,
        resampled_to_regular_slices=uneven,
        spacing_known=in_plane is not None and positions is not None,
    )
    if in_plane is not None and positions is not None:
        slice_meta["index_to_lps"] = _series_geometry(first, dz, in_plane).tolist()
    return Image(volume, (dz, *(in_plane or (1.0, 1.0))), slice_meta)


def _regular_slices(volume: np.ndarray, positions: np.ndarray, dz: float, folder: Path) -> np.ndarray:
    """Slices at uneven ``positions`` (sorted, mm) linearly interpolated onto a regular grid of the median
    gap ``dz`` from the first position, with a warning; a gap over :data:`MAX_SLICE_GAP` times ``dz`` (missing
    slices) is an error instead."""
    gaps = np.diff(positions)
    widest = int(np.argmax(gaps))
    if gaps[widest] > MAX_SLICE_GAP * dz:
        raise DataError(
            f"slices missing: a gap of {gaps[widest]:.2f} mm between slice positions {positions[widest]:.2f} and "
            f"{positions[widest + 1]:.2f} mm, {gaps[widest] / dz:.1f} times the usual {dz:.2f} mm",
            path=folder,
        )
    grid = positions[0] + dz * np.arange(round((positions[-1] - positions[0]) / dz) + 1)
    upper = np.clip(np.searchsorted(positions, grid, side="right"), 1, len(positions) - 1)
    weight = np.clip((grid - positions[upper - 1]) / (positions[upper] - positions[upper - 1]), 0.0, 1.0)
    _LOG.warning(
        "%s: uneven slice spacing (gaps %.2f..%.2f mm); %d slices resampled to %d at a regular %.2f mm "
        "by linear interpolation",
        folder,
        gaps.min(),
        gaps.max(),
        len(positions),
        len(grid),
        dz,
    )
    w = weight[:, None, None].astype(np.float32)
    return (volume[upper - 1] * (1 - w) + volume[upper] * w).astype(np.float32)


def _series_geometry(first: Dataset, dz: float, in_plane: tuple[float, float]) -> np.ndarray:
    """The 4x4 map from array index (z, y, x) to patient LPS mm of a sorted series (first slice at z 0)."""
    orientation = np.asarray(first.ImageOrientationPatient, float)
    row_dir, col_dir = orientation[:3], orientation[3:]  # along a row (x index), down a column (y index)
    geometry = np.eye(4)
    geometry[:3, 0] = np.cross(row_dir, col_dir) * dz
    geometry[:3, 1] = col_dir * in_plane[0]
    geometry[:3, 2] = row_dir * in_plane[1]
    geometry[:3, 3] = np.asarray(first.ImagePositionPatient, float)
    return geometry


def box_mm_to_voxels(box_mm: Sequence[float], image: Image) -> tuple[int, ...]:
    """A ``x0 y0 z0 x1 y1 z1`` box in patient LPS mm as the voxel box (same order, end exclusive) that covers
    it in a 3-D image from a NIfTI file or a DICOM series with its geometry, clipped to the volume."""
    geometry = image.meta.get("index_to_lps")
    if geometry is None or image.array.ndim != 3 or len(box_mm) != 6:
        raise DataError(
            "a box in mm needs a 3-D image whose file gives its patient geometry (NIfTI, or a DICOM series with "
            "ImagePositionPatient and ImageOrientationPatient) and 6 numbers",
            path=image.meta.get("path"),
        )
    lo, hi = np.asarray(box_mm[:3], float), np.asarray(box_mm[3:], float)
    corners = np.array([[(lo, hi)[b][a] for a, b in enumerate(bits)] for bits in np.ndindex(2, 2, 2)])
    to_index = np.linalg.inv(np.asarray(geometry, float))
    zyx = (to_index[:3, :3] @ corners.T).T + to_index[:3, 3]
    start = np.clip(np.floor(zyx.min(axis=0) + 0.5), 0, None).astype(int)
    stop = np.minimum(np.ceil(zyx.max(axis=0) + 0.5).astype(int), image.array.shape)
    if np.any(stop <= start):
        raise DataError(f"the box {list(box_mm)} mm lies outside the volume", path=image.meta.get("path"))
    return int(start[2]), int(start[1]), int(start[0]), int(stop[2]), int(stop[1]), int(stop[0])


def _slice_positions(datasets: list[Dataset]) -> np.ndarray | None:
    """Position of each slice along the normal of the first slice's orientation, or None if unknown."""
    orientation = datasets[0].get("ImageOrientationPatient")
    if orientation is None or len(orientation) != 6:
        return None
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    positions = []
    for ds in datasets:
        ipp = ds.get("ImagePositionPatient")
        if ipp is None or len(ipp) != 3:
            return None
        positions.append(float(np.dot(normal, np.asarray(ipp, float))))
    return np.asarray(positions)
