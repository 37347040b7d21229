"""The training loop, and the small handlers that attach to it.

The loop knows nothing about tasks or metrics: each epoch it runs the optimiser over the training batches,
calls ``validate`` for a dict of named scores, and hands the epoch's record to its handlers in order.
Handlers do everything else - early stopping on a monitored score, checkpoints, the history file, the log
line - and keep their own state, which is saved with the loop state so a resumed run continues exactly.
Writing handlers write only on the main process, so the loop is ready for torchrun (DDP) where every rank
runs it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from osteoscope import jsonio
from osteoscope.engine.checkpoint import save_atomic

Record = dict[str, Any]


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a distributed run."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to zero or constant."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class LoopState:
    """What a resumed loop needs: the last finished epoch, the history, whether to stop, handler states."""

    epoch: int = 0
    history: list[Record] = field(default_factory=list)
    stop: bool = False
    handlers: dict[str, dict[str, Any]] = field(default_factory=dict)


class Handler(Protocol):
    """Called after every epoch with the loop and the epoch's record (which it may extend)."""

    name: str

    def epoch_end(self, loop: Loop, record: Record) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class Loop:
    """Epochs of optimisation followed by validation, with handlers after each epoch.

    Args:
        model: The model being trained.
        step_loss: ``batch -> (loss, parts)`` for one training batch (forward and loss; the loop does the
            backward pass and the optimiser step).
        optimizer: The optimiser.
        scheduler: Stepped after every batch.
        batches: ``epoch -> iterable of batches`` (the loader of that epoch, seeded by it).
        validate: Called after each epoch in eval mode; returns named validation values.
        handlers: Called in order after each epoch.
        amp: Mixed precision (CUDA only).
        progress: Optional ``(epoch, step, steps, mean_loss)`` callback after each step.
    """

    def __init__(
        self,
        model: nn.Module,
        step_loss: Callable[[Any], tuple[torch.Tensor, dict[str, float]]],
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        batches: Callable[[int], Sequence[Any] | Iterable[Any]],
        validate: Callable[[], Record],
        handlers: Sequence[Handler],
        *,
        device: torch.device,
        amp: bool = False,
        progress: Callable[[int, int, int, float], None] | None = None,
    ) -> None:
        self.model = model
        self.step_loss = step_loss
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.batches = batches
        self.validate = validate
        self.handlers = list(handlers)
        self.device = device
        self.amp = amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.progress = progress
        self.state = LoopState()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: weights, optimiser, schedule, scaler, loop and handler state."""
        self.state.handlers = {h.name: h.state_dict() for h in self.handlers}
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loop": {
                "epoch": self.state.epoch,
                "history": self.state.history,
                "stop": self.state.stop,
                "handlers": self.state.handlers,
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state written by :meth:`state_dict`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.state = LoopState(**state["loop"])
        for handler in self.handlers:
            if handler.name in self.state.handlers:
                handler.load_state_dict(self.state.handlers[handler.name])

    def train_epoch(self, epoch: int) -> Record:
        """One pass over the training batches; returns the mean of each loss part."""
        self.model.train()
        sums: dict[str, float] = {}
        batches = self.batches(epoch)
        total = len(batches) if hasattr(batches, "__len__") else 0
        steps = 0
        for steps, batch in enumerate(batches, start=1):
            with torch.autocast(self.device.type, enabled=self.amp):
                loss, parts = self.step_loss(batch)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value
            if self.progress is not None:
                self.progress(epoch, steps, total, sums.get("total", 0.0) / steps)
        return {f"train_{k}": v / max(steps, 1) for k, v in sums.items()}

    def run(self, epochs: int) -> LoopState:
        """Train from the epoch after ``state.epoch`` up to ``epochs``, or until a handler sets ``stop``."""
        for epoch in range(self.state.epoch + 1, epochs + 1):
            if self.state.stop:
                break
            started = time.perf_counter()
            record: Record = {"epoch": epoch, **self.train_epoch(epoch)}
            record["train_seconds"] = round(time.perf_counter() - started, 2)
            self.model.eval()
            record.update(self.validate())
            record["lr"] = self.scheduler.get_last_lr()[0]
            record["seconds"] = round(time.perf_counter() - started, 2)
            self.state.epoch = epoch
            self.state.history.append(record)
            for handler in self.handlers:
                handler.epoch_end(self, record)
        return self.state


class StatelessHandler:
    """Base of handlers with nothing to save for a resume."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class EarlyStopping:
    """Tracks the best value of a monitored key and stops after ``patience`` epochs without improvement.

    Marks each record with ``improved``; a NaN value never improves. ``patience`` 0 never stops.
    """

    name = "early_stopping"

    def __init__(self, monitor: str, mode: str, patience: int) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be max or min, got {mode!r}")
        self.monitor, self.mode, self.patience = monitor, mode, patience
        self.best: float | None = None
        self.best_epoch = 0
        self.stale = 0

    def better(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def epoch_end(self, loop: Loop, record: Record) -> None:
        value = float(record[self.monitor])
        record["improved"] = self.better(value)
        if record["improved"]:
            self.best, self.best_epoch, self.stale = value, record["epoch"], 0
        else:
            self.stale += 1
        if self.patience and self.stale >= self.patience:
            loop.state.stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "stale": self.stale}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.best_epoch, self.stale = state["best"], state["best_epoch"], state["stale"]


class Checkpoints(StatelessHandler):
    """Writes ``best.pt`` (weights, epoch, monitored value, config) when a record improved, and the full
    resumable state to ``last.pt`` after every epoch, both atomically."""

    name = "checkpoints"

    def __init__(self, best: Path, last: Path, monitor: str, extra: Mapping[str, Any]) -> None:
        self.best, self.last, self.monitor, self.extra = best, last, monitor, dict(extra)

    def epoch_end(self, loop: Loop, record: Record) -> None:
        if not is_main_process():
            return
        if record.get("improved"):
            state = {
                "model": loop.model.state_dict(),
                "epoch": record["epoch"],
                "monitor": self.monitor,
                "value": record[self.monitor],
                **self.extra,
            }
            save_atomic(state, self.best)
        save_atomic(loop.state_dict(), self.last)


class History(StatelessHandler):
    """Rewrites ``history.jsonl`` (one JSON record per epoch) after every epoch."""

    name = "history"

    def __init__(self, path: Path) -> None:
        self.path = path

    def epoch_end(self, loop: Loop, record: Record) -> None:
        if is_main_process():
            self.path.write_text("".join(jsonio.dumps(r) + "\n" for r in loop.state.history))


class EpochLog(StatelessHandler):
    """One log line per epoch: training loss, the monitored value, the best so far, time."""

    name = "epoch_log"

    def __init__(self, log: Callable[..., None], epochs: int, stopping: EarlyStopping) -> None:
        self.log, self.epochs, self.stopping = log, epochs, stopping

    def epoch_end(self, loop: Loop, record: Record) -> None:
        s = self.stopping
        self.log(
            "epoch %d/%d  loss %.4f  %s %.4f  (best %.4f @ %d)  %.1fs",
            record["epoch"],
            self.epochs,
            record.get("train_total", float("nan")),
            s.monitor,
            record[s.monitor],
            float("nan") if s.best is None else s.best,
            s.best_epoch,
            record["seconds"],
        )
