"""Training one run (the holdout protocol): data, model and loss from the task, the loop with its handlers.

The monitored validation score comes from the task's head (AUC, macro one-vs-rest AUROC, mAP, or a pretext
stage's error, minimised); the loop itself knows nothing about it. After every epoch the full state is
written atomically to ``last.pt``. ``best.pt`` also holds the run's record (task, names, preprocessing,
versions, data location and hash, training-input statistics; :func:`osteoscope.engine.runs.run_record`)
and, after the last epoch, the operating point chosen on validation with the best weights. A killed run
resumed with ``resume=True`` replays from the start of the epoch it was in and, on the CPU, ends with
exactly the weights of an uninterrupted run (shuffling and augmentation depend only on seed, epoch and
sample index).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from osteoscope.config import ExperimentConfig, config_to_dict, load_config, save_config
from osteoscope.data.datasets import CaseDataset
from osteoscope.data.fingerprints import HASHES_FILE, Fingerprints, save_hashes
from osteoscope.data.splits import check_patient_leakage, load_splits, save_splits, split_patients
from osteoscope.engine.checkpoint import load_checkpoint, save_atomic
from osteoscope.engine.inference import Inference, forward, infer, to_device
from osteoscope.engine.loop import (
    Checkpoints,
    EarlyStopping,
    EpochLog,
    History,
    Loop,
    Tracking,
    is_main_process,
    lr_factor,
)
from osteoscope.engine.preflight import (
    build_checked_model,
    check_splits,
    report_columns,
    resumed_config,
    split_counts,
)
from osteoscope.engine.runs import (
    BEST_CHECKPOINT,
    CONFIG_FILE,
    HISTORY_FILE,
    LAST_CHECKPOINT,
    LOG_FILE,
    LOG_FORMAT,
    SPLITS_FILE,
    check_cases,
    data_location,
    load_task_manifest,
    locate_data,
    log,
    make_cache,
    make_loader,
    model_name,
    report_skipped,
    run_record,
    select_device,
    setup_logging,
    task_of,
)
from osteoscope.engine.stages import TRANSLATIONS_FIGURE, check_stage_leakage, draw_translations, load_init_weights
from osteoscope.errors import ConfigError, OsteoscopeError
from osteoscope.heads import Head


def progress_bar() -> Progress:
    """The transient progress bar of long steps (cases checked, batches of an epoch)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=True,
    )


def log_failure(run_dir: Path, error: BaseException) -> None:
    """Write an error that stops a run into the run's own ``train.log`` (only there: the terminal shows it
    once, from the CLI); a user error as one line, anything else with its traceback. An error raised before
    the run's log is open (e.g. a refused ``--resume``) is appended to the log an earlier attempt left; with
    no log yet nothing is written, so a bad command leaves no folder behind."""
    target = (run_dir / LOG_FILE).resolve()
    trace = None if isinstance(error, OsteoscopeError) else (type(error), error, error.__traceback__)
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "run stopped: %s", (error,), trace)
    handlers = [h for h in log.handlers if isinstance(h, logging.FileHandler) and Path(h.baseFilename) == target]
    if handlers:
        for handler in handlers:
            handler.handle(record)
    elif target.is_file():
        handler = logging.FileHandler(target, encoding="utf-8")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.handle(record)
        handler.close()


def logs_failure(function: Callable[..., Path]) -> Callable[..., Path]:
    """Decorate ``train`` so that an error stopping the run also reaches its log."""

    @functools.wraps(function)
    def wrapper(config: ExperimentConfig, run_dir: str | Path, **kwargs: Any) -> Path:
        try:
            return function(config, run_dir, **kwargs)
        except Exception as error:
            log_failure(Path(run_dir), error)
            raise

    return wrapper


@logs_failure
def train(
    config: ExperimentConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    verbose: bool = True,
    splits: Mapping[str, str] | None = None,
    override: bool = False,
) -> Path:
    """Train the model a config describes into ``run_dir``.

    Args:
        config: The experiment. On resume it must equal the run's saved config, or differ only in the keys
            that may change (``preflight.RESUMABLE``) with ``override``.
        run_dir: Output folder: config.yaml, splits.csv, train.log, history.jsonl, last.pt, best.pt.
        resume: Continue the run in ``run_dir`` from its last completed epoch (a finished run stays as it is).
        verbose: Show progress bars and log to the terminal (the log file is always written).
        splits: A given case -> train/val/test assignment (k-fold folds, a study's shared split) instead of
            splitting by ``data.split_seed``; checked for patient leakage.
        override: On resume, apply the changed options (recorded in the log and the saved config).

    Returns:
        The run directory.
    """
    run_dir = Path(run_dir)
    changes: list[str] = []
    if resume:
        if not (run_dir / LAST_CHECKPOINT).is_file():
            raise OsteoscopeError(f"nothing to resume in {run_dir} (no {LAST_CHECKPOINT})")
        config, changes = resumed_config(load_config(run_dir / CONFIG_FILE), config, override=override)
    elif (run_dir / LAST_CHECKPOINT).exists():
        raise OsteoscopeError(f"{run_dir} already holds a run: pass --resume to continue it or choose another --out")
    task = task_of(config)
    tc = config.train
    if tc.schedule not in ("cosine", "constant", "step"):
        raise ConfigError(f"train.schedule must be cosine, constant or step, got {tc.schedule!r}")
    if not config.data.path:
        raise ConfigError("no dataset given: set data.path (or --data)")
    name = model_name(config, task)
    torch.manual_seed(tc.seed)
    model = build_checked_model(config, task)  # before any data are read or files written
    initialised = load_init_weights(model, tc.init_from, name) if tc.init_from and not resume else ""
    data = _data_of(config, run_dir, resume)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, path=data["path"]))
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir / LOG_FILE, verbose=verbose)
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    device = select_device(tc.device)
    channels_last = device.type == "cuda" and tc.channels_last
    save_config(config, run_dir / CONFIG_FILE)
    log.info(
        "%s run in %s: %s, model %s (%s), device %s",
        "resuming" if resume else "starting",
        run_dir,
        task,
        name,
        config.model.preset,
        device,
    )
    for change in changes:
        log.warning("resumed with a changed option (--override): %s", change)

    manifest = load_task_manifest(task, config.data.path, skip_bad=config.data.skip_bad)
    report_columns(task, manifest.columns)
    cache = make_cache(config)
    eval_builder = task.builder(False, cache)
    hashes: Fingerprints = {}
    with progress_bar() as bar:
        job = bar.add_task("checking cases", total=len(manifest.cases), status="")
        cases, bad = check_cases(
            manifest.cases,
            eval_builder,
            skip_bad=config.data.skip_bad,
            progress=lambda i: bar.update(job, completed=i),
            hashes=hashes,
        )
    report_skipped([*manifest.skipped, *bad])
    assignment, source = _assign_splits(config, task, cases, run_dir, resume, splits)
    cases = [case for case in cases if case.case_id in assignment]
    save_hashes(run_dir / HASHES_FILE, hashes, {k: v for k, v in assignment.items() if v != "test"})
    parts = {name: [c for c in cases if assignment[c.case_id] == name] for name in ("train", "val", "test")}
    log.info("split from %s: %s", source, "; ".join(split_counts(task, k, v) for k, v in parts.items()))
    for warning in [*check_splits(task, parts, source), *task.check(cases)]:
        log.warning("%s", warning)
    if tc.init_from and not resume:
        check_stage_leakage(tc.init_from, {case.patient_id for case in parts["test"]})

    train_set = CaseDataset(parts["train"], task.builder(True, cache), augment=True, seed=tc.seed)
    val_set = CaseDataset(parts["val"], eval_builder)
    if initialised:
        log.info(initialised)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = task.loss().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    steps_per_epoch = math.ceil(len(train_set) / tc.batch_size)
    total_steps = steps_per_epoch * tc.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(
            s,
            total_steps,
            steps_per_epoch * tc.warmup_epochs,
            tc.schedule,
            steps_per_epoch * tc.step_epochs,
            tc.step_gamma,
        ),
    )
    head = task.head
    monitor = f"val_{head.monitor}"
    log.info(
        "model %s: %.2fM parameters; %d steps/epoch, up to %d epochs; selecting on %s (%s)",
        name,
        sum(p.numel() for p in model.parameters()) / 1e6,
        steps_per_epoch,
        tc.epochs,
        monitor,
        head.mode,
    )

    def step_loss(batch: Mapping) -> tuple[torch.Tensor, dict[str, float]]:
        batch = to_device(batch, device, channels_last)
        return criterion(forward(model, batch, model_name=name, task=task), batch)

    def validate() -> dict[str, float]:
        result = infer(
            model, val_set, task, model_name=name, batch_size=tc.batch_size * 2, device=device, loss_fn=criterion
        )
        return {"val_loss": result.loss, monitor: head.score(result.targets, result.values)}

    def batches(epoch: int):
        train_set.set_epoch(epoch)
        return make_loader(
            train_set, tc.batch_size, shuffle=True, seed=tc.seed, epoch=epoch, workers=config.data.num_workers
        )

    stopping = EarlyStopping(monitor, head.mode, tc.patience)
    extra = {"config": config_to_dict(config), **run_record(task, data, parts["train"])}
    # checkpoints before the history file, so the history never lists an epoch that a kill could lose
    handlers = [
        stopping,
        Checkpoints(run_dir / BEST_CHECKPOINT, run_dir / LAST_CHECKPOINT, monitor, extra),
        History(run_dir / HISTORY_FILE),
        EpochLog(log.info, tc.epochs, stopping),
        Tracking(run_dir, config_to_dict(config), tc.mlflow, experiment=config.task),
    ]
    with progress_bar() as bar:
        jobs: dict[int, object] = {}

        def progress(epoch: int, step: int, steps: int, loss: float) -> None:
            if epoch not in jobs:
                for old in jobs.values():
                    bar.remove_task(old)
                jobs.clear()
                jobs[epoch] = bar.add_task(f"epoch {epoch}/{tc.epochs}", total=steps, status="")
            bar.update(jobs[epoch], completed=step, status=f"loss {loss:.4f}")

        loop = Loop(
            model,
            step_loss,
            optimizer,
            scheduler,
            batches,
            validate,
            handlers,
            device=device,
            amp=tc.amp,
            progress=progress,
        )
        if resume:
            loop.load_state_dict(load_checkpoint(run_dir / LAST_CHECKPOINT))
            done = loop.state.epoch >= tc.epochs or loop.state.stop
            log.info(
                "resumed after epoch %d (best %s %.4f at epoch %d)%s",
                loop.state.epoch,
                monitor,
                float("nan") if stopping.best is None else stopping.best,
                stopping.best_epoch,
                "; the run is already complete" if done else "",
            )
        state = loop.run(tc.epochs)
    if state.stop and state.epoch < tc.epochs:
        log.info("early stop: no better %s for %d epochs", monitor, tc.patience)
    if not (run_dir / BEST_CHECKPOINT).exists():
        raise OsteoscopeError(f"no epoch produced a finite {monitor} (does the val split hold every class?)")
    if is_main_process():
        _store_operating_point(
            run_dir / BEST_CHECKPOINT,
            model,
            lambda: infer(model, val_set, task, model_name=name, batch_size=tc.batch_size * 2, device=device),
            head,
        )
        if head.kind == "pretext":
            figure = draw_translations(model, val_set, task, name, run_dir / TRANSLATIONS_FIGURE, device)
            log.info("held-out translations: %s", figure)
    log.info(
        "done: best %s %.4f at epoch %d; weights in %s",
        monitor,
        stopping.best,
        stopping.best_epoch,
        run_dir / BEST_CHECKPOINT,
    )
    return run_dir


def _data_of(config: ExperimentConfig, run_dir: Path, resume: bool) -> dict[str, str]:
    """The dataset's location (absolute path, path relative to the run folder, manifest hash), resolved
    now. A resumed run finds its data as an evaluation does (see :func:`osteoscope.engine.runs.locate_data`)."""
    path = config.data.path
    if resume:
        best = run_dir / BEST_CHECKPOINT
        record = load_checkpoint(best) if best.is_file() else {}
        path = str(locate_data(run_dir, path, record) or path)
    return data_location(path, run_dir)


def _store_operating_point(
    best: Path, model: torch.nn.Module, validate: Callable[[], Inference], head: Head
) -> dict[str, Any]:
    """Choose the head's decision rule on validation with the best weights and store it in ``best.pt``.

    ``validate`` runs the model (loaded here with the best weights) over the validation cases.
    """
    state = load_checkpoint(best)
    model.load_state_dict(state["model"])
    result = validate()
    state["operating_point"] = head.operating_point(result.targets, result.values)
    save_atomic(state, best)
    log.info("operating point: %s", ", ".join(f"{k} {v}" for k, v in state["operating_point"].items()))
    return state["operating_point"]


def _assign_splits(
    config: ExperimentConfig, task, cases: list, run_dir: Path, resume: bool, given: Mapping[str, str] | None
) -> tuple[dict[str, str], str]:
    """The run's split and where it came from: saved (resume; a given split must match it), given (k-fold,
    study), the manifest's ``split`` column, or patients drawn by ``data.split_seed``."""
    if resume:
        saved = load_splits(run_dir / SPLITS_FILE)
        differ = sorted(c for c in saved if given.get(c) != saved[c]) if given is not None else []
        if differ:
            raise ConfigError(
                f"--resume with a split that differs from the run's {SPLITS_FILE} for {len(differ)} case(s) "
                f"({run_dir}), e.g. {differ[0]}: saved {saved[differ[0]]}, given {given.get(differ[0])}"
            )
        kept = {case.case_id: saved[case.case_id] for case in cases if case.case_id in saved}
        return kept, f"the run's {SPLITS_FILE}"
    if given is not None:
        assignment = {case.case_id: given[case.case_id] for case in cases if case.case_id in given}
        check_patient_leakage([case for case in cases if case.case_id in assignment], assignment)
        source = "the given split (k-fold fold or study)"
    else:
        assignment = split_patients(cases, config.data.split_fractions, config.data.split_seed, stratum=task.stratum)
        if any(case.split for case in cases):
            source = "the manifest's split column"
        else:
            shares = "/".join(f"{f:g}" for f in config.data.split_fractions)
            source = f"patients drawn by data.split_seed {config.data.split_seed} (fractions {shares})"
    save_splits(run_dir / SPLITS_FILE, [case for case in cases if case.case_id in assignment], assignment)
    return assignment, source
