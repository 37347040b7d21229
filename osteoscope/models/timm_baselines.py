"""ViT and Swin baselines of the AsT paper, built from timm, reading both femoral-head ROIs at once.

A single-image classifier cannot take two ROIs, so the two (B, 1, S, S) ROIs are placed side by
side as one (B, 1, S, 2S) image: patient's left ROI | mirrored right ROI. The network then sees both
heads and can compare them, as a radiologist looking at the pelvis would; it just gets no built-in
notion of which tokens correspond. The AsT paper does not say how its baselines were fed.

Weights: ``pretrained=True`` downloads timm hub weights (``base`` preset only, the one architecture
they exist for); ``pretrained_path`` loads a local timm-format state dict (.pth/.safetensors) with
timm's own helpers: the 3-channel patch embedding is summed to 1 channel (``adapt_input_conv``),
position embeddings / relative-position tables / patch kernels are resampled by the model family's
``checkpoint_filter_fn``, and a classifier head of another shape is dropped (left freshly initialised).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import adapt_input_conv, load_state_dict
from timm.models import swin_transformer as timm_swin
from timm.models import vision_transformer as timm_vit
from torch import nn

from osteoscope.errors import ConfigError
from osteoscope.models.registry import register_model, resolve_preset, square_side

VIT_HUB_NAME = "vit_base_patch16_224.augreg2_in21k_ft_in1k"
SWIN_HUB_NAME = "swin_tiny_patch4_window7_224.ms_in1k"

VIT_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0},
    "small": {"patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 4, "mlp_ratio": 2.0},
    "base": {"patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12, "mlp_ratio": 4.0},
}
SWIN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "patch_size": 4,
        "window_size": 4,
        "embed_dim": 16,
        "depths": (1, 1),
        "num_heads": (1, 2),
        "mlp_ratio": 2.0,
    },
    "small": {
        "patch_size": 4,
        "window_size": 4,
        "embed_dim": 32,
        "depths": (2, 2),
        "num_heads": (2, 4),
        "mlp_ratio": 2.0,
    },
    "base": {
        "patch_size": 4,
        "window_size": 8,
        "embed_dim": 96,
        "depths": (2, 2, 6, 2),
        "num_heads": (3, 6, 12, 24),
        "mlp_ratio": 4.0,
    },
}


class SideBySideClassifier(nn.Module):
    """Wrap a one-image timm classifier (1 channel, 1 class) to take the bilateral ROI pair.

    Args:
        net: timm model built for (B, 1, S, 2S) input and ``num_classes=1``.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"logits": (B,)}`` for ROIs (B, 1, S, S), joined as left | right along the width."""
        return {"logits": self.net(torch.cat([left, right], dim=-1)).squeeze(-1)}


def load_local_weights(
    model: nn.Module,
    path: str | Path,
    filter_fn: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]],
    head_prefix: str,
) -> None:
    """Load a timm-format state dict from ``path`` into a 1-channel ``model``, adapting it with timm helpers.

    Args:
        model: The timm model to fill.
        path: A .pth/.pt/.bin (torch) or .safetensors file; nested ``state_dict``/``model`` keys work.
        filter_fn: The model family's timm ``checkpoint_filter_fn`` (resamples position tables, kernels).
        head_prefix: Key prefix of the classifier, dropped when its shapes differ from the model's.

    Raises:
        ConfigError: If the file is missing or unreadable, or its weights do not fit the architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pretrained_path {path} is not a file")
    try:
        state = load_state_dict(str(path), use_ema=False)
    except Exception as err:
        raise ConfigError(f"cannot read weights from {path}: {err}") from err
    key = "patch_embed.proj.weight"
    if key in state and state[key].ndim == 4 and state[key].shape[1] != 1:
        state[key] = adapt_input_conv(1, state[key], base_chans=state[key].shape[1])
    state = filter_fn(state, model)
    own = model.state_dict()
    for k in [k for k in state if k.startswith(head_prefix) and k in own and state[k].shape != own[k].shape]:
        del state[k]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    if mismatched:
        raise ConfigError(f"weights in {path} do not fit the model: {'; '.join(mismatched[:5])}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(head_prefix)]
    if missing or unexpected:
        raise ConfigError(f"weights in {path} do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def _check_weights_args(preset: str, pretrained: bool, pretrained_path: str | None, overrides: dict) -> None:
    """Reject ``pretrained=True`` combined with a local file, a non-base preset or size overrides."""
    if not pretrained:
        return
    if pretrained_path is not None:
        raise ConfigError("give either pretrained=True (timm hub) or pretrained_path (local file), not both")
    changed = sorted(k for k, v in overrides.items() if v is not None)
    if preset != "base" or changed:
        raise ConfigError(
            "pretrained=True needs preset='base' without size overrides (hub weights exist only for it); "
            f"got preset={preset!r}" + (f", overrides {changed}" if changed else "")
        )


def check_swin_grid(img_size: int, patch_size: int, window_size: int, num_stages: int) -> None:
    """Check that the Swin token grid of an (S, 2S) input halves cleanly and tiles into windows per stage.

    A stage grid side no larger than the window is accepted (timm then shrinks the window to it).

    Raises:
        ConfigError: Naming the offending stage and listing the window sizes that would work.
    """
    if img_size % patch_size:
        raise ConfigError(f"swin: img_size {img_size} is not a multiple of patch_size {patch_size}")
    base = (img_size // patch_size, 2 * img_size // patch_size)

    def problem(window: int) -> str | None:
        h, w = base
        for stage in range(num_stages):
            if stage:
                if h % 2 or w % 2:
                    return f"the {h}x{w} token grid of stage {stage - 1} cannot be halved by patch merging"
                h, w = h // 2, w // 2
            if any(side > window and side % window for side in (h, w)):
                return f"window {window} does not tile the {h}x{w} token grid of stage {stage}"
        return None

    reason = problem(window_size)
    if reason is not None:
        valid = [w for w in range(2, max(base) + 1) if problem(w) is None]
        hint = f"; window sizes that work: {valid}" if valid else "; change img_size or patch_size"
        raise ConfigError(f"swin: img_size {img_size}, patch_size {patch_size}: {reason}{hint}")


@register_model("vit", presets=VIT_PRESETS)
def create_vit(
    preset: str = "base",
    img_size: int | tuple[int, int] = 64,
    patch_size: int | None = None,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    mlp_ratio: float | None = None,
    drop_path_rate: float = 0.0,
    pretrained: bool = False,
    pretrained_path: str | None = None,
) -> SideBySideClassifier:
    """ViT baseline on the (S, 2S) side-by-side ROI pair; ``base`` = vit_base_patch16 dimensions."""
    overrides = {
        "patch_size": patch_size,
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": num_heads,
        "mlp_ratio": mlp_ratio,
    }
    img_size = square_side(img_size, "vit")
    cfg = resolve_preset(VIT_PRESETS, preset, overrides)
    _check_weights_args(preset, pretrained, pretrained_path, overrides)
    if img_size % cfg["patch_size"]:
        raise ConfigError(f"vit: img_size {img_size} is not a multiple of patch_size {cfg['patch_size']}")
    if cfg["embed_dim"] % cfg["num_heads"]:
        raise ConfigError(f"vit: num_heads {cfg['num_heads']} must divide embed_dim {cfg['embed_dim']}")
    common = {"img_size": (img_size, 2 * img_size), "in_chans": 1, "num_classes": 1, "drop_path_rate": drop_path_rate}
    if pretrained:
        net = timm.create_model(VIT_HUB_NAME, pretrained=True, **common)
    else:
        net = timm_vit.VisionTransformer(**cfg, **common)
        if pretrained_path is not None:
            load_local_weights(net, pretrained_path, timm_vit.checkpoint_filter_fn, "head.")
    return SideBySideClassifier(net)


@register_model("swin", presets=SWIN_PRESETS)
def create_swin(
    preset: str = "base",
    img_size: int | tuple[int, int] = 64,
    patch_size: int | None = None,
    window_size: int | None = None,
    embed_dim: int | None = None,
    depths: Sequence[int] | None = None,
    num_heads: Sequence[int] | None = None,
    mlp_ratio: float | None = None,
    drop_path_rate: float = 0.0,
    pretrained: bool = False,
    pretrained_path: str | None = None,
) -> SideBySideClassifier:
    """Swin baseline on the (S, 2S) side-by-side ROI pair; ``base`` = swin_tiny dimensions with window 8.

    At S=64 with patch 4 the stage grids are 16x32, 8x16, 4x8, 2x4, so windows 4 and 8 tile them
    (the paper-scale window 7 does not); the combination is checked up front.
    """
    overrides = {
        "patch_size": patch_size,
        "window_size": window_size,
        "embed_dim": embed_dim,
        "depths": depths,
        "num_heads": num_heads,
        "mlp_ratio": mlp_ratio,
    }
    img_size = square_side(img_size, "swin")
    cfg = resolve_preset(SWIN_PRESETS, preset, overrides)
    # hub weights fit any window: timm's filter resamples the relative-position tables
    size_overrides = {k: v for k, v in overrides.items() if k != "window_size"}
    _check_weights_args(preset, pretrained, pretrained_path, size_overrides)
    cfg["depths"], cfg["num_heads"] = tuple(cfg["depths"]), tuple(cfg["num_heads"])
    if len(cfg["depths"]) != len(cfg["num_heads"]):
        raise ConfigError(f"swin: depths {cfg['depths']} and num_heads {cfg['num_heads']} differ in length")
    for stage, heads in enumerate(cfg["num_heads"]):
        if (cfg["embed_dim"] * 2**stage) % heads:
            width = cfg["embed_dim"] * 2**stage
            raise ConfigError(f"swin: stage {stage} width {width} is not divisible by {heads} heads")
    check_swin_grid(img_size, cfg["patch_size"], cfg["window_size"], len(cfg["depths"]))
    common = {"img_size": (img_size, 2 * img_size), "in_chans": 1, "num_classes": 1, "drop_path_rate": drop_path_rate}
    if pretrained:
        net = timm.create_model(SWIN_HUB_NAME, pretrained=True, window_size=cfg["window_size"], **common)
    else:
        net = timm_swin.SwinTransformer(**cfg, **common)
        if pretrained_path is not None:
            load_local_weights(net, pretrained_path, timm_swin.checkpoint_filter_fn, "head.fc.")
    return SideBySideClassifier(net)
