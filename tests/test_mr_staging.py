"""MR staging beyond the model: protocols dropped at test time, the inter-modality weights per stage, and the
seed's ablation as a study file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from osteoscope.config import config_from_dict
from osteoscope.data.manifest import load_manifest
from osteoscope.engine.evaluate import evaluate_run
from osteoscope.engine.trainer import train
from osteoscope.phantoms import generate_phantom
from osteoscope.tasks import make_task
from osteoscope.tasks.onfh_mr_staging import STAGES, protocol_weights_by_stage

REPO = Path(__file__).resolve().parents[1]
PROTOCOLS = ("t1", "t2", "pdfs", "stir", "t1fs")


@pytest.fixture(scope="module")
def mr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mr")
    generate_phantom("onfh-mr-staging", root, n=60, seed=1, subtlety=0.0, image_size=48, unlabelled_pairs=0)
    return root


def test_dropping_a_protocol_keeps_a_case_that_has_no_other() -> None:
    from osteoscope.data.manifest import Case

    task = make_task("onfh-mr-staging")
    variants = task.test_variants()
    assert list(variants) == [f"without {p}" for p in PROTOCOLS]
    both = Case("c", "p", images={"image_t1": Path("a.png"), "image_t2": Path("b.png")}, labels={"label": 1})
    assert set(variants["without t1"](both).images) == {"image_t2"}
    only = Case("c", "p", images={"image_t1": Path("a.png")}, labels={"label": 1})
    assert variants["without t1"](only) is only


def test_evaluation_scores_the_model_with_each_protocol_dropped(mr: Path, tmp_path: Path) -> None:
    values = {
        "task": "onfh-mr-staging",
        "data": {"path": str(mr), "options": {"size": [32, 32]}},
        "model": {"name": "timm:test_resnet"},
        "train": {"epochs": 3, "batch_size": 16, "lr": 3e-3, "patience": 0, "threads": 2},
    }
    run = train(config_from_dict(values), tmp_path / "run", verbose=False)
    metrics = evaluate_run(run, split="test", n_boot=50)
    robustness = metrics["robustness"]
    assert list(robustness) == [f"without {p}" for p in PROTOCOLS]
    changed = [r["versus_unchanged"]["difference"] for r in robustness.values()]
    assert all(r["versus_unchanged"]["metric"] == "macro_auc" for r in robustness.values())
    assert any(abs(d) > 1e-6 for d in changed)  # the model's scores move when a protocol is taken away
    report = (run / "eval-test" / "report.md").read_text()
    assert "## Robustness: test cases changed at test time" in report and "without stir" in report


def test_protocol_weights_are_summarised_per_stage(mr: Path, tmp_path: Path) -> None:
    cases = [c for c in load_manifest(mr).cases][:12]
    files = []
    for i, case in enumerate(cases):  # stage k puts all weight on protocol k
        weights = np.zeros(len(PROTOCOLS), np.float16)
        weights[int(case.labels["label"])] = 1.0
        files.append(tmp_path / f"{i}.npy")
        np.save(files[-1], weights)
    result = protocol_weights_by_stage(cases, files, PROTOCOLS)
    labels = [int(c.labels["label"]) for c in cases]
    assert result.metrics["cases"] == 12
    assert result.metrics["t1"] == pytest.approx(labels.count(0) / 12)
    first = next(k for k in range(4) if k in labels)
    row = next(line for line in result.markdown.splitlines() if line.startswith(f"| {STAGES[first]} ("))
    assert row.split("|")[2 + first].strip() == "1.000"


def test_the_mr_study_holds_the_seeds_ablation() -> None:
    """SSL on/off x fusion on/off and the plain VGG, one grid; the SSL arms start from the pretext stage's
    encoder, which is the arms' own (same model and preset); the contrasts isolate each factor."""
    from osteoscope.engine.study import load_study, run_config, stage_config

    study = load_study(REPO / "configs" / "studies" / "onfh-mr-staging.yaml")
    assert set(study.models) == {"fusion-ssl", "fusion-scratch", "no-fusion-ssl", "no-fusion-scratch", "vgg"}
    assert study.reference == "vgg" and study.inits == dict.fromkeys(
        ("fusion-ssl", "no-fusion-ssl"), "pretext:encoder."
    )
    pretext = stage_config(study, "pretext")
    assert pretext.data.options["target"] == "ct" and pretext.data.path.endswith("pretext")
    for name in study.models:
        config = run_config(study, name, study.grid()[0])
        if name != "vgg":
            assert (config.model.name, config.model.preset) == (pretext.model.name, pretext.model.preset)
    ablation = {frozenset(pair) for pair in study.contrasts}
    assert frozenset(("fusion-ssl", "fusion-scratch")) in ablation  # SSL, fusion on
    assert frozenset(("fusion-scratch", "no-fusion-scratch")) in ablation  # fusion, SSL off
