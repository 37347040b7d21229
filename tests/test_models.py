"""Tests of the model registry, AsT (attention, side symmetry, learning) and the ViT/Swin baselines."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from sklearn.metrics import roc_auc_score
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

from osteoscope.errors import ConfigError
from osteoscope.losses import BilateralLoss
from osteoscope.models import create_model, list_models, register_model
from osteoscope.models.ast import AsT
from osteoscope.models.layers import SpatialAttention


def _pair(b: int = 2, s: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, s, s, generator=g), torch.randn(b, 1, s, s, generator=g)


# --- spatial attention (Eq. 1-2) -----------------------------------------------------------------


def test_spatial_attention_uses_channel_mean_and_known_kernel() -> None:
    sam = SpatialAttention(kernel_size=1)
    with torch.no_grad():
        sam.conv.weight.fill_(2.0)
    x = torch.tensor([0.0, 4.0]).reshape(1, 2, 1, 1)  # mean 2, max 4: a CBAM-style max would differ
    out, attn = sam(x)
    expected = 1 / (1 + math.exp(-4.0))
    assert attn.shape == (1, 1, 1, 1)
    assert attn.item() == pytest.approx(expected)
    assert torch.allclose(out, x * expected)


def test_spatial_attention_matches_eq_1_and_2() -> None:
    torch.manual_seed(0)
    sam = SpatialAttention(kernel_size=3)
    kernel = torch.arange(9, dtype=torch.float32).reshape(1, 1, 3, 3) / 10 - 0.4
    with torch.no_grad():
        sam.conv.weight.copy_(kernel)
    x = torch.randn(2, 5, 6, 7)
    out, attn = sam(x)
    m_s = torch.sigmoid(F.conv2d(x.mean(dim=1, keepdim=True), kernel, padding=1))
    assert attn.shape == (2, 1, 6, 7)
    assert torch.allclose(attn, m_s, atol=1e-6)
    assert torch.allclose(out, x * m_s, atol=1e-6)


def test_spatial_attention_rejects_even_kernel() -> None:
    with pytest.raises(ConfigError, match="odd"):
        SpatialAttention(kernel_size=4)


# --- registry -------------------------------------------------------------------------------------


def test_registry_lists_models_and_reports_bad_names_and_kwargs() -> None:
    assert {"ast", "vit", "swin"} <= set(list_models())
    with pytest.raises(ConfigError, match=r"ast.*swin.*vit"):
        create_model("nope")
    with pytest.raises(ConfigError, match="embed_dimm"):
        create_model("ast", preset="tiny", embed_dimm=8)
    with pytest.raises(ConfigError, match="huge"):
        create_model("vit", preset="huge")
    with pytest.raises(ConfigError, match="already registered"):
        register_model("ast")(lambda: torch.nn.Identity())


def test_size_kwargs_override_the_preset() -> None:
    model = create_model("ast", preset="tiny", embed_dim=48, num_heads=3, img_size=32)
    assert model.pos_embed.shape == (1, 16, 48)
    with pytest.raises(ConfigError, match="multiple of 8"):
        create_model("ast", preset="tiny", img_size=36)
    with pytest.raises(ConfigError, match="sharing"):
        create_model("ast", preset="tiny", sharing="mean")


# --- outputs --------------------------------------------------------------------------------------


def test_ast_outputs_and_gradients() -> None:
    model = create_model("ast", preset="tiny", img_size=32)
    left, right = _pair(b=3)
    out = model(left, right)
    assert out["logits"].shape == (3,)
    assert out["side_logits"].shape == (3, 2)
    assert out["aux"]["feat_left"].shape == out["aux"]["feat_right"].shape == (3, 16, 4, 4)
    assert out["maps"]["attn_left"].shape == out["maps"]["attn_right"].shape == (3, 1, 8, 8)
    assert torch.all((out["maps"]["attn_left"] > 0) & (out["maps"]["attn_left"] < 1))
    loss, _ = BilateralLoss()(out, {"label": torch.tensor([0.0, 1.0, 1.0]), "side_label": torch.ones(3, 2)})
    loss.backward()
    assert model.sam.conv.weight.grad is not None and model.sam.conv.weight.grad.abs().sum() > 0
    assert model.side_embed.grad is not None


@pytest.mark.parametrize("name", ["vit", "swin"])
def test_baseline_outputs(name: str) -> None:
    model = create_model(name, preset="tiny", img_size=32)
    left, right = _pair(b=3)
    out = model(left, right)
    assert set(out) == {"logits"} and out["logits"].shape == (3,)
    out["logits"].sum().backward()
    # the right ROI reaches the prediction, i.e. the image really is left | right
    right2 = right.clone()
    right2[..., 8:24, 8:24] += 3.0
    with torch.no_grad():
        assert not torch.allclose(model(left, right)["logits"], model(left, right2)["logits"])


# --- side symmetry --------------------------------------------------------------------------------


@pytest.mark.parametrize("sharing", ["joint", "cross"])
def test_ast_without_side_embedding_is_swap_equivariant(sharing: str) -> None:
    torch.manual_seed(0)
    model = create_model("ast", preset="tiny", img_size=32, sharing=sharing, side_embed=False).eval()
    left, right = _pair(b=4)
    with torch.no_grad():
        a, b = model(left, right), model(right, left)
    assert torch.allclose(a["side_logits"], b["side_logits"].flip(-1), atol=1e-5)
    assert torch.allclose(a["logits"], b["logits"], atol=1e-5)
    assert torch.allclose(a["maps"]["attn_left"], b["maps"]["attn_right"], atol=1e-6)
    assert not torch.allclose(a["side_logits"][:, 0], a["side_logits"][:, 1], atol=1e-4)


def test_ast_side_embedding_is_the_only_asymmetry() -> None:
    torch.manual_seed(0)
    model = create_model("ast", preset="tiny", img_size=32).eval()
    with torch.no_grad():
        model.side_embed.normal_(0.0, 1.0)  # large, so a broken symmetry would show
    left, right = _pair(b=4)
    with torch.no_grad():
        a = model(left, right)
        changed = model(right, left)
        model.side_embed.copy_(model.side_embed.flip(1))
        b = model(right, left)
    assert not torch.allclose(a["logits"], changed["logits"], atol=1e-4)
    assert torch.allclose(a["side_logits"], b["side_logits"].flip(-1), atol=1e-5)
    assert torch.allclose(a["logits"], b["logits"], atol=1e-5)


def test_cross_sharing_mask_only_lets_sides_see_each_other() -> None:
    model = AsT(img_size=16, conv_channels=(4, 8), embed_dim=8, depth=1, num_heads=2, sharing="cross")
    n = model.num_patches
    mask = model.attn_mask
    assert mask.shape == (1 + 2 * n, 1 + 2 * n)
    assert mask[0].all() and mask[:, 0].all()
    assert not mask[1 : 1 + n, 1 : 1 + n].any() and not mask[1 + n :, 1 + n :].any()
    assert mask[1 : 1 + n, 1 + n :].all() and mask[1 + n :, 1 : 1 + n].all()
    assert create_model("ast", preset="tiny").attn_mask is None


# --- learning -------------------------------------------------------------------------------------


def _blob_pairs(n: int, s: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Positives: a bright blob on one side only. Negatives: no blob, or a blob on both sides."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:s, :s]
    left = rng.normal(0.0, 0.3, (n, 1, s, s)).astype(np.float32)
    right = rng.normal(0.0, 0.3, (n, 1, s, s)).astype(np.float32)
    label = rng.integers(0, 2, n).astype(np.float32)
    side = np.zeros((n, 2), np.float32)

    def blob() -> np.ndarray:
        cy, cx = rng.uniform(s / 4, 3 * s / 4, 2)
        return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (s / 10) ** 2)).astype(np.float32)

    for i in range(n):
        if label[i] == 1:
            k = int(rng.integers(0, 2))
            (left if k == 0 else right)[i, 0] += blob()
            side[i, k] = 1.0
        elif rng.random() < 0.5:
            left[i, 0] += blob()
            right[i, 0] += blob()
            side[i] = -1.0  # symmetric blobs: side status left unknown
    return tuple(torch.from_numpy(a) for a in (left, right, label, side))


def test_tiny_ast_learns_bilateral_asymmetry() -> None:
    torch.manual_seed(0)
    s = 32
    left, right, label, side = _blob_pairs(512, s, seed=0)
    test_left, test_right, test_label, _ = _blob_pairs(256, s, seed=1)
    model = create_model("ast", preset="tiny", img_size=s)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loss_fn = BilateralLoss()
    g = torch.Generator().manual_seed(0)
    for _ in range(80):
        idx = torch.randint(0, len(label), (32,), generator=g)
        loss, _ = loss_fn(model(left[idx], right[idx]), {"label": label[idx], "side_label": side[idx]})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        scores = model(test_left, test_right)["logits"]
    # a blob detector blind to asymmetry would score about 0.75 (half the negatives carry two blobs)
    assert roc_auc_score(test_label.numpy(), scores.numpy()) > 0.85


# --- baselines: configuration and weights ----------------------------------------------------------


def test_swin_rejects_windows_that_do_not_tile_the_grid() -> None:
    with pytest.raises(ConfigError, match=r"window 7 .*window sizes that work: \[.*4.*8"):
        create_model("swin", preset="base", window_size=7)
    with pytest.raises(ConfigError, match="patch_size"):
        create_model("swin", preset="tiny", img_size=30)
    with pytest.raises(ConfigError, match="patch_size"):
        create_model("vit", preset="tiny", img_size=36)


def test_pretrained_argument_combinations_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not both"):
        create_model("vit", preset="base", pretrained=True, pretrained_path=str(tmp_path / "w.pth"))
    with pytest.raises(ConfigError, match="preset='base'"):
        create_model("swin", preset="tiny", pretrained=True)
    with pytest.raises(ConfigError, match="not a file"):
        create_model("vit", preset="tiny", pretrained_path=str(tmp_path / "missing.pth"))


def test_vit_loads_local_three_channel_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    # same architecture as the tiny preset, but RGB, square 32x32 input and a 10-class head
    src = VisionTransformer(
        img_size=32, patch_size=8, in_chans=3, num_classes=10, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0
    )
    path = tmp_path / "vit_rgb.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    net = create_model("vit", preset="tiny", img_size=32, pretrained_path=str(path)).net
    sd = src.state_dict()
    assert torch.allclose(net.patch_embed.proj.weight, sd["patch_embed.proj.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(net.blocks[0].attn.qkv.weight, sd["blocks.0.attn.qkv.weight"])
    assert torch.equal(net.cls_token, sd["cls_token"])
    assert net.pos_embed.shape == (1, 1 + 4 * 8, 32)  # resampled from a 4x4 to the 4x8 side-by-side grid
    assert torch.equal(net.pos_embed[:, 0], sd["pos_embed"][:, 0])
    assert net.head.weight.shape == (1, 32)


def test_swin_loads_local_three_channel_safetensors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = SwinTransformer(
        img_size=32,
        patch_size=4,
        in_chans=3,
        num_classes=10,
        window_size=4,
        embed_dim=16,
        depths=(1, 1),
        num_heads=(1, 2),
        mlp_ratio=2.0,
    )
    path = tmp_path / "swin_rgb.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    net = create_model("swin", preset="tiny", img_size=32, pretrained_path=str(path)).net
    sd = src.state_dict()
    assert torch.allclose(net.patch_embed.proj.weight, sd["patch_embed.proj.weight"].sum(dim=1, keepdim=True))
    key = "layers.1.blocks.0.attn.relative_position_bias_table"
    assert torch.equal(net.state_dict()[key], sd[key])
    assert net.head.fc.weight.shape == (1, 32)
    left, right = _pair(b=2)
    assert net(torch.cat([left, right], dim=-1)).shape == (2, 1)


def test_local_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    src = VisionTransformer(img_size=32, patch_size=8, in_chans=3, num_classes=10, embed_dim=48, depth=1, num_heads=2)
    path = tmp_path / "wider.pth"
    torch.save(src.state_dict(), path)
    with pytest.raises(ConfigError, match="do not fit"):
        create_model("vit", preset="tiny", img_size=32, pretrained_path=str(path))
