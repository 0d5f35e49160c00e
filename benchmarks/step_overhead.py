"""What the hpcai runtime costs per step: its training loop against a plain PyTorch loop over the same
model, data, batch order and optimizer, side by side in one run (one process, CPU, inline data in both,
so only the loop differs: metrics, heartbeats, the spike guard, the stop check, loss reduction).

Run: python benchmarks/step_overhead.py [--preset tiny] [--batch 8] [--steps 60]
Prints the median step time of each and the ratio (plain / hpcai: 1.0 = no overhead).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def plain_loop(run_dir: Path, preset: str, batch: int, steps: int) -> list[float]:
    """The same model, data and order as the workload, trained by the textbook loop."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    import torch
    from accelerate.utils import set_seed

    from hpcai.runtime.data_order import BatchOrder
    from hpcai.runtime.trainer import param_groups
    from hpcai.train.args import data_dir
    from hpcai.train.llava import LlavaTask, layer_classes, load_examples, load_parts, set_trainable

    args = SimpleNamespace(run_dir=run_dir, preset=preset, model_path="", vision_tower="", language_model="",
                           seed=0, data="", samples=max(64, batch * 4))  # fmt: skip
    set_seed(0)
    parts = load_parts(args)
    set_trainable(parts.model, ["projector", "language_model"])
    task = LlavaTask(parts, layer_classes(parts.model), load_examples(data_dir(args, "llava"), parts, 2048), 0.0)
    model = task.model
    optimizer = torch.optim.AdamW(param_groups(model, 0.0), lr=2e-5)
    order = BatchOrder(task.num_samples, batch, 1, 0, 0)
    accelerator = SimpleNamespace(autocast=nullcontext)
    times = []
    for step in range(steps):
        began = time.perf_counter()
        model.train()
        out = task.step(model, task.collate(order.indices(step)), accelerator)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        float(out.loss.detach())
        times.append(time.perf_counter() - began)
    return times


def hpcai_loop(run_dir: Path, preset: str, batch: int, steps: int) -> list[float]:
    command = [
        sys.executable, str(REPO / "workloads" / "llava" / "train.py"), "--run-dir", str(run_dir), "--preset", preset,
        "--stage", "finetune", "--lr", "2e-5", "--max_steps", str(steps), "--per_device_batch_size", str(batch),
        "--checkpoint_every", str(steps * 10), "--samples", str(max(64, batch * 4)), "--data_workers", "0",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(result.stderr[-4000:])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [b["time"] - a["time"] for a, b in itertools.pairwise(rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (a shared machine is noisy)")
    args = parser.parse_args()
    warm = 10
    ours: list[float] = []
    plain: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            ours += hpcai_loop(Path(tmp) / f"hpcai-{r}", args.preset, args.batch, args.steps)[warm:]
            plain += plain_loop(Path(tmp) / f"plain-{r}", args.preset, args.batch, args.steps)[warm:]
    a, b = statistics.median(ours), statistics.median(plain)
    print(
        f"preset {args.preset}, batch {args.batch}, 1 CPU process, median step after {warm} steps, "
        f"{args.rounds} alternating rounds:"
    )
    print(f"  plain PyTorch loop: {1000 * b:.1f} ms")
    print(f"  hpcai runtime:      {1000 * a:.1f} ms")
    print(f"  ratio (plain / hpcai): {b / a:.3f}")


if __name__ == "__main__":
    main()
