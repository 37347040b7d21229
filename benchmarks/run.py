"""Speed benchmarks at the demo's sizes, printed as JSON: ``python -m benchmarks.run`` (or ``make bench``).

* loader: radiograph file -> two normalised femoral-head ROIs, images/s: first read, and later epochs
  served from the decoded-region cache (with and without augmentation);
* per model (each in a fresh process, so peak memory is its own): training and inference throughput in
  ROI pairs/s and the process's peak resident memory.

Targets (issue 2): loader throughput at least 3x AsT training throughput; training peak memory < 4 GiB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROI_SIZE = 64
BATCH = 32


def loader_throughput(data: Path, n: int = 200) -> dict[str, float]:
    """Images per second through the onfh-xray sample builder as training uses it.

    ``cold``: file -> decode -> two normalised ROIs (first epoch). ``warm``: later epochs, where the
    decoded head regions come from the builder's cache; ``warm_augmented`` adds the training augmentation.
    """
    import numpy as np

    from osteoscope.data.datasets import BilateralRois
    from osteoscope.data.manifest import load_manifest

    cases = load_manifest(data).cases[:n]
    builder = BilateralRois(size=ROI_SIZE, cache={})
    result = {}
    for name, rng in (("cold", None), ("warm", None), ("warm_augmented", np.random.default_rng(0))):
        started = time.perf_counter()
        for case in cases:
            builder(case, rng)
        result[f"loader_{name}_images_per_s"] = round(len(cases) / (time.perf_counter() - started), 1)
    return result


def model_throughput(name: str, steps: int = 20) -> dict[str, float]:
    """Training and inference ROI pairs per second for one model at the demo's preset and sizes."""
    from osteoscope.losses import BilateralLoss
    from osteoscope.models import create_model

    torch.manual_seed(0)
    model = create_model(name, preset="small", img_size=ROI_SIZE)
    criterion = BilateralLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    left, right = torch.randn(BATCH, 1, ROI_SIZE, ROI_SIZE), torch.randn(BATCH, 1, ROI_SIZE, ROI_SIZE)
    batch = {"label": (torch.arange(BATCH) % 2).float(), "side_label": torch.zeros(BATCH, 2)}

    def train_step() -> None:
        loss, _ = criterion(model(left, right), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.train()
    for _ in range(3):
        train_step()
    started = time.perf_counter()
    for _ in range(steps):
        train_step()
    train_rate = steps * BATCH / (time.perf_counter() - started)
    model.eval()
    with torch.no_grad():
        model(left, right)
        started = time.perf_counter()
        for _ in range(steps):
            model(left, right)
        infer_rate = steps * BATCH / (time.perf_counter() - started)
    return {
        f"{name}_params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        f"{name}_train_pairs_per_s": round(train_rate, 1),
        f"{name}_infer_pairs_per_s": round(infer_rate, 1),
        f"{name}_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="benchmark only this model in this process (used internally)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.model:
        print(json.dumps(model_throughput(args.model)))
        return
    from osteoscope.phantoms import generate_phantom

    result: dict[str, float | str] = {"threads": args.threads, "roi_size": ROI_SIZE, "batch": BATCH}
    with tempfile.TemporaryDirectory() as tmp:
        generate_phantom("onfh-xray", tmp, n=200, seed=0)
        result.update(loader_throughput(Path(tmp)))
    for name in ("ast", "vit", "swin"):
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.run", "--model", name, "--threads", str(args.threads)],
            capture_output=True,
            text=True,
            check=True,
        )
        result.update(json.loads(out.stdout))
    result["loader_vs_ast_training"] = round(
        float(result["loader_warm_augmented_images_per_s"]) / float(result["ast_train_pairs_per_s"]), 2
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
