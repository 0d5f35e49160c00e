"""The LLaVA data pipeline: how fast samples are made, whether the step waits for them, and how much of a
padded batch is padding.

1. Samples/s of LLaVA-style samples at 336 px (JPEGs of COCO-like sizes, padded to square, resized,
   normalised; conversation rendered through the chat template and tokenized), made inline.
2. The step's wait for its batch (`data_s`), inline vs with DataLoader workers, against a fixed compute
   step of `--step-ms` (a stand-in for the GPU's forward/backward): workers should take data time off
   the critical path once warm.
3. Wasted token slots on a long-tailed length mix (mean ~500, max 2048, 6% text-only), random batching
   vs length-grouped (the batch order the runtime uses), 4 ranks x 8 samples.

Run: python benchmarks/data_pipeline.py [--samples 256] [--batch 8] [--step-ms 100] [--workers 2]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_data(directory: Path, samples: int) -> Path:
    import json

    from PIL import Image

    rng = random.Random(0)
    images = directory / "images"
    images.mkdir(parents=True)
    records = []
    for i in range(samples):
        w, h = rng.choice([(640, 480), (500, 375), (480, 640), (612, 612)])
        Image.effect_noise((w, h), 40).convert("RGB").save(images / f"{i}.jpg", quality=90)
        turns = [{"from": "human", "value": "<image>\nDescribe the image in detail."},
                 {"from": "gpt", "value": " ".join(rng.choice(["a", "red", "car", "on", "the", "street"])
                                                   for _ in range(rng.randint(20, 120)))}]  # fmt: skip
        records.append({"id": str(i), "image": f"{i}.jpg", "conversations": turns})
    (directory / "data.json").write_text(json.dumps(records))
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--step-ms", type=float, default=100.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    import dataclasses

    import torch

    from hpcai.runtime.data_order import BatchOrder
    from hpcai.runtime.loader import step_batches
    from hpcai.train.compose import compose
    from hpcai.train.llava import LlavaTask, load_examples
    from hpcai.train.parts import tiny_llava_parts
    from tests.runtime.test_data_order import long_tailed_lengths, padding_waste, rank_batches

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        vision, lm = tiny_llava_parts(root / "parts", "clip", "qwen2")
        parts = compose(vision, lm)
        parts.transform = dataclasses.replace(parts.transform, size=336)  # LLaVA-1.5's input size
        parts.image_tokens = 576
        data = make_data(root / "data", args.samples)
        task = LlavaTask(parts, [], load_examples(data, parts, 2048), 0.0)
        order = BatchOrder(task.num_samples, args.batch, 1, 0, seed=0)
        steps = task.num_samples // args.batch

        began = time.perf_counter()
        for step in range(steps):
            task.collate(order.indices(step))
        inline_rate = steps * args.batch / (time.perf_counter() - began)
        print(f"samples/s made inline (1 process, 336 px JPEG + chat template): {inline_rate:.0f}")
        print(f"  per batch of {args.batch}: {1000 * args.batch / inline_rate:.1f} ms on the critical path when inline")

        def waits(workers: int) -> list[float]:
            waited = []
            batches = step_batches(task.collate, order, [], 0, steps, workers)
            for _ in range(steps):
                t = time.perf_counter()
                next(batches)
                waited.append(time.perf_counter() - t)
                end = time.perf_counter() + args.step_ms / 1000  # the compute of the step (busy, like a launch queue)
                while time.perf_counter() < end:
                    torch.empty(0)
            return waited

        for workers in (0, args.workers):
            wait = waits(workers)
            warm = wait[min(4, len(wait) - 1) :]
            median, worst = 1000 * statistics.median(warm), 1000 * max(warm)
            print(f"data wait per step, {workers} workers, {args.step_ms:.0f} ms step: median {median:.1f} ms, "
                  f"max {worst:.1f} ms (after warm-up)")  # fmt: skip

    lengths = long_tailed_lengths(16384)
    random_waste = padding_waste(rank_batches(16384, None), lengths)
    grouped_waste = padding_waste(rank_batches(16384, lengths), lengths)
    mean = statistics.mean(lengths)
    print(f"padding (mean {mean:.0f} tokens, max {max(lengths)}, 6% text-only; 4 ranks x 8): random batches "
          f"{100 * random_waste:.1f}% of token slots wasted, length-grouped {100 * grouped_waste:.1f}%")  # fmt: skip


if __name__ == "__main__":
    main()
