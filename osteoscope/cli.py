"""The ``osteoscope`` command line: each subcommand parses its options and calls one library function."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from osteoscope.errors import OsteoscopeError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="AI diagnosis of bone disorders from radiographs, CT and MR."
)
localizer_app = typer.Typer(no_args_is_help=True, help="Femoral-head localiser: train it on manifest boxes.")
app.add_typer(localizer_app, name="localizer")


@app.command()
def phantom(
    task: Annotated[str, typer.Argument(help="Task whose phantom to generate, e.g. onfh-xray.")],
    out: Annotated[Path, typer.Option(help="Output dataset folder.")],
    n: Annotated[int, typer.Option(help="Number of studies.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same data.")] = 0,
    subtlety: Annotated[float, typer.Option(help="0 = obvious lesions, 1 = hardest.")] = 0.5,
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="dicom (onfh-xray, avnfh-ct); default 16-bit PNG, NIfTI for avnfh-ct."),
    ] = None,
    preview: Annotated[Path | None, typer.Option(help="Also write a contact sheet PNG of the cases.")] = None,
) -> None:
    """Generate a synthetic dataset with ground truth in the manifest format."""
    from rich.progress import Progress

    from osteoscope.phantoms import generate_phantom

    with Progress(transient=True) as bar:
        job = bar.add_task(f"phantom {task}", total=n)
        options = {"fmt": fmt} if fmt is not None else {}
        path = generate_phantom(
            task,
            out,
            n=n,
            seed=seed,
            subtlety=subtlety,
            progress=lambda i, total: bar.update(job, completed=i),
            **options,
        )
    typer.echo(f"wrote {n} studies: {path}")
    if preview is not None:
        from osteoscope.phantoms.preview import contact_sheet

        typer.echo(f"contact sheet: {contact_sheet(out, preview)}")


@app.command()
def train(
    config: Annotated[Path | None, typer.Option(help="YAML experiment config (see configs/).")] = None,
    data: Annotated[Path | None, typer.Option(help="Dataset folder (overrides data.path).")] = None,
    model: Annotated[str | None, typer.Option(help="Model name (overrides model.name).")] = None,
    preset: Annotated[str | None, typer.Option(help="Model size preset: tiny, small, base.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Overrides train.epochs.")] = None,
    seed: Annotated[int | None, typer.Option(help="Overrides train.seed.")] = None,
    out: Annotated[Path, typer.Option(help="Run directory.")] = Path("runs/latest"),
    set_: Annotated[list[str] | None, typer.Option("--set", help="Any config value: section.key=value.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the interrupted run in --out.")] = False,
    skip_bad: Annotated[bool, typer.Option(help="Skip unreadable cases (listed in the log).")] = False,
) -> None:
    """Train a model; the final config, split, log and checkpoints go to the run directory."""
    from osteoscope.config import load_config
    from osteoscope.engine.trainer import train as run_training

    overrides = list(set_ or [])
    for key, value in (
        ("data.path", data),
        ("model.name", model),
        ("model.preset", preset),
        ("train.epochs", epochs),
        ("train.seed", seed),
    ):
        if value is not None:
            overrides.append(f"{key}={value}")
    if skip_bad:
        overrides.append("data.skip_bad=true")
    cfg = load_config(config, overrides)
    run_training(cfg, out, resume=resume)


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run directory written by `osteoscope train`.")],
    data: Annotated[Path | None, typer.Option(help="Dataset folder (default: the run's).")] = None,
    split: Annotated[str, typer.Option(help="test, val, or all (external dataset).")] = "test",
    out: Annotated[Path | None, typer.Option(help="Output folder (default RUN/eval-SPLIT).")] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap replicates.")] = 2000,
    skip_bad: Annotated[bool, typer.Option(help="Skip unreadable cases (listed in the log).")] = False,
) -> None:
    """Evaluate on held-out patients: metrics.json with 95% intervals, ROC, confusion matrix, report.md."""
    from osteoscope.engine.evaluate import evaluate_run
    from osteoscope.engine.runs import setup_logging

    setup_logging()
    result = evaluate_run(run, data, split=split, out_dir=out, n_boot=n_boot, skip_bad=skip_bad)
    typer.echo(Path(result["plots"]["roc"]).with_name("report.md").read_text())


def _parse_box(text: str | None) -> tuple[int, ...] | None:
    from osteoscope.data.manifest import parse_box

    return parse_box(text, case_id="command line", column="box") if text else None


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    images: Annotated[list[Path], typer.Argument(help="Radiographs (DICOM, PNG, JPEG, TIFF).")],
    localizer: Annotated[Path | None, typer.Option(help="Head-localiser weights (default RUN/localizer.pt).")] = None,
    box_left: Annotated[str | None, typer.Option(help="Patient-left head box 'x0 y0 x1 y1'.")] = None,
    box_right: Annotated[str | None, typer.Option(help="Patient-right head box 'x0 y0 x1 y1'.")] = None,
) -> None:
    """Print, as JSON, the ONFH probability and per-side scores of each image."""
    from osteoscope.engine.predict import predict_images

    left, right = _parse_box(box_left), _parse_box(box_right)
    if (left is None) != (right is None):
        raise OsteoscopeError("give both --box-left and --box-right, or neither")
    boxes = (left, right) if left is not None and right is not None else None
    typer.echo(json.dumps(predict_images(run, images, localizer=localizer, boxes=boxes), indent=2))


@localizer_app.command("train")
def localizer_train(
    data: Annotated[Path, typer.Option(help="Dataset folder whose manifest has box_left/box_right.")],
    out: Annotated[Path, typer.Option(help="Output weights file.")],
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 30,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train the femoral-head localiser on the boxes of a dataset."""
    from osteoscope.engine.localizer import train_localizer_on_manifest

    train_localizer_on_manifest(data, out, epochs=epochs, seed=seed)
    typer.echo(f"wrote {out}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Demo folder: data, runs, report.")] = Path("runs/demo"),
    n: Annotated[int, typer.Option(help="Phantom studies to generate.")] = 1000,
    epochs: Annotated[int, typer.Option(help="Epochs per model (same budget for both).")] = 40,
    subtlety: Annotated[float, typer.Option(help="Phantom lesion subtlety, 0 obvious .. 1 hardest.")] = 0.75,
) -> None:
    """Phantom data -> AsT and ViT trained alike -> both evaluated on held-out patients, side by side."""
    from osteoscope.demo import run_demo

    run_demo(out, n=n, epochs=epochs, subtlety=subtlety)


@app.command("models")
def list_models_command() -> None:
    """List the registered models."""
    from osteoscope.models import list_models

    typer.echo("\n".join(list_models()))


@app.command("tasks")
def list_tasks_command() -> None:
    """List the tasks."""
    from osteoscope.tasks import TASKS

    typer.echo("\n".join(f"{t.name}: {t.description}" for t in TASKS.values()))


def main() -> None:
    """Entry point: user errors become one readable line and exit code 2, not a traceback."""
    try:
        app(standalone_mode=False)
    except OsteoscopeError as error:
        typer.secho(f"error: {error}", fg="red", err=True)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except Exception as error:
        import click

        if isinstance(error, click.ClickException):
            error.show()
            sys.exit(error.exit_code)
        raise
