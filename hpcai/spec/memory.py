"""Memory per GPU of a LLaVA job, before it is queued: parameters, gradients and AdamW states under FSDP2's
full sharding, the gathered blocks, activations with and without checkpointing, the logits and the loss.

The terms, per rank, for W ranks (FSDP2 as hpcai.runtime sets it up: fp32 sharded parameters, bf16 compute
on a GPU, gradients reduced in fp32):
- parameters 4 B x all / W; gradients 4 B x trainable / W; AdamW 8 B x trainable / W;
- the unsharded blocks being used and prefetched: 2 x the largest block in the compute dtype;
- activations kept for the backward pass, per token and LM layer: (30 h + 8 I) bytes in bf16 for a
  Llama/Qwen block (h hidden, I the MLP width): 210.9 KiB for a Llama-7B block, against 206.6 KiB measured
  (issue 28). Every LM layer keeps them, in stage 1 too: the projector's gradient flows back through the
  frozen LM. With checkpointing a layer keeps its input (h per token) and one layer is recomputed at a
  time. The vision tower keeps activations only when it trains (30 h + 4 I per patch token, plain MLP);
- logits (compute dtype) and the loss's fp32 copy and its gradient: 10 B (GPU) per token and vocabulary
  entry;
- in the backward pass, the gradient of one layer's activations and the unsharded fp32 gradient of the
  largest block before its reduce-scatter;
- on a GPU, 2 GiB for the CUDA context, NCCL buffers and the allocator's fragments.
Tokens per step and rank are per_device_batch_size x max_length: a batch is padded to its longest sample,
at most max_length -- the step the estimate must allow for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpcai.presets import preset_shape

GiB = float(1 << 30)
RUNTIME_GIB = 2.0  # CUDA context, NCCL buffers, allocator fragmentation (a GPU only)
HEADROOM = 0.92  # the share of a GPU's memory a plan may fill


@dataclass(frozen=True)
class MemoryEstimate:
    parts: dict[str, float]  # GiB per rank, by term
    world: int
    note: str

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def to_json(self) -> dict[str, Any]:
        return {"total_gib": round(self.total, 2), "parts_gib": {k: round(v, 3) for k, v in self.parts.items()},
                "ranks": self.world, "note": self.note}  # fmt: skip

    def line(self) -> str:
        biggest = sorted(self.parts.items(), key=lambda kv: -kv[1])[:3]
        return f"{self.total:.1f} GiB per GPU ({', '.join(f'{k} {v:.1f}' for k, v in biggest)}; {self.note})"


def _counts(s: dict[str, Any]) -> dict[str, float]:
    """Parameters of the vision tower, the projector and the LM (and their largest blocks)."""
    hv, iv, h, i = s["v_hidden"], s["v_inter"], s["hidden"], s["inter"]
    patches = (s["image"] // s["patch"]) ** 2
    v_block = 4 * hv * hv + 2 * hv * iv + 9 * hv + iv
    vision = 3 * s["patch"] ** 2 * hv + (patches + 1) * hv + s["v_layers"] * v_block + 4 * hv
    projector = hv * h + h * h + 2 * h
    head_dim = s.get("head_dim") or (128 if s["lm"] == "qwen3" else h // s["heads"])  # Qwen3's default: 128
    q, kv = s["heads"] * head_dim, s["kv_heads"] * head_dim
    lm_block = 2 * h * q + 2 * h * kv + 3 * h * i + 2 * h + (q + 2 * kv if s["lm"] == "qwen2" else 0)
    lm_block += 2 * head_dim if s["lm"] == "qwen3" else 0  # its q/k norms
    embeddings = s["vocab"] * h
    lm = 2 * embeddings + s["layers"] * lm_block + h
    return {"vision": vision, "projector": projector, "lm": lm, "largest": max(v_block, lm_block, embeddings),
            "patches": patches}  # fmt: skip


def llava_estimate(
    shape: dict[str, Any], *, trainable: set[str], batch: int, max_length: int, checkpointing: bool,
    every: int, world: int, gpu: bool,
) -> MemoryEstimate:  # fmt: skip
    n = _counts(shape)
    b = 2 if gpu else 4  # compute dtype: bf16 on a GPU, fp32 on the CPU
    total_params = n["vision"] + n["projector"] + n["lm"]
    trained = (n["projector"] if "projector" in trainable else 0) + (n["lm"] if "language_model" in trainable else 0)
    trained += n["vision"] if "vision_tower" in trainable else 0
    h, i, layers = shape["hidden"], shape["inter"], shape["layers"]
    tokens = batch * max_length
    per_layer = (30 * h + 8 * i) * b / 2 * tokens
    if checkpointing:
        recomputed = layers // max(1, every)
        activations = recomputed * h * b * tokens + (layers - recomputed) * per_layer + per_layer
    else:
        activations = layers * per_layer
    if "vision_tower" in trainable:
        v_tokens = batch * (n["patches"] + 1)
        activations += shape["v_layers"] * (30 * shape["v_hidden"] + 4 * shape["v_inter"]) * b / 2 * v_tokens
    parts = {
        "parameters": 4 * total_params / world / GiB,
        "gradients": 4 * trained / world / GiB,
        "optimizer": 8 * trained / world / GiB,
        "gathered blocks": 2 * b * n["largest"] / GiB,
        "activations": activations / GiB,
        "logits and loss": tokens * shape["vocab"] * (b + 8) / GiB,
        "backward transients": (per_layer + 4 * n["largest"]) / GiB,
    }
    if gpu:
        parts["runtime"] = RUNTIME_GIB
    note = (f"{world} rank(s), {batch} x {max_length} tokens a step, checkpointing "
            f"{'on' if checkpointing else 'off'}")  # fmt: skip
    return MemoryEstimate(parts, world, note)


def _flag(value: object) -> bool:
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


def estimate_job(
    workload: str, parameters: dict[str, Any], world: int, gpu: bool, **changes: Any
) -> MemoryEstimate | None:
    """The estimate for a built-in LLaVA job from its parameters (`changes` replace some: what-ifs); None
    where the model is not a preset (a folder on the cluster: its shape is not known here)."""
    if workload != "llava":
        return None
    p = {**parameters, **changes}
    if p.get("model_path") or p.get("vision_tower") or p.get("language_model"):
        return None
    shape = preset_shape(str(p.get("preset", "")))
    if shape is None:
        return None
    return llava_estimate(
        shape,
        trainable={t.strip() for t in str(p.get("trainable", "projector")).split(",") if t.strip()},
        batch=int(p.get("per_device_batch_size", 1)),
        max_length=int(p.get("max_length", 2048)),
        checkpointing=_flag(p.get("activation_checkpointing", False)),
        every=int(p.get("activation_checkpointing_every", 1)),
        world=world,
        gpu=gpu,
    )


def fixes(workload: str, parameters: dict[str, Any], world: int, nodes: int, limit_gib: float) -> list[str]:
    """What makes the job fit `limit_gib` per GPU: checkpointing, a smaller batch, more nodes."""
    found = []
    if not _flag(parameters.get("activation_checkpointing", False)):
        on = estimate_job(workload, parameters, world, True, activation_checkpointing=True)
        if on is not None and on.total <= limit_gib:
            found.append(f"--set activation_checkpointing=true ({on.total:.1f} GiB)")
    batch = int(parameters.get("per_device_batch_size", 1))
    while batch > 1:
        batch //= 2
        smaller = estimate_job(workload, parameters, world, True, per_device_batch_size=batch)
        if smaller is not None and smaller.total <= limit_gib:
            found.append(f"--set per_device_batch_size={batch} ({smaller.total:.1f} GiB; the global batch shrinks)")
            break
    for factor in (2, 4, 8):
        more = estimate_job(workload, parameters, world * factor, True)
        if more is not None and more.total <= limit_gib:
            found.append(f"--nodes {nodes * factor} ({more.total:.1f} GiB)")
            break
    return found


def fits(total_gib: float, gpu_memory_gb: float) -> bool:
    return total_gib <= HEADROOM * gpu_memory_gb
