"""Automatic localisation of both femoral heads on an AP pelvis radiograph, with side, radius and confidence.

The AsT classifier needs one region of interest per femoral head. When a manifest has no
``box_left`` / ``box_right`` columns, :func:`find_heads` finds them: a small trainable heat-map network
(:class:`HeadLocalizer`, learned from boxed studies by :func:`fit_localizer`) proposes candidate heads,
a circle fit on each candidate's edge refines centre and radius, anatomy chooses the pair, and
:mod:`osteoscope.tasks.onfh_xray.sides` says which is the patient's right.

Method, and why:

* **Frames.** The image is first reduced (area-averaging) to at most 512 px on its longer side and
  normalised by its own 1st/99th percentiles to [0, 1] (exposure, bit depth, windowing do not matter); that
  copy serves the marker reader and the circle fit. It is then letterboxed (aspect kept, zero padding
  centred) to the network's working size, default 160x192, at which a child's head (20-30 px on a 331 px
  film) is still about 10 px across, and an adult film's head about 25 px.
* **Detector: side-agnostic.** At stride 4 the network predicts one "femoral head centre" heat map (per-cell
  probability, trained with CenterNet's penalty-reduced focal loss against Gaussians around *both* heads)
  and a map of log head radius. It does not say which head is which: the image half says nothing about the
  patient's side, so the pairing is left to anatomy and the side to the tags and markers. The local maxima
  of the map (3x3 non-maximum suppression, score at least :data:`CANDIDATE_MIN_SCORE`, at most
  :data:`MAX_CANDIDATES`) are the candidates, each refined to sub-cell position by a local soft-arg-max; a
  candidate whose box would cross the film's edge is dropped (a head cut by the edge cannot be used).
* **Circle fit.** Around each candidate, 48 rays sample the reduced image from 0.55 to 1.5 detector radii;
  on each ray the strongest bright-to-dark step is the head's edge, and a trimmed algebraic (Kasa) circle
  fit through those edge points gives centre and radius. The fit is accepted when at least 40 % of the rays
  agree with it (within 12 % of the radius), its centre lies within 0.4 radii of the detector's and its
  radius within 0.75-1.35 of it; then the centre is the fit's and the radius the larger of the two (the box
  must hold the head's whole rim); otherwise the detector's values are kept and the head's confidence drops.
* **Pairing by anatomy.** Every pair of candidates (one more to the image's left) is checked: radii within
  a factor :data:`MAX_RADIUS_RATIO`; side by side (height difference at most :data:`MAX_TILT` of their
  distance, i.e. a pelvic tilt up to about 17 degrees); a distance of 3.5-22 mean radii (adults about 7-9,
  small children up to about 16) and at least :data:`MIN_SPREAD` of the image width; and mirror-symmetric
  about their midpoint (normalised cross-correlation of the band holding both hips with its mirror image,
  at least :data:`MIN_SYMMETRY`). Among the pairs that pass, the one with the highest detector scores times
  symmetry is chosen. When none passes, :func:`find_heads` raises :class:`~osteoscope.errors.DataError`
  with the reason (no candidates: "the image may not show a pelvis"; else what failed for the best pairs):
  a refusal, never a silently wrong crop.
* **Boxes.** Square, half-side :data:`BOX_MARGIN` (1.3) times the radius, the phantom's convention, so the
  whole head, lower rim included, lies inside; clipped to the image.
* **Confidence.** Per head, the geometric mean of the detector score and the circle fit's agreement (0.2
  when the fit was rejected); for the study, the lower head's confidence times the square root of the pair's
  symmetry. ``predict`` flags a study whose confidence is below half the median on held-out patients.
* **Training** augments geometry (scale 0.35-1.6, shift, rotation ±15°, flip; about one sample in eight is
  a crop that may hold one or no head, so the network learns that no head is an answer), fades heads
  towards the image median and adds head-sized bright or dark discs elsewhere (context is learned, not
  just a bright disc), and adds a soft-tissue field,
  collimation-like dark borders, gamma, blur and noise, then re-normalises by percentiles as at inference.
* **Real films are a test set.** The 10 real paediatric DDH films (``benchmarks/localizer_real.py``) and any
  other real film are never trained on, and no threshold or constant here is tuned on them; the detector
  learns only from phantoms (with ``child_fraction`` for children's hips).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from osteoscope.data.manifest import Case, load_manifest
from osteoscope.data.readers import read_image
from osteoscope.errors import DataError
from osteoscope.tasks.onfh_xray.sides import AP_CONVENTION, SideDecision, decide_sides, read_marker

Box = tuple[int, int, int, int]

SIDES = ("right", "left")
"""The patient sides, in the order of the standard AP display (patient right = image left)."""

BOX_MARGIN = 1.3
"""Box half-side over head radius (the phantom's boxes, and the AsT ROIs cut from them)."""
CANDIDATE_MIN_SCORE = 0.08
MAX_CANDIDATES = 8
MAX_RADIUS_RATIO = 1.6
MAX_TILT = 0.3
SPREAD_IN_RADII = (3.5, 22.0)
MIN_SPREAD = 0.2
MIN_SYMMETRY = 0.1

_FORMAT = "osteoscope.head_localizer"
_VERSION = 3
_STRIDE = 4
_SIGMA_CELLS = 1.0
_REDUCED_SIDE = 512
_RAYS = 48
_RAY_STEPS = 24


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """3x3 convolution, batch norm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class HeadLocalizer(nn.Module):
    """Small encoder-decoder CNN that predicts a femoral-head centre heat map and the head radius.

    The encoder downsamples to stride 16 (with dilated convolutions there, so one cell sees the whole
    pelvis: a head is told from a round bone elsewhere by its acetabulum, neck and the other hip); the
    decoder upsamples to stride 4 with skip connections.

    Args:
        working_size: (height, width) of the letterboxed input; both multiples of 16.
        width: Channel count of the first stage; later stages scale from it.
    """

    def __init__(self, working_size: tuple[int, int] = (160, 192), width: int = 16) -> None:
        super().__init__()
        height, wide = (int(v) for v in working_size)
        if height % 16 or wide % 16 or height < 32 or wide < 32:
            raise ValueError(f"working_size must be multiples of 16 and at least 32, got {working_size}")
        self.working_size = (height, wide)
        self.width = int(width)
        self.held_out: dict[str, float] | None = None  # evaluation on held-out patients, saved with the weights
        c = self.width
        self.stem = nn.Sequential(_conv(1, c), _conv(c, c, stride=2))  # stride 2
        self.down4 = nn.Sequential(_conv(c, 2 * c, stride=2), _conv(2 * c, 2 * c))
        self.down8 = nn.Sequential(_conv(2 * c, 4 * c, stride=2), _conv(4 * c, 4 * c))
        self.down16 = nn.Sequential(
            _conv(4 * c, 6 * c, stride=2), _conv(6 * c, 6 * c, dilation=2), _conv(6 * c, 6 * c, dilation=4)
        )
        self.up8 = _conv(6 * c + 4 * c, 4 * c)
        self.up4 = nn.Sequential(_conv(4 * c + 2 * c, 3 * c), _conv(3 * c, 3 * c))
        self.head = nn.Conv2d(3 * c, 2, 1)
        with torch.no_grad():
            self.head.bias.copy_(torch.tensor([-2.2, 0.7]))  # prior 0.1 per cell (CenterNet), radius 2 cells

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a (B, 1, H, W) normalised image batch to (B, 2, H/4, W/4): heat-map logits, log radius in cells."""
        f2 = self.stem(x)
        f4 = self.down4(f2)
        f8 = self.down8(f4)
        f16 = self.down16(f8)
        u8 = self.up8(torch.cat([F.interpolate(f16, size=f8.shape[-2:], mode="bilinear"), f8], 1))
        u4 = torch.cat([F.interpolate(u8, size=f4.shape[-2:], mode="bilinear"), f4], 1)
        return self.head(self.up4(u4))


@dataclass(frozen=True)
class _Frame:
    """Where the original image sits in the working frame: u = x * sx + pad_x."""

    sx: float
    sy: float
    pad_x: int
    pad_y: int
    height: int
    width: int


def _as_image(image: np.ndarray) -> np.ndarray:
    """Check that ``image`` is a finite 2-D array and return it as float32."""
    arr = np.asarray(image)
    if arr.ndim != 2 or min(arr.shape) < 2:
        raise DataError(f"expected a 2-D grey image, got an array of shape {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise DataError("image contains NaN or infinite values")
    return arr


def _percentile_normalise(arr: np.ndarray) -> np.ndarray:
    """Map the 1st..99th percentile range to [0, 1] and clip; a flat image becomes zeros."""
    lo, hi = np.percentile(arr, [1.0, 99.0])
    if hi <= lo:
        return np.zeros_like(arr)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0)


def _resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return F.interpolate(
        torch.from_numpy(np.ascontiguousarray(arr))[None, None], size=size, mode="bilinear", antialias=True
    )[0, 0].numpy()


def _reduce(image: np.ndarray) -> tuple[np.ndarray, float]:
    """The image reduced to at most :data:`_REDUCED_SIDE` px on its longer side and normalised to [0, 1],
    and the scale (reduced = original * scale)."""
    arr = _as_image(image)
    scale = min(1.0, _REDUCED_SIDE / max(arr.shape))
    if scale < 1.0:
        arr = _resize(arr, (max(2, round(arr.shape[0] * scale)), max(2, round(arr.shape[1] * scale))))
    return _percentile_normalise(arr), scale


def _letterbox(reduced: np.ndarray, shape: tuple[int, int], working_size: tuple[int, int]) -> tuple[np.ndarray, _Frame]:
    """Place the reduced image in the working frame (aspect kept, centred, zero padded); the frame maps
    coordinates of an image of ``shape`` (the original or the reduced one) to working pixels."""
    h, w = shape
    big_h, big_w = working_size
    factor = min(big_h / h, big_w / w)
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    pad_y, pad_x = (big_h - nh) // 2, (big_w - nw) // 2
    out = np.zeros((big_h, big_w), dtype=np.float32)
    out[pad_y : pad_y + nh, pad_x : pad_x + nw] = _resize(reduced, (nh, nw))
    return out, _Frame(nw / w, nh / h, pad_x, pad_y, h, w)


def _check_box(box: Box, frame: _Frame) -> np.ndarray:
    """Validate an ``x0 y0 x1 y1`` box against the image; return it as a float array."""
    b = np.asarray(box, dtype=np.float64)
    if b.shape != (4,) or not np.isfinite(b).all() or b[2] <= b[0] or b[3] <= b[1]:
        raise DataError(f"invalid box {box!r}: expected x0 y0 x1 y1 with x1 > x0 and y1 > y0")
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    if not (0 <= cx <= frame.width and 0 <= cy <= frame.height):
        raise DataError(f"box {box!r} has its centre outside the {frame.width}x{frame.height} image")
    return b


def _boxes_to_working(boxes: Sequence[Box], frame: _Frame) -> np.ndarray:
    """(2, 3) rows of centre x, centre y and head radius (box half-side / :data:`BOX_MARGIN`) in working px."""
    rows = []
    for box in boxes:
        b = _check_box(box, frame)
        half = ((b[2] - b[0]) * frame.sx + (b[3] - b[1]) * frame.sy) / 4
        rows.append([(b[0] + b[2]) / 2 * frame.sx + frame.pad_x, (b[1] + b[3]) / 2 * frame.sy + frame.pad_y, half])
    out = np.asarray(rows, dtype=np.float32)
    out[:, 2] /= BOX_MARGIN
    return out


def _sample_geometry(
    targets: np.ndarray, size: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw random flip/scale/rotation/shift per sample.

    Most draws keep both heads in view; about one in eight is a free crop that may hold one or no head.

    Args:
        targets: (B, 2, 3) centre/radius rows in working pixels.
        size: Working (height, width).
        rng: Random source.

    Returns:
        theta (B, 2, 3) for ``affine_grid`` (output -> input, normalised coordinates), the transformed
        targets (B, 2, 3) and a (B, 2) mask of the heads whose centre lies in view.
    """
    big_h, big_w = size
    centre = np.array([big_w / 2, big_h / 2])
    extent = np.array([big_w, big_h])
    d = np.diag([big_w, big_h]).astype(np.float64)
    d_inv = np.linalg.inv(d)
    thetas = np.zeros((len(targets), 2, 3), dtype=np.float32)
    out = targets.copy()
    visible = np.ones(targets.shape[:2], dtype=bool)
    for i, tgt in enumerate(targets):
        flip = bool(rng.random() < 0.5)
        keep = bool(rng.random() < 0.15)
        free = bool(rng.random() < 0.12)
        for attempt in range(20):
            if attempt == 19 or keep:  # a flip only: keeps the heads in view, shows unresampled images
                scale, angle, shift = 1.0, 0.0, np.zeros(2)
            else:
                scale = float(np.exp(rng.uniform(np.log(0.35), np.log(1.6 if not free else 2.5))))
                angle = float(np.deg2rad(rng.uniform(-15.0, 15.0)))
                shift = rng.uniform(-0.2, 0.2, size=2) * extent * (3.0 if free else 1.0)
            rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
            m = scale * rot @ np.diag([-1.0 if flip else 1.0, 1.0])
            moved = (tgt[:, :2] - centre) @ m.T + centre + shift
            margin = 0.04 * extent
            if free or ((moved > margin) & (moved < extent - margin)).all():
                break
        m_inv = np.linalg.inv(m)
        thetas[i, :, :2] = d_inv @ m_inv @ d
        thetas[i, :, 2] = -2.0 * d_inv @ m_inv @ shift
        out[i, :, :2] = moved
        out[i, :, 2] = tgt[:, 2] * scale
        visible[i] = ((moved >= 0) & (moved < extent)).all(1)
    return thetas, out, visible


def _batch_percentile_normalise(x: torch.Tensor) -> torch.Tensor:
    """Per-sample 1st/99th percentile normalisation to [0, 1] of a (B, 1, H, W) batch."""
    q = torch.quantile(x.flatten(1), torch.tensor([0.01, 0.99]), dim=1)
    lo, hi = q[0].view(-1, 1, 1, 1), q[1].view(-1, 1, 1, 1)
    return ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp(0.0, 1.0)


def _gaussian_blur(x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Blur each sample of a (B, 1, H, W) batch with its own Gaussian sigma (pixels)."""
    radius = 3
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigmas.clamp_min(1e-3)[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)
    b = x.shape[0]
    y = x.transpose(0, 1)  # (1, B, H, W): one group per sample
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), k.view(b, 1, 1, -1), groups=b)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), k.view(b, 1, -1, 1), groups=b)
    return y.transpose(0, 1)


def _augment_intensity(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random soft-tissue field, gamma, blur and noise, then percentile re-normalisation.

    The additive smooth field lowers the bone contrast relative to the image range, as in
    children's and obese patients' films; re-normalising afterwards mirrors inference.
    """
    b, _, h, w = x.shape

    def u(lo: float, hi: float) -> torch.Tensor:
        """Per-sample uniform draw, zero for about a third of the samples (they stay clean)."""
        on = (torch.rand(b, 1, 1, 1, generator=gen) < 0.65).float()
        return on * (torch.rand(b, 1, 1, 1, generator=gen) * (hi - lo) + lo)

    field = F.interpolate(torch.rand(b, 1, 3, 4, generator=gen), size=(h, w), mode="bicubic", align_corners=True)
    x = x + u(0.0, 0.5) * field
    x = x.clamp_min(0.0) ** torch.exp(u(math.log(0.5), math.log(2.0)))
    x = _gaussian_blur(x, u(0.0, 1.5).flatten() + 1e-3)
    x = x + torch.randn(x.shape, generator=gen) * u(0.0, 0.08)
    return _batch_percentile_normalise(_collimate(x, gen))


def _collimate(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Darken (or, rarely, brighten) the outside of a random inner rectangle on a fifth of the samples, as
    collimator shutters do, so that sharp straight edges and flat borders are no cue."""
    b, _, h, w = x.shape
    ys = torch.arange(h, dtype=x.dtype).view(1, h, 1)
    xs = torch.arange(w, dtype=x.dtype).view(1, 1, w)
    edges = torch.rand(b, 4, generator=gen) * 0.18
    inside = (
        (xs >= edges[:, 0, None, None] * w)
        & (xs < (1 - edges[:, 1, None, None]) * w)
        & (ys >= edges[:, 2, None, None] * h)
        & (ys < (1 - edges[:, 3, None, None]) * h)
    )[:, None]
    on = (torch.rand(b, 1, 1, 1, generator=gen) < 0.2).float()
    level = torch.where(torch.rand(b, 1, 1, 1, generator=gen) < 0.8, 0.05, 0.9) * torch.ones(b, 1, 1, 1)
    outside = on * (~inside).float()
    return x * (1 - outside) + outside * (0.3 * x + level)


def _suppress_heads(x: torch.Tensor, targets: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Fade each head towards the image median on a random half of the samples.

    Phantom heads are bright discs, while real (especially children's) heads are faint; fading them makes
    the network also use the context (acetabulum, femoral neck and shaft, pelvic outline), which transfers.
    """
    b, _, h, w = x.shape
    ys = torch.arange(h, dtype=x.dtype).view(1, 1, h, 1) + 0.5
    xs = torch.arange(w, dtype=x.dtype).view(1, 1, 1, w) + 0.5
    t = targets[..., None, None]  # (B, 2, 3, 1, 1)
    d2 = ((xs - t[:, :, 0]) ** 2 + (ys - t[:, :, 1]) ** 2) / (BOX_MARGIN * t[:, :, 2]).clamp_min(1.0) ** 2
    on = (torch.rand(b, 2, 1, 1, generator=gen) < 0.5).float()
    amount = on * (torch.rand(b, 2, 1, 1, generator=gen) * 0.6 + 0.3)
    mask = (amount * torch.exp(-d2 / (2 * 0.45**2))).amax(1, keepdim=True)
    level = x.flatten(1).median(1).values.view(b, 1, 1, 1)
    return x + mask * (level - x)


def _distractors(x: torch.Tensor, targets: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Add up to four soft discs of head-like size, bright or dark, away from the heads, on half of the
    samples: a round bright blob alone (a bowel-gas bubble's rim, a bone island, a marker plate) is no head,
    so the network must use the context."""
    b, _, h, w = x.shape
    ys = torch.arange(h, dtype=x.dtype).view(1, h, 1) + 0.5
    xs = torch.arange(w, dtype=x.dtype).view(1, 1, w) + 0.5
    radius = targets[:, :, 2].mean(1).clamp_min(2.0)  # (B,)
    out = x.clone()
    for _ in range(4):
        on = torch.rand(b, generator=gen) < 0.5
        cx, cy = torch.rand(b, generator=gen) * w, torch.rand(b, generator=gen) * h
        near = ((cx[:, None] - targets[:, :, 0]) ** 2 + (cy[:, None] - targets[:, :, 1]) ** 2).sqrt().min(1).values
        on &= near > 2.5 * radius
        r = radius * (0.5 + torch.rand(b, generator=gen))
        amp = (torch.rand(b, generator=gen) * 0.5 + 0.15) * torch.where(torch.rand(b, generator=gen) < 0.7, 1.0, -1.0)
        d = ((xs - cx.view(-1, 1, 1)) ** 2 + (ys - cy.view(-1, 1, 1)) ** 2).sqrt() / r.view(-1, 1, 1)
        disc = torch.sigmoid((1 - d) * 6.0)
        out = out + (on.float() * amp).view(-1, 1, 1, 1) * disc[:, None]
    return out


def _cells(targets: torch.Tensor, visible: torch.Tensor, out_hw: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """Cell row, column and fractional cell coordinates of the visible head centres, and their sample index."""
    h, w = out_hw
    cx = targets[..., 0] / _STRIDE - 0.5
    cy = targets[..., 1] / _STRIDE - 0.5
    col = cx.round().long().clamp(0, w - 1)
    row = cy.round().long().clamp(0, h - 1)
    sample = torch.arange(len(targets)).view(-1, 1).expand_as(col)
    return sample[visible], row[visible], col[visible], cx, cy


def _loss(out: torch.Tensor, targets: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss on the heat map plus L1 of log radius at the head centres."""
    h, w = out.shape[-2:]
    sample, row, col, cx, cy = _cells(targets, visible, (h, w))
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w)
    ys = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1)
    g = torch.exp(-((xs - cx[..., None, None]) ** 2 + (ys - cy[..., None, None]) ** 2) / (2 * _SIGMA_CELLS**2))
    g = (g * visible[..., None, None].float()).amax(1)  # (B, h, w)
    positive = torch.zeros_like(g, dtype=torch.bool)
    positive[sample, row, col] = True
    logit = out[:, 0]
    p = torch.sigmoid(logit).clamp(1e-4, 1 - 1e-4)
    pos = -(((1 - p) ** 2) * torch.log(p))[positive].sum()
    neg = -(((1 - g) ** 4) * (p**2) * torch.log(1 - p))[~positive].sum()
    heat = (pos + neg) / max(1, int(positive.sum()))
    if not len(sample):
        return heat
    true_log = torch.log(targets[..., 2][visible].clamp_min(0.5) / _STRIDE)
    return heat + F.l1_loss(out[sample, 1, row, col], true_log)


def fit_localizer(
    samples: Iterable[tuple[np.ndarray, Box, Box]],
    *,
    working_size: tuple[int, int] = (160, 192),
    epochs: int = 30,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    held_out: Sequence[tuple[np.ndarray, Box, Box]] = (),
    progress: Callable[[int, int, float, dict[str, float] | None], None] | None = None,
) -> HeadLocalizer:
    """Train a :class:`HeadLocalizer` from boxed radiographs.

    Each image is reduced, normalised and letterboxed to the working size as soon as it is read, so only
    small arrays are kept. Training uses AdamW with a one-cycle learning-rate schedule and the random
    geometric and intensity augmentation described in the module docstring.

    Args:
        samples: ``(image, box_left, box_right)`` triples: a 2-D array of any range and size and the
            patient-left and patient-right head boxes (x0 y0 x1 y1, end exclusive).
        working_size: (height, width) of the network input; multiples of 16.
        epochs: Passes over the samples.
        batch_size: Images per optimisation step.
        lr: Peak learning rate.
        seed: Seed of weight initialisation, shuffling and augmentation.
        held_out: Boxed radiographs of patients not trained on, like ``samples``; after every epoch the
            model is scored on them (:func:`evaluate_localizer`) and the last score is kept in
            ``model.held_out``.
        progress: Called as ``progress(epoch, epochs, mean_loss, held_out_score)`` after each epoch (the
            score is None without ``held_out``).

    Returns:
        The trained model in eval mode.

    Raises:
        DataError: No samples, or an image or box is invalid.
    """
    size = (int(working_size[0]), int(working_size[1]))
    images: list[np.ndarray] = []
    boxes: list[np.ndarray] = []
    for index, (image, box_left, box_right) in enumerate(samples):
        try:
            reduced, _ = _reduce(image)
            arr, frame = _letterbox(reduced, np.shape(image), size)
            boxes.append(_boxes_to_working((box_right, box_left), frame))
        except DataError as err:
            raise DataError(f"training sample {index}: {err.reason}", path=err.path) from err
        images.append(arr)
    if not images:
        raise DataError("no training samples for the femoral-head localiser")
    torch.manual_seed(seed)
    model = HeadLocalizer(size)
    x_all = torch.from_numpy(np.stack(images))[:, None]
    t_all = np.stack(boxes)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        optim, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch), pct_start=0.15
    )
    model.train()
    for epoch in range(epochs):
        order = rng.permutation(len(images))
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2 and len(order) >= 2:  # batch norm needs two samples
                idx = order[-2:]
            thetas, tgt, visible = _sample_geometry(t_all[idx], size, rng)
            grid = F.affine_grid(torch.from_numpy(thetas), [len(idx), 1, *size], align_corners=False)
            x = F.grid_sample(x_all[idx], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            tgt_t = torch.from_numpy(tgt)
            x = _augment_intensity(_distractors(_suppress_heads(x, tgt_t, gen), tgt_t, gen), gen)
            loss = _loss(model(x * 2.0 - 1.0), tgt_t, torch.from_numpy(visible))
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            sched.step()
            total += loss.item() * len(idx)
        score = None
        if held_out:
            score = evaluate_localizer(model, held_out)
            model.held_out = score
            model.train()
        if progress is not None:
            progress(epoch + 1, epochs, total / len(images), score)
    return model.eval()


def evaluate_localizer(model: HeadLocalizer, samples: Sequence[tuple[np.ndarray, Box, Box]]) -> dict[str, float]:
    """Centre error and confidence of the localiser on boxed radiographs ``(image, box_left, box_right)``.

    A film on which :func:`find_heads` refuses counts with an error of the whole inter-head distance and
    confidence 0.

    Returns:
        ``n_images``; ``refused``, how many were refused; ``centre_error_px``, the mean distance of predicted
        from true head centres in original pixels; ``centre_error_rel``, the same as a fraction of the true
        distance between the two heads (a size-free figure); ``inside_boxes``, the share of films with both
        true centres inside their predicted boxes; ``confidence_min`` and ``confidence_median`` of
        :attr:`Heads.confidence` over the films not refused (0 when all were).
    """
    errors, relative, confidences, inside, refused = [], [], [], [], 0
    for image, box_left, box_right in samples:
        true = {"left": _box_centre(box_left), "right": _box_centre(box_right)}
        spread = max(float(np.linalg.norm(true["left"] - true["right"])), 1.0)
        try:
            found = find_heads(model, image)
        except DataError:
            refused += 1
            errors += [spread, spread]
            relative += [1.0, 1.0]
            inside.append(False)
            continue
        both = True
        for side in ("left", "right"):
            box = getattr(found, side)
            error = float(np.linalg.norm(_box_centre(box) - true[side]))
            errors.append(error)
            relative.append(error / spread)
            both &= bool(box[0] <= true[side][0] < box[2] and box[1] <= true[side][1] < box[3])
        inside.append(both)
        confidences.append(found.confidence)
    return {
        "n_images": float(len(inside)),
        "refused": float(refused),
        "centre_error_px": float(np.mean(errors)),
        "centre_error_rel": float(np.mean(relative)),
        "inside_boxes": float(np.mean(inside)),
        "confidence_min": float(np.min(confidences)) if confidences else 0.0,
        "confidence_median": float(np.median(confidences)) if confidences else 0.0,
    }


def _box_centre(box: Sequence[float]) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], dtype=np.float64)


@dataclass(frozen=True)
class _Candidate:
    """A head candidate in reduced-image pixels."""

    x: float
    y: float
    radius: float
    score: float
    fit: float = 0.0  # circle-fit agreement, 0 when the fit was rejected


def _candidates(out: torch.Tensor, frame: _Frame) -> list[_Candidate]:
    """Local maxima of the heat map (score >= CANDIDATE_MIN_SCORE), best first, in reduced-image pixels."""
    p = torch.sigmoid(out[0])
    peaks = (p == F.max_pool2d(p[None, None], 3, stride=1, padding=1)[0, 0]) & (p >= CANDIDATE_MIN_SCORE)
    rows, cols = torch.nonzero(peaks, as_tuple=True)
    order = torch.argsort(p[rows, cols], descending=True)[:MAX_CANDIDATES]
    h, w = p.shape
    found = []
    for i in order.tolist():
        r, c = int(rows[i]), int(cols[i])
        r0, r1, c0, c1 = max(0, r - 1), min(h, r + 2), max(0, c - 1), min(w, c + 2)
        window = p[r0:r1, c0:c1]
        weights = window / window.sum()
        cy = float((weights.sum(1) * torch.arange(r0, r1)).sum())
        cx = float((weights.sum(0) * torch.arange(c0, c1)).sum())
        u, v = (cx + 0.5) * _STRIDE, (cy + 0.5) * _STRIDE
        radius = float(torch.exp(out[1, r, c])) * _STRIDE
        found.append(
            _Candidate((u - frame.pad_x) / frame.sx, (v - frame.pad_y) / frame.sy, radius / frame.sx, float(p[r, c]))
        )
    return found


def _kasa(points: np.ndarray, weights: np.ndarray) -> tuple[float, float, float]:
    """Weighted algebraic circle fit: (cx, cy, r) minimising sum w (x^2 + y^2 + D x + E y + F)^2."""
    x, y = points[:, 0], points[:, 1]
    a = np.stack([x, y, np.ones_like(x)], 1) * weights[:, None]
    b = -(x**2 + y**2) * weights
    (d, e, f), *_ = np.linalg.lstsq(a, b, rcond=None)
    cx, cy = -d / 2, -e / 2
    return float(cx), float(cy), float(math.sqrt(max(cx**2 + cy**2 - f, 0.0)))


def _circle_fit(reduced: np.ndarray, cand: _Candidate) -> _Candidate:
    """Refine a candidate by a circle fit through the strongest bright-to-dark step on each of 48 rays
    (module docstring); returns the candidate with the fit's centre and radius and its agreement, or
    unchanged with agreement 0 when the fit is rejected."""
    r = cand.radius
    if r < 2.5:
        return cand
    angles = np.linspace(0.0, 2 * np.pi, _RAYS, endpoint=False)
    radii = r * np.linspace(0.55, 1.5, _RAY_STEPS)
    xs = cand.x + np.cos(angles)[:, None] * radii[None]
    ys = cand.y + np.sin(angles)[:, None] * radii[None]
    profile = ndimage.map_coordinates(reduced, [ys.ravel(), xs.ravel()], order=1, mode="nearest").reshape(xs.shape)
    profile = ndimage.uniform_filter1d(profile, 3, axis=1)
    step = -np.gradient(profile, axis=1)  # positive where brightness falls outwards
    best = step.argmax(1)
    strength = step[np.arange(_RAYS), best]
    keep = strength > 0
    if keep.sum() < 8:
        return cand
    points = np.stack([xs[np.arange(_RAYS), best], ys[np.arange(_RAYS), best]], 1)
    weights = strength.clip(0.0, None)
    use = keep.copy()
    for _ in range(3):
        if use.sum() < 6:
            return cand
        cx, cy, fr = _kasa(points[use], weights[use])
        residual = np.abs(np.hypot(points[:, 0] - cx, points[:, 1] - cy) - fr)
        use = keep & (residual < 0.15 * max(fr, 1.0))
    agreement = float((keep & (residual < 0.12 * max(fr, 1.0))).mean())
    if agreement < 0.4 or math.hypot(cx - cand.x, cy - cand.y) > 0.4 * r or not 0.75 <= fr / r <= 1.35:
        return cand
    return _Candidate(cx, cy, max(fr, r), cand.score, agreement)


def _inside(cand: _Candidate, shape: tuple[int, int]) -> bool:
    """Whether the candidate's box lies within the image (it does not cross the edge)."""
    half = BOX_MARGIN * cand.radius + 1.0  # the box is rounded outwards by up to a pixel
    return half < cand.x < shape[1] - half and half < cand.y < shape[0] - half


def _symmetry(working: np.ndarray, a: tuple[float, float], b: tuple[float, float]) -> float:
    """Normalised cross-correlation of the band holding both hips with its mirror image about their midpoint
    (working-frame coordinates)."""
    mid, spread = (a[0] + b[0]) / 2, abs(b[0] - a[0])
    h, w = working.shape
    half = min(0.8 * spread, mid, w - mid)
    row = (a[1] + b[1]) / 2
    y0, y1 = max(0, round(row - 0.45 * spread)), min(h, round(row + 0.35 * spread))
    x0, x1 = round(mid - half), round(mid + half)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return 0.0
    patch = working[y0:y1, x0:x1]
    patch = patch - patch.mean()
    mirror = patch[:, ::-1]
    denom = float(np.sqrt((patch**2).sum() * (mirror**2).sum()))
    return float((patch * mirror).sum() / denom) if denom > 0 else 0.0


def _pair_problems(right: _Candidate, left: _Candidate, width: float, symmetry: float) -> list[str]:
    """Why two candidates (``right`` further to the image's left) are not a plausible pair of femoral heads."""
    problems = []
    radii = sorted((right.radius, left.radius))
    spread = math.hypot(left.x - right.x, left.y - right.y)
    mean_r = (radii[0] + radii[1]) / 2
    if radii[1] / radii[0] > MAX_RADIUS_RATIO:
        problems.append(f"radii differ by a factor {radii[1] / radii[0]:.1f}")
    if abs(left.y - right.y) > MAX_TILT * spread:
        problems.append(f"not side by side (height difference {abs(left.y - right.y) / spread:.0%} of their distance)")
    if not SPREAD_IN_RADII[0] <= spread / mean_r <= SPREAD_IN_RADII[1]:
        problems.append(f"distance {spread / mean_r:.1f} radii apart")
    if spread < MIN_SPREAD * width:
        problems.append(f"only {spread / width:.0%} of the image width apart")
    if symmetry < MIN_SYMMETRY:
        problems.append(f"the two hips are not mirror-symmetric (correlation {symmetry:.2f})")
    return problems


@dataclass(frozen=True)
class Head:
    """One femoral head found on a radiograph.

    Attributes:
        side: The patient side, ``"left"`` or ``"right"``.
        centre: (x, y) in original pixels.
        radius: Head radius in original pixels.
        box: ``(x0, y0, x1, y1)``, half-side :data:`BOX_MARGIN` x radius, clipped to the image, end exclusive.
        confidence: Geometric mean of the detector's score and the circle fit's agreement (0..1).
    """

    side: str
    centre: tuple[float, float]
    radius: float
    box: Box
    confidence: float


@dataclass(frozen=True)
class Heads:
    """Both femoral heads found on a radiograph.

    Attributes:
        left: The patient's left head box (x0, y0, x1, y1), original pixels, end exclusive.
        right: The patient's right head box.
        confidence: The study's confidence (0..1): the lower head's confidence times the square root of the
            pair's mirror symmetry. High on films like the training ones, low on doubtful ones.
        found: The two :class:`Head` records (patient right, then left), empty when boxes were given.
        side_source: What decided the patient side (see :mod:`osteoscope.tasks.onfh_xray.sides`).
        right_on_image_left: Whether the patient's right head is the one on the image's left.
        flags: Problems worth a look that do not stop the localisation (a marker contradicting the tags).
    """

    left: Box
    right: Box
    confidence: float
    found: tuple[Head, ...] = ()
    side_source: str = AP_CONVENTION
    right_on_image_left: bool = True
    flags: tuple[str, ...] = field(default=())

    def info(self, scale: float = 1.0) -> dict[str, str]:
        """What was found, as strings for a prediction's ``study_info``; centres, radii and boxes are multiplied
        by ``scale`` (the decode scale of a reduced decode), so they are in the file's pixels."""
        out = {"localizer_confidence": f"{self.confidence:.4f}", "localizer_side_source": self.side_source}
        for head in self.found:
            prefix = f"localizer_{head.side}"
            out[f"{prefix}_centre"] = f"{head.centre[0] * scale:.1f} {head.centre[1] * scale:.1f}"
            out[f"{prefix}_radius"] = f"{head.radius * scale:.1f}"
            out[f"{prefix}_box"] = " ".join(str(round(v * scale)) for v in head.box)
            out[f"{prefix}_confidence"] = f"{head.confidence:.4f}"
        if self.flags:
            out["localizer_flags"] = "; ".join(self.flags)
        return out


def implausible_heads(heads: Heads, shape: tuple[int, int]) -> list[str]:
    """What is wrong with a pair of head boxes on an image of ``shape`` (empty when plausible).

    Degenerate: a box narrower or lower than 2% of the image's shorter side (at least 4 px), or touching
    the image's edge (it was clipped, so the head lies outside or the peak sits on the border). Implausible
    geometry: the two heads' widths or heights differ by more than a factor 2, the boxes overlap, the
    patient's right head is not on the image side that :attr:`Heads.right_on_image_left` says, or the two
    are not side by side (their centres differ in height by more than the mean box height).
    """
    height, width = shape
    smallest = max(4.0, 0.02 * min(height, width))
    problems = []
    for side in ("left", "right"):
        x0, y0, x1, y1 = getattr(heads, side)
        if x1 - x0 < smallest or y1 - y0 < smallest:
            problems.append(f"the {side} box {x1 - x0}x{y1 - y0} px is smaller than {smallest:.0f} px")
        if x0 <= 0 or y0 <= 0 or x1 >= width or y1 >= height:
            problems.append(f"the {side} box {getattr(heads, side)} touches the edge of the {width}x{height} image")
    if problems:
        return problems
    (lx0, ly0, lx1, ly1), (rx0, ry0, rx1, ry1) = heads.left, heads.right
    sizes = np.array([[lx1 - lx0, ly1 - ly0], [rx1 - rx0, ry1 - ry0]], dtype=float)
    if (sizes.max(0) / sizes.min(0)).max() > 2:
        problems.append(f"the two boxes differ in size by more than a factor 2 ({heads.left} vs {heads.right})")
    if min(lx1, rx1) > max(lx0, rx0) and min(ly1, ry1) > max(ly0, ry0):
        problems.append(f"the boxes overlap ({heads.left} and {heads.right})")
    left, right = _box_centre(heads.left), _box_centre(heads.right)
    if (right[0] < left[0]) != heads.right_on_image_left:
        expected = "left" if heads.right_on_image_left else "right"
        problems.append(f"the patient's right head is not on the image's {expected} ({heads.side_source})")
    if abs(left[1] - right[1]) > sizes[:, 1].mean():
        problems.append(
            f"the heads are not side by side (their centres differ by {abs(left[1] - right[1]):.0f} px in height)"
        )
    return problems


def confidence_floor(model: HeadLocalizer) -> float | None:
    """The lowest confidence that does not flag a study: half the median on the held-out patients (None when
    the localiser was trained without held-out patients, or refused all of them).

    Half the median, not half the lowest: a phantom-trained localiser put wrong pairs on real children's
    films and on shoulder films at confidences (0.1-0.26) above half its lowest held-out confidence (0.10)
    but below half its median (0.35), which flags about 7 % of held-out phantoms.
    """
    if not model.held_out or not model.held_out.get("confidence_median"):
        return None
    return 0.5 * model.held_out["confidence_median"]


def locate_heads(model: HeadLocalizer, image: np.ndarray, *, box_scale: float = 1.0) -> dict[str, Box]:
    """The two head boxes of :func:`find_heads` as ``{"left": box, "right": box}``."""
    heads = find_heads(model, image, box_scale=box_scale)
    return {"left": heads.left, "right": heads.right}


def _square(x: float, y: float, half: float, shape: tuple[int, int]) -> Box:
    """A square box about (x, y), end exclusive, clipped to the image (never empty)."""
    h, w = shape
    x0 = min(max(math.floor(x - half), 0), w - 1)
    y0 = min(max(math.floor(y - half), 0), h - 1)
    x1 = max(min(math.ceil(x + half) + 1, w), x0 + 1)
    y1 = max(min(math.ceil(y + half) + 1, h), y0 + 1)
    return (x0, y0, x1, y1)


def find_heads(
    model: HeadLocalizer,
    image: np.ndarray,
    *,
    box_scale: float = 1.0,
    tags: Mapping[str, Any] | None = None,
) -> Heads:
    """Find both femoral heads on an AP pelvis radiograph and say which is the patient's right.

    Args:
        model: A trained localiser.
        image: 2-D grey image of any size and intensity range (bone bright).
        box_scale: Factor on the box half-side (1.0: :data:`BOX_MARGIN` x radius, the training convention).
        tags: The film's DICOM orientation tags (``read_image(...).meta["view_tags"]``: PatientOrientation,
            ViewPosition, ImageLaterality by keyword); without them the side comes from a burned-in marker,
            else from the AP display convention.

    Returns:
        The patient's left and right head boxes (original pixels, end exclusive, clipped to the image), the
        study's confidence, both :class:`Head` records, the side's source and any flags.

    Raises:
        DataError: ``image`` is not a finite 2-D array, or no plausible pair of femoral heads is found (the
            reason says why: no candidates, or what failed for the best pairs).
    """
    if box_scale <= 0:
        raise ValueError(f"box_scale must be positive, got {box_scale}")
    reduced, scale = _reduce(image)
    shape = np.shape(image)
    working, frame = _letterbox(reduced, reduced.shape, model.working_size)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        out = model(torch.from_numpy(working)[None, None] * 2.0 - 1.0)[0]
    model.train(was_training)
    candidates = [
        c
        for c in (_circle_fit(reduced, c) for c in _candidates(out, frame))
        if _inside(c, reduced.shape)  # a head cut by the film's edge cannot be used: not a candidate
    ]
    if len(candidates) < 2:
        best = float(torch.sigmoid(out[0]).max())
        raise DataError(
            f"{len(candidates)} femoral-head candidate(s) above score {CANDIDATE_MIN_SCORE} (best {best:.2f}): "
            "the image may not show an AP pelvis"
        )
    pairs = []
    for i, a in enumerate(candidates):
        for b in candidates[i + 1 :]:
            right, left = (a, b) if a.x < b.x else (b, a)
            symmetry = _symmetry(
                working,
                (right.x * frame.sx + frame.pad_x, right.y * frame.sy + frame.pad_y),
                (left.x * frame.sx + frame.pad_x, left.y * frame.sy + frame.pad_y),
            )
            problems = _pair_problems(right, left, reduced.shape[1], symmetry)
            pairs.append((math.sqrt(right.score * left.score) * max(symmetry, 0.0), problems, right, left, symmetry))
    plausible = [p for p in pairs if not p[1]]
    if not plausible:
        pairs.sort(key=lambda p: -math.sqrt(p[2].score * p[3].score))
        tried = "; ".join(
            f"({r.x / scale:.0f}, {r.y / scale:.0f}) and ({lt.x / scale:.0f}, {lt.y / scale:.0f}): {', '.join(pr)}"
            for _, pr, r, lt, _ in pairs[:2]
        )
        raise DataError(f"no pair of the {len(candidates)} femoral-head candidates is anatomically plausible: {tried}")
    _, _, on_left, on_right, symmetry = max(plausible, key=lambda p: p[0])
    decision: SideDecision = decide_sides(tags or {}, read_marker(reduced, scale), shape[1])
    records = []
    for cand, on_image_left in ((on_left, True), (on_right, False)):
        side = "right" if on_image_left == decision.right_on_image_left else "left"
        x, y, radius = cand.x / scale, cand.y / scale, cand.radius / scale
        confidence = math.sqrt(cand.score * (cand.fit if cand.fit > 0 else 0.2))
        box = _square(x, y, BOX_MARGIN * radius * box_scale, shape)
        records.append(Head(side, (x, y), radius, box, confidence))
    records.sort(key=lambda head: SIDES.index(head.side))
    confidence = min(h.confidence for h in records) * math.sqrt(max(symmetry, 0.0))
    return Heads(
        left=records[1].box,
        right=records[0].box,
        confidence=confidence,
        found=tuple(records),
        side_source=decision.source,
        right_on_image_left=decision.right_on_image_left,
        flags=decision.flags,
    )


def save_localizer(model: HeadLocalizer, path: str | Path) -> None:
    """Save weights, configuration and the held-out evaluation in one torch file, atomically (temp file, then
    rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": _FORMAT,
        "version": _VERSION,
        "config": {"working_size": list(model.working_size), "width": model.width},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "held_out": model.held_out,
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_localizer(path: str | Path) -> HeadLocalizer:
    """Load a model written by :func:`save_localizer`, in eval mode.

    The last few files loaded are kept in memory, keyed by path, size and modification time, so predicting
    many studies with one run reads its localiser once (loading took about 18 ms a study) and a retrained
    file is read afresh. Callers must not train the returned model.

    Raises:
        DataError: The file is missing, unreadable, or not a saved head localiser.
    """
    source = Path(path)
    if not source.is_file():
        raise DataError("femoral-head localiser file not found", path=source)
    stat = source.stat()
    return _load_localizer_file(str(source.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _load_localizer_file(path: str, size: int, mtime_ns: int) -> HeadLocalizer:
    """Read and check one localiser file (``size`` and ``mtime_ns`` only key the cache)."""
    source = Path(path)
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(f"cannot read the femoral-head localiser ({type(err).__name__})", path=source) from err
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise DataError("not a saved femoral-head localiser", path=source)
    if payload.get("version", 1) < _VERSION:
        raise DataError(
            f"a femoral-head localiser of format version {payload.get('version', 1)} (one heat map per side); "
            f"this osteoscope needs version {_VERSION}: retrain it with `osteoscope localizer train`",
            path=source,
        )
    try:
        config = payload["config"]
        model = HeadLocalizer(tuple(config["working_size"]), width=int(config["width"]))
        model.load_state_dict(payload["state_dict"])
        model.held_out = payload.get("held_out")
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise DataError(f"corrupt femoral-head localiser ({err})", path=source) from err
    return model.eval()


def _boxed_images(cases: Sequence[Case]) -> Iterator[tuple[np.ndarray, Box, Box]]:
    for case in cases:
        left, right = case.boxes.get("box_left"), case.boxes.get("box_right")
        path = case.images.get("image")
        if left is None or right is None or path is None:
            continue
        yield read_image(path).array, left, right


def hold_out_patients(cases: Sequence[Case], fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """Split cases by patient into (train, held out): ``fraction`` of the patients (at least one), drawn by
    ``seed``; nothing is held out when there are fewer than five patients."""
    patients = sorted({case.patient_id for case in cases})
    if fraction <= 0 or len(patients) < 5:
        return list(cases), []
    count = max(1, round(fraction * len(patients)))
    held = {patients[i] for i in np.random.default_rng(seed).permutation(len(patients))[:count]}
    return [c for c in cases if c.patient_id not in held], [c for c in cases if c.patient_id in held]


def train_localizer_on_manifest(
    data: str | Path,
    out: str | Path,
    *,
    epochs: int = 30,
    seed: int = 0,
    case_ids: set[str] | None = None,
    held_out_fraction: float = 0.1,
    working_size: tuple[int, int] = (160, 192),
) -> Path:
    """Fit a :class:`HeadLocalizer` on the ``box_left``/``box_right`` of a dataset and save it atomically.

    A share of the patients is held out; each epoch logs the training loss and the held-out centre error,
    and the final held-out evaluation is stored with the weights (``predict`` reports it and flags studies
    on which the localiser is much less confident than on any held-out film).

    Args:
        data: Dataset folder.
        out: Weights file to write.
        epochs: Training epochs.
        seed: Random seed (weights, augmentation, which patients are held out).
        case_ids: Restrict training to these cases (e.g. a run's training split).
        held_out_fraction: Share of the patients held out (none with fewer than five patients).
        working_size: (height, width) of the network input; multiples of 16.
    """
    from rich.progress import Progress

    log = logging.getLogger("osteoscope")
    manifest = load_manifest(data)
    if "box_left" not in manifest.columns or "box_right" not in manifest.columns:
        raise DataError("the manifest has no box_left/box_right columns to learn from", path=manifest.path)
    cases = [c for c in manifest.cases if case_ids is None or c.case_id in case_ids]
    train_cases, held_cases = hold_out_patients(cases, held_out_fraction, seed)
    held_out = list(_boxed_images(held_cases))
    if not held_out:
        log.warning("head localiser: no patients held out (fewer than five), so no centre error is measured")

    def report(epoch: int, total: int, loss: float, score: dict[str, float] | None) -> None:
        bar.update(job, completed=epoch)
        error = (
            ""
            if score is None
            else (
                f"  held-out centre error {score['centre_error_px']:.1f} px "
                f"({100 * score['centre_error_rel']:.1f}% of the head distance)"
            )
        )
        log.info("head localiser epoch %d/%d  loss %.4f%s", epoch, total, loss, error)

    with Progress(transient=True) as bar:
        job = bar.add_task("training head localiser", total=epochs)
        model = fit_localizer(
            _boxed_images(train_cases),
            working_size=working_size,
            epochs=epochs,
            seed=seed,
            held_out=held_out,
            progress=report,
        )
    save_localizer(model, out)
    log.info(
        "head localiser trained on %d cases, %d cases of %d patients held out; saved to %s",
        len(train_cases),
        len(held_cases),
        len({c.patient_id for c in held_cases}),
        out,
    )
    return Path(out)
