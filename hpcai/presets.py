"""The shapes of the built-in LLaVA presets: data shared by the job, which builds the models
(hpcai.train), and the client, which estimates their memory per GPU before anything is queued
(hpcai.spec.memory). One place, so the two cannot disagree."""

from __future__ import annotations

from typing import Any

# Tiny parts built locally in the real formats: the vision tower and the LM's sizes (vocabulary: the
# trained tokenizer's, TINY_VOCAB), and per preset (vision kind, LM family).
TINY_VISION: dict[str, Any] = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "image_size": 32, "patch_size": 8,
}  # fmt: skip
TINY_LM: dict[str, Any] = {
    "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 512, "tie_word_embeddings": False,
}  # fmt: skip
TINY_VOCAB = 600
TINY: dict[str, tuple[str, str]] = {"tiny": ("clip", "llama"), "tiny-siglip": ("siglip", "qwen2"),
                                    "tiny-qwen3": ("clip", "qwen3")}  # fmt: skip

_CLIP_L336 = {"vision": "clip", "v_hidden": 1024, "v_layers": 24, "v_heads": 16, "v_inter": 4096, "image": 336,
              "patch": 14}  # fmt: skip
# LLaVA-1.5's vision tower (CLIP ViT-L/14 at 336 px) with LMs of Qwen2-0.5B/1.5B's and Vicuna-7B's
# (Llama-2-7B's) shapes, random weights: for benchmarks and for sizing a real run's memory.
PRESETS: dict[str, dict[str, Any]] = {
    "clip-l336-qwen2-0.5b": {**_CLIP_L336, "lm": "qwen2", "hidden": 896, "layers": 24, "heads": 14, "kv_heads": 2,
                             "inter": 4864, "vocab": 151936},
    "clip-l336-qwen2-1.5b": {**_CLIP_L336, "lm": "qwen2", "hidden": 1536, "layers": 28, "heads": 12, "kv_heads": 2,
                             "inter": 8960, "vocab": 151936},
    "clip-l336-vicuna-7b": {**_CLIP_L336, "lm": "llama", "hidden": 4096, "layers": 32, "heads": 32, "kv_heads": 32,
                            "inter": 11008, "vocab": 32000},
}  # fmt: skip


def preset_shape(name: str) -> dict[str, Any] | None:
    """A preset's shape in PRESETS' terms (the tiny ones included), or None for a name not known here."""
    if name in PRESETS:
        return PRESETS[name]
    if name in TINY:
        vision, lm = TINY[name]
        v, t = TINY_VISION, TINY_LM
        return {"vision": vision, "v_hidden": v["hidden_size"], "v_layers": v["num_hidden_layers"],
                "v_heads": v["num_attention_heads"], "v_inter": v["intermediate_size"], "image": v["image_size"],
                "patch": v["patch_size"], "lm": lm, "hidden": t["hidden_size"], "layers": t["num_hidden_layers"],
                "heads": t["num_attention_heads"], "kv_heads": t["num_key_value_heads"],
                "inter": t["intermediate_size"], "vocab": TINY_VOCAB}  # fmt: skip
    return None
