"""Simple statistics of a model's training inputs, and a check that a new study looks like them.

This is the generic part of ``predict``'s out-of-distribution guard (tasks add their own checks, see
:meth:`osteoscope.tasks.base.Task.check_study`). At training time :func:`input_profile` reads the raw images
of the training cases, per image column, and keeps the range of a few cheap features; at prediction
:func:`profile_problems` says in words which feature of a study falls outside that range by more than a
tolerance, and which DICOM Modality or BodyPartExamined is neither what the task expects nor what the
training images had.

Features of one image (:func:`image_features`): the number of dimensions, the size along each axis, the
aspect ratio (width / height) and the 10th, 25th, 50th, 75th and 90th percentiles of the image scaled by its
own 1st..99th percentiles to [0, 1]. The scaled percentiles do not depend on bit depth, exposure or
windowing, but do on what the picture shows: a hand radiograph on a black background has its lower
percentiles at 0, a pelvis film mostly soft tissue in between.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from osteoscope.data.readers import Image, file_shape, read_image
from osteoscope.errors import DataError

PROFILE_VERSION = 1
QUANTILES = (10, 25, 50, 75, 90)
SAMPLE_PIXELS = 65_536  # features are computed on a strided sample of about this many pixels
MAX_CASES = 200  # at most this many training cases are read (evenly spaced), to bound the cost
SIZE_FACTOR = 2.0  # a size may be this factor outside the training range
ASPECT_FACTOR = 1.25  # the aspect ratio this factor
QUANTILE_MARGIN = 0.12  # a scaled percentile this much (of the [0, 1] range)


def image_features(image: Image) -> dict[str, float]:
    """The features of one image or volume (see the module docstring)."""
    array = image.array  # may be a reduced decode (predict): sizes are the file's, percentiles barely move
    step = max(1, int(np.ceil((array.size / SAMPLE_PIXELS) ** (1 / array.ndim))))
    sample = array[(slice(None, None, step),) * array.ndim].astype(np.float64).ravel()
    lo, hi = np.percentile(sample, [1, 99])
    scaled = np.clip((sample - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    features: dict[str, float] = {"ndim": float(array.ndim)}
    shape = file_shape(image)
    features.update({f"size_{axis}": float(n) for axis, n in enumerate(shape)})
    features["aspect"] = shape[-1] / shape[-2]
    features.update({f"q{q}": float(v) for q, v in zip(QUANTILES, np.percentile(scaled, QUANTILES), strict=True)})
    return features


def dicom_tags(image: Image) -> dict[str, str]:
    """Modality and BodyPartExamined of a DICOM image (upper case), empty for other formats or absent tags."""
    tags = {"modality": image.meta.get("modality"), "body_part": image.meta.get("body_part")}
    return {key: str(value).strip().upper() for key, value in tags.items() if value and str(value).strip()}


def input_profile(files: Iterable[tuple[str, Path, str | None]]) -> dict[str, Any]:
    """The profile of training inputs from ``(column, file, series UID or None)``: per column, the range of
    each feature and the DICOM Modality and BodyPartExamined values seen."""
    columns: dict[str, dict[str, Any]] = {}
    for column, path, series in files:
        image = read_image(path, series=series)
        entry = columns.setdefault(column, {"n": 0, "features": {}, "modality": set(), "body_part": set()})
        entry["n"] += 1
        for name, value in image_features(image).items():
            entry["features"].setdefault(name, []).append(value)
        for key, value in dicom_tags(image).items():
            entry[key].add(value)
    return {
        "version": PROFILE_VERSION,
        "columns": {
            column: {
                "n": entry["n"],
                "features": {
                    name: {"min": float(np.min(v)), "max": float(np.max(v)), "mean": float(np.mean(v))}
                    for name, v in entry["features"].items()
                },
                "modality": sorted(entry["modality"]),
                "body_part": sorted(entry["body_part"]),
            }
            for column, entry in columns.items()
        },
    }


def evenly_spaced(items: list, limit: int = MAX_CASES) -> list:
    """At most ``limit`` items, evenly spaced over the list (deterministic)."""
    if len(items) <= limit:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def _axis_name(name: str, ndim: int) -> str:
    """``size_0`` of a 2-D image is its height, of a 3-D volume its depth."""
    return ("depth", "height", "width")[3 - ndim + int(name.removeprefix("size_"))]


def _outside(name: str, value: float, low: float, high: float, ndim: int) -> str | None:
    """A sentence when ``value`` of feature ``name`` lies outside [low, high] beyond its tolerance."""
    if name.startswith("size_"):
        ok = low / SIZE_FACTOR <= value <= high * SIZE_FACTOR
        what, shown, limits = _axis_name(name, ndim), f"{value:.0f} px", f"{low:.0f}-{high:.0f} px"
        allowed = f"a factor {SIZE_FACTOR:g} beyond it"
    elif name == "aspect":
        ok = low / ASPECT_FACTOR <= value <= high * ASPECT_FACTOR
        what, shown, limits = "aspect ratio (width/height)", f"{value:.2f}", f"{low:.2f}-{high:.2f}"
        allowed = f"a factor {ASPECT_FACTOR:g} beyond it"
    else:
        ok = low - QUANTILE_MARGIN <= value <= high + QUANTILE_MARGIN
        what = f"{name.removeprefix('q')}th intensity percentile (of the image scaled by its 1st-99th)"
        shown, limits, allowed = f"{value:.2f}", f"{low:.2f}-{high:.2f}", f"{QUANTILE_MARGIN:g} beyond it"
    return None if ok else f"{what} {shown} is outside the training range {limits} (allowed: {allowed})"


def profile_problems(
    column: str,
    image: Image,
    profile: Mapping[str, Any],
    *,
    modalities: Collection[str] = (),
    body_parts: Collection[str] = (),
) -> list[str]:
    """Why the image of ``column`` does not look like the training inputs (empty when it does).

    Args:
        column: The manifest column of the image (``image``, ``image_t1``, ...).
        image: The study's image.
        profile: What :func:`input_profile` stored at training time (empty: only the DICOM tags are checked).
        modalities: DICOM Modality values the task expects (upper case); with those seen in training.
        body_parts: DICOM BodyPartExamined values the task expects; with those seen in training.
    """
    if profile and profile.get("version") != PROFILE_VERSION:
        raise DataError(f"input profile of version {profile.get('version')!r} is not understood")
    stats = profile.get("columns", {}).get(column) if profile else None
    tags = dicom_tags(image)
    if stats is not None:
        modalities = {*modalities, *stats["modality"]}
        body_parts = {*body_parts, *stats["body_part"]}
    problems = [
        f"DICOM {label} {tags[key]}, expected {' or '.join(sorted(expected))}"
        for key, expected, label in (
            ("modality", modalities, "Modality"),
            ("body_part", body_parts, "BodyPartExamined"),
        )
        if key in tags and expected and tags[key] not in expected
    ]
    if stats is not None:
        problems += _feature_problems(image_features(image), stats["features"])
    return [f"{column}: {problem}" for problem in problems]


def _feature_problems(features: Mapping[str, float], trained: Mapping[str, Mapping[str, float]]) -> list[str]:
    """The features outside the training ranges; a different number of dimensions says only that."""
    ndim = trained["ndim"]["max"]
    if features["ndim"] != ndim:
        return [f"a {features['ndim']:.0f}-D image, but the model was trained on {ndim:.0f}-D images"]
    problems = []
    for name, value in features.items():
        if name != "ndim" and name in trained:
            found = _outside(name, value, trained[name]["min"], trained[name]["max"], int(ndim))
            if found:
                problems.append(found)
    return problems
