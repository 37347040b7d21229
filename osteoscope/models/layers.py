"""Small building blocks shared by the osteoscope models."""

from __future__ import annotations

import torch
from torch import nn

from osteoscope.errors import ConfigError


class SpatialAttention(nn.Module):
    """AsT spatial attention module (SAM), Eq. 1–2 of Chen et al., AAAI-23.

    ``M_s = sigmoid(Conv(AvgPool_c(F)))`` and ``F' = F · M_s``. The pooling is a mean over channels
    only; this is deliberately not CBAM's spatial attention, which also concatenates a channel max.
    The convolution has no bias, as in Eq. 1.

    Args:
        kernel_size: Odd side of the square convolution kernel (7 in CBAM-style modules).
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"spatial attention kernel_size must be positive and odd, got {kernel_size}")
        self.conv = nn.Conv2d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reweight ``x`` (B, C, H, W) and return it with the attention map M_s (B, 1, H, W)."""
        attn = torch.sigmoid(self.conv(x.mean(dim=1, keepdim=True)))
        return x * attn, attn


def conv_bn_relu(in_chans: int, out_chans: int, convs: int = 1, spatial_dims: int = 2) -> list[nn.Module]:
    """``convs`` times (3x3 or 3^3 convolution without bias, batch norm, ReLU), size-preserving: the VGG unit,
    as a flat list so a caller can put it in its own ``nn.Sequential``; the first takes ``in_chans``."""
    conv, norm = (nn.Conv2d, nn.BatchNorm2d) if spatial_dims == 2 else (nn.Conv3d, nn.BatchNorm3d)
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [conv(in_chans if i == 0 else out_chans, out_chans, 3, padding=1, bias=False), norm(out_chans)]
        layers.append(nn.ReLU(inplace=True))
    return layers


class ConvBlock(nn.Module):
    """Two 3×3 conv–BN–ReLU layers then 2×2 max pooling.

    Args:
        in_chans: Input channels.
        out_chans: Output channels.
        stride: Stride of the first convolution; 2 makes the block reduce the side by 4 in all.
    """

    def __init__(self, in_chans: int, out_chans: int, stride: int = 1) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_chans, out_chans, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_chans),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_chans),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, in_chans, H, W) to (B, out_chans, H / (2·stride), W / (2·stride))."""
        return self.layers(x)
