"""Losses: one default per head kind, the AsT difference loss (Eq. 3) with the bilateral ONFH objective, and
SRANet's structure-regularised objective (Eq. 12).

Every loss module takes ``(outputs, batch)`` (the model's output dict and the batch of samples) and returns
``(total, parts)``: the scalar to back-propagate and its named parts as floats for the training log.
Targets marked unknown (NaN for binary and multi-label, -1 for multi-class) are left out, so a manifest may
leave a label empty.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

Parts = dict[str, float]


def _known_float_targets(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and float targets where the target is known (not NaN), flattened."""
    target = target.to(logits.dtype).reshape(logits.shape)
    known = ~torch.isnan(target)
    return logits[known], target[known]


class BinaryLoss(nn.Module):
    """Binary cross-entropy on logits (B,) against 0/1 labels (B,).

    Args:
        pos_weight: Weight of the positive class (e.g. negatives / positives for an imbalanced set), or None.
    """

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__()
        self.register_buffer("pos_weight", None if pos_weight is None else torch.tensor(float(pos_weight)))

    def bce(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """The BCE of known labels (0 when none is known, so a batch of unknowns adds nothing)."""
        logits, label = _known_float_targets(logits, label)
        if logits.numel() == 0:
            return logits.sum()
        return F.binary_cross_entropy_with_logits(logits, label, pos_weight=self.pos_weight)

    def forward(self, outputs: Mapping, batch: Mapping) -> tuple[torch.Tensor, Parts]:
        loss = self.bce(outputs["logits"], batch["label"])
        return loss, {"bce": loss.item(), "total": loss.item()}


class MulticlassLoss(nn.Module):
    """Cross-entropy on logits (B, K) against class indices (B,); index -1 means unknown.

    Args:
        label_smoothing: Share of the target mass spread over all classes (0 = none).
        class_weights: Optional weight per class (K values), e.g. for a rare stage.
    """

    def __init__(self, label_smoothing: float = 0.0, class_weights: tuple[float, ...] | None = None) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weight)

    def forward(self, outputs: Mapping, batch: Mapping) -> tuple[torch.Tensor, Parts]:
        logits = outputs["logits"]
        label = batch["label"].long().reshape(-1)
        if bool((label >= 0).any()):
            loss = F.cross_entropy(
                logits.float(), label, weight=self.class_weights, ignore_index=-1, label_smoothing=self.label_smoothing
            )
        else:
            loss = logits.sum() * 0.0
        return loss, {"ce": loss.item(), "total": loss.item()}


class MultilabelLoss(nn.Module):
    """Binary cross-entropy per label on logits (B, L) against a 0/1 matrix (B, L), NaN = unknown.

    Args:
        pos_weight: One positive-class weight for every label, or None.
    """

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__()
        self.register_buffer("pos_weight", None if pos_weight is None else torch.tensor(float(pos_weight)))

    def forward(self, outputs: Mapping, batch: Mapping) -> tuple[torch.Tensor, Parts]:
        logits, label = _known_float_targets(outputs["logits"], batch["label"])
        loss = (
            F.binary_cross_entropy_with_logits(logits, label, pos_weight=self.pos_weight)
            if logits.numel()
            else logits.sum()
        )
        return loss, {"bce": loss.item(), "total": loss.item()}


class ImageLoss(nn.Module):
    """Image-to-image loss of a pretext stage (e.g. MR -> CT translation): mean L1 or L2 over all voxels.

    Args:
        kind: ``l1`` (default; robust to the bright outliers of bone) or ``l2``.
    """

    def __init__(self, kind: str = "l1") -> None:
        super().__init__()
        if kind not in ("l1", "l2"):
            raise ValueError(f"image loss kind must be l1 or l2, got {kind!r}")
        self.kind = kind

    def forward(self, outputs: Mapping, batch: Mapping) -> tuple[torch.Tensor, Parts]:
        prediction, target = outputs["logits"].float(), batch["label"].float()
        loss = F.l1_loss(prediction, target) if self.kind == "l1" else F.mse_loss(prediction, target)
        return loss, {self.kind: loss.item(), "total": loss.item()}


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


class BilateralLoss(BinaryLoss):
    """Objective for bilateral ONFH models: patient BCE + per-side BCE + AsT difference loss.

    ``total = bce + side_weight · side + diff_weight · diff``. The side term is used only when the
    model returns ``side_logits``; side labels below 0 mean "unknown" and are left out. The difference
    term is used only when the model returns ``aux["feat_left"]``/``aux["feat_right"]``. Baselines that
    give only ``logits`` thus train on the patient BCE alone.

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
        super().__init__(pos_weight)
        self.diff_weight = diff_weight
        self.margin = margin
        self.side_weight = side_weight

    def forward(self, outputs: Mapping, batch: Mapping) -> tuple[torch.Tensor, Parts]:
        """Return the total loss and its parts ``{"bce", "side", "diff", "total"}`` as floats.

        Args:
            outputs: Model outputs; ``logits`` (B,) required, ``side_logits`` (B, 2) and
                ``aux`` with ``feat_left``/``feat_right`` optional.
            batch: ``label`` (B,) float, and ``side_label`` (B, 2) float with −1 for unknown when the
                model gives side logits.
        """
        logits = outputs["logits"]
        label = batch["label"].to(logits.dtype).reshape(logits.shape)
        bce = self.bce(logits, label)
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
        aux = outputs.get("aux", {})
        known = ~torch.isnan(label)
        if "feat_left" in aux and "feat_right" in aux and self.diff_weight > 0 and bool(known.any()):
            diff = difference_loss(aux["feat_left"][known], aux["feat_right"][known], label[known], self.margin)
            total = total + self.diff_weight * diff
        parts = {"bce": bce.item(), "side": side.item(), "diff": diff.item(), "total": total.item()}
        return total, parts


class StructureRegularizedLoss(nn.Module):
    """SRANet Eq. 12: ``alpha * l_c + (1 - alpha) * l_s``.

    ``l_c`` is the head's own loss (``base``: BCE for necrosis, cross-entropy for the ARCO stage); ``l_s``
    (Eq. 10-11) the BCE of each patch's structure score ``sigmoid(q_i)`` against ``f_i`` (1 where the patch
    overlaps the bone mask), averaged over patches and cases. ``l_s`` is used only when the model returns
    ``aux["structure_logits"]`` and ``aux["structure_targets"]`` (SRANet given a mask); a baseline, or
    evaluation without masks, trains or scores on ``l_c`` alone (and ``alpha`` = 1 is SRANet without the
    regulariser). Whenever the targets are there, the share of patches that overlap the bone goes into the
    parts as ``bone_patches`` (history: ``train_bone_patches``): near 1, ``l_s`` asks the same of every patch
    and carries little information.

    Args:
        base: The head's loss, ``(outputs, batch) -> (loss, parts)``.
        alpha: Weight of the classification loss, in (0, 1]; the seed does not give it.
    """

    def __init__(self, base: nn.Module, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.alpha = alpha

    def forward(self, outputs: Mapping, batch: Mapping) -> tuple[torch.Tensor, Parts]:
        l_c, parts = self.base(outputs, batch)
        aux = outputs.get("aux", {})
        targets = aux.get("structure_targets")
        if targets is not None:
            parts = {**parts, "bone_patches": float(targets.float().mean())}
        if self.alpha >= 1.0 or "structure_logits" not in aux or targets is None:
            return l_c, {**parts, "structure": 0.0}
        q = aux["structure_logits"]
        l_s = F.binary_cross_entropy_with_logits(q, targets.to(q.dtype))
        total = self.alpha * l_c + (1.0 - self.alpha) * l_s
        return total, {**parts, "structure": l_s.item(), "total": total.item()}
