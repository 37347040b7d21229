"""Training loop: AdamW, warm-up + cosine schedule, early stopping on validation AUC, resumable.

After every epoch the full state (model, optimiser, schedule, early-stopping counters, history) is written
atomically to ``last.pt``; a killed run resumed with ``resume=True`` replays from the start of the epoch it
was in and, on the CPU, ends with exactly the weights of an uninterrupted run (shuffling and augmentation
depend only on seed, epoch and sample index).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from osteoscope.config import ExperimentConfig, config_to_dict, load_config, save_config
from osteoscope.data.datasets import CaseDataset
from osteoscope.data.splits import load_splits, save_splits, split_patients
from osteoscope.engine.checkpoint import load_checkpoint, save_atomic
from osteoscope.engine.runs import (
    BEST_CHECKPOINT,
    CONFIG_FILE,
    HISTORY_FILE,
    LAST_CHECKPOINT,
    LOG_FILE,
    SPLITS_FILE,
    build_model,
    check_cases,
    load_task_manifest,
    log,
    make_loader,
    predict_dataset,
    report_skipped,
    select_device,
    setup_logging,
)
from osteoscope.errors import ConfigError, OsteoscopeError
from osteoscope.metrics import binary_metrics
from osteoscope.tasks import get_task


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to zero or constant."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=True,
    )


def train(config: ExperimentConfig, run_dir: str | Path, *, resume: bool = False, verbose: bool = True) -> Path:
    """Train the model a config describes into ``run_dir``.

    Args:
        config: The experiment (ignored on resume: the run's saved config is used).
        run_dir: Output folder: config.yaml, splits.csv, train.log, history.jsonl, last.pt, best.pt.
        resume: Continue the run in ``run_dir`` from its last completed epoch.
        verbose: Show progress bars and log to the terminal (the log file is always written).

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
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir / LOG_FILE, verbose=verbose)
    task = get_task(config.task)
    tc = config.train
    if tc.schedule not in ("cosine", "constant"):
        raise ConfigError(f"train.schedule must be cosine or constant, got {tc.schedule!r}")
    if not config.data.path:
        raise ConfigError("no dataset given: set data.path (or --data)")
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    device = select_device(tc.device)
    on_cuda = device.type == "cuda"
    save_config(config, run_dir / CONFIG_FILE)
    log.info(
        "%s run in %s: task %s, model %s (%s), device %s",
        "resuming" if resume else "starting",
        run_dir,
        task.name,
        config.model.name,
        config.model.preset,
        device,
    )

    manifest = load_task_manifest(task, config.data.path, skip_bad=config.data.skip_bad)
    cache: dict | None = {} if config.data.cache else None
    eval_builder = task.make_builder(config.data, False, cache)
    with _progress() as bar:
        job = bar.add_task("checking cases", total=len(manifest.cases), status="")
        cases, bad = check_cases(
            manifest.cases, eval_builder, skip_bad=config.data.skip_bad, progress=lambda i: bar.update(job, completed=i)
        )
    report_skipped([*manifest.skipped, *bad])
    if resume:
        saved = load_splits(run_dir / SPLITS_FILE)
        cases = [case for case in cases if case.case_id in saved]
        splits = {case.case_id: saved[case.case_id] for case in cases}
    else:
        splits = split_patients(cases, config.data.split_fractions, config.data.split_seed)
        save_splits(run_dir / SPLITS_FILE, cases, splits)
    parts = {name: [c for c in cases if splits[c.case_id] == name] for name in ("train", "val", "test")}
    log.info(
        "patients split by seed %d: %s",
        config.data.split_seed,
        ", ".join(f"{k} {len(v)} cases ({len({c.patient_id for c in v})} patients)" for k, v in parts.items()),
    )
    if not parts["train"] or not parts["val"]:
        raise OsteoscopeError(
            "training needs cases in both the train and val splits; add data or change split_fractions"
        )

    train_set = CaseDataset(parts["train"], task.make_builder(config.data, True, cache), augment=True, seed=tc.seed)
    val_set = CaseDataset(parts["val"], eval_builder)
    torch.manual_seed(tc.seed)
    model = build_model(config).to(device)
    if on_cuda and tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = task.make_loss(config.loss)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    steps_per_epoch = math.ceil(len(train_set) / tc.batch_size)
    total_steps = steps_per_epoch * tc.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, steps_per_epoch * tc.warmup_epochs, tc.schedule)
    )
    use_amp = on_cuda and tc.amp
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "model %s: %.2fM parameters; %d steps/epoch, up to %d epochs",
        config.model.name,
        n_params / 1e6,
        steps_per_epoch,
        tc.epochs,
    )

    state = {"epoch": 0, "best_auc": -1.0, "best_epoch": 0, "stale": 0, "history": []}
    if resume:
        saved_state = load_checkpoint(run_dir / LAST_CHECKPOINT)
        model.load_state_dict(saved_state["model"])
        optimizer.load_state_dict(saved_state["optimizer"])
        scheduler.load_state_dict(saved_state["scheduler"])
        scaler.load_state_dict(saved_state["scaler"])
        state = saved_state["progress"]
        log.info(
            "resumed after epoch %d (best val AUC %.4f at epoch %d)",
            state["epoch"],
            state["best_auc"],
            state["best_epoch"],
        )

    with _progress() as bar:
        for epoch in range(state["epoch"] + 1, tc.epochs + 1):
            if tc.patience and state["stale"] >= tc.patience:
                break
            started = time.perf_counter()
            model.train()
            train_set.set_epoch(epoch)
            loader = make_loader(
                train_set, tc.batch_size, shuffle=True, seed=tc.seed, epoch=epoch, workers=config.data.num_workers
            )
            job = bar.add_task(f"epoch {epoch}/{tc.epochs}", total=len(loader), status="")
            sums: dict[str, float] = {}
            for step, batch in enumerate(loader, start=1):
                inputs = [batch[k].to(device) for k in model.input_keys]
                if on_cuda and tc.channels_last:
                    inputs = [x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x for x in inputs]
                targets = {k: v.to(device) for k, v in batch.items()}
                with torch.autocast(device.type, enabled=use_amp):
                    outputs = model(*inputs)
                    loss, parts_ = criterion(outputs, targets)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                for key, value in parts_.items():
                    sums[key] = sums.get(key, 0.0) + value
                bar.update(job, advance=1, status=f"loss {sums['total'] / step:.4f}")
            bar.remove_task(job)
            val = predict_dataset(model, val_set, batch_size=tc.batch_size * 2, device=device)
            auc = binary_metrics(val["label"], val["probability"])["auc"]
            improved = not np.isnan(auc) and auc > state["best_auc"]
            record = {
                "epoch": epoch,
                **{f"train_{k}": v / steps_per_epoch for k, v in sums.items()},
                "val_auc": float(auc),
                "lr": scheduler.get_last_lr()[0],
                "seconds": round(time.perf_counter() - started, 2),
            }
            state = {
                "epoch": epoch,
                "best_auc": float(auc) if improved else state["best_auc"],
                "best_epoch": epoch if improved else state["best_epoch"],
                "stale": 0 if improved else state["stale"] + 1,
                "history": [*state["history"], record],
            }
            if improved:
                save_atomic(
                    {
                        "model": model.state_dict(),
                        "epoch": epoch,
                        "val_auc": float(auc),
                        "config": config_to_dict(config),
                    },
                    run_dir / BEST_CHECKPOINT,
                )
            save_atomic(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "progress": state,
                },
                run_dir / LAST_CHECKPOINT,
            )
            (run_dir / HISTORY_FILE).write_text("".join(json.dumps(r) + "\n" for r in state["history"]))
            log.info(
                "epoch %d/%d  loss %.4f  val AUC %.4f  (best %.4f @ %d)  %.1fs",
                epoch,
                tc.epochs,
                record["train_total"],
                auc,
                state["best_auc"],
                state["best_epoch"],
                record["seconds"],
            )
    if state["stale"] >= tc.patience > 0 and state["epoch"] < tc.epochs:
        log.info("early stop: no better validation AUC for %d epochs", tc.patience)
    if not (run_dir / BEST_CHECKPOINT).exists():
        raise OsteoscopeError("no epoch produced a finite validation AUC (does the val split hold both classes?)")
    log.info(
        "done: best val AUC %.4f at epoch %d; weights in %s",
        state["best_auc"],
        state["best_epoch"],
        run_dir / BEST_CHECKPOINT,
    )
    return run_dir
