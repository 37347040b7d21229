"""Tests of the generic ``timm:<name>`` / ``monai:<name>`` adapters: shapes, key transfer, weights, errors."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from osteoscope.errors import ConfigError
from osteoscope.models import create_model, get_model_factory, list_model_prefixes, list_models
from osteoscope.models.adapters import MonaiNet, TimmClassifier, TimmTranslator

SMALL_RESNET3D = {"block": "basic", "layers": [1, 1, 1, 1], "block_inplanes": [4, 8, 16, 32]}
TINY_VIT3D = {"patch_size": 8, "hidden_size": 32, "mlp_dim": 64, "num_layers": 1, "num_heads": 2}


def _image(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- registry ------------------------------------------------------------------------------------


def test_prefixes_listed_separately_and_factory_signature_exposes_standard_kwargs() -> None:
    names = list_models()
    assert {"ast", "vit", "swin"} <= set(names)
    assert not any(":" in n for n in names)  # plain list stays buildable name by name
    assert list_model_prefixes() == ["monai:<any monai.networks.nets network>", "timm:<any timm model>"]
    assert list_models(include_prefixes=True) == names + list_model_prefixes()
    params = inspect.signature(get_model_factory("timm:resnet18")).parameters
    assert {"in_chans", "num_classes", "out_chans", "img_size", "spatial_dims", "pretrained_path"} <= set(params)
    assert "name" not in params  # bound by the prefix dispatch
    with pytest.raises(ConfigError, match=r"unknown model prefix 'tv:'.*monai:, timm:"):
        create_model("tv:resnet18")
    with pytest.raises(ConfigError, match="names no model"):
        create_model("monai:")


# --- timm: classifier ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "in_chans", "num_classes"),
    [("test_resnet", 1, 1), ("test_efficientnet", 3, 3), ("test_vit", 1, 6), ("test_resnet", 3, 6)],
)
def test_timm_classifier_logit_shape_and_kept_split(name: str, in_chans: int, num_classes: int) -> None:
    model = create_model(f"timm:{name}", in_chans=in_chans, num_classes=num_classes, img_size=32, spatial_dims=2)
    assert isinstance(model, TimmClassifier)
    model.eval()
    x = _image(2, in_chans, 32, 32)
    with torch.no_grad():
        logits = model(image=x)["logits"]
        split = model.forward_head(model.forward_features(x))
    assert logits.shape == (2, num_classes)
    torch.testing.assert_close(split, logits)
    assert model.backbone.num_classes == num_classes


def test_timm_vit_gets_img_size() -> None:
    model = create_model("timm:test_vit", in_chans=1, num_classes=2, img_size=(32, 48))
    assert tuple(model.backbone.patch_embed.img_size) == (32, 48)
    assert model(image=_image(1, 1, 32, 48))["logits"].shape == (1, 2)


# --- timm: translator and encoder transfer ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "size"), [("test_resnet", (40, 36)), ("test_efficientnet", (32, 32)), ("test_vit", (32, 32))]
)
def test_timm_translator_keeps_input_size_and_trains_encoder(name: str, size: tuple[int, int]) -> None:
    model = create_model(f"timm:{name}", in_chans=1, out_chans=2, img_size=size)
    assert isinstance(model, TimmTranslator)
    out = model(image=_image(2, 1, *size))["logits"]
    assert out.shape == (2, 2, *size)
    out.square().mean().backward()
    first = next(p for n, p in model.named_parameters() if n.startswith("backbone."))
    assert first.grad is not None and first.grad.abs().sum() > 0  # the output depends on the encoder


@pytest.mark.parametrize(
    ("name", "head"),
    [
        ("test_resnet", ("fc.",)),
        ("resnet18", ("fc.",)),
        ("test_efficientnet", ("conv_head.", "bn2.", "classifier.")),
        ("test_vit", ("norm.", "head.")),
        ("convnext_atto", ("head.",)),  # timm's default features_only would rename stages.0 -> stages_0
    ],
)
def test_translator_encoder_loads_into_classifier_by_backbone_prefix(name: str, head: tuple[str, ...]) -> None:
    translator = create_model(f"timm:{name}", in_chans=1, out_chans=1, img_size=32)
    classifier = create_model(f"timm:{name}", in_chans=1, num_classes=3, img_size=32)
    source = {k: v for k, v in translator.state_dict().items() if k.startswith("backbone.")}
    target = classifier.state_dict()
    assert source
    for key, value in source.items():
        assert key in target, key
        assert target[key].shape == value.shape, key
    missing, unexpected = classifier.load_state_dict(source, strict=False)
    assert not unexpected
    # everything but the classifier head (timm prunes it, with any final conv/norm, from the encoder) loads
    assert missing and all(k.startswith(tuple(f"backbone.{h}" for h in head)) for k in missing), missing
    loaded = classifier.state_dict()
    for key, value in source.items():
        assert torch.equal(loaded[key], value), key


# --- timm: local weights -------------------------------------------------------------------------


def test_timm_local_weights_adapt_first_conv_and_drop_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = timm.create_model("test_resnet", in_chans=3, num_classes=1000).state_dict()
    path = tmp_path / "rgb.pth"
    torch.save(source, path)
    model = create_model("timm:test_resnet", in_chans=1, num_classes=2, pretrained_path=str(path))
    got = model.backbone.state_dict()
    # timm's adapt_input_conv for one channel sums the RGB kernels
    torch.testing.assert_close(got["conv1.0.weight"], source["conv1.0.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(got["layer2.0.conv1.weight"], source["layer2.0.conv1.weight"])
    assert got["fc.weight"].shape == (2, source["fc.weight"].shape[1])

    translator = create_model("timm:test_resnet", in_chans=1, out_chans=1, pretrained_path=str(path))
    enc = translator.backbone.state_dict()
    torch.testing.assert_close(enc["conv1.0.weight"], got["conv1.0.weight"])
    assert torch.equal(enc["layer4.0.conv2.weight"], source["layer4.0.conv2.weight"])


def test_timm_weights_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pretrained_path .*missing\.pth is not a file"):
        create_model("timm:test_resnet", num_classes=2, pretrained_path=str(tmp_path / "missing.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"cannot load weights from .*junk\.pth"):
        create_model("timm:test_resnet", num_classes=2, pretrained_path=str(junk))
    with pytest.raises(ConfigError, match="not both"):
        create_model("timm:test_resnet", num_classes=2, pretrained=True, pretrained_path=str(junk))
    wrong = tmp_path / "efficientnet.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), wrong)
    with pytest.raises(
        ConfigError, match=r"cannot load weights from .*efficientnet\.pth: .*size mismatch for bn1\.weight"
    ):
        create_model("timm:test_resnet", num_classes=2, pretrained_path=str(wrong))


# --- timm: user errors ---------------------------------------------------------------------------


def test_timm_user_errors_are_config_errors_with_hints() -> None:
    with pytest.raises(ConfigError, match=r"unknown timm model 'resnt18'; close matches: .*\bresnet18\b"):
        create_model("timm:resnt18", num_classes=2)
    with pytest.raises(ConfigError, match=r"unknown pretrained tag 'bogus'.*resnet18\.a1_in1k"):
        create_model("timm:resnet18.bogus", num_classes=2)
    with pytest.raises(ConfigError, match=r"does not accept the keyword 'dropp_rate'"):
        create_model("timm:test_resnet", num_classes=2, dropp_rate=0.1)
    with pytest.raises(ConfigError, match=r"does not accept the keyword 'dropp_rate'"):
        create_model("timm:test_resnet", out_chans=1, dropp_rate=0.1)
    with pytest.raises(ConfigError, match=r"2-D network but spatial_dims=3.*monai:"):
        create_model("timm:test_resnet", num_classes=2, spatial_dims=3)
    with pytest.raises(ConfigError, match=r"2-D network but spatial_dims=3"):
        create_model("timm:test_resnet", out_chans=1, img_size=(16, 16, 16))
    with pytest.raises(ConfigError, match="not both"):
        create_model("timm:test_resnet", num_classes=2, out_chans=1)


# --- MONAI ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("in_chans", "num_classes"), [(1, 1), (2, 3)])
def test_monai_resnet_3d_shapes(in_chans: int, num_classes: int) -> None:
    model = create_model(
        "monai:ResNet", in_chans=in_chans, num_classes=num_classes, spatial_dims=3, img_size=16, **SMALL_RESNET3D
    )
    assert isinstance(model, MonaiNet)
    assert model.backbone.conv1.in_channels == in_chans
    assert model(image=_image(2, in_chans, 16, 16, 16))["logits"].shape == (2, num_classes)


def test_monai_factory_function_maps_through_its_return_class() -> None:
    # resnet10(**kwargs) forwards to ResNet: in_chans must become n_input_channels, widen_factor must pass
    model = create_model("monai:resnet10", in_chans=2, num_classes=4, spatial_dims=3, widen_factor=0.125)
    assert model.backbone.conv1.in_channels == 2
    assert model(image=_image(2, 2, 16, 16, 16))["logits"].shape == (2, 4)
    with pytest.raises(ConfigError, match=r"does not accept 'widen'"):
        create_model("monai:resnet10", in_chans=1, num_classes=2, spatial_dims=3, widen=0.5)


def test_monai_densenet_maps_num_classes_to_out_channels() -> None:
    model = create_model(
        "monai:DenseNet121",
        in_chans=1,
        num_classes=3,
        spatial_dims=3,
        init_features=8,
        growth_rate=4,
        block_config=(1, 1, 1, 1),
    )
    assert model(image=_image(2, 1, 32, 32, 32))["logits"].shape == (2, 3)  # 3 transitions need 32^3


def test_monai_vit_classifies_with_raw_logits() -> None:
    model = create_model("monai:ViT", in_chans=1, num_classes=5, img_size=16, spatial_dims=3, **TINY_VIT3D)
    assert model.backbone.classification
    assert isinstance(model.backbone.classification_head, nn.Linear)  # no Tanh squashing the logits
    with torch.no_grad():
        nn.init.constant_(model.backbone.classification_head.bias, 3.0)
        logits = model(image=_image(2, 1, 16, 16, 16))["logits"]
    assert logits.shape == (2, 5)
    assert logits.max() > 1.0


def test_monai_image_to_image_and_dense_net_rejected_as_classifier() -> None:
    features = (4, 4, 8, 8, 16, 4)
    model = create_model("monai:BasicUNet", in_chans=1, out_chans=2, spatial_dims=3, features=features)
    assert model(image=_image(1, 1, 32, 32, 32))["logits"].shape == (1, 2, 32, 32, 32)  # 4 halvings
    model2d = create_model("monai:BasicUNet", in_chans=3, out_chans=1, img_size=(32, 32), features=features)
    assert model2d(image=_image(1, 3, 32, 32))["logits"].shape == (1, 1, 32, 32)
    seg = create_model("monai:BasicUNet", in_chans=1, num_classes=2, spatial_dims=3, features=features)
    with pytest.raises(ConfigError, match=r"not \(B, num_classes\) class logits"):
        seg(image=_image(1, 1, 32, 32, 32))


def test_monai_user_errors_are_config_errors_with_hints() -> None:
    with pytest.raises(ConfigError, match=r"unknown MONAI network 'Resnett'.*\bResNet\b"):
        create_model("monai:Resnett", num_classes=2)
    with pytest.raises(ConfigError, match=r"unknown MONAI network 'xyzzy'.*available include: ResNet"):
        create_model("monai:xyzzy", num_classes=2)
    with pytest.raises(ConfigError, match=r"monai:ResNet does not accept 'blocks'.*block_inplanes"):
        create_model("monai:ResNet", num_classes=2, spatial_dims=3, blocks="basic")
    with pytest.raises(ConfigError, match=r"monai:UNet needs channels, strides"):
        create_model("monai:UNet", in_chans=1, out_chans=1, spatial_dims=3)
    with pytest.raises(ConfigError, match=r"no out_channels.*out_chans"):
        create_model("monai:ResNet", in_chans=1, out_chans=1, spatial_dims=3, **SMALL_RESNET3D)
    with pytest.raises(ConfigError, match=r"invalid arguments: hidden_size should be divisible"):
        create_model(
            "monai:ViT", in_chans=1, num_classes=2, img_size=16, spatial_dims=3, **{**TINY_VIT3D, "num_heads": 3}
        )
    with pytest.raises(ConfigError, match=r"pretrained_path .*none\.pt is not a file"):
        create_model("monai:ResNet", num_classes=2, pretrained_path="/nonexistent/none.pt", **SMALL_RESNET3D)


def test_monai_local_weights_reinit_other_head_and_reject_other_body(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = create_model("monai:ResNet", in_chans=1, num_classes=7, spatial_dims=3, **SMALL_RESNET3D)
    state = source.backbone.state_dict()
    path = tmp_path / "resnet.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    model = create_model(
        "monai:ResNet", in_chans=1, num_classes=2, spatial_dims=3, pretrained_path=str(path), **SMALL_RESNET3D
    )
    got = model.backbone.state_dict()
    assert torch.equal(got["conv1.weight"], state["conv1.weight"])
    assert torch.equal(got["layer3.0.conv1.weight"], state["layer3.0.conv1.weight"])
    assert got["fc.weight"].shape == (2, 32)

    no_head = tmp_path / "no_head.pt"  # MedicalNet-style: body only
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, no_head)
    model = create_model(
        "monai:ResNet", in_chans=1, num_classes=2, spatial_dims=3, pretrained_path=str(no_head), **SMALL_RESNET3D
    )
    assert torch.equal(model.backbone.state_dict()["layer4.0.conv2.weight"], state["layer4.0.conv2.weight"])

    wider = {**SMALL_RESNET3D, "block_inplanes": [4, 8, 16, 64]}
    with pytest.raises(ConfigError, match=r"do not fit the network: shape mismatch: layer4\.0\.conv1\.weight"):
        create_model("monai:ResNet", in_chans=1, num_classes=7, spatial_dims=3, pretrained_path=str(path), **wider)
    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in state.items() if k != "layer2.0.conv1.weight"}, partial)
    with pytest.raises(ConfigError, match=r"missing 1 keys: layer2\.0\.conv1\.weight"):
        create_model(
            "monai:ResNet", in_chans=1, num_classes=7, spatial_dims=3, pretrained_path=str(partial), **SMALL_RESNET3D
        )
    with pytest.raises(ConfigError, match="not both"):
        create_model("monai:ResNet", num_classes=2, pretrained=True, pretrained_path=str(path), **SMALL_RESNET3D)
