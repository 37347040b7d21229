"""SRANet's speed and memory at the seed's size (issue 11): inference per 128^3 volume, and the peak memory
of a training step at batch 2, each in a fresh process, printed as JSON.

The model and loss are those of ``configs/avnfh-ct-sranet.yaml`` (SRANet, the structure-regularised loss)
at ``data.options.size`` 128^3, built through the engine (``build_run_model``, ``task.loss()``). The inputs
are random volumes with a random bone mask: time and memory do not depend on the content.

* inference: eval mode, no gradients, batch 1, ``--repeats`` timed passes after two warm-up passes; median
  and worst seconds per volume;
* training: forward + loss + backward + AdamW step at batch 2 (the config's optimiser), the process's peak
  resident memory above its memory just before the step (what model, activations, gradients and optimiser
  state add) and the process's whole peak (which includes torch's own ~1.5 GiB).

Targets: inference at most 1 s per volume on 2 CPU cores; training peak at batch 2 under 6 GiB.

Run: ``python -m benchmarks.sranet_speed [--threads 2] [--repeats 5] [--config configs/avnfh-ct-sranet.yaml]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "avnfh-ct-sranet.yaml"
SIZE = (128, 128, 128)
TARGET_INFER_S = 1.0
TARGET_TRAIN_GIB = 6.0


def _setup(config_path: Path) -> tuple[Any, Any, torch.nn.Module, str]:
    from osteoscope.config import load_config
    from osteoscope.engine.runs import build_run_model, model_name, task_of

    config = load_config(config_path, [f"data.options.size=[{', '.join(map(str, SIZE))}]"])
    task = task_of(config)
    return config, task, build_run_model(config, task), model_name(config, task)


def _batch(n: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "image": torch.randn(n, 1, *SIZE, generator=gen),
        "mask": (torch.rand(n, 1, *SIZE, generator=gen) > 0.7).float(),
        "label": (torch.arange(n) % 2 == 0).float(),  # 1, 0, 1, ...
    }


def measure(kind: str, config_path: Path, repeats: int) -> dict[str, Any]:
    """One measurement in this process: ``infer`` or ``train``."""
    from osteoscope.engine.cost import peak_rss_mib, reset_peak_rss
    from osteoscope.engine.inference import forward

    config, task, model, name = _setup(config_path)
    params = sum(p.numel() for p in model.parameters())
    result: dict[str, Any] = {
        "model": name,
        "params_m": round(params / 1e6, 3),
        "mb_float32": round(params * 4 / 2**20, 2),
    }
    if kind == "infer":
        model.eval()
        batch = {k: v for k, v in _batch(1).items() if k == "image"}  # masks are for training only
        times = []
        with torch.no_grad():
            for i in range(repeats + 2):
                start = time.perf_counter()
                forward(model, batch, model_name=name, task=task)
                if i >= 2:
                    times.append(time.perf_counter() - start)
        median = statistics.median(times)
        result.update(infer_s_median=round(median, 3), infer_s_max=round(max(times), 3), meets=median <= TARGET_INFER_S)
        return result
    model.train()
    loss_fn = task.loss()
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    batch = _batch(2)
    before = reset_peak_rss()
    outputs = forward(model, batch, model_name=name, task=task)
    loss, parts = loss_fn(outputs, batch)
    loss.backward()
    optimiser.step()
    added = peak_rss_mib() - before
    result.update(
        train_step_peak_above_mib=round(added, 1),
        process_peak_mib=round(peak_rss_mib(), 1),
        loss_parts={k: round(float(v), 4) for k, v in parts.items()},
        meets=added / 1024 < TARGET_TRAIN_GIB,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--kind", choices=("infer", "train"), help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.kind is not None:
        print(json.dumps(measure(args.kind, args.config, args.repeats)))
        return
    result: dict[str, Any] = {"threads": args.threads, "size": list(SIZE), "config": str(args.config)}
    for kind in ("infer", "train"):
        command = [sys.executable, "-m", "benchmarks.sranet_speed", "--kind", kind, "--threads", str(args.threads)]
        command += ["--repeats", str(args.repeats), "--config", str(args.config)]
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
        result[kind] = json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr.strip()[-2000:]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
