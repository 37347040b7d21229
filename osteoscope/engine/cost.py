"""Compute cost of a trained run: size, FLOPs per case, inference time and peak memory.

Measured in a fresh process (``python -m osteoscope.engine.cost RUN``) so that the peak resident memory
belongs to this model alone and not to whatever ran before it: one training step (forward, backward,
optimiser) at the run's batch size, then timed inference. Two memory figures: the process's peak (which
includes the ~1.5 GiB that importing torch takes) and, on Linux, the peak above the resident memory just
before the step, i.e. what the model, its activations and the optimiser state add. FLOPs are counted by
``torch.utils.flop_counter`` (a multiply-add counts as 2 FLOPs) on one case in eval mode. Training seconds
per epoch come from the run's history (optimisation only, without validation).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from osteoscope import jsonio
from osteoscope.data.datasets import CaseDataset
from osteoscope.engine.inference import forward, model_inputs
from osteoscope.engine.runs import BEST_CHECKPOINT, HISTORY_FILE, load_run, load_task_manifest
from osteoscope.errors import OsteoscopeError


def measure(run_dir: str | Path, *, repeats: int = 5) -> dict[str, float]:
    """Measure a run in this process (call it in a fresh one for an honest peak memory)."""
    run = load_run(run_dir)
    task, model = run.task, run.model
    cases = [
        c
        for c in load_task_manifest(task, run.config.data.path, skip_bad=True).cases
        if run.splits.get(c.case_id) == "test"
    ]
    if not cases:
        raise OsteoscopeError(f"{run.path}: no test cases to measure on")
    batch_size = run.config.train.batch_size
    batch = next(iter(DataLoader(CaseDataset(cases, task.builder(False, None)), batch_size=batch_size)))
    n = len(batch["index"])
    one = {k: v[:1] for k, v in batch.items()}
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**model_inputs(model, one, model_name=run.model_name, task=task))
    flops = counter.get_total_flops()
    peak_before = peak_rss_mib()  # the reset below clears it
    resident = reset_peak_rss()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    loss, _ = task.loss()(forward(model, batch, model_name=run.model_name, task=task), batch)
    loss.backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        forward(model, batch, model_name=run.model_name, task=task)
        started = time.perf_counter()
        for _ in range(repeats):
            forward(model, batch, model_name=run.model_name, task=task)
        infer_s = (time.perf_counter() - started) / (repeats * n)
    history = [json.loads(line) for line in (run.path / HISTORY_FILE).read_text().splitlines() if line.strip()]
    train_seconds = [r.get("train_seconds", r["seconds"]) for r in history]
    return {
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "disk_mb": (run.path / BEST_CHECKPOINT).stat().st_size / 2**20,
        "gflops_per_case": flops / 1e9,
        "train_s_per_epoch": sum(train_seconds) / max(len(train_seconds), 1),
        "infer_ms_per_case": infer_s * 1e3,
        "peak_mib": max(peak_before, peak_rss_mib()),
        "step_peak_mib": _status_mib("VmHWM") - resident if resident == resident else float("nan"),
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
    }


def _status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status in MiB (NaN where there is no /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB.

    Read from /proc (VmHWM, which starts afresh at exec) where there is one: ``getrusage``'s ``ru_maxrss``
    is inherited from the parent across fork and exec on Linux, so a child started by a large process would
    report the parent's peak.
    """
    peak = _status_mib("VmHWM")
    return peak if peak == peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark (Linux: ``clear_refs`` 5) and return the current RSS in MiB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return float("nan")
    return _status_mib("VmRSS")


def measure_in_subprocess(run_dir: str | Path, threads: int = 0) -> dict[str, Any]:
    """:func:`measure` in a fresh Python process; its JSON result."""
    command = [sys.executable, "-m", "osteoscope.engine.cost", str(run_dir), "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise OsteoscopeError(f"measuring the compute cost of {run_dir} failed: {last}")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure the compute cost of a trained run (JSON on stdout).")
    parser.add_argument("run")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(jsonio.dumps(measure(args.run)))


if __name__ == "__main__":
    main()
