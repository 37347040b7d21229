"""3-D baselines of SRANet's Table II that MONAI does not provide: a VGG-style CNN and an MLP-Mixer.

The seed names the baselines but publishes none of their sizes, so both follow their 2-D originals with
every convolution, pooling and token grid made 3-D, and three presets each: ``base`` (about the size of the
2-D original's smallest member), ``small`` (half its widths, for CPU studies) and ``tiny`` (for tests). The other
baselines are MONAI's: ``monai:ViT`` (ViT 3-D) and ``monai:resnet10`` (3-D ResNet).

Both take the model contract's ``image`` (B, C, D, H, W) and return ``{"logits": (B, num_classes)}``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from osteoscope.errors import ConfigError
from osteoscope.models.layers import conv_bn_relu
from osteoscope.models.registry import register_model, resolve_preset, volume_size

VGG3D_PRESETS: dict[str, dict[str, object]] = {
    # VGG-11's first four stages (1, 1, 2, 2 convolutions) at a quarter of its widths: a 128^3 input has
    # about 40x the voxels of VGG's 224^2 pixels, so full widths would not fit one GPU at batch 2.
    "base": {"widths": (16, 32, 64, 128), "convs": (1, 1, 2, 2)},
    "small": {"widths": (8, 16, 32, 64), "convs": (1, 1, 2, 2)},
    "tiny": {"widths": (4, 8), "convs": (1, 1)},
}

MIXER3D_PRESETS: dict[str, dict[str, object]] = {
    # Mixer-S/16's depth and token MLP at half its width; 16^3 patches give 512 tokens at 128^3.
    "base": {"patch_size": 16, "dim": 256, "depth": 8, "token_mlp": 256, "channel_mlp": 1024},
    "small": {"patch_size": 16, "dim": 128, "depth": 4, "token_mlp": 128, "channel_mlp": 512},
    "tiny": {"patch_size": 8, "dim": 16, "depth": 2, "token_mlp": 16, "channel_mlp": 32},
}


class Vgg3d(nn.Module):
    """VGG-style 3-D CNN: stages of (3^3 conv, batch norm, ReLU) x n, each closed by a 2^3 max-pool, then a
    global average pool and a linear classifier (instead of VGG's three dense layers, which at 128^3 would
    hold most of the parameters)."""

    def __init__(
        self, in_chans: int, num_classes: int, widths: Sequence[int], convs: Sequence[int], drop_rate: float
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_chans
        for width, n in zip(widths, convs, strict=True):
            layers += [*conv_bn_relu(cin, width, n, spatial_dims=3), nn.MaxPool3d(2)]
            cin = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Dropout(drop_rate), nn.Linear(cin, num_classes)
        )

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.head(self.features(image))}


class _MixerBlock(nn.Module):
    """Token mixing (an MLP across the patches, per channel) then channel mixing (per patch), pre-norm."""

    def __init__(self, tokens: int, dim: int, token_mlp: int, channel_mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token = nn.Sequential(nn.Linear(tokens, token_mlp), nn.GELU(), nn.Linear(token_mlp, tokens))
        self.norm2 = nn.LayerNorm(dim)
        self.channel = nn.Sequential(nn.Linear(dim, channel_mlp), nn.GELU(), nn.Linear(channel_mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel(self.norm2(x))


class Mixer3d(nn.Module):
    """MLP-Mixer on non-overlapping 3-D patches (a strided 3-D convolution embeds each), mean over the
    tokens, then a linear classifier."""

    def __init__(
        self,
        in_chans: int,
        num_classes: int,
        img_size: tuple[int, int, int],
        patch_size: int,
        dim: int,
        depth: int,
        token_mlp: int,
        channel_mlp: int,
    ) -> None:
        super().__init__()
        if any(side % patch_size for side in img_size):
            raise ConfigError(f"mixer3d: img_size {list(img_size)} is not a multiple of patch_size {patch_size}")
        tokens = math.prod(side // patch_size for side in img_size)
        self.embed = nn.Conv3d(in_chans, dim, patch_size, stride=patch_size)
        self.blocks = nn.Sequential(*(_MixerBlock(tokens, dim, token_mlp, channel_mlp) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.embed(image).flatten(2).transpose(1, 2)  # (B, tokens, dim)
        return {"logits": self.head(self.norm(self.blocks(x)).mean(1))}


@register_model("vgg3d", presets=VGG3D_PRESETS)
def create_vgg3d(
    preset: str = "base",
    in_chans: int = 1,
    num_classes: int = 1,
    img_size: int | Sequence[int] = 128,
    widths: Sequence[int] | None = None,
    convs: Sequence[int] | None = None,
    drop_rate: float = 0.3,
) -> Vgg3d:
    """VGG-style 3-D baseline (SRANet Table II); ``widths``/``convs`` override the preset per stage."""
    size = volume_size(img_size, "vgg3d")
    cfg = resolve_preset(VGG3D_PRESETS, preset, {"widths": widths, "convs": convs})
    if len(cfg["widths"]) != len(cfg["convs"]):
        raise ConfigError("vgg3d: widths and convs need one entry per stage")
    if min(size) < 2 ** len(cfg["widths"]):
        raise ConfigError(f"vgg3d: img_size {list(size)} is too small for {len(cfg['widths'])} pooling stages")
    return Vgg3d(in_chans, num_classes, cfg["widths"], cfg["convs"], drop_rate)


@register_model("mixer3d", presets=MIXER3D_PRESETS)
def create_mixer3d(
    preset: str = "base",
    in_chans: int = 1,
    num_classes: int = 1,
    img_size: int | Sequence[int] = 128,
    patch_size: int | None = None,
    dim: int | None = None,
    depth: int | None = None,
    token_mlp: int | None = None,
    channel_mlp: int | None = None,
) -> Mixer3d:
    """MLP-Mixer 3-D baseline (SRANet Table II); the keyword arguments override the preset."""
    overrides = {
        "patch_size": patch_size,
        "dim": dim,
        "depth": depth,
        "token_mlp": token_mlp,
        "channel_mlp": channel_mlp,
    }
    cfg = resolve_preset(MIXER3D_PRESETS, preset, overrides)
    return Mixer3d(in_chans, num_classes, volume_size(img_size, "mixer3d"), **cfg)
