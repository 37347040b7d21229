"""The ``osteoscope`` command line: each subcommand parses its options and calls one library function."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from typer._click.exceptions import NoArgsIsHelpError
from typer.exceptions import TyperException

from osteoscope import jsonio
from osteoscope.errors import ConfigError, OsteoscopeError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="AI diagnosis of bone disorders from radiographs, CT and MR."
)
localizer_app = typer.Typer(no_args_is_help=True, help="Femoral-head localiser: train it on manifest boxes.")
app.add_typer(localizer_app, name="localizer")
masks_app = typer.Typer(no_args_is_help=True, help="Coarse masks computed from the images, written into the manifest.")
app.add_typer(masks_app, name="masks")
boxes_app = typer.Typer(no_args_is_help=True, help="Automatic region boxes for the cases whose manifest gives none.")
app.add_typer(boxes_app, name="boxes")


@app.command()
def phantom(
    task: Annotated[str, typer.Argument(help="Task whose phantom to generate, e.g. onfh-xray.")],
    out: Annotated[Path, typer.Option(help="Output dataset folder.")],
    n: Annotated[int, typer.Option(help="Number of studies.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same data.")] = 0,
    subtlety: Annotated[float, typer.Option(help="0 = obvious lesions, 1 = hardest.")] = 0.5,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format", help="dicom (onfh-xray, avnfh-ct) or jpeg (onfh-xray); default 16-bit PNG, NIfTI for avnfh-ct."
        ),
    ] = None,
    preview: Annotated[Path | None, typer.Option(help="Also write a contact sheet PNG of the cases.")] = None,
    pairs: Annotated[
        int | None,
        typer.Option(help="onfh-mr-staging: unlabelled MR-CT pairs in pretext/ for the pretext stage (default 3 x n)."),
    ] = None,
) -> None:
    """Generate a synthetic dataset with ground truth in the manifest format."""
    from rich.progress import Progress

    from osteoscope.phantoms import generate_phantom

    with Progress(transient=True) as bar:
        job = bar.add_task(f"phantom {task}", total=n)
        options = {"fmt": fmt} if fmt is not None else {}
        if pairs is not None:
            options["unlabelled_pairs"] = pairs
        path = generate_phantom(
            task,
            out,
            n=n,
            seed=seed,
            subtlety=subtlety,
            progress=lambda i, total: bar.update(job, completed=i, total=total),
            **options,
        )
    typer.echo(f"wrote {n} studies: {path}")
    if preview is not None:
        from osteoscope.phantoms.preview import contact_sheet

        typer.echo(f"contact sheet: {contact_sheet(out, preview, task)}")


def _experiment(
    config: Path | None,
    data: Path | None,
    model: str | None,
    preset: str | None,
    epochs: int | None,
    seed: int | None,
    set_: list[str] | None,
    skip_bad: bool,
    init_from: str | None = None,
    mlflow: str | None = None,
):
    """The experiment config a command's options describe (file, shortcuts, then --set overrides)."""
    from osteoscope.config import load_config

    overrides = []
    for key, value in (
        ("data.path", data),
        ("model.name", model),
        ("model.preset", preset),
        ("train.epochs", epochs),
        ("train.seed", seed),
        ("train.init_from", init_from),
        ("train.mlflow", mlflow),
    ):
        if value is not None:
            overrides.append(f"{key}={value}")
    if skip_bad:
        overrides.append("data.skip_bad=true")
    return load_config(config, [*overrides, *(set_ or [])])


ConfigOption = Annotated[Path | None, typer.Option(help="YAML experiment config (see configs/).")]
DataOption = Annotated[Path | None, typer.Option(help="Dataset folder (overrides data.path).")]
ModelOption = Annotated[str | None, typer.Option(help="Model: registered name, timm:<name> or monai:<name>.")]
PresetOption = Annotated[str | None, typer.Option(help="Model size preset: tiny, small, base.")]
EpochsOption = Annotated[int | None, typer.Option(help="Overrides train.epochs.")]
SeedOption = Annotated[int | None, typer.Option(help="Overrides train.seed.")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="Any config value: section.key=value.")]
SkipBadOption = Annotated[bool, typer.Option(help="Skip unreadable cases (listed in the log).")]
MlflowOption = Annotated[
    str | None,
    typer.Option(help="Also log to MLflow: a tracking URI or a folder (TensorBoard files go to RUN/tb/ always)."),
]


@app.command()
def train(
    config: ConfigOption = None,
    data: DataOption = None,
    model: ModelOption = None,
    preset: PresetOption = None,
    epochs: EpochsOption = None,
    seed: SeedOption = None,
    out: Annotated[Path, typer.Option(help="Run directory.")] = Path("runs/latest"),
    set_: SetOption = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out with its saved config; other options must match it.")
    ] = False,
    override: Annotated[
        bool, typer.Option(help="With --resume: apply the options that differ (epochs, patience, device ...).")
    ] = False,
    skip_bad: SkipBadOption = False,
    init_from: Annotated[
        str | None, typer.Option(help="Start from an earlier run's weights: RUN[:PREFIX] or RUN:PREFIX=NEW.")
    ] = None,
    mlflow: MlflowOption = None,
) -> None:
    """Train a model; the final config, split, log, checkpoints and TensorBoard files go to the run directory."""
    from osteoscope.engine.runs import CONFIG_FILE
    from osteoscope.engine.trainer import train as run_training

    if override and not resume:
        raise OsteoscopeError("--override applies to --resume only")
    if resume and config is None and (out / CONFIG_FILE).is_file():
        config = out / CONFIG_FILE  # the options given are compared with the saved run, not with the defaults
    experiment = _experiment(config, data, model, preset, epochs, seed, set_, skip_bad, init_from, mlflow)
    run_training(experiment, out, resume=resume, override=override)


@app.command()
def kfold(
    config: ConfigOption = None,
    data: DataOption = None,
    model: ModelOption = None,
    preset: PresetOption = None,
    epochs: EpochsOption = None,
    seed: SeedOption = None,
    k: Annotated[int, typer.Option(help="Number of patient-disjoint folds.")] = 5,
    out: Annotated[Path, typer.Option(help="Folder of the fold runs (fold-1 ... fold-K) and the summary.")] = Path(
        "runs/kfold"
    ),
    set_: SetOption = None,
    skip_bad: SkipBadOption = False,
    n_boot: Annotated[int, typer.Option(help="Bootstrap replicates.")] = 2000,
    mlflow: MlflowOption = None,
) -> None:
    """K-fold cross-validation by patient: every case scored once out of fold; resumes what exists."""
    from osteoscope.engine.kfold import cross_validate

    experiment = _experiment(config, data, model, preset, epochs, seed, set_, skip_bad, mlflow=mlflow)
    cross_validate(experiment, out, k, n_boot=n_boot)
    typer.echo((out / "report.md").read_text())


@app.command()
def study(
    file: Annotated[Path, typer.Argument(help="Study YAML: task, shared budget, tuning grid, models.")],
    out: Annotated[Path, typer.Option(help="Study folder (one run folder per model and grid point).")] = Path(
        "runs/study"
    ),
    data: DataOption = None,
    threads: Annotated[int, typer.Option(help="CPU threads of the cost measurement (0 = torch default).")] = 0,
    mlflow: MlflowOption = None,
    reader: Annotated[
        list[str] | None,
        typer.Option(
            help="A human reader's point on the ROC, NAME=SENSITIVITY,SPECIFICITY (repeatable; a name "
            "the study file has is replaced)."
        ),
    ] = None,
) -> None:
    """Compare models on one split with an equal tuning budget: test metrics, paired tests, compute cost."""
    from osteoscope.engine.study import load_study, run_study

    overrides: dict = {"data": {"path": str(data)}} if data is not None else {}
    if reader:
        overrides["readers"] = _readers(reader)
    if mlflow is not None:
        overrides["train"] = {"mlflow": mlflow}
    run_study(load_study(file, overrides), out, threads=threads)
    typer.echo((out / "report.md").read_text())


def _readers(items: list[str]) -> dict[str, dict[str, float]]:
    """``NAME=SENS,SPEC`` options as the study file's ``readers`` mapping."""
    readers = {}
    for name, value in _named(items, "--reader").items():
        try:
            sens, spec = (float(v) for v in value.split(","))
        except ValueError:
            raise ConfigError(
                f"--reader {name}={value}: give NAME=SENSITIVITY,SPECIFICITY, e.g. radiologist=0.82,0.91"
            ) from None
        readers[name] = {"sensitivity": sens, "specificity": spec}
    return readers


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run directory written by `osteoscope train`.")],
    data: Annotated[Path | None, typer.Option(help="Dataset folder (default: the run's).")] = None,
    split: Annotated[str, typer.Option(help="test, val, or all (external dataset).")] = "test",
    out: Annotated[Path | None, typer.Option(help="Output folder (default RUN/eval-SPLIT).")] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap replicates.")] = 2000,
    skip_bad: Annotated[bool, typer.Option(help="Skip unreadable cases (listed in the log).")] = False,
) -> None:
    """Evaluate on held-out patients: metrics.json with 95% intervals, plots, report.md and report.html, model card."""
    from osteoscope.engine.evaluate import evaluate_run
    from osteoscope.engine.runs import setup_logging

    setup_logging()
    evaluate_run(run, data, split=split, out_dir=out, n_boot=n_boot, skip_bad=skip_bad)
    typer.echo(((out or run / f"eval-{split}") / "report.md").read_text())


def _named(items: list[str] | None, what: str) -> dict[str, str]:
    """``KEY=VALUE`` options as a dict; a bare ``VALUE`` gets the key ``""`` (the task's default)."""
    named: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            key, value = "", item
        if key in named:
            raise OsteoscopeError(f"{what} {key or '(default)'} is given twice")
        named[key] = value
    return named


StudyImages = Annotated[
    list[Path] | None, typer.Argument(help="Single-image studies: radiographs, CT files or DICOM series folders.")
]
StudyImageOption = Annotated[
    list[str] | None, typer.Option(help="An image of one multi-image study: NAME=FILE, e.g. T1=a.dcm.")
]
StudyMaskOption = Annotated[list[str] | None, typer.Option(help="A mask: FILE, or NAME=FILE (e.g. rough=m.png).")]
StudyBoxOption = Annotated[
    list[str] | None,
    typer.Option(help="A box: 'x0 y0 x1 y1' (3-D: 6 numbers; mm=... in patient mm), or NAME=..., e.g. left=..."),
]
StudySeriesOption = Annotated[
    list[str] | None,
    typer.Option(help="The SeriesInstanceUID to read from a DICOM folder with several: UID, or NAME=UID."),
]


def _study_inputs(
    images: list[Path] | None,
    image: list[str] | None,
    mask: list[str] | None,
    box: list[str] | None,
    series: list[str] | None,
    files: dict[str, Path] | None = None,
):
    """The raw studies the shared study options describe (see ``predict``)."""
    from osteoscope.data.manifest import parse_box
    from osteoscope.engine.predict import study_inputs

    boxes = {
        k: parse_box(v, case_id="command line", column=f"box {k}".strip()) for k, v in _named(box, "--box").items()
    }
    return study_inputs(
        images or [],
        named=_named(image, "--image"),
        masks=_named(mask, "--mask"),
        boxes=boxes,
        files=files,
        series=_named(series, "--series"),
    )


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    images: StudyImages = None,
    image: StudyImageOption = None,
    mask: StudyMaskOption = None,
    box: StudyBoxOption = None,
    series: StudySeriesOption = None,
    localizer: Annotated[
        Path | None, typer.Option(help="onfh-xray: head-localiser weights (default RUN/localizer.pt).")
    ] = None,
    ood: Annotated[
        str,
        typer.Option(
            help="A study unlike the training inputs: refuse (no score, the reasons) or flag (scored, marked)."
        ),
    ] = "refuse",
) -> None:
    """Print, as JSON, the scores of each study (the same columns as the evaluation's predictions.csv) and
    the decision at the run's validated operating point, after the out-of-distribution guard."""
    from osteoscope.engine.predict import predict_studies
    from osteoscope.engine.runs import setup_logging

    setup_logging()
    studies = _study_inputs(images, image, mask, box, series, {"localizer": localizer} if localizer else {})
    typer.echo(jsonio.dumps(predict_studies(run, studies, ood=ood), indent=2))


@app.command()
def explain(
    run: Annotated[Path, typer.Argument(help="Run directory of a model that returns maps (SRANet).")],
    images: StudyImages = None,
    case: Annotated[
        list[str] | None, typer.Option(help="A case_id of the run's dataset (or --data's); repeatable.")
    ] = None,
    data: Annotated[Path | None, typer.Option(help="Dataset of the --case ids (default: the run's).")] = None,
    image: StudyImageOption = None,
    mask: StudyMaskOption = None,
    box: StudyBoxOption = None,
    series: StudySeriesOption = None,
    out: Annotated[Path, typer.Option(help="Folder of the figures.")] = Path("runs/explain"),
) -> None:
    """Draw the model's maps (SRANet: patch attention over the CT, through the lesion when the manifest
    outlines one) for dataset cases or raw studies; prints each case's scores and figures as JSON."""
    from osteoscope.engine.explain import explain_cases
    from osteoscope.engine.runs import setup_logging

    setup_logging()
    studies = _study_inputs(images, image, mask, box, series)
    typer.echo(jsonio.dumps(explain_cases(run, out, case_ids=case or [], studies=studies, data=data), indent=2))


@localizer_app.command("train")
def localizer_train(
    data: Annotated[Path, typer.Option(help="Dataset folder whose manifest has box_left/box_right.")],
    out: Annotated[Path, typer.Option(help="Output weights file.")],
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 30,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    held_out: Annotated[float, typer.Option(help="Share of patients held out to measure the centre error.")] = 0.1,
) -> None:
    """Train the femoral-head localiser on the boxes of a dataset; logs loss and held-out centre error."""
    from osteoscope.engine.runs import setup_logging
    from osteoscope.tasks.onfh_xray.localizer import train_localizer_on_manifest

    setup_logging()
    train_localizer_on_manifest(data, out, epochs=epochs, seed=seed, held_out_fraction=held_out)
    typer.echo(f"wrote {out}")


@masks_app.command("ct")
def masks_ct(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder (or its manifest.csv) of CT volumes.")],
    overwrite: Annotated[bool, typer.Option(help="Recompute masks the manifest already names.")] = False,
    skip_bad: Annotated[bool, typer.Option(help="Skip and list unreadable cases instead of stopping.")] = False,
    bone_hu: Annotated[
        tuple[float, float] | None,
        typer.Option(help="Range (HU) the adaptive bone threshold is clamped into; equal ends fix it."),
    ] = None,
    grow_hu: Annotated[float | None, typer.Option(help="HU from which voxels connected to the bone join it.")] = None,
    metal_hu: Annotated[
        float | None, typer.Option(help="HU from which a voxel is metal, kept out of the mask with a margin.")
    ] = None,
) -> None:
    """Write SRANet's coarse bone mask of every CT to masks/<case_id>_bone.nii.gz and fill the mask column."""
    from rich.progress import Progress

    from osteoscope.tasks.avnfh_ct.masks import BoneMaskParams, write_bone_masks

    given = {"bone_hu": bone_hu, "grow_hu": grow_hu, "metal_hu": metal_hu}
    params = BoneMaskParams(**{name: value for name, value in given.items() if value is not None})
    with Progress(transient=True) as bar:
        job = bar.add_task("bone masks", total=None)
        run = write_bone_masks(
            dataset,
            params,
            overwrite=overwrite,
            skip_bad=skip_bad,
            progress=lambda i, total: bar.update(job, completed=i, total=total),
        )
    for case in run.skipped:
        typer.echo(f"skipped: {case.reason}", err=True)
    volume = "n/a" if run.mean_volume_ml is None else f"{run.mean_volume_ml:.1f} mL"
    typer.echo(
        f"bone masks: {len(run.written)} written, {len(run.kept)} kept, {len(run.skipped)} skipped; "
        f"mean mask volume {volume}: {run.manifest}"
    )


@boxes_app.command("ct")
def boxes_ct(
    dataset: Annotated[Path, typer.Argument(help="CT dataset folder (or its manifest.csv), e.g. for avnfh-ct.")],
    overwrite: Annotated[bool, typer.Option(help="Replace the boxes the manifest already has.")] = False,
    skip_bad: Annotated[bool, typer.Option(help="Leave unreadable rows and rows without a head as they are.")] = False,
    side: Annotated[
        str | None,
        typer.Option(help="For rows without a side column: right, left, or both (splits an unlabelled row in two)."),
    ] = None,
    check: Annotated[
        bool, typer.Option(help="Write nothing: print the finder's centre error (mm) against the existing boxes.")
    ] = False,
) -> None:
    """Fill the femoral-head `box` column of a CT dataset from the bone (docs/manifest.md), or --check it."""
    from osteoscope.tasks.avnfh_ct.boxes import BoxResult, check_boxes, fill_boxes, summary

    def show(i: int, n: int, result: BoxResult) -> None:
        typer.echo(f"[{i}/{n}] {result.case_id}: {result.status}, {result.message}")

    if check:
        results = check_boxes(dataset, skip_bad=skip_bad, side=side, progress=show)
    else:
        results = fill_boxes(dataset, overwrite=overwrite, skip_bad=skip_bad, side=side, progress=show)
    typer.echo(summary(results, check=check))


@app.command("import-mr")
def import_mr(
    studies: Annotated[list[Path], typer.Argument(help="DICOM study folders (searched recursively): one case each.")],
    out: Annotated[Path, typer.Option(help="Dataset folder: images/ and manifest.csv (new rows are appended).")],
    mapping: Annotated[
        Path | None, typer.Option(help="YAML protocol rules tried before the shipped ones (docs/manifest.md).")
    ] = None,
    reference: Annotated[
        str, typer.Option(help="Protocol whose grid all are resampled onto (else the study's first protocol).")
    ] = "t1",
    pick: Annotated[
        list[str] | None,
        typer.Option(help="PROTOCOL=SERIES: the series (SeriesNumber or UID) of a protocol, e.g. t2=7; repeatable."),
    ] = None,
    label: Annotated[int | None, typer.Option(help="ARCO stage 0-3 (I-IV) of the studies; default unlabelled.")] = None,
    patient_id: Annotated[
        str | None, typer.Option(help="patient_id of the studies (default: DICOM PatientID).")
    ] = None,
    case_id: Annotated[str | None, typer.Option(help="case_id of the one study (default: its folder's name).")] = None,
    head_slice: Annotated[
        int | None, typer.Option(help="Slice through the femoral head along --slice-axis (default: the middle).")
    ] = None,
    slice_axis: Annotated[
        int, typer.Option(help="Axis --head-slice counts along: 0 axial, 1 coronal, 2 sagittal (as the task's).")
    ] = 0,
    dry_run: Annotated[bool, typer.Option(help="Print how the series would be assigned; write nothing.")] = False,
) -> None:
    """Import DICOM MR studies for onfh-mr-staging: series to protocols by rules, resampled onto one grid."""
    from osteoscope.engine.runs import setup_logging
    from osteoscope.tasks.onfh_mr_staging.importer import ImportedCase, import_studies, load_mapping, plan_studies

    setup_logging()
    picks = _named(pick, "--pick")
    if dry_run:
        for plan in plan_studies(studies, load_mapping(mapping), picks):
            typer.echo(f"{plan.folder}:" + "".join(f"\n  {line}" for line in plan.lines()))
        return

    def show(i: int, n: int, case: ImportedCase) -> None:
        about = f"patient {case.patient_id}, reference {case.reference}"
        typer.echo(f"[{i}/{n}] {case.plan.folder} -> case {case.case_id} ({about}):")
        typer.echo("".join(f"  {line}\n" for line in case.plan.lines()), nl=False)

    cases = import_studies(
        studies,
        out,
        mapping=mapping,
        reference=reference,
        picks=picks,
        label=label,
        patient_id=patient_id,
        case_id=case_id,
        head_slice=head_slice,
        slice_axis=slice_axis,
        progress=show,
    )
    typer.echo(f"imported {len(cases)} case(s) into {out / 'manifest.csv'}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Demo folder: data, runs, report.")] = Path("runs/demo"),
    n: Annotated[int, typer.Option(help="Phantom studies to generate.")] = 1000,
    epochs: Annotated[int, typer.Option(help="Epochs per run (same budget for both models).")] = 20,
    subtlety: Annotated[float, typer.Option(help="Phantom lesion subtlety, 0 obvious .. 1 hardest.")] = 0.75,
) -> None:
    """Phantom data -> a study of AsT vs ViT (same split, budget, lr grid) -> held-out comparison, predict."""
    from osteoscope.demo import run_demo

    run_demo(out, n=n, epochs=epochs, subtlety=subtlety)


@app.command("models")
def list_models_command() -> None:
    """List the models: the tasks each serves, its presets and parameter counts; the timm:/monai: families."""
    from osteoscope.engine.catalog import models_text

    typer.echo(models_text())


@app.command("tasks")
def list_tasks_command(
    options: Annotated[bool, typer.Option(help="Also list each task's data and loss options with defaults.")] = False,
) -> None:
    """List the tasks (and their options)."""
    from osteoscope.tasks import task_classes

    for name, task in task_classes().items():
        typer.echo(f"{name}: {task.description} (default model {task.default_model})")
        if options:
            typer.echo("".join(f"    {line}\n" for line in task().option_lines()), nl=False)


def usage_error(error: TyperException) -> tuple[str, int]:
    """The text and exit code of a command-line mistake: the help for a bare group (exit 0), otherwise one
    ``error:`` line and the usage hint (exit 2)."""
    ctx = getattr(error, "ctx", None)
    if isinstance(error, NoArgsIsHelpError):
        return error.format_message(), 0
    text = f"error: {' '.join(error.format_message().split())}"
    if ctx is not None:
        text += f"\n{ctx.get_usage()}  (see '{ctx.command_path} --help')"
    return text, 2


def main() -> None:
    """Entry point: user errors become one readable line and exit code 2, not a traceback.

    Typer 0.29 parses with its own copy of click, whose errors all derive from
    :class:`typer.exceptions.TyperException` (unknown options and commands, missing arguments, bad values);
    those and :class:`OsteoscopeError` are shown as one line. Anything else is a bug and keeps its traceback.
    """
    try:
        code = app(prog_name="osteoscope", standalone_mode=False)
    except OsteoscopeError as error:
        typer.secho(f"error: {error}", fg="red", err=True)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except TyperException as error:
        text, code = usage_error(error)
        typer.echo(text, err=code != 0)
        sys.exit(code)
    if isinstance(code, int) and code:  # a command's own exit code; success returns normally
        sys.exit(code)


if __name__ == "__main__":  # python -m osteoscope.cli, e.g. from a checkout not installed in the venv
    main()
