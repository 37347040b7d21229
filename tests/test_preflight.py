"""Checks before training (issue 9): unread columns, box sides, classes and sizes of the splits, resume with
changed options, model names before anything is written, and errors that reach train.log."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from osteoscope.config import config_from_dict, load_config
from osteoscope.data.manifest import Case, unread_columns
from osteoscope.engine.catalog import model_entries
from osteoscope.engine.evaluate import evaluate_run
from osteoscope.engine.kfold import cross_validate
from osteoscope.engine.preflight import MIN_PATIENTS, check_splits, split_counts
from osteoscope.engine.runs import CONFIG_FILE, HISTORY_FILE, LAST_CHECKPOINT, LOG_FILE, SPLITS_FILE
from osteoscope.engine.study import parse_study, run_study
from osteoscope.engine.trainer import train
from osteoscope.errors import ConfigError, DataError
from osteoscope.phantoms import generate_phantom
from osteoscope.tasks import make_task

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from osteoscope.cli import main; main()"]
Rows = list[dict[str, str]]


def tiny_config(data: Path, epochs: int = 1, **sections: dict) -> dict:
    values = {
        "data": {"path": str(data), "options": {"roi_size": 32}},
        "model": {"name": "ast", "preset": "tiny"},
        "train": {"epochs": epochs, "batch_size": 16, "patience": 0, "threads": 2},
    }
    for section, changes in sections.items():
        values[section] = {**values[section], **changes}
    return values


@pytest.fixture(scope="module")
def hips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hips")
    generate_phantom("onfh-xray", out, n=40, seed=3, subtlety=0.0, image_size=(96, 128))
    return out


def edited(source: Path, target: Path, edit: Callable[[Rows], Rows] = lambda rows: rows, **renamed: str) -> Path:
    """A copy of a manifest (absolute file paths) with its rows edited and columns renamed old=new."""
    rows = list(csv.DictReader((source / "manifest.csv").open()))
    for row in rows:
        for column in ("image", "mask_left", "mask_right"):
            row[column] = str(source / row[column]) if row[column] else ""
    rows = [{renamed.get(k, k): v for k, v in row.items()} for row in edit(rows)]
    target.mkdir(parents=True, exist_ok=True)
    with (target / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return target


def log_of(run: Path) -> str:
    return (run / LOG_FILE).read_text()


# --- finding 7: columns no task reads -----------------------------------------------------------------


def test_unread_columns_are_matched_to_the_known_column_the_header_lacks() -> None:
    known = make_task("onfh-xray").schema.columns
    header = ["case_id", "patient_id", "image", "label", "stages", "box_lft", "box_right", "subtlety", "side"]
    assert unread_columns(header, known) == {"stages": "stage", "box_lft": "box_left", "subtlety": None}
    # a column whose near namesake is already in the header is not taken for a typo of it
    assert unread_columns([*header, "stage"], known)["stages"] is None


def test_a_misspelt_optional_column_is_a_warning_naming_the_nearest(hips: Path, tmp_path: Path) -> None:
    data = edited(hips, tmp_path / "data", stage="stages")
    run = train(config_from_dict(tiny_config(data)), tmp_path / "run", verbose=False)
    text = log_of(run)
    assert "manifest column 'stages' is not read by onfh-xray: did you mean 'stage'?" in text
    assert "not read by onfh-xray (kept as they are): mask_left, mask_right, subtlety" in text
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("osteoscope").addHandler(handler)
    try:
        evaluate_run(run, n_boot=20)  # an evaluation (e.g. of an external set) checks the columns too
    finally:
        logging.getLogger("osteoscope").removeHandler(handler)
    assert "manifest column 'stages' is not read by onfh-xray: did you mean 'stage'?" in [
        r.getMessage() for r in records if r.levelno == logging.WARNING
    ]


def test_a_misspelt_box_column_is_named_in_the_missing_box_error(hips: Path, tmp_path: Path) -> None:
    data = edited(hips, tmp_path / "data", box_left="box_lft")
    with pytest.raises(DataError, match=r"case '.+': no box_left/box_right given.*column box_lft is not read: did you"):
        train(config_from_dict(tiny_config(data)), tmp_path / "run", verbose=False)
    text = log_of(tmp_path / "run")
    assert "did you mean 'box_left'?" in text and "run stopped: case" in text


# --- finding 8: boxes on the wrong side ----------------------------------------------------------------


def test_swapped_head_boxes_are_a_warning_with_count_and_examples(hips: Path, tmp_path: Path) -> None:
    swapped = ["", "", ""]

    def swap_three(rows: Rows) -> Rows:
        for i, row in enumerate(rows[:3]):
            row["box_left"], row["box_right"] = row["box_right"], row["box_left"]
            swapped[i] = row["case_id"]
        return rows

    data = edited(hips, tmp_path / "data", swap_three)
    run = train(config_from_dict(tiny_config(data)), tmp_path / "run", verbose=False)
    line = next(line for line in log_of(run).splitlines() if "box_left left of box_right" in line)
    assert "WARNING 3 of 40 case(s)" in line and all(case in line for case in swapped)


def test_the_phantom_follows_the_ap_side_convention(hips: Path) -> None:
    cases = load_cases(hips)
    assert len(cases) == 40 and make_task("onfh-xray").check(cases) == []


def load_cases(data: Path) -> list[Case]:
    from osteoscope.engine.runs import load_task_manifest

    return load_task_manifest(make_task("onfh-xray"), data, skip_bad=False).cases


# --- findings 11 and 12: classes and sizes of the splits -----------------------------------------------


def test_a_val_split_without_a_class_fails_before_any_epoch_and_a_retry_is_not_blocked(
    hips: Path, tmp_path: Path
) -> None:
    def negatives_in_val(rows: Rows) -> Rows:
        positive = {row["patient_id"] for row in rows if row["label"] == "1"}
        healthy = sorted({row["patient_id"] for row in rows} - positive)
        for row in rows:
            row["split"] = "val" if row["patient_id"] in healthy[::2] else "train"
        return rows

    data = edited(hips, tmp_path / "one-class", negatives_in_val)
    run = tmp_path / "run"
    with pytest.raises(DataError, match=r"the val split \(the manifest's split column\) has no case of ONFH: val \d+"):
        train(config_from_dict(tiny_config(data, epochs=3)), run, verbose=False)
    assert not (run / LAST_CHECKPOINT).exists() and not (run / HISTORY_FILE).exists()
    text = log_of(run)
    assert "split from the manifest's split column" in text
    assert "ERROR run stopped: the val split (the manifest's split column) has no case of ONFH" in text
    fixed = train(config_from_dict(tiny_config(hips)), run, verbose=False)  # same --out, drawn split
    assert (fixed / LAST_CHECKPOINT).is_file()
    assert "split from patients drawn by data.split_seed 0 (fractions 0.6/0.2/0.2)" in log_of(fixed)


def test_tiny_splits_are_a_warning_with_their_counts(hips: Path, tmp_path: Path) -> None:
    run = train(config_from_dict(tiny_config(hips)), tmp_path / "run", verbose=False)
    splits = list(csv.DictReader((run / SPLITS_FILE).open()))
    test = [row for row in splits if row["split"] == "test"]
    patients = len({row["patient_id"] for row in test})
    assert patients < MIN_PATIENTS
    line = next(line for line in log_of(run).splitlines() if "the test split is too small" in line)
    assert f"test {len(test)} cases of {patients} patients (no ONFH " in line and "WARNING" in line


def fake_cases(labels: list, **fields: object) -> list[Case]:
    """Cases with labels only (no files): what the split checks read."""
    cases = []
    for i, label in enumerate(labels):
        values = label if isinstance(label, dict) else {"label": label}
        cases.append(Case(f"c{i}", f"p{i // 2}", {"image": None}, labels=values, **fields))
    return cases


@pytest.mark.parametrize(
    ("task", "labels", "missing"),
    [("onfh-xray", [0, 0, 0, 0], "ONFH"), ("onfh-mr-staging", [0, 1, 1, 3], "ARCO III")],
)
def test_a_single_label_split_lacking_a_class_is_an_error(task: str, labels: list, missing: str) -> None:
    head_task = make_task(task)
    parts = {"train": every_class(head_task), "val": fake_cases(labels), "test": fake_cases(labels)}
    with pytest.raises(DataError, match=rf"the val split \(x\) has no case of {missing}: val 4 cases of 2 patients"):
        check_splits(head_task, parts, "x")
    parts["val"] = every_class(head_task)
    warnings = check_splits(head_task, parts, "x")
    assert any(w.startswith(f"the test split has no case of {missing}: its metrics will be n/a") for w in warnings)
    assert any("the test split is too small" in w for w in warnings)
    with pytest.raises(DataError, match=rf"the train split \(x\) has no case of {missing}"):
        check_splits(head_task, {**parts, "train": fake_cases(labels)}, "x")


def test_a_multilabel_split_lacking_a_label_is_a_warning_lacking_all_an_error() -> None:
    task = make_task("calcaneus-multilabel")
    names = task.head.names
    no_body = fake_cases([{f"label_{n}": int(n != "body") for n in names}] * 4)
    parts = {"train": every_class(task), "val": no_body, "test": every_class(task)}
    warnings = check_splits(task, parts, "x")
    expected = "the val split has no case of body: it is left out of the monitored score"
    assert any(w.startswith(expected) for w in warnings)
    negatives = fake_cases([dict.fromkeys((f"label_{n}" for n in names), 0)] * 4)
    with pytest.raises(DataError, match=rf"the val split \(x\) has no case of {', '.join(names)}"):
        check_splits(task, {**parts, "val": negatives}, "x")


def every_class(task) -> list[Case]:
    """Two cases of each class (multi-label: each label positive in one case, negative in another)."""
    names = task.head.names
    if task.head.kind == "multilabel":
        rows = [{f"label_{n}": int(i % 2 == 0) for n in names} for i in range(2)]
        return fake_cases(rows)
    return fake_cases([i for i in range(len(names)) for _ in range(2)])


def test_a_pretext_head_has_no_classes_but_needs_cases() -> None:
    task = make_task("onfh-mr-staging", {"target": "ct"})
    parts = {"train": fake_cases([None] * 4), "val": fake_cases([None] * 2), "test": fake_cases([None] * 2)}
    assert split_counts(task, "val", parts["val"]) == "val 2 cases of 1 patient"
    assert all("no case of" not in w for w in check_splits(task, parts, "x"))
    with pytest.raises(DataError, match=r"the val split \(x\) has no cases"):
        check_splits(task, {**parts, "val": []}, "x")


# --- finding 10: resume with changed options -------------------------------------------------------------


def test_resume_refuses_changed_options_unless_overridden(hips: Path, tmp_path: Path) -> None:
    run = train(config_from_dict(tiny_config(hips, epochs=1)), tmp_path / "run", verbose=False)
    longer = config_from_dict(tiny_config(hips, epochs=2))
    with pytest.raises(ConfigError, match=r"train\.epochs: saved 1, given 2\); pass --override"):
        train(longer, run, resume=True, verbose=False)
    assert "ERROR run stopped: --resume with options that differ" in log_of(run)
    bigger = config_from_dict(tiny_config(hips, epochs=2, model={"preset": "small"}))
    with pytest.raises(ConfigError, match=r"cannot change model\.preset when resuming"):
        train(bigger, run, resume=True, verbose=False, override=True)
    train(longer, run, resume=True, verbose=False, override=True)
    assert [json.loads(line)["epoch"] for line in (run / HISTORY_FILE).read_text().splitlines()] == [1, 2]
    assert load_config(run / CONFIG_FILE).train.epochs == 2
    assert "WARNING resumed with a changed option (--override): train.epochs: 1 -> 2" in log_of(run)


def test_cli_resume_compares_only_the_options_given(hips: Path, tmp_path: Path) -> None:
    """``train --resume`` starts from the run's saved config, so only the options typed are compared."""
    from typer.testing import CliRunner

    from osteoscope.cli import app

    run = train(config_from_dict(tiny_config(hips, epochs=1)), tmp_path / "run", verbose=False)
    same = CliRunner().invoke(app, ["train", "--resume", "--out", str(run)])
    assert same.exit_code == 0, same.output
    assert "the run is already complete" in log_of(run)
    args = ["train", "--resume", "--out", str(run), "--epochs", "3", "--set", "train.lr=0.1"]
    changed = CliRunner().invoke(app, args)
    assert isinstance(changed.exception, ConfigError)
    message = str(changed.exception)
    assert message.startswith("--resume with options that differ from the saved run")
    assert "train.epochs: saved 1, given 3" in message and "train.lr: saved 0.001, given 0.1" in message


# --- finding 13: the model is checked before data are read or files written --------------------------------


def test_a_bad_model_name_through_the_cli_leaves_no_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "no-data"), "--out", str(out), "--model", "no-such-model"]
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith("error: unknown model 'no-such-model'")
    assert "Traceback" not in result.stderr and not out.exists()


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"name": "ast", "preset": "huge"}, "unknown preset 'huge'"),
        ({"name": "ast", "options": {"bogus": 1}}, "does not accept 'bogus'"),
        ({"name": "timm:test_resnet"}, r"needs the input\(s\) image, which task onfh-xray does not give"),
    ],
)
def test_a_bad_model_fails_before_data_are_read_or_files_written(model: dict, message: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = tiny_config(tmp_path / "no-data", model=model)  # never read: the model fails first
    with pytest.raises(ConfigError, match=message):
        train(config_from_dict(config), out, verbose=False)
    assert not out.exists()


def test_kfold_and_study_check_their_models_before_writing(tmp_path: Path) -> None:
    bad = tiny_config(tmp_path / "no-data", model={"name": "ast", "preset": "huge"})
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        cross_validate(config_from_dict(bad), tmp_path / "kfold", k=2, verbose=False)
    study = parse_study(
        {
            "data": bad["data"],
            "train": {"epochs": 1},
            "models": {"ast": {"model": {"name": "ast", "preset": "tiny"}}, "bad": {"model": {"name": "nope"}}},
        }
    )
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        run_study(study, tmp_path / "study", verbose=False)
    assert not (tmp_path / "kfold").exists() and not (tmp_path / "study").exists()


def test_models_lists_tasks_presets_and_sizes() -> None:
    entries = {entry.name: entry.sizes for entry in model_entries()}
    assert set(entries) >= {"ast", "vit", "swin"}
    assert list(entries["ast"]) == ["onfh-xray"]  # only onfh-xray gives the two head ROIs AsT takes
    sizes = entries["ast"]["onfh-xray"]
    assert list(sizes) == ["tiny", "small", "base"] and sizes["tiny"] < sizes["small"] < sizes["base"]
    assert 10e6 < sizes["base"] < 12e6  # docs/models.md: base 11 M
    assert 80e6 < entries["vit"]["onfh-xray"]["base"] < 90e6  # ViT-B/16
