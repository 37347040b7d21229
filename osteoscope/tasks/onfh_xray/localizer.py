"""Automatic localisation of both femoral heads on an AP pelvis radiograph.

The AsT classifier needs one region of interest per femoral head. When a manifest has no
``box_left`` / ``box_right`` columns, :func:`locate_heads` finds them with a small trainable
heat-map network (:class:`HeadLocalizer`) learned from boxed studies by :func:`fit_localizer`.

Method, and why:

* **Working frame.** Every image is letterboxed (aspect preserved, zero padding centred) to a
  fixed working size, default 128x160, so the network is small and fast (a few ms on CPU) and
  the original size does not matter. Intensities are mapped by the image's own 1st/99th
  percentiles to [0, 1], so exposure, bit depth and windowing do not matter.
* **Output.** At stride 4 the network predicts one centre heat map per head (channel 0 the
  patient's right head, which is on the image's left; channel 1 the patient's left head) and
  two maps of log box half-size (width, height). Each heat map is trained as a spatial
  distribution (softmax over all positions, cross-entropy against a Gaussian around the true
  centre): each channel holds exactly one head, so a softmax suits it better than per-pixel
  scores. The half-size is regressed at the true centre, so the predicted box has the same
  margin around the head as the training boxes.
* **Decoding.** Arg-max of each heat map, refined by a soft-arg-max over the 5x5 cells around
  it (sub-cell accuracy without being pulled towards a distant second peak), then the
  half-size read at that point: box = centre ± half-size · ``box_scale``.
* **Checks.** :func:`find_heads` also returns a confidence (the share of each heat map's
  probability in the 5x5 cells around its peak); :func:`implausible_heads` names degenerate or
  implausible boxes, which ``predict`` refuses to use. Training can hold out patients and report
  the centre error on them per epoch; the last evaluation is saved with the weights.
* **Augmentation** (so the model transfers beyond its training source): random scale
  (0.5-1.3), shift, rotation (±12°) and horizontal flip, applied to the image and its boxes;
  a flip moves the patient-left head to the image's left, so the two labels are swapped and
  the assignment stays "patient right = image left" (a fifth of the samples get the flip
  only, so un-resampled images are seen too); then, on random halves of the samples,
  fading of each head towards the image median (so context is learned, not just a bright
  disc), an additive smooth soft-tissue field, gamma, blur and noise, and finally
  re-normalisation by percentiles, as at inference.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from osteoscope.data.manifest import Case, load_manifest
from osteoscope.data.readers import read_image
from osteoscope.errors import DataError

Box = tuple[int, int, int, int]

SIDES = ("right", "left")
"""Patient side of heat-map channel 0 and 1 (channel 0 = patient right = image left)."""

_FORMAT = "osteoscope.head_localizer"
_STRIDE = 4
_SIGMA_CELLS = 1.0
_REFINE_RADIUS = 2


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """3x3 convolution, batch norm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class HeadLocalizer(nn.Module):
    """Small encoder-decoder CNN that predicts both femoral-head centres and box sizes.

    The encoder downsamples to stride 16 (with dilated convolutions there, so one cell sees
    the whole pelvis and can tell the two heads apart); the decoder upsamples to stride 4
    with skip connections and appends two coordinate channels, which make "left of the
    image" explicit for the side assignment.

    Args:
        working_size: (height, width) of the letterboxed input; both multiples of 16.
        width: Channel count of the first stage; later stages scale from it.
    """

    def __init__(self, working_size: tuple[int, int] = (128, 160), width: int = 16) -> None:
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
        self.up4 = nn.Sequential(_conv(4 * c + 2 * c + 2, 3 * c), _conv(3 * c, 3 * c))
        self.head = nn.Conv2d(3 * c, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a (B, 1, H, W) normalised image batch to (B, 4, H/4, W/4) outputs.

        Channels: heat-map logits of the patient-right and patient-left head, then log
        half-width and log half-height of the box in output cells.
        """
        f2 = self.stem(x)
        f4 = self.down4(f2)
        f8 = self.down8(f4)
        f16 = self.down16(f8)
        u8 = self.up8(torch.cat([F.interpolate(f16, size=f8.shape[-2:], mode="bilinear"), f8], 1))
        b, _, h, w = f4.shape
        ys = torch.linspace(-1.0, 1.0, h, device=x.device).view(1, 1, h, 1).expand(b, 1, h, w)
        xs = torch.linspace(-1.0, 1.0, w, device=x.device).view(1, 1, 1, w).expand(b, 1, h, w)
        u4 = torch.cat([F.interpolate(u8, size=(h, w), mode="bilinear"), f4, xs, ys], 1)
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


def _letterbox(image: np.ndarray, working_size: tuple[int, int]) -> tuple[np.ndarray, _Frame]:
    """Resize ``image`` into the working frame (aspect kept, centred, zero padded) and normalise it."""
    arr = _as_image(image)
    h, w = arr.shape
    big_h, big_w = working_size
    scale = min(big_h / h, big_w / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = F.interpolate(
        torch.from_numpy(np.ascontiguousarray(arr))[None, None],
        size=(nh, nw),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )[0, 0].numpy()
    pad_y, pad_x = (big_h - nh) // 2, (big_w - nw) // 2
    out = np.zeros((big_h, big_w), dtype=np.float32)
    out[pad_y : pad_y + nh, pad_x : pad_x + nw] = _percentile_normalise(small)
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


def _boxes_to_working(box_right: Box, box_left: Box, frame: _Frame) -> np.ndarray:
    """Return (2, 4) rows of centre x, centre y, half-width, half-height in working pixels.

    Row 0 is the patient's right head, row 1 the left, matching the heat-map channels.
    """
    rows = []
    for box in (box_right, box_left):
        b = _check_box(box, frame)
        rows.append(
            [
                (b[0] + b[2]) / 2 * frame.sx + frame.pad_x,
                (b[1] + b[3]) / 2 * frame.sy + frame.pad_y,
                (b[2] - b[0]) / 2 * frame.sx,
                (b[3] - b[1]) / 2 * frame.sy,
            ]
        )
    return np.asarray(rows, dtype=np.float32)


def _sample_geometry(
    targets: np.ndarray, size: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw random flip/scale/rotation/shift per sample, keeping both head centres in view.

    Args:
        targets: (B, 2, 4) centre/half-size rows in working pixels.
        size: Working (height, width).
        rng: Random source.

    Returns:
        theta (B, 2, 3) for ``affine_grid`` (output -> input, normalised coordinates), the
        transformed targets (B, 2, 4) with rows swapped where flipped, and the flip flags.
    """
    big_h, big_w = size
    centre = np.array([big_w / 2, big_h / 2])
    d = np.diag([big_w, big_h]).astype(np.float64)
    d_inv = np.linalg.inv(d)
    thetas = np.zeros((len(targets), 2, 3), dtype=np.float32)
    out = targets.copy()
    flips = np.zeros(len(targets), dtype=bool)
    for i, tgt in enumerate(targets):
        flip = bool(rng.random() < 0.5)
        keep = bool(rng.random() < 0.2)
        for attempt in range(20):
            if attempt == 19 or keep:  # a flip only: keeps the heads in view, shows unresampled images
                scale, angle, shift = 1.0, 0.0, np.zeros(2)
            else:
                scale = float(np.exp(rng.uniform(np.log(0.5), np.log(1.3))))
                angle = float(np.deg2rad(rng.uniform(-12.0, 12.0)))
                shift = rng.uniform(-0.15, 0.15, size=2) * np.array([big_w, big_h])
            rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
            m = scale * rot @ np.diag([-1.0 if flip else 1.0, 1.0])
            moved = (tgt[:, :2] - centre) @ m.T + centre + shift
            margin = 0.04 * np.array([big_w, big_h])
            if ((moved > margin) & (moved < np.array([big_w, big_h]) - margin)).all():
                break
        m_inv = np.linalg.inv(m)
        thetas[i, :, :2] = d_inv @ m_inv @ d
        thetas[i, :, 2] = -2.0 * d_inv @ m_inv @ shift
        out[i, :, :2] = moved
        out[i, :, 2:] = tgt[:, 2:] * scale
        if flip:
            out[i] = out[i, ::-1].copy()
        flips[i] = flip
    return thetas, out, flips


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
    return _batch_percentile_normalise(x)


def _suppress_heads(x: torch.Tensor, targets: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Fade each head towards the image median on a random half of the samples.

    Phantom heads are the brightest discs in the image, while real (especially children's)
    heads are faint; fading them makes the network also use the context (acetabulum,
    femoral neck and shaft, pelvic outline), which transfers better.
    """
    b, _, h, w = x.shape
    ys = torch.arange(h, dtype=x.dtype).view(1, 1, h, 1) + 0.5
    xs = torch.arange(w, dtype=x.dtype).view(1, 1, 1, w) + 0.5
    t = targets[..., None, None]  # (B, 2, 4, 1, 1)
    d2 = ((xs - t[:, :, 0]) / t[:, :, 2]) ** 2 + ((ys - t[:, :, 1]) / t[:, :, 3]) ** 2
    on = (torch.rand(b, 2, 1, 1, generator=gen) < 0.5).float()
    amount = on * (torch.rand(b, 2, 1, 1, generator=gen) * 0.6 + 0.3)
    mask = (amount * torch.exp(-d2 / (2 * 0.45**2))).amax(1, keepdim=True)
    level = x.flatten(1).median(1).values.view(b, 1, 1, 1)
    return x + mask * (level - x)


def _heatmap_targets(targets: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Gaussian target distributions (B, 2, h, w), each summing to one, around the centres."""
    h, w = out_hw
    cx = targets[..., 0] / _STRIDE - 0.5
    cy = targets[..., 1] / _STRIDE - 0.5
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w)
    ys = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1)
    g = torch.exp(-((xs - cx[..., None, None]) ** 2 + (ys - cy[..., None, None]) ** 2) / (2 * _SIGMA_CELLS**2))
    return g / g.sum((-2, -1), keepdim=True).clamp_min(1e-12)


def _loss(out: torch.Tensor, targets: torch.Tensor, working_size: tuple[int, int]) -> torch.Tensor:
    """Spatial cross-entropy of the heat maps plus L1 of log half-sizes at the true centres."""
    logits = out[:, :2]
    b, k, h, w = logits.shape
    target = _heatmap_targets(targets, (h, w))
    log_p = F.log_softmax(logits.reshape(b, k, -1), dim=-1).reshape(b, k, h, w)
    heat = -(target * log_p).sum((-2, -1)).mean()
    big_h, big_w = working_size
    grid = torch.stack([targets[..., 0] / big_w * 2 - 1, targets[..., 1] / big_h * 2 - 1], -1)
    sizes = F.grid_sample(out[:, 2:], grid[:, None], mode="bilinear", align_corners=False)[:, :, 0]
    true_log = torch.log(targets[..., 2:] / _STRIDE).transpose(1, 2)  # (B, 2 dims, 2 heads)
    return heat + F.l1_loss(sizes, true_log)


def fit_localizer(
    samples: Iterable[tuple[np.ndarray, Box, Box]],
    *,
    working_size: tuple[int, int] = (128, 160),
    epochs: int = 30,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    held_out: Sequence[tuple[np.ndarray, Box, Box]] = (),
    progress: Callable[[int, int, float, dict[str, float] | None], None] | None = None,
) -> HeadLocalizer:
    """Train a :class:`HeadLocalizer` from boxed radiographs.

    Each image is letterboxed and normalised to the working size as soon as it is read, so
    only small arrays are kept. Training uses AdamW with a one-cycle learning-rate schedule
    and the random geometric and intensity augmentation described in the module docstring.

    Args:
        samples: ``(image, box_left, box_right)`` triples: a 2-D array of any range and size and
            the patient-left and patient-right head boxes (x0 y0 x1 y1, end exclusive).
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
            arr, frame = _letterbox(image, size)
            boxes.append(_boxes_to_working(box_right, box_left, frame))
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
            thetas, tgt, _ = _sample_geometry(t_all[idx], size, rng)
            grid = F.affine_grid(torch.from_numpy(thetas), [len(idx), 1, *size], align_corners=False)
            x = F.grid_sample(x_all[idx], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            tgt_t = torch.from_numpy(tgt)
            x = _augment_intensity(_suppress_heads(x, tgt_t, gen), gen)
            loss = _loss(model(x * 2.0 - 1.0), tgt_t, size)
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

    Returns:
        ``n_images``; ``centre_error_px``, the mean distance of predicted from true head centres in original
        pixels; ``centre_error_rel``, the same as a fraction of the true distance between the two heads (a
        size-free figure); ``confidence_min`` and ``confidence_median`` of :attr:`Heads.confidence`.
    """
    errors, relative, confidences = [], [], []
    for image, box_left, box_right in samples:
        found = find_heads(model, image)
        true = {"left": _box_centre(box_left), "right": _box_centre(box_right)}
        spread = max(float(np.linalg.norm(true["left"] - true["right"])), 1.0)
        for side in ("left", "right"):
            error = float(np.linalg.norm(_box_centre(getattr(found, side)) - true[side]))
            errors.append(error)
            relative.append(error / spread)
        confidences.append(found.confidence)
    return {
        "n_images": float(len(confidences)),
        "centre_error_px": float(np.mean(errors)),
        "centre_error_rel": float(np.mean(relative)),
        "confidence_min": float(np.min(confidences)),
        "confidence_median": float(np.median(confidences)),
    }


def _box_centre(box: Sequence[float]) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], dtype=np.float64)


def _decode_centre(logits: torch.Tensor) -> tuple[float, float, float]:
    """Arg-max of a (h, w) heat map refined by a local soft-arg-max; returns cell coordinates and the
    confidence: the share of the whole map's probability (softmax) within the refinement window."""
    h, w = logits.shape
    flat = int(torch.argmax(logits))
    i, j = divmod(flat, w)
    r = _REFINE_RADIUS
    i0, i1, j0, j1 = max(0, i - r), min(h, i + r + 1), max(0, j - r), min(w, j + r + 1)
    window = logits[i0:i1, j0:j1]
    p = torch.softmax(window.flatten(), 0).view_as(window)
    ys = torch.arange(i0, i1, dtype=p.dtype)
    xs = torch.arange(j0, j1, dtype=p.dtype)
    confidence = float(torch.exp(torch.logsumexp(window.flatten(), 0) - torch.logsumexp(logits.flatten(), 0)))
    return float((p.sum(0) * xs).sum()), float((p.sum(1) * ys).sum()), confidence


@dataclass(frozen=True)
class Heads:
    """Both femoral heads found on a radiograph.

    Attributes:
        left: The patient's left head box (x0, y0, x1, y1), original pixels, end exclusive.
        right: The patient's right head box.
        confidence: The lower of the two heat maps' peak shares (0..1): how much of each map's probability
            lies in the 5x5 cells around its peak. Near 1 on films like the training ones; low when the map
            is spread out, e.g. on an image that shows no hip.
    """

    left: Box
    right: Box
    confidence: float


def implausible_heads(heads: Heads, shape: tuple[int, int]) -> list[str]:
    """What is wrong with a pair of head boxes on an image of ``shape`` (empty when plausible).

    Degenerate: a box narrower or lower than 2% of the image's shorter side (at least 4 px), or touching
    the image's edge (it was clipped, so the head lies outside or the peak sits on the border). Implausible
    geometry: the two heads' widths or heights differ by more than a factor 2, the boxes overlap, the
    patient's right head is not on the image's left, or the two are not side by side (their centres differ
    in height by more than the mean box height).
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
    if right[0] >= left[0]:
        problems.append("the patient's right head is not on the image's left (AP view: patient right = image left)")
    if abs(left[1] - right[1]) > sizes[:, 1].mean():
        problems.append(
            f"the heads are not side by side (their centres differ by {abs(left[1] - right[1]):.0f} px in height)"
        )
    return problems


def confidence_floor(model: HeadLocalizer) -> float | None:
    """The lowest confidence that does not flag a study: half the lowest on the held-out patients (None when
    the localiser was trained without held-out patients)."""
    return None if not model.held_out else 0.5 * model.held_out["confidence_min"]


def locate_heads(model: HeadLocalizer, image: np.ndarray, *, box_scale: float = 1.0) -> dict[str, Box]:
    """The two head boxes of :func:`find_heads` as ``{"left": box, "right": box}``."""
    heads = find_heads(model, image, box_scale=box_scale)
    return {"left": heads.left, "right": heads.right}


def find_heads(model: HeadLocalizer, image: np.ndarray, *, box_scale: float = 1.0) -> Heads:
    """Find both femoral heads on an AP pelvis radiograph.

    Args:
        model: A trained localiser.
        image: 2-D grey image of any size and intensity range.
        box_scale: Factor on the learned box half-size (1.0 reproduces the training boxes' margin).

    Returns:
        The patient's left and right head, each ``(x0, y0, x1, y1)`` in original pixel coordinates, end
        exclusive, clipped to the image (so a head at the border yields a smaller box, never an empty one;
        :func:`implausible_heads` says when such boxes should not be used), and the confidence.

    Raises:
        DataError: ``image`` is not a finite 2-D array.
    """
    if box_scale <= 0:
        raise ValueError(f"box_scale must be positive, got {box_scale}")
    arr, frame = _letterbox(image, model.working_size)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        out = model(torch.from_numpy(arr)[None, None] * 2.0 - 1.0)[0]
    model.train(was_training)
    boxes: dict[str, Box] = {}
    confidences = []
    for channel, side in enumerate(SIDES):
        cx, cy, confidence = _decode_centre(out[channel])
        confidences.append(confidence)
        grid = torch.tensor([[[[(cx + 0.5) / out.shape[-1] * 2 - 1, (cy + 0.5) / out.shape[-2] * 2 - 1]]]])
        log_half = F.grid_sample(out[None, 2:], grid, mode="bilinear", align_corners=False).flatten()
        half_w, half_h = (torch.exp(log_half) * _STRIDE * box_scale).tolist()
        u, v = (cx + 0.5) * _STRIDE, (cy + 0.5) * _STRIDE
        x, y = (u - frame.pad_x) / frame.sx, (v - frame.pad_y) / frame.sy
        hw, hh = half_w / frame.sx, half_h / frame.sy
        x0 = min(max(round(x - hw), 0), frame.width - 1)
        y0 = min(max(round(y - hh), 0), frame.height - 1)
        x1 = max(min(round(x + hw), frame.width), x0 + 1)
        y1 = max(min(round(y + hh), frame.height), y0 + 1)
        boxes[side] = (x0, y0, x1, y1)
    return Heads(boxes["left"], boxes["right"], min(confidences))


def save_localizer(model: HeadLocalizer, path: str | Path) -> None:
    """Save weights, configuration and the held-out evaluation in one torch file, atomically (temp file, then
    rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": _FORMAT,
        "version": 2,
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

    Raises:
        DataError: The file is missing, unreadable, or not a saved head localiser.
    """
    source = Path(path)
    if not source.is_file():
        raise DataError("femoral-head localiser file not found", path=source)
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(f"cannot read the femoral-head localiser ({type(err).__name__})", path=source) from err
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise DataError("not a saved femoral-head localiser", path=source)
    try:
        config = payload["config"]
        model = HeadLocalizer(tuple(config["working_size"]), width=int(config["width"]))
        model.load_state_dict(payload["state_dict"])
        model.held_out = payload.get("held_out")  # absent from version 1 files
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
    working_size: tuple[int, int] = (128, 160),
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
