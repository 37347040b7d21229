"""Training one run (the holdout protocol): data, model and loss from the task, the loop with its handlers.

The monitored validation score comes from the task's head (AUC, macro one-vs-rest AUROC, mAP, or a pretext
stage's error, minimised); the loop itself knows nothing about it. After every epoch the full state is
written atomically to ``last.pt``; a killed run resumed with ``resume=True`` replays from the start of the
epoch it was in and, on the CPU, ends with exactly the weights of an uninterrupted run (shuffling and
augmentation depend only on seed, epoch and sample index).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from osteoscope.config import ExperimentConfig, config_to_dict, load_config, save_config
from osteoscope.data.datasets import CaseDataset
from osteoscope.data.fingerprints import HASHES_FILE, Fingerprints, save_hashes
from osteoscope.data.splits import check_patient_leakage, load_splits, save_splits, split_patients
from osteoscope.engine.checkpoint import load_checkpoint
from osteoscope.engine.inference import forward, infer, to_device
from osteoscope.engine.loop import Checkpoints, EarlyStopping, EpochLog, History, Loop, lr_factor
from osteoscope.engine.runs import (
    BEST_CHECKPOINT,
    CONFIG_FILE,
    HISTORY_FILE,
    LAST_CHECKPOINT,
    LOG_FILE,
    SPLITS_FILE,
    build_run_model,
    check_cases,
    load_task_manifest,
    log,
    make_cache,
    make_loader,
    model_name,
    report_skipped,
    select_device,
    setup_logging,
    task_of,
)
from osteoscope.engine.stages import load_init_weights
from osteoscope.errors import ConfigError, OsteoscopeError


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


def train(
    config: ExperimentConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    verbose: bool = True,
    splits: Mapping[str, str] | None = None,
) -> Path:
    """Train the model a config describes into ``run_dir``.

    Args:
        config: The experiment (ignored on resume: the run's saved config is used).
        run_dir: Output folder: config.yaml, splits.csv, train.log, history.jsonl, last.pt, best.pt.
        resume: Continue the run in ``run_dir`` from its last completed epoch (a finished run stays as it is).
        verbose: Show progress bars and log to the terminal (the log file is always written).
        splits: A given case -> train/val/test assignment (k-fold folds, a study's shared split) instead of
            splitting by ``data.split_seed``; checked for patient leakage.

    Returns:
        The run directory.
    """
    run_dir = Path(run_dir)
    if resume:
        if not (run_dir / LAST_CHECKPOINT).is_file():
            raise OsteoscopeError(f"nothing to resume in {run_dir} (no {LAST_CHECKPOINT})")
        config = load_config(run_dir / CONFIG_FILE)
    elif (run_dir / LAST_CHECKPOINT).exists():
        raise OsteoscopeError(f"{run_dir} already holds a run: pass --resume to continue it or choose another --out")
    task = task_of(config)
    tc = config.train
    if tc.schedule not in ("cosine", "constant"):
        raise ConfigError(f"train.schedule must be cosine or constant, got {tc.schedule!r}")
    if not config.data.path:
        raise ConfigError("no dataset given: set data.path (or --data)")
    name = model_name(config, task)
    torch.manual_seed(tc.seed)
    model = build_run_model(config, task)  # before any file is written, so config errors leave nothing behind
    initialised = load_init_weights(model, tc.init_from, name) if tc.init_from and not resume else ""
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

    manifest = load_task_manifest(task, config.data.path, skip_bad=config.data.skip_bad)
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
    assignment = _assign_splits(config, task, cases, run_dir, resume, splits)
    cases = [case for case in cases if case.case_id in assignment]
    save_hashes(run_dir / HASHES_FILE, hashes, {k: v for k, v in assignment.items() if v != "test"})
    parts = {name: [c for c in cases if assignment[c.case_id] == name] for name in ("train", "val", "test")}
    log.info(
        "patients split: %s",
        ", ".join(f"{k} {len(v)} cases ({len({c.patient_id for c in v})} patients)" for k, v in parts.items()),
    )
    if not parts["train"] or not parts["val"]:
        raise OsteoscopeError(
            "training needs cases in both the train and val splits; add data or change split_fractions"
        )

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
        optimizer, lambda s: lr_factor(s, total_steps, steps_per_epoch * tc.warmup_epochs, tc.schedule)
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
    extra = {"config": config_to_dict(config)}
    # checkpoints before the history file, so the history never lists an epoch that a kill could lose
    handlers = [
        stopping,
        Checkpoints(run_dir / BEST_CHECKPOINT, run_dir / LAST_CHECKPOINT, monitor, extra),
        History(run_dir / HISTORY_FILE),
        EpochLog(log.info, tc.epochs, stopping),
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
    log.info(
        "done: best %s %.4f at epoch %d; weights in %s",
        monitor,
        stopping.best,
        stopping.best_epoch,
        run_dir / BEST_CHECKPOINT,
    )
    return run_dir


def _assign_splits(
    config: ExperimentConfig, task, cases: list, run_dir: Path, resume: bool, given: Mapping[str, str] | None
) -> dict[str, str]:
    """The run's split: saved (resume), given (k-fold, study) or drawn by patient from the split seed."""
    if resume:
        saved = load_splits(run_dir / SPLITS_FILE)
        return {case.case_id: saved[case.case_id] for case in cases if case.case_id in saved}
    if given is not None:
        assignment = {case.case_id: given[case.case_id] for case in cases if case.case_id in given}
        check_patient_leakage([case for case in cases if case.case_id in assignment], assignment)
    else:
        assignment = split_patients(cases, config.data.split_fractions, config.data.split_seed, stratum=task.stratum)
    save_splits(run_dir / SPLITS_FILE, [case for case in cases if case.case_id in assignment], assignment)
    return assignment
