"""Tests of the AsT difference loss and the bilateral objective."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from osteoscope.losses import BilateralLoss, difference_loss


def test_difference_loss_matches_hand_computation() -> None:
    left = torch.tensor([[[[1.0, 2.0]]], [[[0.5, 0.0]]]])  # (2, 1, 1, 2)
    right = torch.tensor([[[[0.5, 3.5]]], [[[0.3, 0.4]]]])
    # sample 0 (y=0): d = (0.5 + 1.5) / 2 = 1.0 -> 1.0; sample 1 (y=1): d = (0.2 + 0.4) / 2 = 0.3 -> 1 - 0.3
    loss = difference_loss(left, right, torch.tensor([0.0, 1.0]), margin=1.0)
    assert loss.item() == pytest.approx((1.0 + 0.7) / 2)
    loss_m2 = difference_loss(left, right, torch.tensor([0.0, 1.0]), margin=2.0)
    assert loss_m2.item() == pytest.approx((1.0 + 1.7) / 2)


def test_difference_loss_hinge_clamps_at_zero_for_large_positive_difference() -> None:
    left = torch.full((1, 2, 2, 2), 3.0, requires_grad=True)
    right = torch.ones(1, 2, 2, 2)  # d = 2 > m = 1
    loss = difference_loss(left, right, torch.tensor([1]), margin=1.0)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(left.grad) == 0
    # the same features for a healthy patient are penalised by d itself
    assert difference_loss(left, right, torch.tensor([0]), margin=1.0).item() == pytest.approx(2.0)


def _outputs(b: int = 3, with_side: bool = True, with_feat: bool = True) -> dict:
    g = torch.Generator().manual_seed(0)
    out = {"logits": torch.randn(b, generator=g)}
    if with_side:
        out["side_logits"] = torch.randn(b, 2, generator=g)
    if with_feat:
        out["aux"] = {
            "feat_left": torch.randn(b, 4, 2, 2, generator=g),
            "feat_right": torch.randn(b, 4, 2, 2, generator=g),
        }
    return out


def test_bilateral_loss_parts_and_masking() -> None:
    out = _outputs()
    batch = {
        "label": torch.tensor([1.0, 0.0, 1.0]),
        "side_label": torch.tensor([[1.0, -1.0], [0.0, 0.0], [-1.0, 1.0]]),
    }
    loss_fn = BilateralLoss(diff_weight=0.2, margin=1.0, side_weight=0.5)
    total, parts = loss_fn(out, batch)
    known = batch["side_label"] >= 0
    side = F.binary_cross_entropy_with_logits(out["side_logits"][known], batch["side_label"][known])
    bce = F.binary_cross_entropy_with_logits(out["logits"], batch["label"])
    diff = difference_loss(out["aux"]["feat_left"], out["aux"]["feat_right"], batch["label"])
    assert parts["side"] == pytest.approx(side.item(), rel=1e-6)
    assert parts["bce"] == pytest.approx(bce.item(), rel=1e-6)
    assert parts["diff"] == pytest.approx(diff.item(), rel=1e-6)
    assert total.item() == pytest.approx(bce.item() + 0.5 * side.item() + 0.2 * diff.item(), rel=1e-6)
    assert parts["total"] == pytest.approx(total.item())

    # logits at unknown side positions neither change the loss nor receive gradient
    shifted = dict(out)
    side_logits = out["side_logits"].clone()
    side_logits[~known] += 5.0
    shifted["side_logits"] = side_logits.requires_grad_()
    total_shifted, _ = loss_fn(shifted, batch)
    assert total_shifted.item() == pytest.approx(total.item(), rel=1e-6)
    total_shifted.backward()
    assert torch.all(shifted["side_logits"].grad[~known] == 0)
    assert torch.all(shifted["side_logits"].grad[known] != 0)


def test_bilateral_loss_without_side_logits_or_features_is_plain_bce() -> None:
    out = _outputs(with_side=False, with_feat=False)
    batch = {"label": torch.tensor([1.0, 0.0, 1.0])}
    total, parts = BilateralLoss()(out, batch)
    expected = F.binary_cross_entropy_with_logits(out["logits"], batch["label"])
    assert total.item() == pytest.approx(expected.item())
    assert parts["side"] == 0.0 and parts["diff"] == 0.0


def test_bilateral_loss_all_sides_unknown_and_pos_weight() -> None:
    out = _outputs(b=2, with_feat=False)
    out["logits"] = torch.tensor([0.0, 0.0], requires_grad=True)
    batch = {"label": torch.tensor([1.0, 0.0]), "side_label": torch.full((2, 2), -1.0)}
    total, parts = BilateralLoss(pos_weight=3.0)(out, batch)
    assert parts["side"] == 0.0
    # BCE at logit 0 is log 2 per sample; the positive one counts 3 times
    assert total.item() == pytest.approx((3 * math.log(2) + math.log(2)) / 2)
    total.backward()
    assert out["logits"].grad is not None
