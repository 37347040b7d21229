"""Losses: the AsT difference loss (Eq. 3) and the combined bilateral ONFH objective."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn


def difference_loss(
    feat_left: torch.Tensor, feat_right: torch.Tensor, y: torch.Tensor, margin: float = 1.0
) -> torch.Tensor:
    """AsT difference loss (Eq. 3): pull bilateral features together when healthy, apart for ONFH.

    ``d`` is the mean over channels and positions of ``|F_L − F_R|`` per sample; the loss is ``d`` for
    ``y = 0`` and ``max(0, m − d)`` for ``y = 1``, averaged over the batch. The paper prints ``m − d``,
    which is unbounded below and would reward blowing the features up; the hinge keeps its stated
    role of ``m`` as an upper limit. The right features must come from the mirrored right ROI, so
    that positions correspond.

    Args:
        feat_left: Left-side features (B, ...).
        feat_right: Right-side features, same shape.
        y: Patient labels (B,), 0 or 1.
        margin: The margin ``m``.

    Returns:
        The scalar loss.
    """
    if feat_left.shape != feat_right.shape:
        raise ValueError(f"feature shapes differ: {tuple(feat_left.shape)} vs {tuple(feat_right.shape)}")
    d = (feat_left - feat_right).abs().flatten(1).mean(dim=1)
    positive = y.reshape(d.shape) > 0.5
    return torch.where(positive, (margin - d).clamp_min(0.0), d).mean()


class BilateralLoss(nn.Module):
    """Objective for bilateral ONFH models: patient BCE + per-side BCE + AsT difference loss.

    ``total = bce + side_weight · side + diff_weight · diff``. The side term is used only when the
    model returns ``side_logits``; side labels below 0 mean "unknown" and are left out. The difference
    term is used only when the model returns ``feat_left``/``feat_right``. Baselines that give only
    ``logits`` thus train on the patient BCE alone.

    Args:
        diff_weight: Weight of the difference loss (the paper does not give it).
        margin: Margin ``m`` of the difference loss.
        side_weight: Weight of the per-side BCE.
        pos_weight: Positive-class weight of the patient-level BCE (not of the side term), or None.
    """

    def __init__(
        self,
        diff_weight: float = 0.1,
        margin: float = 1.0,
        side_weight: float = 0.5,
        pos_weight: float | None = None,
    ) -> None:
        super().__init__()
        self.diff_weight = diff_weight
        self.margin = margin
        self.side_weight = side_weight
        self.register_buffer("pos_weight", None if pos_weight is None else torch.tensor(float(pos_weight)))

    def forward(
        self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Return the total loss and its parts ``{"bce", "side", "diff", "total"}`` as floats.

        Args:
            outputs: Model outputs; ``logits`` (B,) required, ``side_logits`` (B, 2) and
                ``feat_left``/``feat_right`` optional.
            batch: ``label`` (B,) float, and ``side_label`` (B, 2) float with −1 for unknown when the
                model gives side logits.
        """
        logits = outputs["logits"]
        label = batch["label"].to(logits.dtype).reshape(logits.shape)
        bce = F.binary_cross_entropy_with_logits(logits, label, pos_weight=self.pos_weight)
        total = bce
        side = logits.new_zeros(())
        if "side_logits" in outputs and self.side_weight > 0:
            side_logits = outputs["side_logits"]
            side_label = batch["side_label"].to(side_logits.dtype).reshape(side_logits.shape)
            known = side_label >= 0
            if bool(known.any()):
                side = F.binary_cross_entropy_with_logits(side_logits[known], side_label[known])
                total = total + self.side_weight * side
        diff = logits.new_zeros(())
        if "feat_left" in outputs and "feat_right" in outputs and self.diff_weight > 0:
            diff = difference_loss(outputs["feat_left"], outputs["feat_right"], label, self.margin)
            total = total + self.diff_weight * diff
        parts = {"bce": bce.item(), "side": side.item(), "diff": diff.item(), "total": total.item()}
        return total, parts
