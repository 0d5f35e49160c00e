"""Training throughput and peak memory of the workloads, as the rendered job runs them.

On a GPU machine: bf16, FSDP2, one process per GPU, a realistic preset, e.g.
    python benchmarks/train_throughput.py --workload llava --preset clip-l336-qwen2-0.5b --gpus 1
On CPU (what CI has): 2 processes, tiny presets -- figures that show the loop works, not speed.
Prints median samples/s, tokens/s (every processed token on every rank), MFU (on a GPU whose peak is
known, or with HPCAI_PEAK_TFLOPS) and peak memory over the steps after warm-up. LLaVA samples are made
`--seq` tokens long (576 image tokens at 336 px plus the conversation), so the realistic presets run at
LLaVA's sequence lengths; on CPU `--preset clip-l336-qwen2-0.5b --steps 2 --batch 1` runs (slowly).

Run: python benchmarks/train_throughput.py [--workload llava|clip] [--preset P] [--steps N] [--gpus G]
     [--seq 1024] [--stage pretrain|finetune]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def long_llava_data(directory: Path, samples: int, seq: int) -> Path:
    """Synthetic LLaVA samples whose answers fill the sequence to about `seq` tokens."""
    import json

    from hpcai.train.synth import synth_llava

    synth_llava(directory, samples=samples)
    records = json.loads((directory / "conversations.json").read_text())
    filler = "The shape sits on a grey background, drawn in one flat colour. "
    for record in records:
        record["conversations"][-1]["value"] += " " + filler * max(0, (seq - 576) // 12)
    (directory / "conversations.json").write_text(json.dumps(records))
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workload", choices=["llava", "clip"], default="llava")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--gpus", type=int, default=0, help="GPUs to use (0 = 2 CPU processes)")
    parser.add_argument("--batch", type=int, default=4, help="per-device batch size")
    parser.add_argument("--stage", default=None)
    parser.add_argument("--seq", type=int, default=1024, help="LLaVA: tokens per sample (image + text)")
    args = parser.parse_args()
    processes = args.gpus or 2
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        samples = max(64, args.batch * processes * 4)
        data = long_llava_data(Path(tmp) / "data", samples, args.seq) if args.workload == "llava" else None
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--machine_rank", "0",
            "--num_processes", str(processes), "--main_process_ip", "127.0.0.1",
            "--main_process_port", str(random.randint(20000, 59999)),
            "--mixed_precision", "bf16" if args.gpus else "no", "--use_fsdp", "--fsdp_version", "2",
            "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP", "--fsdp_state_dict_type", "SHARDED_STATE_DICT",
            "--fsdp_reshard_after_forward", "true", "--fsdp_cpu_ram_efficient_loading", "false",
            *([] if args.gpus else ["--fsdp_sync_module_states", "false"]),
            str(REPO / "workloads" / args.workload / "train.py"), "--run-dir", str(run), "--preset", args.preset,
            "--max_steps", str(args.steps), "--per_device_batch_size", str(args.batch),
            "--checkpoint_every", str(args.steps * 10), "--samples", str(samples),
            *(["--stage", args.stage] if args.stage else []),
            *(["--data", str(data), "--max_length", str(args.seq)] if data else []),
        ]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
        if not args.gpus:
            env["ACCELERATE_USE_CPU"] = "true"
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(result.stderr[-4000:])
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steady = rows[min(5, len(rows) - 1) :]
    mfus = [r["mfu"] for r in steady if r.get("mfu") is not None]
    device = f"{args.gpus} GPU(s), bf16" if args.gpus else "2 CPU processes, fp32"
    print(f"workload {args.workload}, preset {args.preset}, {device}, FSDP2, {len(rows)} steps")
    print(f"samples/s (median after warm-up): {statistics.median(r['samples_per_s'] for r in steady):.1f}")
    if steady[0]["tokens_per_s"] is not None:
        print(f"tokens/s  (median after warm-up): {statistics.median(r['tokens_per_s'] for r in steady):.0f}")
    if mfus:
        print(f"MFU       (median after warm-up): {100 * statistics.median(mfus):.1f}%")
    peak = max(r["peak_memory_gb"] for r in rows)
    print(f"peak memory per process:          {peak:.2f} GB")
    if args.workload == "llava":
        _compare_estimate(args, processes, peak)
    print(f"loss: {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f}")


def _compare_estimate(args: argparse.Namespace, processes: int, peak: float) -> None:
    """The estimate `render`/`submit` check before queueing (hpcai.spec.memory), beside the measured peak,
    for the same preset, batch, sequence and ranks. On a GPU the peak is torch's max allocated (the CUDA
    context is not in it: the estimate's `runtime` term is left out). On the CPU the peak is the process's
    maximum RSS: it also holds the interpreter and libraries (measured here in a process that imports them)
    and, while the model is built, every rank's whole fp32 model before FSDP shards it."""
    from hpcai.presets import preset_shape
    from hpcai.spec.memory import _counts, estimate_job

    stage = {"finetune": "projector,language_model"}.get(args.stage or "", "projector")
    params = {"preset": args.preset, "per_device_batch_size": args.batch, "max_length": args.seq, "trainable": stage}
    estimate = estimate_job("llava", params, processes, bool(args.gpus))
    if estimate is None:
        return
    training = estimate.total - estimate.parts.get("runtime", 0.0)
    if args.gpus:
        print(f"estimated (hpcai.spec.memory):    {training:.2f} GiB -> measured / estimated {peak / training:.2f}")
        return
    probe = (
        "import resource, torch, transformers, accelerate; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    base = int(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout) / 2**20
    shape = preset_shape(args.preset)
    n = _counts(shape) if shape else {"vision": 0, "projector": 0, "lm": 0}
    loading = 4 * (n["vision"] + n["projector"] + n["lm"]) / 2**30
    expected = base + max(training, loading + estimate.parts["parameters"])
    print(
        f"estimated on CPU: {base:.2f} GiB libraries + max(training {training:.2f}, loading {loading:.2f} + shards) "
        f"= {expected:.2f} GiB -> measured / estimated {peak / expected:.2f}"
    )


if __name__ == "__main__":
    main()
