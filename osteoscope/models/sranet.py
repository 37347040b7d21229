"""SRANet (seed ``sranet-avnfh-ct.md``): a 3-D CT box cut into P^3 patches, a shared patch CNN, gated
attention with the min-shift normalisation of Eq. 7, and structure-regularised patch scores.

What the seed states: P x P x P non-overlapping patches (P=4 of 32^3 at 128^3), taken in the public loader's
order (depth outer, then height, width inner); a two-block patch CNN of 5^3 convolutions, ReLU and max-pool
(Eq. 1-2); gated attention ``g_i = w^T (tanh(K h_i) * sigm(Q h_i))`` (Eq. 4-6) normalised by
``a_i = (g_i - min g) / sum_j (g_j - min g)`` (Eq. 7); the fused feature ``Z = sum_i a_i h_i`` (Eq. 3) and a
classifier on it (Eq. 9); per patch a structure score q_i whose sigmoid is pushed towards f_i, 1 where the
patch overlaps the coarse bone mask (Eq. 8-11).

What it leaves open, chosen here and made parameters:

* the widths: AttentionDeepMIL's (20 and 50 channels, M=500, L=128), the code the authors' loader points to
  (``channels``, ``embed_dim``, ``attention_dim``);
* after the two blocks, a linear layer to M with ReLU, as in AttentionDeepMIL;
* normalisation in the patch CNN (``norm``): Eq. 1-2 show none, and without it the CNN stalls on the CT
  phantom (the ReLUs die or the classification loss stays at ln 2: validation AUC 0.50-0.76 over learning
  rates 1e-4 to 1e-3 on 48^3 boxes, against 0.92-0.96 with it), so ``"batch"`` (default) puts a batch norm
  between each convolution and its ReLU; ``"none"`` is the equations as printed;
* the classifier of Eq. 9: one linear layer on Z (``num_classes`` logits, so the ARCO-stage head works too);
* q_i (``structure_score``): ``"gate"`` (default) uses g_i itself, so the regulariser shapes the very scores
  the attention is made of; ``"head"`` adds a separate linear score on the gated features;
* the all-equal case of Eq. 7 (every g_i the same, so the denominator is 0): the weights are uniform, 1/N,
  which is the limit of Eq. 7 with g perturbed by equal noise, and keeps Z a mean of the patches;
* ``encoder="resnet"`` (seed Table III): a small 3-D ResNet (MONAI, basic blocks) per patch instead of the
  two blocks, its pooled feature projected to M.

``forward(image, mask=None)`` returns ``logits``, ``maps["attention"]`` (B, 1, P, P, P) and in ``aux`` the
structure scores (B, N) and, when a mask is given, their targets f (B, N); masks are needed for training only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from osteoscope.errors import ConfigError
from osteoscope.models.registry import register_model, resolve_preset, volume_size

SRANET_PRESETS: dict[str, dict[str, object]] = {
    "base": {"channels": (20, 50), "embed_dim": 500, "attention_dim": 128},  # AttentionDeepMIL's widths
    "small": {"channels": (10, 25), "embed_dim": 250, "attention_dim": 64},  # half of base: CPU studies
    "tiny": {"channels": (4, 8), "embed_dim": 32, "attention_dim": 16},
}
STRUCTURE_SCORES = ("gate", "head")
ENCODERS = ("cnn", "resnet")
NORMS = ("batch", "none")


def to_patches(volume: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, C, D, H, W) -> (B, N, C, d, h, w) with N = grid^3, in depth-outer, width-inner order."""
    b, c, d, h, w = volume.shape
    if d % grid or h % grid or w % grid:
        raise ConfigError(f"sranet: input {d}x{h}x{w} does not split into {grid}^3 equal patches")
    x = volume.reshape(b, c, grid, d // grid, grid, h // grid, grid, w // grid)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(b, grid**3, c, d // grid, h // grid, w // grid)


def patch_overlap(mask: torch.Tensor, grid: int) -> torch.Tensor:
    """f_i of Eq. 8: (B, N) 1.0 where patch i holds any mask voxel (> 0), else 0.0, in the patch order."""
    patches = to_patches((mask > 0).float(), grid)
    return patches.flatten(2).amax(dim=2)


def min_shift_weights(scores: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Eq. 7: ``a_i = (g_i - min g) / sum_j (g_j - min g)`` over the last axis; uniform where all are equal."""
    shifted = scores - scores.amin(dim=-1, keepdim=True)
    total = shifted.sum(dim=-1, keepdim=True)
    uniform = torch.full_like(scores, 1.0 / scores.shape[-1])
    return torch.where(total > eps, shifted / total.clamp_min(eps), uniform)


class PatchCnn(nn.Module):
    """Eq. 1-2: two blocks of 5^3 convolution, (batch norm,) ReLU and 2^3 max-pool, then a linear layer to M
    with ReLU."""

    def __init__(self, in_chans: int, patch: int, channels: Sequence[int], embed_dim: int, norm: str) -> None:
        super().__init__()
        side = ((patch - 4) // 2 - 4) // 2
        if side < 1:
            raise ConfigError(f"sranet: a {patch}^3 patch is too small for two 5^3 convolutions and pools")
        layers: list[nn.Module] = []
        for cin, cout in zip((in_chans, *channels[:-1]), channels, strict=True):
            layers.append(nn.Conv3d(cin, cout, 5))
            if norm == "batch":
                layers.append(nn.BatchNorm3d(cout))
            layers += [nn.ReLU(inplace=True), nn.MaxPool3d(2)]
        self.blocks = nn.Sequential(*layers)
        c2 = channels[-1]
        self.project = nn.Sequential(nn.Flatten(), nn.Linear(c2 * side**3, embed_dim), nn.ReLU(inplace=True))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.project(self.blocks(patches))


class PatchResNet(nn.Module):
    """Table III's alternative: a 3-D ResNet-10 layout (MONAI, basic blocks, widths ``channels`` doubled per
    stage) per patch, globally pooled and projected to M with ReLU."""

    def __init__(self, in_chans: int, channels: Sequence[int], embed_dim: int) -> None:
        super().__init__()
        from monai.networks.nets import ResNet

        base = channels[0]
        self.net = ResNet(
            block="basic",
            layers=[1, 1, 1, 1],
            block_inplanes=[base, 2 * base, 4 * base, 8 * base],
            spatial_dims=3,
            n_input_channels=in_chans,
            conv1_t_size=3,
            conv1_t_stride=1,
            feed_forward=False,
        )
        self.project = nn.Sequential(nn.Linear(8 * base, embed_dim), nn.ReLU(inplace=True))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.project(self.net(patches))


class SraNet(nn.Module):
    """SRANet; see the module docstring for what follows the seed and what is chosen."""

    def __init__(
        self,
        in_chans: int,
        num_classes: int,
        img_size: tuple[int, int, int],
        grid: int,
        channels: Sequence[int],
        embed_dim: int,
        attention_dim: int,
        encoder: str,
        structure_score: str,
        norm: str,
        drop_rate: float,
    ) -> None:
        super().__init__()
        if any(side % grid for side in img_size):
            raise ConfigError(f"sranet: img_size {list(img_size)} is not a multiple of the patch grid {grid}")
        if len(set(img_size)) != 1:
            raise ConfigError(f"sranet: cubic input expected (the seed's 128^3), got {list(img_size)}")
        if encoder not in ENCODERS:
            raise ConfigError(f"sranet: encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")
        if structure_score not in STRUCTURE_SCORES:
            raise ConfigError(f"sranet: structure_score must be one of {', '.join(STRUCTURE_SCORES)}")
        if norm not in NORMS:
            raise ConfigError(f"sranet: norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if len(channels) != 2:
            raise ConfigError(f"sranet: channels are the two blocks' widths, got {list(channels)}")
        self.grid = grid
        patch = img_size[0] // grid
        if encoder == "cnn":
            self.encoder: nn.Module = PatchCnn(in_chans, patch, channels, embed_dim, norm)
        else:
            self.encoder = PatchResNet(in_chans, channels, embed_dim)
        self.key = nn.Linear(embed_dim, attention_dim)  # K of Eq. 4 (tanh)
        self.query = nn.Linear(embed_dim, attention_dim)  # Q of Eq. 5 (sigmoid)
        self.score = nn.Linear(attention_dim, 1)  # w of Eq. 6
        self.structure = nn.Linear(attention_dim, 1) if structure_score == "head" else None
        self.classifier = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(embed_dim, num_classes))

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, object]:
        b = image.shape[0]
        patches = to_patches(image, self.grid)  # (B, N, C, p, p, p)
        n = patches.shape[1]
        h = self.encoder(patches.flatten(0, 1)).view(b, n, -1)  # (B, N, M)
        gated = torch.tanh(self.key(h)) * torch.sigmoid(self.query(h))  # Eq. 4-6
        g = self.score(gated).squeeze(-1)  # (B, N)
        a = min_shift_weights(g)  # Eq. 7
        z = torch.einsum("bn,bnm->bm", a, h)  # Eq. 3
        q = g if self.structure is None else self.structure(gated).squeeze(-1)
        aux: dict[str, torch.Tensor] = {"structure_logits": q}
        if mask is not None:
            aux["structure_targets"] = patch_overlap(mask, self.grid)
        maps = {"attention": a.view(b, 1, self.grid, self.grid, self.grid)}
        return {"logits": self.classifier(z), "maps": maps, "aux": aux}


@register_model("sranet", presets=SRANET_PRESETS)
def create_sranet(
    preset: str = "base",
    in_chans: int = 1,
    num_classes: int = 1,
    img_size: int | Sequence[int] = 128,
    grid: int = 4,
    channels: Sequence[int] | None = None,
    embed_dim: int | None = None,
    attention_dim: int | None = None,
    encoder: str = "cnn",
    structure_score: str = "gate",
    norm: str = "batch",
    drop_rate: float = 0.0,
) -> SraNet:
    """SRANet with ``grid``^3 patches (P of the seed); the widths override the preset."""
    size = volume_size(img_size, "sranet")
    cfg = resolve_preset(
        SRANET_PRESETS, preset, {"channels": channels, "embed_dim": embed_dim, "attention_dim": attention_dim}
    )
    return SraNet(
        in_chans, num_classes, size, grid, encoder=encoder, structure_score=structure_score, norm=norm,
        drop_rate=drop_rate, **cfg,
    )  # fmt: skip
