"""MR attention fusion (seed ``attention-fusion-onfh-mr-staging.md``, Med Phys 2023;50:5528): ARCO I-IV staging
from five MR protocols, with intra-modality attention inside each protocol's features, inter-modality attention
across the protocols, and an encoder pretrained by self-supervised MR -> CT translation.

What the seed states: five protocols (T1, T2, PD fat-sat, STIR, T1 fat-sat), fused by intra-modality then
inter-modality attention; a VGG network as the plain baseline; the encoder of an MR -> CT translation network
initialises the staging network; four-way ARCO staging. Only the abstract is public: no layer, formula, input
size or hyperparameter. Every layer below is therefore a choice, and a parameter of ``create_model``:

* **per-protocol encoder** (always the attribute ``encoder``): VGG-style 2-D stages of (3x3 conv without bias,
  batch norm, ReLU) x ``convs[i]`` at ``widths[i]`` channels, each stage after the first opened by a 2x2
  max-pool, as the seed's VGG baseline. VGG's pool after its last stage is dropped, so the attention sees the
  last convolution's map (4x4 at 64x64 for ``base``) and the translator gets one skip per stage at strides 1,
  2, 4, ... . ``base`` is VGG-16's 13 convolutions (64-512); ``small`` (16-128, four stages) is for CPU studies
  at 64x64; ``tiny`` for tests;
* ``shared_encoder`` (default True): one encoder for every protocol; False gives each protocol its own, held
  as ``encoder.nets.<i>`` of the same module, so the ``encoder.`` keys still match between the two stages;
* only present protocols are encoded: a missing protocol (``present`` False) never enters a convolution or a
  batch-norm statistic, so its pixels cannot change any output;
* **intra-modality attention** (``intra``): ``"channel"`` is squeeze-excitation (global mean, a bottleneck of
  ``channels // se_reduction``, sigmoid gates per channel), ``"spatial"`` is CBAM's spatial attention (channel
  mean and max, a ``spatial_kernel`` conv, sigmoid gates per position), ``"both"`` (default) is the two in
  CBAM's order, channel then spatial; ``"none"`` for the ablation. One module serves all protocols (a few
  hundred weights; the protocol's identity enters in the fusion);
* **protocol embedding**: global ``pool`` (``"avg"``, default, or ``"max"``) of the attended map, then a linear
  layer to ``embed_dim``;
* **inter-modality attention** (``fusion="attention"``, default): a learned embedding per protocol added
  (``protocol_embedding``; without it a shared encoder cannot tell the protocols apart), one pre-norm
  multi-head self-attention layer (``heads``, ``attn_drop``) across the protocols with a residual, a layer
  norm, then attention pooling: a linear key per protocol scored against one learned query (zero at the
  start, so training starts from the mean over the present protocols), a softmax over the protocols giving
  ``maps["protocol_weights"]`` (B, P) and the fused vector as the weighted sum. A missing protocol is a
  padded key of the self-attention and gets -inf before the pooling's softmax: it is masked, never fed as
  zeros, and its weight is exactly 0;
* ``fusion="mean"`` (the fusion ablation): the plain mean of the present protocols' embeddings; its weights
  are uniform over the present protocols. With a shared encoder this mean cannot tell which protocol showed
  what;
* **head**: dropout ``drop_rate`` (0.3, as the repository's VGG baselines) and one linear layer to
  ``num_classes`` (4: ARCO I-IV);
* **translator** (the pretext stage; built when the factory gets ``out_chans`` instead of ``num_classes``):
  the same ``encoder`` (same class and arguments, so same keys and shapes), each stage's maps fused over the
  present protocols by their mean (the masked mean: a missing protocol is neither counted nor fed), and a
  U-Net decoder: from the deepest map, per shallower stage bilinear upsampling to the skip's size,
  concatenation with the skip, ``decoder_convs`` 3x3 conv-BN-ReLU at the skip's width; then a 1x1 conv to
  ``out_chans`` at the input's size, linear (the loss decides). The translator ignores the classifier's
  options (``intra``, ``fusion`` ...), so one ``model.options`` block serves both stages, and a staging run
  starts from it with ``--init-from PRETEXT_RUN:encoder.``.

Both take ``image`` (B, P, C, H, W) (the task's ``data.options.stack: protocols``) and ``present`` (B, P) bool
(None: all present); a case with no protocol present is a ValueError.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from osteoscope.errors import ConfigError
from osteoscope.models.adapters import _check_task
from osteoscope.models.layers import conv_bn_relu
from osteoscope.models.registry import register_model, resolve_preset

MR_FUSION_PRESETS: dict[str, dict[str, object]] = {
    # VGG-16's convolutions (2, 2, 3, 3, 3 at 64-512), the seed's VGG baseline.
    "base": {"widths": (64, 128, 256, 512, 512), "convs": (2, 2, 3, 3, 3), "embed_dim": 256, "heads": 8},
    # A quarter of VGG's widths in four stages: an 8x8 last map at 64x64, for CPU studies.
    "small": {"widths": (16, 32, 64, 128), "convs": (1, 1, 2, 2), "embed_dim": 64, "heads": 4},
    "tiny": {"widths": (4, 8), "convs": (1, 1), "embed_dim": 16, "heads": 2},
}
INTRA = ("channel", "spatial", "both", "none")
FUSIONS = ("attention", "mean")
POOLS = ("avg", "max")


def check_inputs(image: torch.Tensor, present: torch.Tensor | None, num_protocols: int, in_chans: int) -> torch.Tensor:
    """Check ``image`` (B, P, C, H, W) and return ``present`` as a (B, P) bool tensor (all True when None).

    Raises:
        ConfigError: If the image is not stacked by protocol (the task's ``stack: channels``).
        ValueError: If ``present`` has another shape, or a case has no protocol present.
    """
    if image.ndim != 5 or image.shape[1] != num_protocols or image.shape[2] != in_chans:
        raise ConfigError(
            f"mr-fusion takes image (batch, {num_protocols} protocols, {in_chans}, H, W), got {tuple(image.shape)}; "
            "set data.options.stack: protocols"
        )
    if present is None:
        return torch.ones(image.shape[:2], dtype=torch.bool, device=image.device)
    if present.shape != image.shape[:2]:
        raise ValueError(
            f"mr-fusion: present must be (batch, protocols) {tuple(image.shape[:2])}, got {tuple(present.shape)}"
        )
    present = present.bool()
    empty = (~present.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"mr-fusion: case(s) {empty} of the batch have no protocol present; at least one is needed")
    return present


class VggEncoder(nn.Module):
    """One protocol's VGG-style 2-D encoder; ``forward`` returns every stage's map (strides 1, 2, 4, ...)."""

    def __init__(self, in_chans: int, widths: Sequence[int], convs: Sequence[int]) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        cin = in_chans
        for i, (width, n) in enumerate(zip(widths, convs, strict=True)):
            stages.append(nn.Sequential(*([nn.MaxPool2d(2)] if i else []), *conv_bn_relu(cin, width, n)))
            cin = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps


class ProtocolEncoder(nn.Module):
    """The ``encoder`` of both the stager and the translator: one :class:`VggEncoder` for all protocols
    (``shared``) or one per protocol, in ``nets``. Only present protocols are encoded; the maps of missing ones
    are zeros."""

    def __init__(
        self, num_protocols: int, in_chans: int, widths: Sequence[int], convs: Sequence[int], shared: bool
    ) -> None:
        super().__init__()
        self.nets = nn.ModuleList(VggEncoder(in_chans, widths, convs) for _ in range(1 if shared else num_protocols))

    def forward(self, image: torch.Tensor, present: torch.Tensor) -> list[torch.Tensor]:
        """(B, P, C, H, W) and (B, P) bool -> per stage (B, P, C_s, H_s, W_s), zeros where not present."""
        if len(self.nets) == 1:
            parts = [(present, self.nets[0](image[present]))]
        else:
            parts = []
            for i, net in enumerate(self.nets):
                if present[:, i].any():
                    selected = torch.zeros_like(present)
                    selected[:, i] = present[:, i]
                    parts.append((selected, net(image[selected])))
        out = []
        for stage in range(len(parts[0][1])):
            first = parts[0][1][stage]
            full = first.new_zeros(*present.shape, *first.shape[1:])
            for selected, maps in parts:
                full[selected] = maps[stage]
            out.append(full)
        return out


class ChannelAttention(nn.Module):
    """Squeeze-excitation: per-channel sigmoid gates from the channel means through a bottleneck."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.gate = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x.mean(dim=(2, 3)))[:, :, None, None]


class SpatialAttention(nn.Module):
    """CBAM's spatial attention: a sigmoid gate per position from a conv on the channel mean and max."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class InterModalityAttention(nn.Module):
    """Self-attention across the protocol embeddings, then attention pooling with a learned query; missing
    protocols are padded keys and get weight exactly 0."""

    def __init__(self, num_protocols: int, dim: int, heads: int, attn_drop: float, protocol_embedding: bool) -> None:
        super().__init__()
        self.protocol_embed = nn.Parameter(torch.randn(num_protocols, dim) * 0.02) if protocol_embedding else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=attn_drop, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.key = nn.Linear(dim, dim)
        self.query = nn.Parameter(torch.zeros(dim))  # zero: uniform weights at the start

    def forward(self, tokens: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P, D) and (B, P) bool -> fused (B, D) and weights (B, P)."""
        x = tokens if self.protocol_embed is None else tokens + self.protocol_embed
        h = self.norm1(x)
        x = self.norm2(x + self.attn(h, h, h, key_padding_mask=~present, need_weights=False)[0])
        scores = self.key(x) @ self.query / math.sqrt(x.shape[-1])
        weights = scores.masked_fill(~present, float("-inf")).softmax(dim=-1)
        fused = torch.einsum("bp,bpd->bd", weights, x.masked_fill(~present[..., None], 0.0))
        return fused, weights


class MrFusion(nn.Module):
    """The staging network; see the module docstring for each choice."""

    def __init__(
        self,
        num_protocols: int,
        in_chans: int,
        num_classes: int,
        widths: Sequence[int],
        convs: Sequence[int],
        embed_dim: int,
        heads: int,
        shared_encoder: bool,
        intra: str,
        se_reduction: int,
        spatial_kernel: int,
        pool: str,
        fusion: str,
        protocol_embedding: bool,
        attn_drop: float,
        drop_rate: float,
    ) -> None:
        super().__init__()
        self.num_protocols, self.in_chans, self.pool = num_protocols, in_chans, pool
        self.encoder = ProtocolEncoder(num_protocols, in_chans, widths, convs, shared_encoder)
        channels = widths[-1]
        layers: list[nn.Module] = []
        if intra in ("channel", "both"):
            layers.append(ChannelAttention(channels, se_reduction))
        if intra in ("spatial", "both"):
            layers.append(SpatialAttention(spatial_kernel))
        self.intra = nn.Sequential(*layers)
        self.embed = nn.Linear(channels, embed_dim)
        self.fusion = (
            InterModalityAttention(num_protocols, embed_dim, heads, attn_drop, protocol_embedding)
            if fusion == "attention"
            else None
        )
        self.head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(embed_dim, num_classes))

    def forward(self, image: torch.Tensor, present: torch.Tensor | None = None) -> dict[str, object]:
        """``image`` (B, P, C, H, W), ``present`` (B, P) -> ``logits`` (B, num_classes) and
        ``maps["protocol_weights"]`` (B, P)."""
        present = check_inputs(image, present, self.num_protocols, self.in_chans)
        last = self.encoder(image, present)[-1][present]  # (N present, C, h, w)
        attended = self.intra(last)
        pooled = attended.mean(dim=(2, 3)) if self.pool == "avg" else attended.amax(dim=(2, 3))
        embedded = self.embed(pooled)
        tokens = embedded.new_zeros(*present.shape, embedded.shape[-1])
        tokens[present] = embedded
        if self.fusion is None:
            weights = present.float() / present.sum(dim=1, keepdim=True)
            fused = torch.einsum("bp,bpd->bd", weights, tokens)
        else:
            fused, weights = self.fusion(tokens, present)
        return {"logits": self.head(fused), "maps": {"protocol_weights": weights}}


class MrFusionTranslator(nn.Module):
    """The MR -> CT pretext network: the stager's ``encoder``, a masked mean over protocols per stage, and a
    U-Net decoder to ``out_chans`` at the input's size."""

    def __init__(
        self,
        num_protocols: int,
        in_chans: int,
        out_chans: int,
        widths: Sequence[int],
        convs: Sequence[int],
        shared_encoder: bool,
        decoder_convs: int,
    ) -> None:
        super().__init__()
        self.num_protocols, self.in_chans = num_protocols, in_chans
        self.encoder = ProtocolEncoder(num_protocols, in_chans, widths, convs, shared_encoder)
        blocks = []
        for i in reversed(range(len(widths) - 1)):
            blocks.append(nn.Sequential(*conv_bn_relu(widths[i + 1] + widths[i], widths[i], decoder_convs)))
        self.decoder = nn.ModuleList(blocks)
        self.out = nn.Conv2d(widths[0], out_chans, 1)

    def forward(self, image: torch.Tensor, present: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``image`` (B, P, C, H, W), ``present`` (B, P) -> ``logits`` (B, out_chans, H, W)."""
        present = check_inputs(image, present, self.num_protocols, self.in_chans)
        count = present.sum(dim=1).view(-1, 1, 1, 1).float()
        fused = [maps.sum(dim=1) / count for maps in self.encoder(image, present)]  # missing maps are zeros
        x = fused[-1]
        for block, skip in zip(self.decoder, reversed(fused[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return {"logits": self.out(x)}


def _choice(name: str, value: str, options: Sequence[str]) -> None:
    if value not in options:
        raise ConfigError(f"mr-fusion: {name} must be one of {', '.join(options)}, got {value!r}")


@register_model("mr-fusion", presets=MR_FUSION_PRESETS)
def create_mr_fusion(
    preset: str = "base",
    in_chans: int = 1,
    num_classes: int | None = None,
    out_chans: int | None = None,
    img_size: int | Sequence[int] = 64,
    spatial_dims: int = 2,
    num_protocols: int = 5,
    widths: Sequence[int] | None = None,
    convs: Sequence[int] | None = None,
    embed_dim: int | None = None,
    heads: int | None = None,
    shared_encoder: bool = True,
    intra: str = "both",
    se_reduction: int = 4,
    spatial_kernel: int = 7,
    pool: str = "avg",
    fusion: str = "attention",
    protocol_embedding: bool = True,
    attn_drop: float = 0.0,
    drop_rate: float = 0.3,
    decoder_convs: int = 2,
) -> nn.Module:
    """The MR attention-fusion stager (``num_classes``, default 4), or with ``out_chans`` its MR -> CT
    translator around the same ``encoder``; the widths override the preset."""
    _check_task(num_classes, out_chans)
    if spatial_dims != 2:
        raise ConfigError(f"mr-fusion is a 2-D network (the seed's VGG setting), got spatial_dims={spatial_dims}")
    size = [img_size] * 2 if isinstance(img_size, int) else [int(s) for s in img_size]
    if len(size) != 2:
        raise ConfigError(f"mr-fusion takes 2-D inputs: img_size S or (H, W), got {size}")
    cfg = resolve_preset(
        MR_FUSION_PRESETS, preset, {"widths": widths, "convs": convs, "embed_dim": embed_dim, "heads": heads}
    )
    if len(cfg["widths"]) != len(cfg["convs"]) or min(cfg["convs"]) < 1:
        raise ConfigError("mr-fusion: widths and convs need one entry per stage, each stage at least one conv")
    if min(size) < 2 ** (len(cfg["widths"]) - 1):
        raise ConfigError(f"mr-fusion: img_size {size} is too small for {len(cfg['widths'])} stages")
    if out_chans is not None:
        if decoder_convs < 1:
            raise ConfigError(f"mr-fusion: decoder_convs must be at least 1, got {decoder_convs}")
        return MrFusionTranslator(
            num_protocols, in_chans, out_chans, cfg["widths"], cfg["convs"], shared_encoder, decoder_convs
        )
    _choice("intra", intra, INTRA)
    _choice("fusion", fusion, FUSIONS)
    _choice("pool", pool, POOLS)
    if se_reduction < 1 or spatial_kernel % 2 == 0:
        raise ConfigError(
            f"mr-fusion: se_reduction must be >= 1 and spatial_kernel odd, got {se_reduction}, {spatial_kernel}"
        )
    if cfg["embed_dim"] % cfg["heads"]:
        raise ConfigError(f"mr-fusion: embed_dim {cfg['embed_dim']} is not a multiple of heads {cfg['heads']}")
    return MrFusion(
        num_protocols, in_chans, 4 if num_classes is None else num_classes, cfg["widths"], cfg["convs"],
        cfg["embed_dim"], cfg["heads"], shared_encoder=shared_encoder, intra=intra, se_reduction=se_reduction,
        spatial_kernel=spatial_kernel, pool=pool, fusion=fusion, protocol_embedding=protocol_embedding,
        attn_drop=attn_drop, drop_rate=drop_rate,
    )  # fmt: skip


class PlainVgg(nn.Module):
    """The seed's plain VGG baseline: the protocols stacked as the channels of one image (the task's ``stack:
    channels``, with its present-planes), the stager's :class:`VggEncoder` at the same widths, a global average
    pool, dropout and one linear layer. No attention, no fusion, no pretraining: what the seed's +6.8 points are
    measured against."""

    def __init__(
        self, in_chans: int, num_classes: int, widths: Sequence[int], convs: Sequence[int], drop_rate: float
    ) -> None:
        super().__init__()
        self.encoder = VggEncoder(in_chans, widths, convs)
        self.head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(widths[-1], num_classes))

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``image`` (B, C, H, W) -> ``logits`` (B, num_classes)."""
        if image.ndim != 4:
            raise ConfigError(f"mr-vgg takes image (batch, channels, H, W), got {tuple(image.shape)}; stack: channels")
        return {"logits": self.head(self.encoder(image)[-1].mean(dim=(2, 3)))}


@register_model("mr-vgg", presets=MR_FUSION_PRESETS)
def create_mr_vgg(
    preset: str = "base",
    in_chans: int = 10,
    num_classes: int = 4,
    widths: Sequence[int] | None = None,
    convs: Sequence[int] | None = None,
    drop_rate: float = 0.3,
) -> nn.Module:
    """The plain VGG baseline of the MR staging paper at the widths of ``mr-fusion``'s preset (see
    :class:`PlainVgg`)."""
    cfg = resolve_preset(MR_FUSION_PRESETS, preset, {"widths": widths, "convs": convs})
    if len(cfg["widths"]) != len(cfg["convs"]):
        raise ConfigError("mr-vgg: widths and convs need one entry per stage")
    return PlainVgg(in_chans, num_classes, cfg["widths"], cfg["convs"], drop_rate)
