"""Model FLOPs of a training step and MFU (model FLOPs utilisation), counted the way PaLM's appendix B
and torchtitan count them: 2 FLOPs per multiply-accumulate of a weight in the forward pass, twice that
again in the backward (activations and weight gradients) -- 6 N per token for a trained dense layer --
plus causal self-attention's score and value products, 6 L d n per token of an n-token sequence (half of
PaLM's 12 L d n, which counts the masked half too), d being heads x head_dim (not the residual width: they
differ in Qwen3).

Frozen parts cost less and are counted so: the frozen vision tower runs forward only (2 N per patch;
no gradient reaches it), a frozen LM in stage 1 forward plus the activation half of the backward (4 N
per token: the projector's gradient flows through it). The LM head runs only where the loss needs a
logit. MFU = these FLOPs / (step time x ranks x the accelerator's peak dense bf16 FLOP/s); no MFU where
the peak is unknown (CPU) unless HPCAI_PEAK_TFLOPS says it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

# Peak dense bf16 FLOP/s per device (one process), from the vendors' data sheets.
PEAK_BF16 = (
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM5 (JUWELS Booster has A100; Leonardo A100 custom; H100 sites: SXM)
    ("A100", 312e12),  # JUWELS Booster, Leonardo Booster (A100 64 GB custom: same tensor peak), Polaris
    ("MI300X", 1307e12),
    ("MI250X", 191.5e12),  # one GCD (LUMI-G: a process per GCD; 383 TFLOP/s per MI250X module)
)


def peak_flops() -> float | None:
    """The peak of the device this process uses, or None when unknown."""
    override = os.environ.get("HPCAI_PEAK_TFLOPS")
    if override:
        return float(override) * 1e12
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


@dataclass(frozen=True)
class Shape:
    """What the count needs of a transformer: weights in its blocks, layers and width."""

    params: int  # weights of the blocks (embeddings and the LM head excluded)
    layers: int
    hidden: int  # the residual width
    # The width of attention's query-key and value products: heads x head_dim. It is the residual width in
    # most models, not in Qwen3 (e.g. Qwen3-0.6B: 16 heads x 128 = 2048 against a width of 1024).
    attention_width: int = 0

    @classmethod
    def of(cls, module: Any, config: Any) -> Shape:
        params = sum(p.numel() for name, p in module.named_parameters() if "embed" not in name)
        hidden = int(config.hidden_size)
        heads = getattr(config, "num_attention_heads", None)
        head_dim = getattr(config, "head_dim", None) or (hidden // int(heads) if heads else None)
        width = int(heads) * int(head_dim) if heads and head_dim else hidden
        return cls(params=params, layers=int(config.num_hidden_layers), hidden=hidden, attention_width=width)


def transformer_flops(shape: Shape, lengths: list[int], factor: float, causal: bool = True) -> float:
    """FLOPs of `lengths` sequences through a transformer: `factor` is 6 (trained), 4 (frozen, gradient
    passes through) or 2 (forward only) per weight per token; attention scaled by the same factor."""
    tokens = sum(lengths)
    attention = (
        sum(n * n for n in lengths) * shape.layers * (shape.attention_width or shape.hidden) * (1 if causal else 2)
    )
    return factor * (shape.params * tokens + attention)


def mfu(step_flops: float, seconds: float, world: int, peak: float | None) -> float | None:
    if peak is None or seconds <= 0:
        return None
    return step_flops / (seconds * world * peak)
