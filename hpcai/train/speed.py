"""Per-block speed and memory options of the workloads: `torch.compile` of each transformer block and
(selective) activation checkpointing, both applied before accelerate wraps the blocks with FSDP.

Why per block and in place (`nn.Module.compile`): FSDP2 wraps the blocks by class name, and
`torch.compile(module)` would return an `OptimizedModule` that hides the class; compiling the block in place
keeps it, and torchtitan's order -- compile each block, then shard -- is kept. Compiling the block rather
than the whole model keeps graphs small and identical across layers (one compilation reused).
"""

from __future__ import annotations

from typing import Any


def blocks(model: Any, layer_classes: list[str]) -> list[Any]:
    """The model's transformer blocks (the modules FSDP wraps one by one), in module order."""
    wanted = set(layer_classes)
    return [m for m in model.modules() if type(m).__name__ in wanted]


def compile_blocks(model: Any, layer_classes: list[str]) -> int:
    """Compile every block in place; returns how many. Trainable or frozen alike: a frozen tower's forward
    gains as much as a trained block's."""
    chosen = blocks(model, layer_classes)
    for block in chosen:
        block.compile()
    return len(chosen)


def checkpoint_activations(model: Any, layer_classes: list[str], every: int) -> int:
    """Activation checkpointing on every `every`-th block of each kind (1: all -- full AC; 2: half of them:
    torchtitan's selective layer AC, trading part of the memory saved for less recomputation); returns how
    many blocks recompute. Uses transformers' own checkpointing, switched off again on the blocks left out."""
    if every < 1:
        raise SystemExit(f"--activation_checkpointing_every {every}: give 1 (every block) or more")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    seen: dict[str, int] = {}
    chosen = 0
    for block in blocks(model, layer_classes):
        if not hasattr(block, "gradient_checkpointing"):
            continue
        kind = type(block).__name__
        index = seen.get(kind, 0)
        seen[kind] = index + 1
        block.gradient_checkpointing = index % every == 0
        chosen += int(block.gradient_checkpointing)
    return chosen


def apply(model: Any, layer_classes: list[str], *, compile: bool, checkpointing: bool, every: int) -> None:
    """The workload's options, checkpointing first (it changes the block's forward that compile traces)."""
    if checkpointing:
        count = checkpoint_activations(model, layer_classes, every)
        print(f"hpcai: activation checkpointing on {count} of {len(blocks(model, layer_classes))} blocks", flush=True)
    if compile:
        print(f"hpcai: compiled {compile_blocks(model, layer_classes)} blocks (torch.compile, per block)", flush=True)
