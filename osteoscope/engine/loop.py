"""The training loop, and the small handlers that attach to it.

The loop knows nothing about tasks or metrics: each epoch it runs the optimiser over the training batches,
calls ``validate`` for a dict of named scores, and hands the epoch's record to its handlers in order.
Handlers do everything else - early stopping on a monitored score, checkpoints, the history file, the log
line, experiment tracking (TensorBoard, MLflow) - and keep their own state, which is saved with the loop state
so a resumed run continues exactly. After the last epoch each handler's ``run_end`` is called once.
Writing handlers write only on the main process, so the loop is ready for torchrun (DDP) where every rank
runs it.
"""

from __future__ import annotations

import json
import math
import os
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


def lr_factor(
    step: int, total_steps: int, warmup_steps: int, schedule: str, step_every: int = 0, gamma: float = 0.1
) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to zero, constant, or (``step``) multiplied
    by ``gamma`` every ``step_every`` steps counted from the start."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return gamma ** (step // max(1, step_every))
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

    def run_end(self, loop: Loop) -> None: ...

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
        for handler in self.handlers:
            handler.run_end(self)
        return self.state


class StatelessHandler:
    """Base of handlers: by default nothing to save for a resume and nothing to do after the last epoch."""

    def run_end(self, loop: Loop) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class EarlyStopping(StatelessHandler):
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


def read_history(path: Path) -> list[Record]:
    """The epoch records of a ``history.jsonl`` ([] when the file does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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


TRACKING_FILE = "tracking.json"  # in the run folder: the MLflow store and run that the run logs to


def flat_params(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping (e.g. a config) as ``{"train.lr": 0.001, ...}``; lists and None as text."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, bool | int | float | str) else json.dumps(value)
    return out


def _scalars(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a record (flags such as ``improved`` and undefined values are left out)."""
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def mlflow_uri(uri: str) -> str:
    """A tracking URI for MLflow: a plain folder becomes ``file://`` (MLflow's local file store)."""
    return uri if "://" in uri or uri.startswith(("databricks", "sqlite:")) else Path(uri).resolve().as_uri()


class Tracker:
    """Experiment tracking of one run: TensorBoard event files in ``RUN/tb/`` always, MLflow when a URI is given.

    The MLflow run is created once and its id kept in ``RUN/tracking.json``, so a resumed run and a later
    evaluation log to the same MLflow run. Both libraries are imported on first use only (they are slow to
    import). MLflow's local file store is in maintenance mode and refused unless ``MLFLOW_ALLOW_FILE_STORE``
    is set; a ``file:`` URI sets it, since a folder is the store a user without a server has.

    Args:
        run_dir: The run folder.
        uri: MLflow tracking URI or folder; empty for TensorBoard only.
        experiment: MLflow experiment name (created when missing).
    """

    def __init__(self, run_dir: Path, uri: str = "", experiment: str = "osteoscope") -> None:
        self.run_dir, self.experiment = Path(run_dir), experiment
        self.uri = mlflow_uri(uri) if uri else ""
        self.state_file = self.run_dir / TRACKING_FILE
        self.state: dict[str, Any] = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}
        self._writer: Any = None
        self._client: Any = None

    @property
    def started(self) -> bool:
        """Whether this run has logged its params where it logs now (once, at its first epoch; not again on
        resume unless the MLflow store changed)."""
        return bool(self.state.get("params_logged")) and (not self.uri or self.state.get("mlflow_uri") == self.uri)

    def writer(self) -> Any:
        """The TensorBoard writer of ``RUN/tb/``."""
        if self._writer is None:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(logdir=str(self.run_dir / "tb"), flush_secs=30)
        return self._writer

    def mlflow(self) -> tuple[Any, str] | None:
        """``(client, run_id)`` of the run's MLflow run, created on first use; None without a URI."""
        if not self.uri:
            return None
        if self._client is None:
            if self.uri.startswith("file:"):
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        if self.state.get("mlflow_uri") != self.uri or not self.state.get("mlflow_run_id"):
            found = self._client.get_experiment_by_name(self.experiment)
            experiment_id = found.experiment_id if found else self._client.create_experiment(self.experiment)
            run = self._client.create_run(
                experiment_id, run_name=self.run_dir.name, tags={"osteoscope.run": str(self.run_dir.resolve())}
            )
            self.state.update(mlflow_uri=self.uri, mlflow_run_id=run.info.run_id)
            self.save()
        return self._client, self.state["mlflow_run_id"]

    def save(self) -> None:
        """Write ``RUN/tracking.json`` (the MLflow store and run, whether the params were logged)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(self.state, indent=2))

    def params(self, params: Mapping[str, Any]) -> None:
        """Log the run's parameters: as a text table in TensorBoard, as params in MLflow."""
        flat = flat_params(params)
        table = "| parameter | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in flat.items())
        self.writer().add_text("params", table, 0)
        tracked = self.mlflow()
        if tracked is not None:
            from mlflow.entities import Param

            client, run_id = tracked
            items = [Param(k, str(v)) for k, v in flat.items()]
            for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                client.log_batch(run_id, params=items[start : start + 100])
        self.state["params_logged"] = True
        self.save()

    def metrics(self, values: Mapping[str, Any], step: int) -> None:
        """Log the finite numbers of ``values`` at ``step`` to TensorBoard and MLflow."""
        scalars = _scalars(values)
        writer = self.writer()
        for key, value in scalars.items():
            writer.add_scalar(key, value, step)
        writer.flush()
        tracked = self.mlflow()
        if tracked is not None and scalars:
            from mlflow.entities import Metric

            client, run_id = tracked
            now = int(time.time() * 1000)
            client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in scalars.items()])

    def hparams(self, params: Mapping[str, Any], results: Mapping[str, Any], name: str) -> None:
        """TensorBoard's hyper-parameter view: the params against final results (in ``tb/<name>/``)."""
        self.writer().add_hparams(flat_params(params), _scalars(results), name=name)

    def finish(self) -> None:
        """Flush TensorBoard and mark the MLflow run finished."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        tracked = self.mlflow()
        if tracked is not None:
            client, run_id = tracked
            client.set_terminated(run_id, "FINISHED")


class Tracking(StatelessHandler):
    """Logs the run's params once and every epoch's numbers (losses, validation scores, lr, time) to
    TensorBoard (``RUN/tb/``) and, given a URI, MLflow; on rank 0 only. Task-agnostic: it logs what the
    record holds."""

    name = "tracking"

    def __init__(self, run_dir: Path, params: Mapping[str, Any], mlflow: str = "", experiment: str = "osteoscope"):
        self.tracker = Tracker(run_dir, mlflow, experiment)
        self.params = dict(params)

    def epoch_end(self, loop: Loop, record: Record) -> None:
        if not is_main_process():
            return
        if not self.tracker.started:
            self.tracker.params(self.params)
        self.tracker.metrics({k: v for k, v in record.items() if k != "epoch"}, record["epoch"])

    def run_end(self, loop: Loop) -> None:
        if is_main_process():
            self.tracker.finish()


def track_evaluation(
    run_dir: Path, name: str, figures: Mapping[str, Any], params: Mapping[str, Any], uri: str, experiment: str
) -> None:
    """Log an evaluation's figures (e.g. ``test_auc``) to the run's TensorBoard files and its MLflow run, and
    the params against them to TensorBoard's hyper-parameter view (``tb/<name>/``)."""
    tracker = Tracker(run_dir, uri, experiment)
    tracker.metrics(figures, 0)
    tracker.hparams(params, figures, name)
    tracker.finish()
