"""Speed benchmarks of every task at its shipped config's sizes, printed as JSON: ``python -m benchmarks.run``
(or ``make bench``).

For each task, on a phantom generated for it (default image size of the phantom), with the data options,
batch size and model of the task's shipped config (``CONFIGS``; onfh-xray: AsT small at ROI 64, as the demo),
each task in a fresh process so that its peak memory is its own and its failure is reported, not fatal:

* loader, cases/s, as the trainer loads them (the task's training builder through
  ``CaseDataset(augment=True)`` and the run's DataLoader, no workers): the **first epoch** with a fresh
  ``DecodedCache`` (decode + crop/resample + normalise + augmentation; the files are in the OS page cache,
  the phantom having just been written), and **cached** later epochs (``set_epoch(2)``, and 3, 4, ... while
  under 2 s in total, for a steady number: decoded arrays from the cache, still augmented);
* training, cases/s: forward + loss + backward + AdamW step at the config's batch size on the cached epoch's
  batches, after warm-up steps; slow models measure fewer steps within a time budget (counts recorded);
* the ratios cached-loader / training and first-epoch / training;
* inference, ms per case: eval mode, no gradients, one batch of the config's batch size;
* peak resident memory of the task's process, after the loader and at the end (training and inference).

Targets (issues 2 and 8): cached loader throughput at least 3x the training throughput; training peak memory < 4 GiB.

``--profile`` adds a cProfile of one more cached epoch (top functions by own time, to stderr and the JSON).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "onfh-xray": "onfh-xray-ast.yaml",
    "avnfh-ct": "avnfh-ct-resnet3d.yaml",
    "onfh-mr-staging": "onfh-mr-staging-vgg.yaml",
    "femur-fracture-xray": "femur-fracture-xray-resnet18.yaml",
    "calcaneus-multilabel": "calcaneus-multilabel-resnet50.yaml",
}
DEFAULT_CASES = 100
FEWER_CASES = {"avnfh-ct": 24}  # its full-resolution CT volumes take about 1.5 s per case to generate
CACHED_MIN_S = 2.0  # cached epochs (2, 3, ...) are timed until this many seconds have passed
TARGET_RATIO = 3.0
TARGET_PEAK_MIB = 4096
WARMUP_STEPS = 2
TRAIN_STEPS = (3, 20)  # at least, at most; stop early once TRAIN_BUDGET_S is spent
TRAIN_BUDGET_S = 60.0
INFER_REPEATS = (2, 10)
INFER_BUDGET_S = 20.0
TASK_TIMEOUT_S = 900


def peak_mib() -> float:
    """Peak resident memory of this process so far, MiB (this process's own, not the parent's)."""
    from osteoscope.engine.cost import peak_rss_mib

    return round(peak_rss_mib(), 1)


def n_cases(batch: dict[str, Any]) -> int:
    return len(batch["index"])


def timed_epoch(dataset: Any, batch_size: int, seed: int, epoch: int) -> tuple[list[dict[str, Any]], float]:
    """One epoch of the training loader (shuffled by (seed, epoch)); its batches and seconds."""
    from osteoscope.engine.runs import make_loader

    dataset.set_epoch(epoch)
    started = time.perf_counter()
    batches = list(make_loader(dataset, batch_size, shuffle=True, seed=seed, epoch=epoch, workers=0))
    return batches, time.perf_counter() - started


def repeat_timed(step: Any, bounds: tuple[int, int], budget_s: float) -> tuple[int, float]:
    """Call ``step(i)`` at least ``bounds[0]`` and at most ``bounds[1]`` times, stopping once ``budget_s``
    is spent; the count and the seconds."""
    started = time.perf_counter()
    count = 0
    while count < bounds[1] and (count < bounds[0] or time.perf_counter() - started < budget_s):
        step(count)
        count += 1
    return count, time.perf_counter() - started


def profile_epoch(dataset: Any, batch_size: int, seed: int, top: int = 15) -> list[str]:
    """cProfile of one more cached epoch; the top functions by own time (also to stderr)."""
    profiler = cProfile.Profile()
    profiler.enable()
    timed_epoch(dataset, batch_size, seed, 1000)
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text).sort_stats("tottime")
    stats.print_stats(top)
    print(text.getvalue(), file=sys.stderr)
    rows = []
    for (file, line, name), (_, calls, own, cumulative, _) in sorted(
        stats.stats.items(), key=lambda item: item[1][2], reverse=True
    )[:top]:
        where = f"{Path(file).name}:{line}" if line else file
        rows.append(f"{where}({name}): {calls} calls, own {own:.3f} s, cumulative {cumulative:.3f} s")
    return rows


def measure_task(name: str, data: Path, *, profile: bool = False) -> dict[str, Any]:
    """Every number of one task in this process (call it in a fresh one for an honest peak memory)."""
    from torch.utils.data import DataLoader

    from osteoscope.config import load_config
    from osteoscope.data.cache import DecodedCache
    from osteoscope.data.datasets import CaseDataset
    from osteoscope.engine.inference import forward, model_inputs
    from osteoscope.engine.runs import build_run_model, load_task_manifest, model_name, task_of

    config = load_config(ROOT / "configs" / CONFIGS[name])
    task = task_of(config)
    batch_size, seed = config.train.batch_size, config.train.seed
    cases = load_task_manifest(task, data, skip_bad=False).cases
    result: dict[str, Any] = {"config": f"configs/{CONFIGS[name]}", "cases": len(cases)}

    cache = DecodedCache(int(config.data.cache_mb * 2**20))
    dataset = CaseDataset(cases, task.builder(True, cache), augment=True, seed=seed)
    _, cold_s = timed_epoch(dataset, batch_size, seed, 1)
    batches, cached_s = timed_epoch(dataset, batch_size, seed, 2)
    cached_epochs = 1
    while cached_s < CACHED_MIN_S:  # a short epoch is timed again (epochs 3, 4, ...) for a steadier number
        cached_s += timed_epoch(dataset, batch_size, seed, 2 + cached_epochs)[1]
        cached_epochs += 1
    loader_first = len(cases) / cold_s
    loader_cached = cached_epochs * len(cases) / cached_s
    result.update(
        loader_first_epoch_cases_per_s=round(loader_first, 1),
        loader_cached_cases_per_s=round(loader_cached, 1),
        loader_cached_epochs=cached_epochs,
        cache_mib=round(cache.nbytes / 2**20, 1),
        cache_full=cache.full,
        peak_rss_mib_after_loader=peak_mib(),
    )
    if profile:
        result["loader_cached_profile"] = profile_epoch(dataset, batch_size, seed)

    torch.manual_seed(seed)
    model = build_run_model(config, task)
    name_of_model = model_name(config, task)
    criterion = task.loss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    full = [b for b in batches if n_cases(b) == batch_size] or batches[:1]  # whole batches, as most steps are
    inputs = model_inputs(model, full[0], model_name=name_of_model, task=task)
    result.update(
        model=name_of_model,
        preset=config.model.preset,
        params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        batch_size=batch_size,
        input_size={k: list(v.shape[1:]) for k, v in inputs.items() if isinstance(v, torch.Tensor)},
    )

    def train_step(i: int) -> None:
        batch = full[i % len(full)]
        loss, _ = criterion(forward(model, batch, model_name=name_of_model, task=task), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    started = time.perf_counter()
    for i in range(WARMUP_STEPS):
        train_step(i)
    warmup_s = time.perf_counter() - started
    steps, train_s = repeat_timed(lambda i: train_step(WARMUP_STEPS + i), TRAIN_STEPS, TRAIN_BUDGET_S)
    trained = sum(n_cases(full[(WARMUP_STEPS + i) % len(full)]) for i in range(steps))
    train_rate = trained / train_s
    peak_train = peak_mib()

    eval_batch = next(iter(DataLoader(CaseDataset(cases[:batch_size], task.builder(False, cache)), batch_size)))
    model.eval()
    with torch.no_grad():
        forward(model, eval_batch, model_name=name_of_model, task=task)
        repeats, infer_s = repeat_timed(
            lambda _: forward(model, eval_batch, model_name=name_of_model, task=task), INFER_REPEATS, INFER_BUDGET_S
        )
    result.update(
        train_cases_per_s=round(train_rate, 2),
        train_warmup_steps=WARMUP_STEPS,
        train_warmup_s=round(warmup_s, 1),
        train_steps=steps,
        train_s_per_step=round(train_s / steps, 3),
        cached_loader_vs_training=round(loader_cached / train_rate, 2),
        first_epoch_loader_vs_training=round(loader_first / train_rate, 2),
        meets_3x=loader_cached >= TARGET_RATIO * train_rate,
        infer_ms_per_case=round(infer_s / (repeats * n_cases(eval_batch)) * 1e3, 2),
        infer_batch=n_cases(eval_batch),
        infer_repeats=repeats,
        peak_rss_mib_after_training=peak_train,
        peak_rss_mib=peak_mib(),
        peak_under_4gib=peak_mib() < TARGET_PEAK_MIB,
        threads=torch.get_num_threads(),
    )
    return result


def run_task(name: str, n: int, threads: int, *, profile: bool, timeout: float) -> dict[str, Any]:
    """Generate the task's phantom, then measure it in a fresh subprocess; a failure as ``"error": line``."""
    entry: dict[str, Any] = {"phantom_studies": n}
    if name in FEWER_CASES and n == FEWER_CASES[name]:
        entry["note"] = f"{n} phantom studies only: full-resolution CT volumes take about 1.5 s each to generate"
    started = time.perf_counter()
    entry.update(_generate_and_measure(name, n, threads, profile=profile, timeout=timeout, started=started))
    entry["seconds"] = round(time.perf_counter() - started, 1)
    return entry


def _generate_and_measure(
    name: str, n: int, threads: int, *, profile: bool, timeout: float, started: float
) -> dict[str, Any]:
    from osteoscope.phantoms import generate_phantom

    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        try:
            generate_phantom(name, tmp, n=n, seed=0)
        except Exception as error:  # reported; the other tasks go on
            return {"error": f"phantom: {type(error).__name__}: {error}".splitlines()[0]}
        generated = {"phantom_s": round(time.perf_counter() - started, 1)}
        command = [sys.executable, "-m", "benchmarks.run", "--task", name, "--data", tmp, "--threads", str(threads)]
        if profile:
            command.append("--profile")
        env = {
            **os.environ,
            **{k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
        }
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, check=False, cwd=ROOT, env=env, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return {**generated, "error": f"timed out after {timeout:.0f} s"}
    if profile:
        sys.stderr.write(done.stderr)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}, no output"])[-1]
        return {**generated, "error": last}
    try:
        return {**generated, **json.loads(done.stdout.strip().splitlines()[-1])}
    except (json.JSONDecodeError, IndexError):
        return {**generated, "error": f"no JSON from the task process: {done.stdout.strip()[-200:]!r}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=list(CONFIGS), help="benchmark only this task")
    parser.add_argument("--threads", type=int, default=2, help="torch (and BLAS) threads (default 2)")
    parser.add_argument("--cases", type=int, help=f"phantom studies per task (default {DEFAULT_CASES}, avnfh-ct 24)")
    parser.add_argument("--profile", action="store_true", help="cProfile one more cached loader epoch per task")
    parser.add_argument("--timeout", type=float, default=TASK_TIMEOUT_S, help="seconds per task process")
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)  # internal: measure --task on this phantom
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.data is not None:
        if args.task is None:
            parser.error("--data needs --task")
        print(json.dumps(measure_task(args.task, args.data, profile=args.profile)))
        return
    started = time.perf_counter()
    result: dict[str, Any] = {"threads": args.threads}
    for name in [args.task] if args.task else list(CONFIGS):
        n = args.cases or FEWER_CASES.get(name, DEFAULT_CASES)
        result[name] = run_task(name, n, args.threads, profile=args.profile, timeout=args.timeout)
        print(f"{name}: done in {result[name].get('seconds', '?')} s", file=sys.stderr, flush=True)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
