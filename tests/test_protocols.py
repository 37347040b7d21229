"""Protocols above the loop: k-fold by patient, stages with --init-from, studies on one split with equal
tuning; and the model contract's one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from osteoscope.config import config_from_dict, load_config
from osteoscope.data.manifest import load_manifest
from osteoscope.engine.checkpoint import load_checkpoint
from osteoscope.engine.kfold import cross_validate, fold_splits
from osteoscope.engine.runs import BEST_CHECKPOINT, SPLITS_FILE
from osteoscope.engine.study import load_study, parse_study, run_study
from osteoscope.engine.trainer import train
from osteoscope.errors import ConfigError, OsteoscopeError
from osteoscope.phantoms import generate_phantom

REPO = Path(__file__).resolve().parents[1]


def config(task: str, data: Path, model: str = "timm:test_resnet", epochs: int = 2, **sections: Any) -> dict:
    options = {
        "onfh-mr-staging": {"size": [32, 32]},
        "femur-fracture-xray": {"size": [32, 32], "crop_to_box": True},
        "calcaneus-multilabel": {"size": [32, 40], "mask_as_channel": True},
    }[task]
    values = {
        "task": task,
        "data": {"path": str(data), "options": {**options, **sections.pop("options", {})}},
        "model": {"name": model},
        "train": {
            "epochs": epochs,
            "batch_size": 16,
            "lr": 3e-3,
            "patience": 0,
            "threads": 2,
            **sections.pop("train", {}),
        },
    }
    return {**values, **sections}


@pytest.fixture(scope="module")
def mr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MR staging studies with a pretext set of unlabelled MR-CT pairs in ``pretext/``."""
    root = tmp_path_factory.mktemp("mr")
    generate_phantom("onfh-mr-staging", root, n=60, seed=0, subtlety=0.0, image_size=48, unlabelled_pairs=40)
    return root


@pytest.fixture(scope="module")
def femur(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("femur")
    generate_phantom("femur-fracture-xray", root, n=60, seed=0, subtlety=0.0, image_size=(128, 96), aff_fraction=0.4)
    return root


@pytest.fixture(scope="module")
def calcaneus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("calcaneus")
    generate_phantom("calcaneus-multilabel", root, n=45, seed=0, subtlety=0.0, image_size=(96, 120))
    return root


# --- k-fold ----------------------------------------------------------------------------------------


def test_folds_are_patient_disjoint_and_cover_every_case_once(femur: Path) -> None:
    cfg = config_from_dict(config("femur-fracture-xray", femur))
    splits = fold_splits(cfg, 3)
    patients = {c.case_id: c.patient_id for c in load_manifest(femur).cases}
    tested: list[str] = []
    for assignment in splits:
        held_out = {c for c, part in assignment.items() if part == "test"}
        tested += held_out
        by_part = {
            part: {patients[c.rsplit("_", 1)[0]] for c, p in assignment.items() if p == part}
            for part in ("train", "val", "test")
        }
        assert not by_part["test"] & (by_part["train"] | by_part["val"])
        assert not by_part["train"] & by_part["val"] and by_part["val"]
    every_image = set(splits[0])
    assert sorted(tested) == sorted(every_image)  # each case in exactly one test fold


@pytest.mark.parametrize("task", ["onfh-mr-staging", "calcaneus-multilabel", "femur-fracture-xray"])
def test_kfold_writes_ordinary_runs_and_pools_out_of_fold(
    task: str, mr: Path, calcaneus: Path, femur: Path, tmp_path: Path
) -> None:
    data = {"onfh-mr-staging": mr, "calcaneus-multilabel": calcaneus, "femur-fracture-xray": femur}[task]
    summary = cross_validate(config_from_dict(config(task, data, epochs=1)), tmp_path, k=3, n_boot=50, verbose=False)
    headline = {"onfh-mr-staging": "macro_auc", "calcaneus-multilabel": "map", "femur-fracture-xray": "auc"}[task]
    assert len(summary["per_fold"]) == 3 and summary["folds"][headline]["n_folds"] == 3
    assert summary["folds"][headline]["sd"] >= 0  # mean ± SD over folds
    pooled = summary["pooled"][headline]
    assert pooled["low"] <= pooled["estimate"] <= pooled["high"]  # pooled out-of-fold interval
    scored = []
    for i in (1, 2, 3):
        run = tmp_path / f"fold-{i}"
        assert (run / BEST_CHECKPOINT).is_file() and (run / "eval-test" / "metrics.json").is_file()
        scored += [r["case_id"] for r in csv.DictReader((run / "eval-test" / "predictions.csv").open())]
    assert len(scored) == len(set(scored)) == summary["n_cases"]
    assert "Pooled out-of-fold" in (tmp_path / "report.md").read_text()


# --- stages ----------------------------------------------------------------------------------------


def _parameters(run: Path, prefix: str, names: set[str]) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run / BEST_CHECKPOINT)["model"]
    return {k: v for k, v in state.items() if k.startswith(prefix) and k in names}


@pytest.fixture(scope="module")
def pretext_run(mr: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MR -> CT pretext stage, trained on the unlabelled pairs alone."""
    values = config("onfh-mr-staging", mr / "pretext", options={"target": "ct"})
    run = tmp_path_factory.mktemp("stages") / "pretext"
    return train(config_from_dict(values), run, verbose=False)


def test_pretext_stage_trains_on_unlabelled_pairs_and_minimises_its_error(pretext_run: Path, mr: Path) -> None:
    assert not any(c.startswith("label") for c in load_manifest(mr / "pretext").columns)
    history = [json.loads(line) for line in (pretext_run / "history.jsonl").read_text().splitlines()]
    best = load_checkpoint(pretext_run / BEST_CHECKPOINT)
    assert best["monitor"] == "val_mae"
    assert best["value"] == min(r["val_mae"] for r in history)  # selected by the lowest validation error
    assert history[-1]["train_l1"] < history[0]["train_l1"]
    figure = pretext_run / "translations.png"  # held-out inputs, predicted and true CT
    assert figure.stat().st_size > 10_000 and "held-out translations" in (pretext_run / "train.log").read_text()


def test_second_stage_starts_from_the_pretext_encoder(pretext_run: Path, mr: Path, tmp_path: Path) -> None:
    from osteoscope.engine.runs import build_run_model, task_of

    values = config("onfh-mr-staging", mr, epochs=1, train={"lr": 0.0, "init_from": f"{pretext_run}:backbone."})
    run = train(config_from_dict(values), tmp_path / "staging", verbose=False)
    cfg = config_from_dict(values)
    names = {n for n, _ in build_run_model(cfg, task_of(cfg)).named_parameters()}
    before, after = _parameters(pretext_run, "backbone.", names), _parameters(run, "backbone.", names)
    assert before and set(before) <= set(after)
    assert all(torch.equal(before[k], after[k]) for k in before)  # lr 0: the stage kept the loaded encoder
    loaded = sum(k.startswith("backbone.") for k in load_checkpoint(pretext_run / BEST_CHECKPOINT)["model"])
    assert f"initialised {loaded} of" in (run / "train.log").read_text()


def test_init_from_errors_name_the_problem(pretext_run: Path, mr: Path, tmp_path: Path) -> None:
    values = config("onfh-mr-staging", mr, epochs=1, train={"init_from": f"{pretext_run}:encoder."})
    with pytest.raises(ConfigError, match=r"no tensor of .*best.pt starts with 'encoder.' \(its prefixes: backbone"):
        train(config_from_dict(values), tmp_path / "a", verbose=False)
    assert not (tmp_path / "a").exists()  # nothing written for a run that could not start
    other = config(
        "onfh-mr-staging", mr, model="timm:test_efficientnet", epochs=1, train={"init_from": f"{pretext_run}:backbone."}
    )
    with pytest.raises(ConfigError, match="that run is of another architecture"):
        train(config_from_dict(other), tmp_path / "b", verbose=False)


def test_a_stage_that_saw_test_patients_is_refused(mr: Path, tmp_path: Path) -> None:
    """MR-CT pairs of the labelled patients, split another way: the pretext trained on some of the stager's test
    patients, so joining the stages is leakage; the unlabelled pretext set of other patients joins fine."""
    leaky = config("onfh-mr-staging", mr, epochs=1, options={"target": "ct"})
    leaky["data"]["split_seed"] = 7
    pretext = train(config_from_dict(leaky), tmp_path / "leaky-pretext", verbose=False)
    values = config("onfh-mr-staging", mr, epochs=1, train={"init_from": f"{pretext}:backbone."})
    with pytest.raises(ConfigError, match=r"trained or validated on \d+ patient\(s\) of this run's test split"):
        train(config_from_dict(values), tmp_path / "staging", verbose=False)


# --- studies ---------------------------------------------------------------------------------------


def study_values(data: Path) -> dict[str, Any]:
    base = config("femur-fracture-xray", data, epochs=2)
    return {
        "title": "tiny study",
        "task": base["task"],
        "data": base["data"],
        "train": {k: v for k, v in base["train"].items() if k != "lr"},
        "tuning": {"lr": [1e-3, 3e-3]},
        "reference": "resnet",
        "readers": {"radiologist": {"sensitivity": 0.8, "specificity": 0.7}},
        "n_boot": 100,
        "models": {
            "resnet": {"model": {"name": "timm:test_resnet"}},
            "effnet": {"model": {"name": "timm:test_efficientnet"}},
        },
    }


@pytest.fixture(scope="module")
def study(femur: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("study")
    return out, run_study(parse_study(study_values(femur)), out, verbose=False, threads=1)


def test_study_gives_every_model_the_same_split_and_grid(study: tuple[Path, dict]) -> None:
    out, summary = study
    shared = (out / SPLITS_FILE).read_text()
    for model in ("resnet", "effnet"):
        runs = sorted(p for p in (out / model).iterdir() if p.is_dir())
        assert [p.name for p in runs] == ["lr-0.001", "lr-0.003"]
        for run in runs:
            assert (run / SPLITS_FILE).read_text() == shared
            assert load_config(run / "config.yaml").train.lr == float(run.name.removeprefix("lr-"))
        points = summary["tuning"]["per_model"][model]["points"]
        chosen = summary["tuning"]["per_model"][model]["chosen"]
        assert points[chosen]["value"] == max(p["value"] for p in points.values())  # chosen on validation


def test_study_report_has_paired_tests_and_compute_cost(study: tuple[Path, dict]) -> None:
    out, summary = study
    [overall] = [c for c in summary["comparisons"] if c["subset"] == "all test cases"]
    assert overall["test"] == "DeLong" and 0 <= overall["p_value"] <= 1 and "p_value" in overall["mcnemar"]
    for cost in summary["costs"].values():
        assert cost["params_m"] > 0 and cost["gflops_per_case"] > 0 and cost["infer_ms_per_case"] > 0
        assert cost["peak_mib"] > cost["step_peak_mib"] > 0 and cost["disk_mb"] > 0 and cost["train_s_per_epoch"] > 0
    report = (out / "report.md").read_text()
    for part in ("Paired tests against the reference", "DeLong (auc)", "Compute cost", "GFLOPs", "chosen"):
        assert part in report


def test_study_report_html_compares_the_models_and_renders(study: tuple[Path, dict], tmp_path: Path) -> None:
    from test_report_html import assert_self_contained

    out, summary = study
    per_model = {f"{m}-{plot}" for m in ("resnet", "effnet") for plot in ("reliability", "confusion")}
    assert {"roc", "pr", *per_model} == set(summary["plots"])
    report = (out / "report.md").read_text()
    assert summary["readers"] == {"radiologist": {"sensitivity": 0.8, "specificity": 0.7}}
    assert "radiologist: sensitivity 0.800, specificity 0.700" in report
    assert "![roc](roc.png)" in report and "![training](training.png)" in report  # all models in one figure each
    assert "by osteoscope" in report and summary["provenance"]["manifest"]["sha256"] in report
    assert_self_contained(out / "report.html", tmp_path)


def test_study_resumes_run_by_run_and_checks_the_split(study: tuple[Path, dict], femur: Path) -> None:
    out, summary = study
    history = out / "effnet" / "lr-0.001" / "history.jsonl"
    stamp = history.stat().st_mtime_ns
    again = run_study(parse_study(study_values(femur)), out, verbose=False, threads=1)
    assert history.stat().st_mtime_ns == stamp  # nothing retrained
    assert again["results"].keys() == summary["results"].keys()
    splits = out / "effnet" / "lr-0.003" / SPLITS_FILE
    rows = splits.read_text().splitlines()
    first = rows[1].rsplit(",", 1)
    rows[1] = f"{first[0]},{'val' if first[1] == 'train' else 'train'}"
    splits.write_text("\n".join(rows) + "\n")
    with pytest.raises(OsteoscopeError, match=r"a split that differs from the run.s splits\.csv for 1 case"):
        run_study(parse_study(study_values(femur)), out, verbose=False, threads=1)


def test_study_files_refuse_unequal_budgets(tmp_path: Path) -> None:
    values = study_values(tmp_path)
    values["models"]["effnet"]["train"] = {"epochs": 50}
    with pytest.raises(ConfigError, match="'train' cannot differ between models"):
        parse_study(values)
    (tmp_path / "s.yaml").write_text("task: femur-fracture-xray\nmodels: {a: {}}\ntuning: {lrate: [1]}\n")
    with pytest.raises(ConfigError, match="tuning key"):
        load_study(tmp_path / "s.yaml")
    for readers, message in (({"r": {"sensitivity": 1.2, "specificity": 0.5}}, "proportions"), ({"r": 0.8}, "exactly")):
        with pytest.raises(ConfigError, match=message):
            parse_study({**study_values(tmp_path), "readers": readers})


# --- the model contract ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "options", "message"),
    [
        (
            "ast",
            {},
            "model ast needs the input(s) left, right, which task femur-fracture-xray does not give "
            "(its samples hold: image)",
        ),
        (
            "timm:test_resnet",
            {"num_classes": 3},
            "3), but task femur-fracture-xray has a binary head (NFF, AFF) that needs (batch,) or (batch, 1)",
        ),
    ],
)
def test_models_that_do_not_fit_the_task_fail_in_one_line(
    femur: Path, tmp_path: Path, model: str, options: dict, message: str
) -> None:
    cli = [sys.executable, "-c", "from osteoscope.cli import main; main()"]
    args = [
        "train",
        "--data",
        str(femur),
        "--model",
        model,
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--set",
        "task=femur-fracture-xray",
        "--set",
        "data.options={size: [32, 32]}",
        "--set",
        f"model.options={json.dumps(options)}",
    ]
    result = subprocess.run([*cli, *args], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2, result.stderr
    error = result.stderr.strip().splitlines()[-1]  # the lines before are the run's log
    assert error.startswith("error: ") and message in error and "Traceback" not in result.stderr


def test_study_map_table_has_a_row_per_model_with_intervals_and_plain_figures() -> None:
    from osteoscope.engine.study import maps_section

    def scored(mass: float) -> dict[str, Any]:
        return {"cases": 7, "chance": 0.25, "attention_mass": {"estimate": mass, "low": mass - 0.1, "high": mass + 0.1}}

    results = {"a": {"maps": {"Attention": scored(0.6)}}, "b": {"maps": {"Attention": scored(0.3)}}, "c": {}}
    lines = maps_section(results).splitlines()
    header = [cell.strip() for cell in lines[2].split("|")[1:-1]]
    assert lines[0] == "## Attention" and header == ["model", "attention mass", "chance", "cases"]
    assert [line.split("|")[1].strip() for line in lines[4:]] == ["a", "b"]  # c has no maps: no row
    assert "0.600 [0.500, 0.700]" in lines[4] and "0.250" in lines[4] and lines[4].rstrip("| ").endswith("7")

    accounts = {
        name: {"maps": {"Weights": {"cases": 3, "t1": 0.5, "markdown": f"per stage of {name}"}}} for name in "ab"
    }
    text = maps_section(accounts)
    assert "### Weights: a\n\nper stage of a" in text and "### Weights: b\n\nper stage of b" in text
    with_figures = {"a": {"maps": {"Attention": {**scored(0.6), "markdown": "![case](attention/c.png)"}}}}
    assert "attention/c.png" not in maps_section(with_figures)  # would not resolve from the study folder


def test_study_trains_a_stage_once_and_its_variants_start_from_it(mr: Path, tmp_path: Path) -> None:
    """A pretext stage on the unlabelled pairs, a model with a scratch and a pretrained variant, and a contrast
    between the two: the pretrained variant loads the stage's encoder, the scratch one does not."""
    base = config("onfh-mr-staging", mr, epochs=1)
    values = {
        "task": base["task"],
        "data": base["data"],
        "train": {k: v for k, v in base["train"].items() if k != "lr"},
        "tuning": {"lr": [1e-3]},
        "n_boot": 50,
        "stages": {
            "pretext": {
                "data": {"path": str(mr / "pretext"), "options": {"target": "ct"}},
                "model": {"name": "timm:test_resnet"},
            }
        },
        "models": {
            "resnet": {
                "model": {"name": "timm:test_resnet"},
                "variants": {"scratch": {}, "ssl": {"init_from": "pretext:backbone."}},
            },
            "effnet": {"model": {"name": "timm:test_efficientnet"}},
        },
        "reference": "resnet-scratch",
        "contrasts": [["resnet-scratch", "resnet-ssl"], ["resnet-ssl", "effnet"]],  # the first one is already in
    }
    summary = run_study(parse_study(values), tmp_path, verbose=False, threads=1)
    stage = tmp_path / "stages" / "pretext"
    assert summary["stages"]["pretext"]["monitor"] == "val_mae" and (stage / "translations.png").is_file()
    assert f"from {stage}/best.pt" in (tmp_path / "resnet-ssl" / "lr-0.001" / "train.log").read_text()
    assert "initialised" not in (tmp_path / "resnet-scratch" / "lr-0.001" / "train.log").read_text()
    tests = [
        (c["model"], c["reference"], c["metric"]) for c in summary["comparisons"] if c["subset"] == "all test cases"
    ]
    assert tests == [
        ("resnet-ssl", "resnet-scratch", "macro_auc"),
        ("effnet", "resnet-scratch", "macro_auc"),
        ("resnet-ssl", "effnet", "macro_auc"),
    ]
    report = (tmp_path / "report.md").read_text()
    assert "## Stages" in report and "stages/pretext/translations.png" in report and "resnet-ssl vs effnet" in report

    with pytest.raises(ConfigError, match=r"init_from 'other:backbone\.' names no stage of the study"):
        parse_study(
            {**values, "models": {"m": {"model": {"name": "timm:test_resnet"}, "init_from": "other:backbone."}}}
        )
    with pytest.raises(ConfigError, match="study contrast"):
        parse_study({**values, "contrasts": [["resnet-ssl", "nosuch"]]})
