"""Generic adapters: any timm model as ``timm:<name>``, any MONAI network as ``monai:<name>``.

Each adapter follows the model contract: ``forward(image=...)`` with an image (B, C, H, W) or
(B, C, D, H, W) returns ``{"logits": ...}``. The engine's standard keywords are mapped onto the wrapped
library's own arguments:

- ``in_chans``: input channels; ``num_classes``: size of a classification head, giving logits
  (B, num_classes); ``out_chans`` (instead of ``num_classes``): an image-to-image network whose logits
  are (B, out_chans, *spatial) at the input's spatial size (pretext tasks such as MR -> CT);
- ``img_size``: input spatial size (needed by ViTs for their position tables, ignored by CNNs);
- ``spatial_dims``: 2 or 3. timm is 2-D only; volumes go to MONAI.

Every other keyword (the user's ``model.options``) goes to the wrapped constructor unchanged, apart from
``pretrained`` / ``pretrained_path``, handled here. Nothing is downloaded unless the user asks for hub
weights with ``pretrained=True``; ``pretrained_path`` reads a local file.

The wrapped network is always the attribute ``backbone``, so a state dict's ``backbone.*`` keys mean
the same thing across adapters: the encoder of a ``timm:`` translator trained on a pretext task loads
into a ``timm:`` classifier of the same name by that key prefix.

timm and MONAI are imported inside the builders only, so importing :mod:`osteoscope.models` (and the
CLI start-up) does not pay for MONAI.
"""

from __future__ import annotations

import difflib
import inspect
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from osteoscope.errors import ConfigError
from osteoscope.models.layers import conv_bn_relu
from osteoscope.models.registry import register_model_prefix

ImgSize = int | Sequence[int]

#: MONAI networks offered in error messages when a name is unknown and nothing similar exists.
MONAI_EXAMPLES = ("ResNet", "resnet10", "resnet18", "DenseNet121", "ViT", "BasicUNet", "UNet", "SegResNet")


# --- shared checks ---------------------------------------------------------------------------------


def _check_task(num_classes: int | None, out_chans: int | None) -> None:
    """Reject a request for both a classification head and an image output."""
    if num_classes is not None and out_chans is not None:
        raise ConfigError(
            f"give num_classes (classifier) or out_chans (image-to-image), not both "
            f"(got num_classes={num_classes}, out_chans={out_chans})"
        )


def _check_weights(model: str, pretrained: bool, pretrained_path: str | Path | None) -> Path | None:
    """Return ``pretrained_path`` as an existing file, rejecting it together with ``pretrained=True``."""
    if pretrained_path is None:
        return None
    if pretrained:
        raise ConfigError(
            f"{model}: give either pretrained=True (download hub weights) or pretrained_path (a local file), not both"
        )
    path = Path(pretrained_path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{model}: pretrained_path {path} is not a file")
    return path


def _spatial_dims_of(img_size: ImgSize | None, spatial_dims: int | None, model: str) -> int | None:
    """Return the requested number of spatial dimensions, from ``spatial_dims`` or a tuple ``img_size``."""
    size_dims = None if img_size is None or isinstance(img_size, int) else len(img_size)
    if spatial_dims is not None and size_dims is not None and spatial_dims != size_dims:
        raise ConfigError(f"{model}: spatial_dims={spatial_dims} but img_size {tuple(img_size)} has {size_dims}")
    return spatial_dims if spatial_dims is not None else size_dims


def _summary(err: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (its first lines joined), cut to about ``limit`` characters."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = " ".join(lines[:3]) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unexpected_keyword(err: TypeError) -> str | None:
    """The keyword a ``TypeError`` from a constructor call complains about, if it names one."""
    match = re.search(r"unexpected keyword argument '(\w+)'", str(err))
    return match.group(1) if match else None


# --- timm ------------------------------------------------------------------------------------------


def timm_close_matches(name: str, limit: int = 5) -> list[str]:
    """Return up to ``limit`` timm model names resembling ``name``, most similar first.

    Candidates are the models matching ``*part*`` for each alphabetic part of at least three letters
    (``resnt18`` -> ``*resnt*``); if none do, all models are ranked by string similarity instead.
    """
    import timm

    arch = name.split(".", 1)[0].lower()
    candidates: set[str] = set()
    for part in re.findall(r"[a-z]{3,}", arch):
        candidates.update(timm.list_models(f"*{part}*"))
    pool = sorted(candidates) or timm.list_models()
    ranked = sorted(pool, key=lambda n: -difflib.SequenceMatcher(None, arch, n).ratio())
    return ranked[:limit]


def _check_timm_name(name: str) -> None:
    """Raise a ``ConfigError`` listing close matches if ``name`` (``arch`` or ``arch.tag``) is not in timm."""
    import timm
    from timm.models import split_model_name_tag

    arch, tag = split_model_name_tag(name)
    if not timm.is_model(arch):
        close = timm_close_matches(name)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ConfigError(f"unknown timm model {name!r}{hint}")
    if tag and name not in timm.list_pretrained(f"{arch}.*"):
        tags = timm.list_pretrained(f"{arch}.*")
        hint = f"; known: {', '.join(tags[:8])}" if tags else f"; timm has no pretrained tags for {arch!r}"
        raise ConfigError(f"unknown pretrained tag {tag!r} for timm model {arch!r}{hint}")


def _check_timm_2d(name: str, img_size: ImgSize | None, spatial_dims: int | None) -> None:
    """timm builds 2-D networks only; point volume requests to ``monai:``."""
    dims = _spatial_dims_of(img_size, spatial_dims, f"timm:{name}")
    if dims is not None and dims != 2:
        raise ConfigError(
            f"timm:{name} is a 2-D network but spatial_dims={dims} was requested; for volumes use a 3-D "
            "MONAI network such as monai:resnet18, monai:DenseNet121 or monai:ViT"
        )


def build_timm(
    name: str,
    *,
    img_size: ImgSize | None = None,
    pretrained: bool = False,
    pretrained_path: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Call ``timm.create_model`` with user errors turned into one-line ``ConfigError``\\ s.

    ``img_size`` is passed only to models that take it (ViT-like ones): it is tried first and dropped
    when the constructor rejects it, since a timm entry point does not reveal its model's arguments.
    A local ``pretrained_path`` is loaded by timm itself (``pretrained=True`` with
    ``pretrained_cfg_overlay={"file": path}``), so its family ``checkpoint_filter_fn`` runs, the first
    conv is adapted to ``in_chans`` (``adapt_input_conv``: 1 channel = sum over the RGB kernels) and a
    classifier is dropped when ``num_classes`` differs from the pretrained config's class count (so a
    head is loaded only from a file whose head matches that count, e.g. 1000 ImageNet classes).

    Raises:
        ConfigError: Unknown name or tag, a keyword the model does not take, both ``pretrained`` and
            ``pretrained_path``, a missing or unreadable weights file, or weights that do not fit.
    """
    import timm

    model = f"timm:{name}"
    _check_timm_name(name)
    path = _check_weights(model, pretrained, pretrained_path)
    if path is not None:
        overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
        overlay["file"] = str(path)
        kwargs.update(pretrained=True, pretrained_cfg_overlay=overlay)
    elif pretrained:
        kwargs["pretrained"] = True
    try:
        if img_size is not None:
            try:
                return timm.create_model(name, img_size=img_size, **kwargs)
            except TypeError as err:
                if _unexpected_keyword(err) != "img_size":
                    raise
        return timm.create_model(name, **kwargs)
    except TypeError as err:
        bad = _unexpected_keyword(err)
        if bad is None:
            raise ConfigError(f"{model}: invalid arguments: {_summary(err)}") from err
        raise ConfigError(f"{model} does not accept the keyword {bad!r} (from model options)") from err
    except (RuntimeError, OSError, ValueError, KeyError, AssertionError) as err:
        if path is None:
            raise
        raise ConfigError(f"{model}: cannot load weights from {path}: {_summary(err)}") from err


class TimmClassifier(nn.Module):
    """A timm classifier under the model contract: ``forward(image)`` -> ``{"logits": (B, num_classes)}``.

    The timm model is kept whole in ``backbone``, so its feature/head split stays usable
    (``forward_features`` / ``forward_head``, also offered here) and its state dict keys are timm's own
    under the prefix ``backbone.``.

    Args:
        name: timm model name, optionally with a pretrained tag (``resnet18.a1_in1k``).
        in_chans: Input channels (timm default 3 when None).
        num_classes: Classifier outputs; 1 for a binary head (timm default when None).
        img_size: Input size (H, W) or side; passed to models that take it.
        spatial_dims: Must be 2 (or None); timm has no 3-D networks.
        pretrained: Download timm hub weights (online only).
        pretrained_path: Local timm-format weights (.pth/.safetensors), loaded by timm.
        **kwargs: Further ``timm.create_model`` arguments (``drop_path_rate``, ``patch_size`` ...).
    """

    def __init__(
        self,
        name: str,
        *,
        in_chans: int | None = None,
        num_classes: int | None = None,
        img_size: ImgSize | None = None,
        spatial_dims: int | None = None,
        pretrained: bool = False,
        pretrained_path: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        _check_timm_2d(name, img_size, spatial_dims)
        if in_chans is not None:
            kwargs["in_chans"] = in_chans
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        self.name = name
        self.backbone = build_timm(
            name, img_size=img_size, pretrained=pretrained, pretrained_path=pretrained_path, **kwargs
        )

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        """The timm model's unpooled features of ``image``."""
        return self.backbone.forward_features(image)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The timm model's pooling and classifier on ``features`` (pooled features if ``pre_logits``)."""
        return self.backbone.forward_head(features, pre_logits=pre_logits)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"logits": (B, num_classes)}`` for an image (B, C, H, W)."""
        return {"logits": self.backbone(image)}


def _conv_norm_act(in_ch: int, out_ch: int) -> nn.Sequential:
    """One size-preserving 3x3 conv (no bias) -> BatchNorm -> ReLU, as a module of its own."""
    return nn.Sequential(*conv_bn_relu(in_ch, out_ch))


class TimmTranslator(nn.Module):
    """A timm encoder with a small U-Net decoder: ``forward(image)`` -> ``{"logits": (B, out_chans, H, W)}``.

    Meant for image-to-image pretext tasks (e.g. MR -> CT) whose encoder is later fine-tuned as a
    :class:`TimmClassifier` of the same timm name: the encoder is in ``backbone`` and is the timm
    model's own class, so every ``backbone.*`` key of this state dict is a key, of the same shape, of
    that classifier's state dict (the classifier has only its head in addition).

    Encoder: ``timm.create_model(name, features_only=True, feature_cls="getter", in_chans=...)``. The
    "getter" feature wrapper prunes the head and calls the model's ``forward_intermediates``; it is
    unwrapped here (``backbone`` = the pruned timm model) because the wrapper would add a ``model.``
    level to the keys, and timm's default ``features_only`` wrappers rename modules of several families
    (ConvNeXt ``stages.0`` -> ``stages_0``), both of which would break the key transfer. Models without
    ``forward_intermediates`` fall back to timm's default ``features_only`` wrapper (keys may then
    differ from the classifier's).

    Decoder (a choice; the task only needs a plausible image out): starting from the deepest map, for
    each shallower feature map: bilinear upsampling to that map's size, concatenation with it, and two
    3x3 conv-BatchNorm-ReLU layers of width ``clamp(skip channels, 16, 256)``; then bilinear upsampling
    to the input size, one 3x3 conv-BatchNorm-ReLU at full resolution (half the last width, at least
    16) and a 1x1 conv to ``out_chans``. Upsampling to each skip's actual size (not a fixed 2x) handles
    odd sizes and equal-stride features (a ViT's maps are all at stride 16, so its decoder only fuses
    them and the final upsampling does all the work). No input-to-output skip: the output must come
    through the encoder, which is what the pretext task is meant to train. The decoder is randomly
    initialised; the output is linear (no activation), left to the loss.

    Args:
        name: timm model name (optionally with a pretrained tag).
        out_chans: Output image channels.
        in_chans: Input channels (timm default 3 when None).
        img_size: Input size; passed to encoders that take it (ViTs).
        spatial_dims: Must be 2 (or None).
        pretrained: Download timm hub weights into the encoder (online only).
        pretrained_path: Local timm-format weights loaded into the encoder by timm (first conv adapted).
        **kwargs: Further ``timm.create_model`` arguments (e.g. ``out_indices``).
    """

    def __init__(
        self,
        name: str,
        *,
        out_chans: int,
        in_chans: int | None = None,
        img_size: ImgSize | None = None,
        spatial_dims: int | None = None,
        pretrained: bool = False,
        pretrained_path: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        from timm.models._features import FeatureGetterNet

        _check_timm_2d(name, img_size, spatial_dims)
        if in_chans is not None:
            kwargs["in_chans"] = in_chans
        self.name = name
        build = {"img_size": img_size, "pretrained": pretrained, "pretrained_path": pretrained_path}
        encoder = None
        if "feature_cls" not in kwargs:
            try:
                encoder = build_timm(name, features_only=True, feature_cls="getter", **build, **kwargs)
            except ConfigError as err:
                if "feature_cls" not in str(err):
                    raise
            except Exception:  # no getter support in this family: timm's default wrapper below
                encoder = None
            if encoder is not None and not hasattr(encoder.model, "forward_intermediates"):
                encoder = None
        if encoder is None:
            encoder = build_timm(name, features_only=True, **build, **kwargs)
        channels = list(encoder.feature_info.channels())
        self.feature_channels = channels
        self.feature_reductions = list(encoder.feature_info.reduction())
        if isinstance(encoder, FeatureGetterNet):
            self.backbone = encoder.model
            self._out_indices = encoder.out_indices
            self._feature_norm = encoder.norm
            self._use_intermediates = True
        else:
            self.backbone = encoder
            self._use_intermediates = False

        widths = [min(max(c, 16), 256) for c in channels]
        self.decoder = nn.ModuleList()
        below = channels[-1]
        for i in range(len(channels) - 2, -1, -1):
            self.decoder.append(
                nn.Sequential(_conv_norm_act(below + channels[i], widths[i]), _conv_norm_act(widths[i], widths[i]))
            )
            below = widths[i]
        head_width = max(below // 2, 16)
        self.head = nn.Sequential(_conv_norm_act(below, head_width), nn.Conv2d(head_width, out_chans, 1))

    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's feature maps (B, C_i, H_i, W_i), shallow to deep."""
        if self._use_intermediates:
            return self.backbone.forward_intermediates(
                image, indices=self._out_indices, norm=self._feature_norm, output_fmt="NCHW", intermediates_only=True
            )
        return self.backbone(image)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"logits": (B, out_chans, H, W)}`` for an image (B, C, H, W)."""
        features = self.encode(image)
        x = features[-1]
        for block, skip in zip(self.decoder, reversed(features[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        x = F.interpolate(x, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return {"logits": self.head(x)}


@register_model_prefix(
    "timm",
    "<any timm model>",
    "any 2-D network of timm by its name (timm:resnet18, timm:vit_small_patch16_224); sized by the name and "
    "model.options, not by --preset; an image target builds a U-Net translator on it",
)
def create_timm_model(
    name: str,
    *,
    in_chans: int | None = None,
    num_classes: int | None = None,
    out_chans: int | None = None,
    img_size: ImgSize | None = None,
    spatial_dims: int | None = None,
    pretrained: bool = False,
    pretrained_path: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """``timm:<name>``: a :class:`TimmClassifier`, or a :class:`TimmTranslator` when ``out_chans`` is given.

    Raises:
        ConfigError: See :func:`build_timm`; also a 3-D request, or both ``num_classes`` and ``out_chans``.
    """
    _check_task(num_classes, out_chans)
    common = {
        "in_chans": in_chans,
        "img_size": img_size,
        "spatial_dims": spatial_dims,
        "pretrained": pretrained,
        "pretrained_path": pretrained_path,
    }
    if out_chans is not None:
        return TimmTranslator(name, out_chans=out_chans, **common, **kwargs)
    return TimmClassifier(name, num_classes=num_classes, **common, **kwargs)


# --- MONAI -----------------------------------------------------------------------------------------


def _monai_candidates() -> dict[str, Callable[..., Any]]:
    """Public names of ``monai.networks.nets`` that can build a network: Module classes and functions."""
    import monai.networks.nets as nets

    found = {}
    for key in dir(nets):
        obj = getattr(nets, key)
        if key.startswith("_"):
            continue
        if (inspect.isclass(obj) and issubclass(obj, nn.Module)) or inspect.isfunction(obj):
            found[key] = obj
    return found


def _resolve_monai(name: str) -> Callable[..., Any]:
    """The class or factory function ``monai.networks.nets.<name>``, or a ``ConfigError`` with suggestions."""
    candidates = _monai_candidates()
    if name in candidates:
        return candidates[name]
    close = difflib.get_close_matches(name, list(candidates), n=6, cutoff=0.5)
    lower = {k.lower(): k for k in candidates}
    if name.lower() in lower and lower[name.lower()] not in close:
        close.insert(0, lower[name.lower()])
    shown = close or list(MONAI_EXAMPLES)
    label = "close matches" if close else "available include"
    raise ConfigError(f"unknown MONAI network {name!r} in monai.networks.nets; {label}: {', '.join(shown)}")


_NO_KW = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def monai_parameters(target: Callable[..., Any]) -> tuple[dict[str, inspect.Parameter], list[str], bool]:
    """The keyword parameters ``target`` accepts, following ``**kwargs`` to where MONAI sends them.

    A class's ``**kwargs`` are followed up its base classes' ``__init__`` (``DenseNet121`` ->
    ``DenseNet``, ``SEResNet50`` -> ``SENet``); a function's ``**kwargs`` to the class of its return
    annotation (``resnet18`` -> ``ResNet``).

    Returns:
        The parameters by name (the most derived definition wins); the required ones, which only the
        outermost signature decides (``resnet18`` supplies ``ResNet``'s ``block`` itself); and whether
        some ``**kwargs`` could not be followed (then any keyword may be accepted).
    """
    signatures: list[inspect.Signature] = []
    open_ = True
    if inspect.isclass(target):
        for klass in target.__mro__:
            if klass is nn.Module or not issubclass(klass, nn.Module):
                break
            if "__init__" in vars(klass):
                sig = inspect.signature(klass.__init__)
                signatures.append(sig.replace(parameters=list(sig.parameters.values())[1:]))
                if not _has_var_keyword(signatures[-1]):
                    open_ = False
                    break
    else:
        try:
            sig = inspect.signature(target, eval_str=True)
        except Exception:  # an annotation that cannot be evaluated: read the signature without it
            sig = inspect.signature(target)
        signatures.append(sig)
        open_ = _has_var_keyword(sig)
        ret = sig.return_annotation
        if open_ and inspect.isclass(ret) and issubclass(ret, nn.Module):
            inner, _, open_ = monai_parameters(ret)
            signatures.append(sig.replace(parameters=list(inner.values())))
    params: dict[str, inspect.Parameter] = {}
    for sig in signatures:
        for key, p in sig.parameters.items():
            if p.kind not in _NO_KW:
                params.setdefault(key, p)
    required = [k for k, p in signatures[0].parameters.items() if p.kind not in _NO_KW and p.default is p.empty]
    return params, required, open_


def _has_var_keyword(sig: inspect.Signature) -> bool:
    """Whether ``sig`` takes ``**kwargs``."""
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())


def _first_accepted(options: Sequence[str], params: dict[str, inspect.Parameter], open_: bool) -> str | None:
    """The first of ``options`` the target takes; the first one at all if its keywords are open."""
    for key in options:
        if key in params:
            return key
    return options[0] if open_ else None


def _head_prefix(module: nn.Module) -> str | None:
    """Key prefix (``"fc."``) of the last module holding parameters directly: the classifier/output layer."""
    last = None
    for mod_name, mod in module.named_modules():
        if mod_name and any(True for _ in mod.parameters(recurse=False)):
            last = mod_name
    return None if last is None else last + "."


def load_monai_weights(backbone: nn.Module, path: Path, model: str) -> None:
    """Load the state dict in ``path`` into ``backbone``, re-initialising a classifier of another shape.

    The file is read with timm's ``load_state_dict`` (torch ``weights_only`` or .safetensors; a dict
    nested under ``state_dict``/``model`` and ``module.`` prefixes of DataParallel are accepted). Tensors
    of the last parametrised module (the classifier / output layer) whose shapes differ, or which the
    file lacks (MedicalNet files have no classifier), are left freshly initialised; any other shape
    mismatch or missing key is an error, since the file then
    belongs to another architecture or configuration. Keys the network lacks are ignored with a warning.

    Raises:
        ConfigError: If the file cannot be read, or lists (up to 5 of) the mismatched / missing keys.
    """
    from timm.models import load_state_dict

    try:
        state = load_state_dict(str(path), use_ema=False)
    except Exception as err:
        raise ConfigError(f"{model}: cannot read weights from {path}: {_summary(err)}") from err
    own = backbone.state_dict()
    head = _head_prefix(backbone)
    dropped = [k for k in state if head and k.startswith(head) and k in own and state[k].shape != own[k].shape]
    for key in dropped:
        del state[key]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    missing = [k for k in own if k not in state and not (head and k.startswith(head))]
    if mismatched or missing:
        parts = []
        if mismatched:
            parts.append(f"shape mismatch: {'; '.join(mismatched[:5])}")
        if missing:
            parts.append(f"missing {len(missing)} keys: {', '.join(missing[:5])}")
        raise ConfigError(f"{model}: weights in {path} do not fit the network: {'; '.join(parts)}")
    unexpected = [k for k in state if k not in own]
    if unexpected:
        warnings.warn(
            f"{model}: ignoring {len(unexpected)} keys of {path} the network lacks: {unexpected[:5]}", stacklevel=3
        )
    backbone.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


class MonaiNet(nn.Module):
    """A network of ``monai.networks.nets`` under the model contract: ``forward(image)`` -> ``{"logits"}``.

    ``name`` is a class (``ResNet``, ``DenseNet121``, ``ViT``, ``BasicUNet``, ``UNet`` ...) or a factory
    function (``resnet10``, ``resnet18`` ...). The standard keywords are mapped onto its own parameter
    names, found from its signature (see :func:`monai_parameters`), and passed only if it takes them:

    - ``spatial_dims`` -> ``spatial_dims`` (inferred from a tuple ``img_size`` when not given);
    - ``in_chans`` -> ``in_channels`` or ``n_input_channels``;
    - ``num_classes`` -> ``num_classes`` or else ``out_channels``; for a target with ``classification``
      (ViT) that is set True, and its ``post_activation`` set None (MONAI's default ``"Tanh"`` would
      squash the logits into (-1, 1)), unless the options set them;
    - ``out_chans`` -> ``out_channels``;
    - ``img_size`` -> ``img_size`` (ViT, UNETR ...); dropped for networks that do not take it;
    - ``pretrained`` -> ``pretrained``, always passed as a plain bool when the target takes it, so
      networks whose default is ``True`` (``EfficientNetBN``) do not download weights unasked.

    Output: a tuple/list (ViT's ``(logits, hidden_states)``) gives its element 0. With ``num_classes``
    the logits must be (B, num_classes): a network returning a dense map (a U-Net) is rejected at the
    first forward; with ``out_chans`` they must have the input's spatial size.

    Args:
        name: Name in ``monai.networks.nets``.
        in_chans: Input channels.
        num_classes: Classifier outputs (1 for a binary head).
        out_chans: Output image channels (image-to-image), instead of ``num_classes``.
        img_size: Input spatial size.
        spatial_dims: 2 or 3.
        pretrained: Let the network download its own weights (online; only if it takes ``pretrained``).
        pretrained_path: Local state dict loaded into ``backbone`` (see :func:`load_monai_weights`).
        **kwargs: Further constructor arguments (``block``, ``layers``, ``channels`` ...).

    Raises:
        ConfigError: Unknown name, a keyword the network does not take, a required argument missing, a
            standard keyword it has no counterpart for, an invalid value it rejects, or bad weights.
    """

    def __init__(
        self,
        name: str,
        *,
        in_chans: int | None = None,
        num_classes: int | None = None,
        out_chans: int | None = None,
        img_size: ImgSize | None = None,
        spatial_dims: int | None = None,
        pretrained: bool = False,
        pretrained_path: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        model = f"monai:{name}"
        _check_task(num_classes, out_chans)
        path = _check_weights(model, pretrained, pretrained_path)
        target = _resolve_monai(name)
        params, required, open_ = monai_parameters(target)
        accepted = ", ".join(params) + (", ..." if open_ else "")
        if not open_:
            bad = sorted(set(kwargs) - set(params))
            if bad:
                raise ConfigError(
                    f"{model} does not accept {', '.join(repr(b) for b in bad)}; accepted arguments: {accepted}"
                )
        args = dict(kwargs)

        def put(options: Sequence[str], value: Any, what: str, required: bool = True) -> None:
            if value is None:
                return
            key = _first_accepted(options, params, open_)
            if key is None:
                if required:
                    raise ConfigError(f"{model} has no parameter for {what} (none of {', '.join(options)})")
                return
            if key in args and args[key] != value:
                raise ConfigError(f"{model}: model option {key}={args[key]!r} contradicts {what}={value!r}")
            args[key] = value

        dims = _spatial_dims_of(img_size, spatial_dims, model)
        put(("spatial_dims",), dims, "spatial_dims")
        put(("in_channels", "n_input_channels"), in_chans, "in_chans")
        if out_chans is not None and "out_channels" not in params and not open_:
            raise ConfigError(
                f"{model} has no out_channels, so it cannot produce an image (out_chans); "
                "use an image-to-image network such as monai:BasicUNet or monai:UNet"
            )
        put(("out_channels",), out_chans, "out_chans")
        put(("num_classes", "out_channels"), num_classes, "num_classes")
        put(("img_size",), img_size, "img_size", required=False)
        if num_classes is not None and "classification" in params:
            args.setdefault("classification", True)
            if "post_activation" in params:
                args.setdefault("post_activation", None)
        if "pretrained" in params:
            args["pretrained"] = bool(pretrained)
        elif pretrained:
            raise ConfigError(f"{model} has no pretrained option; give a local pretrained_path instead")
        missing = [k for k in required if k not in args]
        if missing:
            raise ConfigError(f"{model} needs {', '.join(missing)}; set them in the model options")
        try:
            net = target(**args)
        except TypeError as err:
            bad = _unexpected_keyword(err)
            what = f"does not accept the keyword {bad!r}" if bad else f"rejects its arguments: {err}"
            raise ConfigError(f"{model} {what}") from err
        except (ValueError, AssertionError) as err:
            raise ConfigError(f"{model}: invalid arguments: {_summary(err)}") from err
        if not isinstance(net, nn.Module):
            raise ConfigError(f"{model} is not a network: it returned {type(net).__name__}")
        if path is not None:
            load_monai_weights(net, path, model)
        self.name = name
        self.task = "translate" if out_chans is not None else "classify" if num_classes is not None else None
        self.backbone = net

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"logits": ...}``: (B, num_classes), or (B, out_chans, *spatial) for a translator."""
        out = self.backbone(image)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if self.task == "classify" and out.ndim != 2:
            raise ConfigError(
                f"monai:{self.name} returns a {tuple(out.shape)} map, not (B, num_classes) class logits; "
                "use a classification network (ResNet, DenseNet121, ViT ...) or give out_chans instead"
            )
        if self.task == "translate" and out.shape[2:] != image.shape[2:]:
            raise ConfigError(
                f"monai:{self.name} returns spatial size {tuple(out.shape[2:])} for input "
                f"{tuple(image.shape[2:])}; an out_chans network must keep the input size"
            )
        return {"logits": out}


@register_model_prefix(
    "monai",
    "<any monai.networks.nets network>",
    "any network of monai.networks.nets, 2-D or 3-D (monai:resnet10, monai:DenseNet121); sized by the name "
    "and model.options, not by --preset",
)
def create_monai_model(
    name: str,
    *,
    in_chans: int | None = None,
    num_classes: int | None = None,
    out_chans: int | None = None,
    img_size: ImgSize | None = None,
    spatial_dims: int | None = None,
    pretrained: bool = False,
    pretrained_path: str | None = None,
    **kwargs: Any,
) -> MonaiNet:
    """``monai:<name>``: a :class:`MonaiNet` (2-D or 3-D) wrapping ``monai.networks.nets.<name>``."""
    return MonaiNet(
        name,
        in_chans=in_chans,
        num_classes=num_classes,
        out_chans=out_chans,
        img_size=img_size,
        spatial_dims=spatial_dims,
        pretrained=pretrained,
        pretrained_path=pretrained_path,
        **kwargs,
    )
