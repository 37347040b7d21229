"""SRANet: patch order, Eq. 7 and its all-equal guard, Eq. 8's overlap, Eq. 12 by hand, learning, and the
engine end to end on the CT phantom with its attention scored against the lesion."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from osteoscope.config import config_from_dict
from osteoscope.engine.evaluate import evaluate_run
from osteoscope.engine.trainer import train
from osteoscope.errors import ConfigError, DataError
from osteoscope.losses import BinaryLoss, StructureRegularizedLoss
from osteoscope.models import create_model
from osteoscope.models.sranet import min_shift_weights, patch_overlap, to_patches
from osteoscope.phantoms import generate_phantom


def test_patches_follow_the_public_loaders_order() -> None:
    volume = torch.zeros(1, 1, 4, 4, 4)
    for i in range(2):
        for j in range(2):
            for k in range(2):
                volume[0, 0, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, 2 * k : 2 * k + 2] = 4 * i + 2 * j + k
    patches = to_patches(volume, 2)
    assert patches.shape == (1, 8, 1, 2, 2, 2)
    assert [int(p.unique()) for p in patches[0]] == list(range(8))  # depth outer, width inner
    with pytest.raises(ConfigError, match="equal patches"):
        to_patches(torch.zeros(1, 1, 4, 4, 6), 4)


def test_overlap_marks_patches_touching_the_mask() -> None:
    mask = torch.zeros(1, 1, 4, 4, 4)
    mask[0, 0, 3, 0, 1] = 1  # depth patch 1, height patch 0, width patch 0 -> index 4
    assert patch_overlap(mask, 2).tolist() == [[0, 0, 0, 0, 1, 0, 0, 0]]


def test_min_shift_normalisation_and_its_all_equal_guard() -> None:
    weights = min_shift_weights(torch.tensor([[1.0, 2.0, 4.0], [3.0, 3.0, 3.0]]))
    assert weights[0].tolist() == pytest.approx([0.0, 0.25, 0.75])  # (g - min) / sum(g - min)
    assert weights[1].tolist() == pytest.approx([1 / 3] * 3)  # all equal: uniform, not 0/0


def test_structure_regularised_loss_by_hand() -> None:
    outputs = {
        "logits": torch.tensor([0.0, 2.0]),
        "aux": {
            "structure_logits": torch.tensor([[0.0, 1.0], [-1.0, 0.0]]),
            "structure_targets": torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        },
    }
    batch = {"label": torch.tensor([1.0, 0.0])}
    l_c = (math.log(2) + (2 + math.log(1 + math.exp(-2)))) / 2  # BCE of logit 0 for 1, logit 2 for 0
    softplus = [math.log(2), math.log(1 + math.e), math.log(1 + math.exp(-1)), math.log(2)]
    l_s = sum(softplus) / 4  # BCE(0;1), BCE(1;0), BCE(-1;0), BCE(0;1)
    total, parts = StructureRegularizedLoss(BinaryLoss(), alpha=0.3)(outputs, batch)
    assert float(total) == pytest.approx(0.3 * l_c + 0.7 * l_s)
    assert parts["structure"] == pytest.approx(l_s) and parts["bce"] == pytest.approx(l_c)
    assert parts["bone_patches"] == 0.5  # two of the four patches overlap the bone
    plain, parts = StructureRegularizedLoss(BinaryLoss(), alpha=0.3)({"logits": outputs["logits"]}, batch)
    assert float(plain) == pytest.approx(l_c) and parts["structure"] == 0.0  # a baseline: l_c alone
    assert "bone_patches" not in parts


def test_forward_gives_maps_and_works_without_a_mask() -> None:
    model = create_model("sranet", preset="tiny", img_size=32, grid=2, num_classes=5)
    out = model(image=torch.randn(3, 1, 32, 32, 32))
    attention = out["maps"]["attention"]
    assert out["logits"].shape == (3, 5) and attention.shape == (3, 1, 2, 2, 2)
    assert torch.all(attention >= 0) and torch.allclose(attention.sum((1, 2, 3, 4)), torch.ones(3))
    assert "structure_targets" not in out["aux"] and out["aux"]["structure_logits"].shape == (3, 8)
    resnet = create_model("sranet", preset="tiny", img_size=32, grid=2, encoder="resnet", structure_score="head")
    assert resnet(image=torch.randn(1, 1, 32, 32, 32))["logits"].shape == (1, 1)
    with pytest.raises(ConfigError, match="too small"):
        create_model("sranet", img_size=32, grid=4)  # 8^3 patches cannot take two 5^3 convolutions


def test_seed_sized_sranet_matches_the_attentiondeepmil_widths() -> None:
    literal = create_model("sranet", img_size=128, norm="none")  # Eq. 1-2 as printed
    assert sum(p.numel() for p in literal.parameters()) == 3_381_956  # 12.9 MB in float32; the seed: 26 MB
    model = create_model("sranet", img_size=128)  # the default adds a batch norm after each convolution
    assert sum(p.numel() for p in model.parameters()) == 3_381_956 + 2 * (20 + 50)
    kinds = [type(layer).__name__ for layer in model.encoder.blocks]
    assert kinds == ["Conv3d", "BatchNorm3d", "ReLU", "MaxPool3d"] * 2
    with pytest.raises(ConfigError, match="norm must be one of batch, none"):
        create_model("sranet", img_size=128, norm="layer")


def test_sranet_learns_where_the_bright_cube_is() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 32, 32, 32, generator=gen) * 0.5
    y = (torch.arange(64) % 2).float()
    for i in range(0, 64, 2):
        corner = torch.randint(0, 2, (3,), generator=gen) * 16 + 4
        z0, y0, x0 = corner.tolist()
        x[i + 1, 0, z0 : z0 + 6, y0 : y0 + 6, x0 : x0 + 6] += 2.0
    model = create_model("sranet", preset="tiny", img_size=32, grid=2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        loss = F.binary_cross_entropy_with_logits(model(image=x)["logits"][:, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.35, loss.item()  # from ln 2 = 0.69


@pytest.fixture(scope="module")
def sranet_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sranet")
    generate_phantom("avnfh-ct", root / "data", n=60, seed=0, subtlety=0.0, voxel_scale=3.0)
    no_spatial = {"flip_axes": [], "rotate_deg": 0.0, "scale": 0.0, "translate": 0.0, "crop": 0.0}
    config = {
        "task": "avnfh-ct",
        "data": {"path": str(root / "data"), "options": {"size": [32, 32, 32], **no_spatial}},
        "model": {"name": "sranet", "preset": "tiny", "options": {"grid": 2}},
        "loss": {"options": {"alpha": 0.5}},
        "train": {"epochs": 3, "batch_size": 16, "lr": 3e-3, "patience": 0, "threads": 2},
    }
    run = train(config_from_dict(config), root / "run", verbose=False)
    evaluate_run(run, split="test", n_boot=200)
    return run


def test_sranet_trains_in_the_engine_and_its_attention_is_scored(sranet_run: Path) -> None:
    """The engine's mechanics with SRANet (masks reach the loss, maps are saved and scored); learning itself is
    the test above: at 32^3 this tiny SRANet needs far more epochs than a test can give to beat chance here."""
    metrics = json.loads((sranet_run / "eval-test" / "metrics.json").read_text())
    history = [json.loads(line) for line in (sranet_run / "history.jsonl").read_text().splitlines()]
    assert all(row["train_structure"] > 0 for row in history)  # the bone mask reached the regulariser
    assert all(0 < row["train_bone_patches"] <= 1 for row in history)
    assert history[-1]["train_total"] < history[0]["train_total"]
    scored = metrics["maps"]["Patch attention against the lesion"]
    assert scored["cases"] > 0 and 0 <= scored["attention_mass"]["estimate"] <= 1
    assert 0 < scored["chance"] < 1
    figures = list((sranet_run / "eval-test" / "attention").glob("*.png"))
    assert figures and "Patch attention against the lesion" in (sranet_run / "eval-test" / "report.md").read_text()


def test_explain_draws_the_attention_of_a_dataset_case_and_of_a_raw_ct(sranet_run: Path, tmp_path: Path) -> None:
    """``osteoscope explain``: a dataset case by its id (lesion outlined), and a CT file with its box given as
    for predict, each with the model's score and its attention figure; a model without maps is refused."""
    from osteoscope.cli import app
    from osteoscope.data.manifest import format_box, load_manifest
    from osteoscope.engine.explain import explain_cases

    cases = load_manifest(sranet_run.parent / "data").cases
    positive = next(c for c in cases if c.labels["label"] == 1 and (c.stage or 0) >= 2)
    [result] = explain_cases(sranet_run, tmp_path / "by-id", case_ids=[positive.case_id])
    assert result["case"] == positive.case_id and 0.0 <= result["scores"]["probability"] <= 1.0
    assert Path(result["figures"][0]).stat().st_size > 5000
    with pytest.raises(DataError, match="not in the dataset: nosuch"):
        explain_cases(sranet_run, tmp_path, case_ids=["nosuch"])

    args = ["explain", str(sranet_run), str(positive.images["image"]), "--box", format_box(positive.boxes["box"])]
    outcome = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "raw")])
    assert outcome.exit_code == 0, outcome.output
    [raw] = json.loads(outcome.stdout)
    assert raw["scores"]["probability"] == pytest.approx(result["scores"]["probability"], abs=1e-4)
    assert len(list((tmp_path / "raw").glob("*_attention.png"))) == 1


def test_the_shipped_config_holds_the_seeds_training_settings() -> None:
    from osteoscope.config import load_config
    from osteoscope.engine.loop import lr_factor

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "avnfh-ct-sranet.yaml")
    t = config.train
    assert (t.epochs, t.lr, t.weight_decay, t.schedule, t.step_epochs, t.step_gamma) == (
        200,
        1e-4,
        1e-4,
        "step",
        50,
        0.1,
    )
    assert config.model.name == "sranet" and config.data.options["size"] == [128, 128, 128]
    steps = 10  # per epoch: the rate is 1e-4 for epochs 0-49, 1e-5 for 50-99, ...
    factors = [lr_factor(epoch * steps, 200 * steps, 0, "step", 50 * steps, 0.1) for epoch in (0, 49, 50, 100, 199)]
    assert factors == pytest.approx([1.0, 1.0, 0.1, 0.01, 0.001])


def test_the_ct_study_holds_tables_two_and_three() -> None:
    from osteoscope.engine.study import load_study

    study = load_study(Path(__file__).resolve().parents[1] / "configs" / "studies" / "avnfh-ct.yaml")
    assert study.reference == "sranet" and study.readers == {"orthopaedic surgeon (seed Fig. 3)": (0.95, 0.85)}
    alphas = {name: m.get("loss", {}).get("options", {}).get("alpha") for name, m in study.models.items()}
    assert alphas["sranet-no-regulariser"] == alphas["sranet-resnet-no-regulariser"] == 1.0
    assert {"vgg3d", "mixer3d", "vit3d", "resnet3d"} <= set(study.models)  # Table II's baselines
