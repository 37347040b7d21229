"""MR attention fusion: shapes and protocol weights, masking of missing protocols (never fed as zeros), shared and
per-protocol encoders, the translator's encoder loading into the stager, learning, and both stages in the engine."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from osteoscope.config import config_from_dict
from osteoscope.engine.checkpoint import save_atomic
from osteoscope.engine.evaluate import evaluate_run
from osteoscope.engine.runs import BEST_CHECKPOINT
from osteoscope.engine.stages import load_init_weights
from osteoscope.engine.trainer import train
from osteoscope.errors import ConfigError
from osteoscope.models import create_model
from osteoscope.phantoms import generate_phantom

PRESENT = torch.tensor([[True, False, True, True, False], [False, False, False, True, False], [True] * 5])


def tiny(**options: object) -> torch.nn.Module:
    return create_model("mr-fusion", preset="tiny", img_size=32, num_classes=4, drop_rate=0.0, **options)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("fusion", ["attention", "mean"])
def test_shapes_and_protocol_weights_over_present_protocols(fusion: str) -> None:
    torch.manual_seed(0)
    model = tiny(fusion=fusion).eval()
    out = model(image=torch.randn(3, 5, 1, 32, 32), present=PRESENT)
    weights = out["maps"]["protocol_weights"]
    assert out["logits"].shape == (3, 4) and weights.shape == (3, 5)
    assert torch.allclose(weights.sum(dim=1), torch.ones(3))
    assert torch.all(weights[~PRESENT] == 0) and torch.all(weights[PRESENT] > 0)  # exactly 0 when missing
    assert weights[1, 3] == 1.0  # the only present protocol takes all the weight
    if fusion == "mean":
        assert torch.allclose(weights[0], torch.tensor([1 / 3, 0, 1 / 3, 1 / 3, 0]))
    everything = model(image=torch.randn(2, 5, 1, 32, 32))["maps"]["protocol_weights"]  # present=None: all
    assert torch.all(everything > 0) and torch.allclose(everything.sum(dim=1), torch.ones(2))
    translator = create_model("mr-fusion", preset="tiny", img_size=32, out_chans=1)
    assert translator(image=torch.randn(3, 5, 1, 33, 30), present=PRESENT)["logits"].shape == (3, 1, 33, 30)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("fusion", ["attention", "mean"])
def test_a_missing_protocols_pixels_change_nothing(fusion: str, shared: bool) -> None:
    """In training mode too: a missing protocol is not encoded, so it cannot even move a batch-norm statistic;
    changing a present protocol does change the logits (the check can fail)."""
    torch.manual_seed(0)
    model = tiny(fusion=fusion, shared_encoder=shared)
    translator = create_model("mr-fusion", preset="tiny", img_size=32, out_chans=1, shared_encoder=shared)
    image = torch.randn(3, 5, 1, 32, 32)
    changed = image.clone()
    changed[~PRESENT] = torch.randn_like(changed[~PRESENT]) * 10
    moved = image.clone()
    moved[0, 2] += 1.0  # present
    for mode in (True, False):
        for net in (model, translator):
            net.train(mode)
            reference = net(image=image, present=PRESENT)["logits"]
            assert torch.equal(reference, net(image=changed, present=PRESENT)["logits"])
            assert not torch.allclose(reference[0], net(image=moved, present=PRESENT)["logits"][0])


def test_missing_protocols_are_masked_out_of_the_attention_not_fed_as_zeros() -> None:
    """A missing protocol's token (zeros plus its learned protocol embedding) would move the others through the
    self-attention if it were a key: changing the embeddings of missing protocols must change nothing."""
    torch.manual_seed(0)
    model = tiny().eval()
    present = torch.tensor([[True, True, False, False, False]])
    image = torch.randn(1, 5, 1, 32, 32)
    reference = model(image=image, present=present)["logits"]
    with torch.no_grad():
        model.fusion.protocol_embed[2:] += torch.randn(3, 16)  # not a constant, which the layer norms remove
    assert torch.equal(reference, model(image=image, present=present)["logits"])
    with torch.no_grad():
        model.fusion.protocol_embed[1] += torch.randn(16)  # a present protocol's embedding does count
    assert not torch.allclose(reference, model(image=image, present=present)["logits"])


def test_cases_without_any_protocol_and_channel_stacks_are_refused() -> None:
    model = tiny()
    present = torch.tensor([[True] * 5, [False] * 5])
    for net in (model, create_model("mr-fusion", preset="tiny", img_size=32, out_chans=1)):
        with pytest.raises(ValueError, match=r"case\(s\) \[1\] of the batch have no protocol present"):
            net(image=torch.randn(2, 5, 1, 32, 32), present=present)
    with pytest.raises(ConfigError, match=r"set data\.options\.stack: protocols"):
        model(image=torch.randn(2, 10, 32, 32))  # the task's stack: channels
    with pytest.raises(ConfigError, match="intra must be one of channel, spatial, both, none"):
        tiny(intra="cbam")
    with pytest.raises(ConfigError, match=r"give num_classes .* or out_chans"):
        create_model("mr-fusion", preset="tiny", num_classes=4, out_chans=1)


def test_a_per_protocol_encoder_holds_one_encoder_per_protocol() -> None:
    shared, separate = tiny(), tiny(shared_encoder=False)
    one = n_params(shared.encoder)
    assert one == 9 * 4 + 2 * 4 + 9 * 4 * 8 + 2 * 8  # two conv-BN stages of 4 and 8 channels
    assert n_params(separate.encoder) == 5 * one and n_params(separate) - n_params(shared) == 4 * one
    assert {k.split(".")[2] for k in separate.state_dict() if k.startswith("encoder.")} == set("01234")


@pytest.mark.parametrize("shared", [True, False])
def test_the_translators_encoder_loads_into_the_stager(shared: bool, tmp_path: Path) -> None:
    translator = create_model("mr-fusion", preset="tiny", img_size=32, out_chans=1, shared_encoder=shared)
    stager = tiny(shared_encoder=shared, fusion="mean", intra="none")  # the stager's own options do not matter
    encoder = {k: v.shape for k, v in translator.state_dict().items() if k.startswith("encoder.")}
    assert encoder == {k: v.shape for k, v in stager.state_dict().items() if k.startswith("encoder.")}
    with torch.no_grad():
        for p in translator.encoder.parameters():
            p.add_(1.0)
    save_atomic({"model": translator.state_dict()}, tmp_path / "pretext" / BEST_CHECKPOINT)
    line = load_init_weights(stager, f"{tmp_path / 'pretext'}:encoder.", "mr-fusion")
    assert line.startswith(f"initialised {len(encoder)} of {len(stager.state_dict())} tensors")
    loaded = stager.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in translator.state_dict().items() if k.startswith("encoder."))
    wider = create_model("mr-fusion", preset="tiny", img_size=32, widths=[4, 16], shared_encoder=shared)
    with pytest.raises(ConfigError, match="that run is of another architecture"):
        load_init_weights(wider, f"{tmp_path / 'pretext'}:encoder.", "mr-fusion")


def blob_cases(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class k: a bright square in protocol k (of 0-3) over noise in all five; protocol 4 missing in half."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(n, 5, 1, 32, 32, generator=gen) * 0.5
    label = torch.arange(n) % 4
    for i in range(n):
        y, x = torch.randint(2, 22, (2,), generator=gen).tolist()
        image[i, label[i], 0, y : y + 8, x : x + 8] += 2.0
    present = torch.ones(n, 5, dtype=torch.bool)
    present[::2, 4] = False
    return image * present[..., None, None, None], present, label


def test_the_fusion_learns_which_protocol_holds_the_blob() -> None:
    """Same blob, told apart only by its protocol: the attention fusion has to use the protocol embedding."""
    torch.manual_seed(0)
    image, present, label = blob_cases(96, seed=0)
    model = tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these small convolutions run slower on two threads of a shared CPU
    try:
        for _ in range(60):
            loss = F.cross_entropy(model(image=image, present=present)["logits"], label)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    test_image, test_present, test_label = blob_cases(64, seed=1)
    with torch.no_grad():
        out = model.eval()(image=test_image, present=test_present)
    accuracy = (out["logits"].argmax(dim=1) == test_label).float().mean().item()
    assert accuracy > 0.75, accuracy  # chance 0.25


@pytest.fixture(scope="module")
def staging_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pretext stage on the phantom's MR-CT pairs, then the stager from its encoder, evaluated."""
    root = tmp_path_factory.mktemp("mr-fusion")
    generate_phantom("onfh-mr-staging", root / "data", n=40, seed=0, subtlety=0.0, image_size=48, unlabelled_pairs=24)

    def config(data: Path, **options: object) -> dict:
        return {
            "task": "onfh-mr-staging",
            "data": {"path": str(data), "options": {"size": [32, 32], "stack": "protocols", **options}},
            "model": {"name": "mr-fusion", "preset": "tiny"},
            "train": {"epochs": 2, "batch_size": 16, "lr": 3e-3, "patience": 0, "threads": 1},
        }

    pretext = train(config_from_dict(config(root / "data" / "pretext", target="ct")), root / "pretext", verbose=False)
    values = config(root / "data")
    values["train"]["init_from"] = f"{pretext}:encoder."
    run = train(config_from_dict(values), root / "staging", verbose=False)
    evaluate_run(run, split="test", n_boot=50)
    return run


def test_both_stages_run_in_the_engine_and_the_protocol_weights_are_saved(staging_run: Path) -> None:
    assert "initialised 12 of" in (staging_run / "train.log").read_text()  # 2 stages x (conv + 5 of BN)
    metrics = json.loads((staging_run / "eval-test" / "metrics.json").read_text())
    assert 0 <= metrics["overall"]["macro_auc"]["estimate"] <= 1
    rows = list(csv.DictReader((staging_run / "eval-test" / "predictions.csv").open()))
    manifest = {r["case_id"]: r for r in csv.DictReader((staging_run.parent / "data" / "manifest.csv").open())}
    protocols = ("t1", "t2", "pdfs", "stir", "t1fs")
    assert rows and any(not all(manifest[r["case_id"]][f"image_{p}"] for p in protocols) for r in rows)
    for row in rows:
        weights = np.load(staging_run / "eval-test" / row["map_protocol_weights"])
        present = np.array([bool(manifest[row["case_id"]][f"image_{p}"]) for p in protocols])
        assert weights.shape == (5,) and abs(weights.sum() - 1) < 1e-2
        assert np.all(weights[~present] == 0) and np.all(weights[present] > 0)


def test_the_plain_vgg_baseline_stacks_the_protocols_as_channels_at_the_fusions_widths() -> None:
    vgg = create_model("mr-vgg", preset="small", in_chans=10)
    fusion = create_model("mr-fusion", preset="small")
    assert vgg(image=torch.randn(2, 10, 64, 64))["logits"].shape == (2, 4)
    widths = [m.out_channels for m in vgg.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths == [m.out_channels for m in fusion.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    with pytest.raises(ConfigError, match="stack: channels"):
        vgg(image=torch.randn(2, 5, 1, 64, 64))
