"""Malformed inputs through every command: each is a one-line error naming its file (and case), exit code 2.

For every task a small valid phantom is trained for one epoch; then a corpus of broken files (see
``malformed.py``: empty, truncated, broken compression, no pixel data, absurd header sizes, NaN volumes,
degenerate images, the wrong dimensionality, symbolic links, boxes that do not fit the image) goes through
``train`` (without and with ``--skip-bad``), ``evaluate --split all`` on an external set and ``predict``, via
``cli.main`` in-process (the CLI's own error handling, without paying the start-up of a subprocess per run).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import malformed as bad_files
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from osteoscope.cli import main
from osteoscope.data.manifest import write_manifest as write_rows
from osteoscope.errors import DataError
from osteoscope.phantoms import generate_phantom
from osteoscope.tasks.base import StudyInputs
from osteoscope.tasks.onfh_xray import OnfhXray

TINY_RESNET_3D = {
    "block": "basic",
    "layers": [1, 1, 1, 1],
    "block_inplanes": [4, 8, 8, 8],
    "conv1_t_size": 3,
    "conv1_t_stride": 1,
}


@dataclass
class Setting:
    """One task: its phantom, its training options, the corpus fed to it and how predict is called."""

    task: str
    phantom: dict
    train: list[str]
    corpus: dict[str, Callable[[Path, Path], Path]]
    boxes: dict[str, dict[str, str]]  # name -> manifest box columns that do not fit the image
    predict: Callable[[dict[str, str], Path], list[str]]  # (template row, image) -> predict arguments
    image_column: str = "image"
    case_suffix: str = ""  # the task's case of the bad image is CASE_ID + this (femur: one case per view)
    dicom: dict = field(default_factory=dict)  # phantom options of a DICOM twin whose files are corrupted too


def _hips_predict(row: dict[str, str], image: Path) -> list[str]:
    return [str(image), "--box", f"left={row['box_left']}", "--box", f"right={row['box_right']}"]


SETTINGS = {
    "onfh-xray": Setting(
        "onfh-xray",
        {"n": 36, "image_size": (64, 80), "subtlety": 0.0},
        ["--model", "ast", "--preset", "tiny", "--set", "data.options.roi_size=16"],
        bad_files.RADIOGRAPH_PNG,
        {
            "box-outside": {"box_left": "500 500 520 520"},
            "box-larger-than-image": {"box_left": "0 0 512 512", "box_right": "0 0 512 512"},
        },
        _hips_predict,
        dicom={"n": 2, "image_size": (64, 64), "fmt": "dicom"},
    ),
    "femur-fracture-xray": Setting(
        "femur-fracture-xray",
        {"n": 36, "image_size": (64, 64), "subtlety": 0.0, "aff_fraction": 0.4},
        ["--model", "timm:test_resnet", "--set", "data.options={size: [32, 32], crop_to_box: true}"],
        {k: bad_files.RADIOGRAPH_PNG[k] for k in ("truncated", "one-pixel", "constant", "volume-as-radiograph")},
        {"box-outside": {"box_ap": "-90 -90 -70 -70"}},
        lambda row, image: [str(image), "--box", row["box_ap"]],
        image_column="image_ap",
        case_suffix="_ap",
    ),
    "calcaneus-multilabel": Setting(
        "calcaneus-multilabel",
        {"n": 30, "image_size": (64, 80), "subtlety": 0.0},
        ["--model", "timm:test_resnet", "--set", "data.options={size: [32, 40], mask_as_channel: true}"],
        {k: bad_files.RADIOGRAPH_PNG[k] for k in ("empty", "broken-compression", "absurd-size", "one-pixel")},
        {},
        lambda row, image: [str(image), "--mask", row["mask_rough"]],
    ),
    "avnfh-ct": Setting(
        "avnfh-ct",
        {"n": 30, "subtlety": 0.0, "voxel_scale": 3.0},
        [
            "--model",
            "monai:ResNet",
            "--set",
            "data.options={size: [16, 16, 16]}",
            "--set",
            f"model.options={json.dumps(TINY_RESNET_3D)}",
        ],
        bad_files.CT_NIFTI,
        {"2-D-box-on-volume": {"box": "2 2 20 20"}, "box-outside": {"box": "300 300 300 330 330 330"}},
        lambda row, image: [str(image), "--box", row["box"], "--mask", row["mask"]],
        dicom={"n": 2, "fmt": "dicom", "voxel_scale": 3.0},
    ),
    "onfh-mr-staging": Setting(
        "onfh-mr-staging",
        {"n": 30, "image_size": 48, "subtlety": 0.0, "unlabelled_pairs": 0},
        ["--model", "timm:test_resnet", "--set", "data.options={size: [32, 32]}"],
        # a volume is a valid protocol here: the task takes its slice through the femoral head
        {k: bad_files.RADIOGRAPH_PNG[k] for k in ("truncated", "one-pixel", "dangling-symlink")},
        {},
        lambda row, image: ["--image", f"T1={image}", "--image", f"STIR={row['image_stir']}"],
        image_column="image_t1",
    ),
}
DICOM_CORPUS = {"onfh-xray": bad_files.RADIOGRAPH_DICOM, "avnfh-ct": bad_files.CT_SERIES}


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """``osteoscope ARGS`` through ``cli.main`` in this process: (exit code, stderr). Any exception other than
    the exit propagates, so a traceback fails the test."""
    monkeypatch.setattr(sys, "argv", ["osteoscope", *args])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err


def read_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def absolute(row: dict[str, str], root: Path) -> dict[str, str]:
    """A manifest row with its file columns made absolute, so it can be listed in another folder's manifest."""
    files = ("image", "mask")
    return {k: str(root / v) if v and k.startswith(files) else v for k, v in row.items()}


def write_manifest(folder: Path, rows: list[dict[str, str]]) -> Path:
    """A dataset folder whose manifest.csv holds ``rows`` (columns from the first row)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_rows(folder / "manifest.csv", rows, list(rows[0]))
    return folder


@dataclass
class BadCase:
    """A manifest row that cannot be used, and the file its error must name."""

    name: str
    row: dict[str, str]
    file: Path
    overrides: dict[str, str]  # the columns that make the row bad (an image, or boxes)

    def on(self, base: dict[str, str], image_column: str) -> BadCase:
        """The same fault on another dataset's row (an external set holds none of the training images)."""
        row = {**base, **self.overrides, "case_id": self.row["case_id"], "patient_id": self.row["patient_id"]}
        return BadCase(self.name, row, Path(row[image_column]), self.overrides)


@dataclass
class Prepared:
    setting: Setting
    good: Path
    rows: list[dict[str, str]]  # the good dataset's rows, absolute paths
    run: Path
    external: list[dict[str, str]]  # rows of another phantom (other pixels, other ids)
    bad: list[BadCase]


@pytest.fixture(scope="module", params=list(SETTINGS))
def prepared(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    setting = SETTINGS[request.param]
    root = tmp_path_factory.mktemp(setting.task)
    generate_phantom(setting.task, root / "good", seed=0, **setting.phantom)
    generate_phantom(setting.task, root / "external", seed=5, **{**setting.phantom, "n": 8})
    rows = [absolute(r, root / "good") for r in read_rows(root / "good")]
    external = [
        {**absolute(r, root / "external"), "case_id": f"ext-{r['case_id']}", "patient_id": f"ext-{r['patient_id']}"}
        for r in read_rows(root / "external")
    ]
    corpus = root / "corpus"
    corpus.mkdir()
    template = rows[0]
    bad: list[BadCase] = []
    sources = [(setting.corpus, template)]
    if setting.task in DICOM_CORPUS:
        generate_phantom(setting.task, root / "dicom", seed=0, **setting.dicom)
        sources.append((DICOM_CORPUS[setting.task], absolute(read_rows(root / "dicom")[0], root / "dicom")))
    for makers, base in sources:
        source = Path(base[setting.image_column])
        kind = "dicom" if base is not template else "file"
        for name, make in makers.items():
            overrides = {setting.image_column: str(make(source, corpus / f"{kind}-{name}"))}
            row = {**base, **overrides, "case_id": f"bad-{kind}-{name}", "patient_id": f"badp-{kind}-{name}"}
            bad.append(BadCase(f"{kind}-{name}", row, Path(overrides[setting.image_column]), overrides))
        for name, boxes in setting.boxes.items():  # a valid image with boxes that do not fit it
            row = {**base, **boxes, "case_id": f"bad-{kind}-{name}", "patient_id": f"badp-{kind}-{name}"}
            bad.append(BadCase(f"{kind}-{name}", row, source, boxes))
    run = root / "run"
    args = ["train", "--set", f"task={setting.task}", "--data", str(root / "good"), "--epochs", "1"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["osteoscope", *args, "--out", str(run), "--set", "train.threads=2", *setting.train])
        main()
    return Prepared(setting, root / "good", rows, run, external, bad)


def assert_one_line_error(code: int, err: str, case: BadCase, *, with_case: str = "") -> None:
    """Exit code 2, no traceback, and an ``error:`` line that names the file (and the case)."""
    assert "Traceback" not in err, err
    assert code == 2, (case.name, err)
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: "), (case.name, err)
    assert str(case.file) in line, (case.name, line)
    if with_case:
        assert f"case {with_case!r}" in line, (case.name, line)


def test_train_names_each_bad_case_and_file(
    prepared: Prepared, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    p = prepared
    for case in p.bad:
        data = write_manifest(tmp_path / case.name, [case.row, *p.rows])
        args = ["train", "--set", f"task={p.setting.task}", "--data", str(data), "--epochs", "1"]
        code, err = run_cli([*args, "--out", str(tmp_path / f"run-{case.name}"), *p.setting.train], capsys, monkeypatch)
        assert_one_line_error(code, err, case, with_case=case.row["case_id"] + p.setting.case_suffix)


def test_train_skip_bad_leaves_out_every_bad_case_and_trains(
    prepared: Prepared, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    p = prepared
    data = write_manifest(tmp_path / "mixed", [*(c.row for c in p.bad), *p.rows])
    run = tmp_path / "run"
    args = ["train", "--set", f"task={p.setting.task}", "--data", str(data), "--epochs", "1", "--skip-bad"]
    code, err = run_cli([*args, "--out", str(run), "--set", "train.threads=2", *p.setting.train], capsys, monkeypatch)
    assert code == 0 and "Traceback" not in err, err
    log = (run / "train.log").read_text()
    assert f"{len(p.bad)} case(s) skipped" in log
    for case in p.bad:
        assert f"skipped {case.row['case_id']}{p.setting.case_suffix}: " in log and str(case.file) in log, case.name


def test_evaluate_external_set_names_each_bad_case_and_file(
    prepared: Prepared, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    p = prepared
    bad = [case.on(p.external[0], p.setting.image_column) for case in p.bad]
    for case in bad:
        data = write_manifest(tmp_path / case.name, [case.row, *p.external])
        args = ["evaluate", str(p.run), "--data", str(data), "--split", "all", "--n-boot", "20"]
        code, err = run_cli([*args, "--out", str(tmp_path / f"eval-{case.name}")], capsys, monkeypatch)
        assert_one_line_error(code, err, case, with_case=case.row["case_id"] + p.setting.case_suffix)
    data = write_manifest(tmp_path / "mixed", [*(c.row for c in bad), *p.external])
    args = ["evaluate", str(p.run), "--data", str(data), "--split", "all", "--n-boot", "20", "--skip-bad"]
    code, err = run_cli([*args, "--out", str(tmp_path / "eval-mixed")], capsys, monkeypatch)
    assert code == 0 and "Traceback" not in err, err
    with (tmp_path / "eval-mixed" / "predictions.csv").open(newline="") as handle:
        scored = {row["case_id"] for row in csv.DictReader(handle)}
    assert {c.row["case_id"] + p.setting.case_suffix for c in bad}.isdisjoint(scored)
    assert {row["case_id"] for row in p.external} <= {c.removesuffix(p.setting.case_suffix) for c in scored}


def test_predict_names_each_bad_file(
    prepared: Prepared, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    p = prepared
    for case in p.bad:
        code, err = run_cli(["predict", str(p.run), *p.setting.predict(case.row, case.file)], capsys, monkeypatch)
        assert_one_line_error(code, err, case)


def test_absurd_sizes_fail_before_memory_is_allocated(tmp_path: Path) -> None:
    """Headers claiming 10^10 pixels are refused from the header: under a 2 GiB address-space limit, reading
    them must raise the DataError, not a MemoryError (or be killed) from allocating the claimed array."""
    template = tmp_path / "t.png"
    bad_files.png_tiny(template, template)
    dicom = tmp_path / "d.dcm"  # a small valid DICOM, the template of the absurd one
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored = 1, "MONOCHROME2", 16, 16
    ds.HighBit, ds.PixelRepresentation, ds.PixelData = 15, 0, b"\x00" * 128
    ds.save_as(dicom, enforce_file_format=True)
    files = [
        bad_files.png_absurd_size(template, tmp_path / "huge-png"),
        bad_files.dicom_absurd_size(dicom, tmp_path / "huge-dicom"),
        bad_files.nifti_absurd_size(template, tmp_path / "huge-nifti"),
    ]
    script = (
        "import resource, sys\n"
        "from osteoscope.data.readers import read_image\n"
        "from osteoscope.errors import DataError\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, resource.getrlimit(resource.RLIMIT_AS)[1]))\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        read_image(path)\n"
        "    except DataError as error:\n"
        "        print(error)\n"
    )
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", script, *map(str, files)], capture_output=True, text=True, cwd=repo)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3 and all(str(f) in line and "claims" in line for f, line in zip(files, lines, strict=True))


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("one-pixel", "only 1 x 1 pixels (x by y): too small"),
        ("constant", "blank: every pixel has the value 0"),
        ("volume-as-radiograph", "expected a 2-D image, got a 3-D volume"),
    ],
)
def test_a_radiograph_without_boxes_is_checked_before_the_localiser(name: str, says: str, tmp_path: Path) -> None:
    """Finding 17: a 1x1 PNG given to onfh-xray predict without boxes (the localiser's path) was reported as
    "expected a 2-D grey image, got an array of shape (1, 1)"; now the message names the file and the fault,
    before the localiser is looked for."""
    image = bad_files.RADIOGRAPH_PNG[name](tmp_path / "x.png", tmp_path / name)
    with pytest.raises(DataError) as caught:
        OnfhXray().study_case(StudyInputs({"": image}, {}, {}, {}), tmp_path)
    assert caught.value.path == str(image) and says in str(caught.value)
