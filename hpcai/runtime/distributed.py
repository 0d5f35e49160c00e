"""accelerate set-up that really shards, on GPU and on CPU, and refuses to run silently unsharded.

On CPU, `accelerate launch --use_fsdp` gives MULTI_CPU (plain DDP) or even independent single processes;
the state switch below (from ../shared/notes/accelerate-fsdp-on-cpu.md) depends on accelerate internals,
which is why accelerate is pinned and why `assert_sharded` checks the result.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def make_accelerator(layer_classes: list[str], log_with: list[str] | None = None, project_dir: Any = None) -> Any:
    # The FSDP plugin reads its settings from the environment the launcher set; the layers to wrap depend
    # on the model family, so the workload supplies them unless the user did.
    if layer_classes and not os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP"):
        os.environ["FSDP_TRANSFORMER_CLS_TO_WRAP"] = ",".join(layer_classes)
    from accelerate import Accelerator
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    accelerator = Accelerator(log_with=log_with or None, project_dir=project_dir)
    wants_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if wants_fsdp and accelerator.state.distributed_type == DistributedType.MULTI_CPU:
        accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        accelerator.state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["device"] = accelerator.state.device = torch.device("cpu")
    fp32_gradient_reduction(getattr(accelerator.state, "fsdp_plugin", None))
    expected = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != expected:
        raise RuntimeError(
            f"accelerate sees {accelerator.num_processes} processes but the launcher started {expected}: "
            "the run would not be distributed as asked"
        )
    if expected > 1 and wants_fsdp and accelerator.distributed_type != DistributedType.FSDP:
        raise RuntimeError(f"expected FSDP, accelerate chose {accelerator.distributed_type}")
    return accelerator


def fp32_gradient_reduction(plugin: Any) -> None:
    """bf16 parameters and activations, but gradients reduced across ranks in fp32 (torchtitan's only
    supported reduction; accelerate's bf16 policy reduces in bf16, losing precision over many ranks)."""
    policy = getattr(plugin, "mixed_precision_policy", None) if plugin is not None else None
    if policy is None or getattr(policy, "reduce_dtype", None) in (None, torch.float32):
        return
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if isinstance(policy, MixedPrecisionPolicy):
        plugin.mixed_precision_policy = MixedPrecisionPolicy(
            param_dtype=policy.param_dtype, reduce_dtype=torch.float32, output_dtype=policy.output_dtype,
            cast_forward_inputs=policy.cast_forward_inputs,
        )  # fmt: skip


def assert_sharded(model: torch.nn.Module, world_size: int) -> int:
    """Every trainable parameter is a DTensor sharded over `world_size` ranks; returns how many are."""
    if world_size == 1:
        return 0
    from torch.distributed.tensor import DTensor

    sharded = [p for p in model.parameters() if isinstance(p, DTensor)]
    if not sharded or any(p.device_mesh.size() != world_size for p in sharded):
        raise RuntimeError(f"the model is not sharded over {world_size} ranks: FSDP did not take effect")
    return len(sharded)
