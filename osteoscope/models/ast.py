"""AsT, the Asymmetric-Sensitive Transformer for ONFH on plain radiographs (Chen et al., AAAI-23).

The paper is a two-page student abstract without code, so every layer size here is a choice.
Pipeline, for the patient's left and right femoral-head ROIs (the right one already mirrored by
the data layer so both heads face the same way):

1. Shared conv block 1 (stride 4) on each ROI → F_out1.
2. Spatial attention (Eq. 1–2): ``M_s = sigmoid(Conv(AvgPool_c(F_out1)))``, ``F_in2 = F_out1 · M_s``.
3. Shared conv block 2 (stride 2) → F_L, F_R: the features the difference loss (Eq. 3) acts on.
4. Patch embedding of each feature map (a ``patch_size``-strided conv; 1 = one token per position,
   a linear map of the channel vector), a learned position embedding shared by both sides (the same
   anatomical location gets the same code because the right ROI is mirrored) and a learned side
   embedding.
5. Attention-sharing transformer. The abstract does not define "attention sharing"; here it means
   one stack of transformer blocks whose weights (so Q/K/V projections) are shared by both sides and
   which runs over the single sequence ``[CLS, left tokens, right tokens]``, so each side's queries
   attend to the other side's keys. ``sharing="joint"`` lets every token attend to every token;
   ``sharing="cross"`` lets side tokens attend only to CLS and the other side's tokens (CLS attends to
   all), forcing every update of a side to be a comparison with its partner.
6. Patient head on CLS, concatenated with ``|mean_L − mean_R|`` of the final tokens when ``diff_head``;
   one per-side head, shared by both sides, on each side's mean token.

Symmetry: without the side embedding the model is exactly equivariant to swapping the inputs
(``side_logits`` swap, ``logits`` stay). With it, the only left/right asymmetry is the two side
embedding vectors; swapping inputs and those vectors together gives the swapped outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from osteoscope.errors import ConfigError
from osteoscope.models.layers import ConvBlock, SpatialAttention
from osteoscope.models.registry import register_model, resolve_preset, square_side

SHARING_MODES = ("joint", "cross")
FEATURE_STRIDE = 8

AST_PRESETS: dict[str, dict[str, object]] = {
    "tiny": {"conv_channels": (8, 16), "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0, "patch_size": 1},
    "small": {
        "conv_channels": (16, 32),
        "embed_dim": 64,
        "depth": 2,
        "num_heads": 4,
        "mlp_ratio": 2.0,
        "patch_size": 1,
    },
    "base": {
        "conv_channels": (64, 128),
        "embed_dim": 384,
        "depth": 6,
        "num_heads": 6,
        "mlp_ratio": 4.0,
        "patch_size": 1,
    },
}


class AsT(nn.Module):
    """Bilateral ONFH classifier: shared conv + spatial attention per side, then a shared transformer.

    Args:
        img_size: Side S of each square ROI; must be a multiple of ``8 * patch_size``.
        conv_channels: Output channels of conv blocks 1 and 2.
        embed_dim: Token width of the transformer.
        depth: Number of transformer blocks.
        num_heads: Attention heads; must divide ``embed_dim``.
        mlp_ratio: Hidden width of the block MLPs relative to ``embed_dim``.
        patch_size: Side of the patches the conv features are cut into to make tokens.
        sam_kernel: Kernel size of the spatial attention convolution (odd).
        sharing: ``"joint"`` or ``"cross"`` attention over the two sides (see the module docstring).
        side_embed: Add a learned side embedding to the tokens of each side.
        diff_head: Feed ``|mean_L − mean_R|`` of the final tokens to the patient head besides CLS.
        drop_path_rate: Stochastic depth rate, increasing linearly over the blocks.
    """

    def __init__(
        self,
        img_size: int = 64,
        conv_channels: Sequence[int] = (16, 32),
        embed_dim: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        patch_size: int = 1,
        sam_kernel: int = 7,
        sharing: str = "joint",
        side_embed: bool = True,
        diff_head: bool = True,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(conv_channels) != 2:
            raise ConfigError(f"conv_channels needs two values (blocks 1 and 2), got {tuple(conv_channels)}")
        if img_size % (FEATURE_STRIDE * patch_size):
            raise ConfigError(
                f"img_size {img_size} must be a multiple of {FEATURE_STRIDE * patch_size} "
                f"(conv stride {FEATURE_STRIDE} × patch_size {patch_size})"
            )
        if embed_dim % num_heads:
            raise ConfigError(f"num_heads {num_heads} must divide embed_dim {embed_dim}")
        if sharing not in SHARING_MODES:
            raise ConfigError(f"unknown sharing {sharing!r}; choose one of: {', '.join(SHARING_MODES)}")
        c1, c2 = conv_channels
        self.img_size = img_size
        self.sharing = sharing
        self.diff_head = diff_head
        self.block1 = ConvBlock(1, c1, stride=2)
        self.sam = SpatialAttention(sam_kernel)
        self.block2 = ConvBlock(c1, c2)
        self.patch_embed = nn.Conv2d(c2, embed_dim, kernel_size=patch_size, stride=patch_size)
        grid = img_size // FEATURE_STRIDE // patch_size
        self.grid_size = (grid, grid)
        self.num_patches = grid * grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim))
        self.side_embed = nn.Parameter(torch.zeros(1, 2, embed_dim)) if side_embed else None
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # also under a meta device
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=r) for r in rates
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim * (2 if diff_head else 1), 1)
        self.side_head = nn.Linear(embed_dim, 1)
        self.register_buffer("attn_mask", self._build_mask(), persistent=False)
        self._init_weights()

    def _build_mask(self) -> torch.Tensor | None:
        """Boolean (N, N) mask, True = may attend, for ``sharing="cross"``; None for joint attention."""
        if self.sharing == "joint":
            return None
        n = self.num_patches
        side = torch.cat([torch.zeros(1), torch.ones(n), torch.full((n,), 2.0)])
        cls_q = side[:, None] == 0
        cls_k = side[None, :] == 0
        other = side[:, None] * side[None, :] == 2  # left query × right key or the reverse
        return cls_q | cls_k | other

    def _init_weights(self) -> None:
        """Truncated-normal init of embeddings and linear layers, as in timm's ViT."""
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        if self.side_embed is not None:
            trunc_normal_(self.side_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward_features(self, left: torch.Tensor, right: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run both ROIs (B, 1, S, S) through the shared conv stages and the shared transformer.

        Returns:
            ``cls`` (B, D), ``tokens_left``/``tokens_right`` (B, N, D) after the final norm,
            ``feat_left``/``feat_right`` (B, C2, S/8, S/8) and ``attn_left``/``attn_right`` (B, 1, S/4, S/4).
        """
        if left.shape != right.shape:
            raise ValueError(f"left and right ROI shapes differ: {tuple(left.shape)}, {tuple(right.shape)}")
        b = left.shape[0]
        x, attn = self.sam(self.block1(torch.cat([left, right], dim=0)))
        feat = self.block2(x)
        tokens = self.patch_embed(feat).flatten(2).transpose(1, 2) + self.pos_embed
        tok_l, tok_r = tokens.chunk(2)
        if self.side_embed is not None:
            tok_l = tok_l + self.side_embed[:, :1]
            tok_r = tok_r + self.side_embed[:, 1:]
        seq = torch.cat([self.cls_token.expand(b, -1, -1), tok_l, tok_r], dim=1)
        for blk in self.blocks:
            seq = blk(seq, attn_mask=self.attn_mask)
        seq = self.norm(seq)
        n = self.num_patches
        feat_l, feat_r = feat.chunk(2)
        attn_l, attn_r = attn.chunk(2)
        return {
            "cls": seq[:, 0],
            "tokens_left": seq[:, 1 : 1 + n],
            "tokens_right": seq[:, 1 + n :],
            "feat_left": feat_l,
            "feat_right": feat_r,
            "attn_left": attn_l,
            "attn_right": attn_r,
        }

    def forward_head(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Patient logit (B,) from CLS (and |mean_L − mean_R|) and per-side logits (B, 2) [left, right]."""
        mean_l = features["tokens_left"].mean(dim=1)
        mean_r = features["tokens_right"].mean(dim=1)
        pooled = features["cls"]
        if self.diff_head:
            pooled = torch.cat([pooled, (mean_l - mean_r).abs()], dim=-1)
        side = torch.cat([self.side_head(mean_l), self.side_head(mean_r)], dim=-1)
        return {"logits": self.head(pooled).squeeze(-1), "side_logits": side}

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
        """Return ``logits`` (B,), ``side_logits`` (B, 2), ``maps`` with the spatial attention of each side
        (``attn_left``/``attn_right``, (B, 1, S/4, S/4), in ROI orientation: the right one is mirrored) and
        ``aux`` with the features the difference loss compares (``feat_left``/``feat_right``)."""
        features = self.forward_features(left, right)
        out: dict[str, torch.Tensor | dict[str, torch.Tensor]] = dict(self.forward_head(features))
        out["maps"] = {"attn_left": features["attn_left"], "attn_right": features["attn_right"]}
        out["aux"] = {"feat_left": features["feat_left"], "feat_right": features["feat_right"]}
        return out


@register_model("ast", presets=AST_PRESETS)
def create_ast(
    preset: str = "base",
    img_size: int | tuple[int, int] = 64,
    conv_channels: Sequence[int] | None = None,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    mlp_ratio: float | None = None,
    patch_size: int | None = None,
    sam_kernel: int = 7,
    sharing: str = "joint",
    side_embed: bool = True,
    diff_head: bool = True,
    drop_path_rate: float = 0.0,
) -> AsT:
    """Build AsT from a size preset (``tiny``, ``small``, ``base``); explicit size arguments override it."""
    sizes = resolve_preset(
        AST_PRESETS,
        preset,
        {
            "conv_channels": conv_channels,
            "embed_dim": embed_dim,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_ratio": mlp_ratio,
            "patch_size": patch_size,
        },
    )
    return AsT(
        img_size=square_side(img_size, "ast"),
        sam_kernel=sam_kernel,
        sharing=sharing,
        side_embed=side_embed,
        diff_head=diff_head,
        drop_path_rate=drop_path_rate,
        **sizes,
    )
