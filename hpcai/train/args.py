"""Command-line arguments shared by the workloads' train.py (the workload.yaml parameters)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hpcai.monitor.policy import RollbackPolicy
from hpcai.runtime.train_config import TrainConfig
from hpcai.runtime.trainer import lr_scale_from_env


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"true", "1", "yes", "on"}:
        return True
    if lowered in {"false", "0", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def common_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--stage", default=None)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--model_path", default="")
    parser.add_argument("--data", default="")
    parser.add_argument("--max_steps", type=int, default=60)
    parser.add_argument("--per_device_batch_size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup_steps", type=int, default=5)
    parser.add_argument("--weight_decay", type=float, default=0.0)
    parser.add_argument("--grad_clip", type=float, default=1.0)
    parser.add_argument("--activation_checkpointing", type=boolean, default=False)
    parser.add_argument("--activation_checkpointing_every", type=int, default=1,
                        help="with activation checkpointing: every N-th block recomputes (1: all)")  # fmt: skip
    parser.add_argument("--compile", type=boolean, default=False, help="torch.compile each transformer block")
    parser.add_argument("--sync_every", type=int, default=0,
                        help="steps between host syncs (metrics, guard, stop); 0: 10 on GPU, 1 on CPU")  # fmt: skip
    parser.add_argument("--checkpoint_every", type=int, default=20)
    parser.add_argument("--keep_checkpoints", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=256, help="synthetic samples when --data is empty")
    parser.add_argument("--tracker", choices=["tensorboard", "wandb", "none"], default="tensorboard")
    parser.add_argument("--data_workers", type=int, default=2, help="DataLoader workers per rank (0: inline)")
    parser.add_argument("--max_left_out", type=float, default=0.02,
                        help="fail when more than this fraction of the samples seen could not be loaded")  # fmt: skip
    guard = parser.add_argument_group("spike guard (rollback policy)")
    guard.add_argument("--spike_guard", type=boolean, default=True)
    guard.add_argument("--max_rollbacks", type=int, default=3)
    guard.add_argument("--rollback_lr_factor", type=float, default=0.5)
    guard.add_argument("--rollback_margin_steps", type=int, default=0)
    guard.add_argument("--rollback_skip_batches", type=int, default=0)
    guard.add_argument("--rollback_transient", type=boolean, default=False)
    guard.add_argument("--rerun_check", type=boolean, default=False, help="re-run a non-finite step once as it was")
    guard.add_argument("--spike_floor", type=float, default=0.2, help="report spikes from this excess up")
    guard.add_argument("--inject_spike_at", type=int, default=0, help="test hook: corrupt the update here")
    guard.add_argument("--inject_spike_scale", type=float, default=8.0)
    guard.add_argument("--inject_nan_at", type=int, default=0, help="test hook: a NaN loss at this step")
    guard.add_argument("--inject_nan_transient", type=boolean, default=False, help="test hook: only once")
    hang = parser.add_argument_group("hang watchdog (the job script's; the runtime writes the heartbeats)")
    hang.add_argument("--hang_timeout_s", type=float, default=180.0, help="read by the job script's watchdog")
    hang.add_argument("--inject_hang_at", type=int, default=0, help="test hook: every rank stops after this step")
    hang.add_argument("--inject_crash_at", type=int, default=0, help="test hook: the last node dies after this step")
    return parser


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        run_dir=args.run_dir,
        max_steps=args.max_steps,
        per_device_batch_size=args.per_device_batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        seed=args.seed,
        data_workers=args.data_workers,
        sync_every=args.sync_every,
        tracker=args.tracker,
        lr_scale=lr_scale_from_env(),
        policy=RollbackPolicy(
            lr_factor=args.rollback_lr_factor,
            margin_steps=args.rollback_margin_steps,
            skip_batches=args.rollback_skip_batches,
            max_rollbacks=args.max_rollbacks,
            rollback_transient=args.rollback_transient,
            rerun_check=args.rerun_check,
        )
        if args.spike_guard
        else None,
        spike_floor=args.spike_floor,
        max_left_out=args.max_left_out,
        inject_spike_at=args.inject_spike_at,
        inject_spike_scale=args.inject_spike_scale,
        inject_hang_at=args.inject_hang_at,
        inject_crash_at=args.inject_crash_at,
        inject_nan_at=args.inject_nan_at,
        inject_nan_transient=args.inject_nan_transient,
    )


def data_dir(args: argparse.Namespace, kind: str) -> Path:
    """`--data`, or synthetic data made once in the run directory (every rank makes the same files; the
    first complete copy wins the rename, so no rank reads a half-written set)."""
    if args.data:
        return Path(str(args.data))
    import os
    import shutil

    from hpcai.train.synth import synth_clip, synth_llava

    target: Path = args.run_dir / "data"
    if not target.exists():
        mine = args.run_dir / f".data-{os.getpid()}"
        (synth_llava if kind == "llava" else synth_clip)(mine, samples=args.samples, seed=args.seed)
        try:
            os.rename(mine, target)
        except OSError:
            shutil.rmtree(mine, ignore_errors=True)
    return target
