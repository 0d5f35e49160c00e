"""LLaVA-style vision-language model on transformers' LlavaForConditionalGeneration.

A vision tower (CLIP or SigLIP), LLaVA-1.5's two-layer GELU projector and a causal LM (Llama, Qwen2,
Qwen3 -- the last with QK-norm). Data: LLaVA conversation JSON + an image folder; the loss covers only
the assistant's tokens. Stage `pretrain` trains the projector; `finetune` the projector and the LM; the
vision tower stays frozen (LLaVA-1.5's recipe).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hpcai.runtime.trainer import StepOutput, train
from hpcai.train.args import boolean, common_parser, data_dir, train_config
from hpcai.train.images import load_image
from hpcai.train.tokenizer import ByteTokenizer

IGNORE = -100

# Model shapes. `tiny` trains in seconds on CPU; the clip-l336-* presets have LLaVA-1.5's vision tower
# (CLIP ViT-L/14 at 336 px) with Qwen2-0.5B/1.5B-shaped LMs, for GPU benchmarks (random weights).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"vision": "clip", "v_hidden": 64, "v_layers": 2, "v_heads": 4, "v_inter": 128, "image": 32,
             "patch": 8, "lm": "llama", "hidden": 128, "layers": 2, "heads": 4, "kv_heads": 2, "inter": 256,
             "vocab": 264},
    "tiny-siglip": {"vision": "siglip", "v_hidden": 64, "v_layers": 2, "v_heads": 4, "v_inter": 128, "image": 32,
                    "patch": 8, "lm": "qwen2", "hidden": 128, "layers": 2, "heads": 4, "kv_heads": 2,
                    "inter": 256, "vocab": 264},
    "tiny-qwen3": {"vision": "clip", "v_hidden": 64, "v_layers": 2, "v_heads": 4, "v_inter": 128, "image": 32,
                   "patch": 8, "lm": "qwen3", "hidden": 128, "layers": 2, "heads": 4, "kv_heads": 2, "inter": 256,
                   "vocab": 264},
    "clip-l336-qwen2-0.5b": {"vision": "clip", "v_hidden": 1024, "v_layers": 24, "v_heads": 16, "v_inter": 4096,
                             "image": 336, "patch": 14, "lm": "qwen2", "hidden": 896, "layers": 24, "heads": 14,
                             "kv_heads": 2, "inter": 4864, "vocab": 151936},
    "clip-l336-qwen2-1.5b": {"vision": "clip", "v_hidden": 1024, "v_layers": 24, "v_heads": 16, "v_inter": 4096,
                             "image": 336, "patch": 14, "lm": "qwen2", "hidden": 1536, "layers": 28, "heads": 12,
                             "kv_heads": 2, "inter": 8960, "vocab": 151936},
}  # fmt: skip

TRAINABLE = {"projector": "multi_modal_projector", "language_model": "language_model"}


def build_model(preset: str) -> Any:
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        Qwen2Config,
        Qwen3Config,
        SiglipVisionConfig,
    )

    if preset not in PRESETS:
        raise SystemExit(f"--preset: unknown '{preset}'; choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    vision_cls = CLIPVisionConfig if p["vision"] == "clip" else SiglipVisionConfig
    vision = vision_cls(
        hidden_size=p["v_hidden"], intermediate_size=p["v_inter"], num_hidden_layers=p["v_layers"],
        num_attention_heads=p["v_heads"], image_size=p["image"], patch_size=p["patch"],
    )  # fmt: skip
    text_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[p["lm"]]
    text = text_cls(
        vocab_size=p["vocab"], hidden_size=p["hidden"], intermediate_size=p["inter"],
        num_hidden_layers=p["layers"], num_attention_heads=p["heads"], num_key_value_heads=p["kv_heads"],
        max_position_embeddings=2048, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )  # fmt: skip
    patches = (p["image"] // p["patch"]) ** 2
    # CLIP towers carry a CLS token that LLaVA's "default" strategy drops; SigLIP has none.
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=ByteTokenizer.image_token_id,
        image_seq_length=patches, vision_feature_layer=-2,
        vision_feature_select_strategy="default" if p["vision"] == "clip" else "full",
        projector_hidden_act="gelu",
    )  # fmt: skip
    return LlavaForConditionalGeneration(config)


def layer_classes(model: Any) -> list[str]:
    """The transformer block classes FSDP wraps one by one: the LM's decoder layer, the tower's encoder layer."""
    names = {type(m).__name__ for m in model.modules()}
    return sorted(n for n in names if n.endswith(("DecoderLayer", "EncoderLayer")))


def set_trainable(model: Any, trainable: list[str]) -> None:
    """Only the named parts train; everything else (the vision tower always) is frozen. Parameters that
    never get a gradient must be frozen for FSDP2 checkpoints to load (see the notes)."""
    unknown = [t for t in trainable if t not in TRAINABLE]
    if unknown:
        raise SystemExit(f"--trainable: unknown part(s) {unknown}; choose from {', '.join(TRAINABLE)}")
    for param in model.parameters():
        param.requires_grad_(False)
    for part in trainable:
        for param in getattr(model.model, TRAINABLE[part]).parameters():
            param.requires_grad_(True)
    if "language_model" in trainable:
        for param in model.lm_head.parameters():
            param.requires_grad_(True)


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    image: Path


def encode_conversation(
    record: dict[str, Any], tokenizer: ByteTokenizer, image_tokens: int, max_length: int
) -> tuple[list[int], list[int]]:
    """Token ids and labels: `USER: ... ASSISTANT: ...</s>` turns; labels only on the assistant's words."""
    ids, labels = [tokenizer.bos_token_id], [IGNORE]
    for turn in record["conversations"]:
        if turn["from"] == "human":
            parts = turn["value"].split("<image>")
            chunk = tokenizer.encode("USER: " + parts[0])
            for rest in parts[1:]:
                chunk += [tokenizer.image_token_id] * image_tokens + tokenizer.encode(rest)
            chunk += tokenizer.encode("\nASSISTANT: ")
            ids += chunk
            labels += [IGNORE] * len(chunk)
        else:
            answer = [*tokenizer.encode(turn["value"]), tokenizer.eos_token_id]
            ids += answer
            labels += answer
            newline = tokenizer.encode("\n")
            ids += newline
            labels += [IGNORE] * len(newline)
    if ids.count(tokenizer.image_token_id) != image_tokens:
        raise ValueError(f"sample {record.get('id')}: needs exactly one <image> placeholder")
    return ids[:max_length], labels[:max_length]


@dataclass
class LlavaTask:
    model: Any
    layer_classes: list[str]
    examples: list[Example]
    image_size: int
    z_loss_weight: float
    tokenizer: ByteTokenizer = field(default_factory=ByteTokenizer)

    @property
    def num_samples(self) -> int:
        return len(self.examples)

    def batch(self, indices: list[int], device: torch.device) -> dict[str, torch.Tensor]:
        chosen = [self.examples[i] for i in indices]
        width = max(len(e.input_ids) for e in chosen)
        ids = torch.full((len(chosen), width), self.tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(chosen), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(chosen), width), dtype=torch.long)
        for row, example in enumerate(chosen):
            n = len(example.input_ids)
            ids[row, :n] = torch.tensor(example.input_ids)
            labels[row, :n] = torch.tensor(example.labels)
            mask[row, :n] = 1
        pixels = torch.stack([load_image(e.image, self.image_size) for e in chosen])
        return {
            "input_ids": ids.to(device),
            "labels": labels.to(device),
            "attention_mask": mask.to(device),
            "pixel_values": pixels.to(device),
        }

    def step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], accelerator: Any) -> StepOutput:
        with accelerator.autocast():
            out = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"]
            )
        logits = out.logits[:, :-1].float()
        targets = batch["labels"][:, 1:]
        valid = targets != IGNORE
        loss = F.cross_entropy(logits[valid], targets[valid])
        z_loss = None
        if self.z_loss_weight > 0:
            # PaLM's z-loss: keeps the softmax normaliser log Z near 0, a guard against logit drift.
            z_loss = self.z_loss_weight * torch.logsumexp(logits[valid], dim=-1).pow(2).mean()
            loss = loss + z_loss
        return StepOutput(loss=loss, z_loss=z_loss, tokens=int(valid.sum()))


def load_examples(directory: Path, tokenizer: ByteTokenizer, image_tokens: int, max_length: int) -> list[Example]:
    files = sorted(directory.glob("*.json"))
    if not files:
        raise SystemExit(f"--data {directory}: no LLaVA conversation .json file there")
    records = json.loads(files[0].read_text())
    images = directory / "images" if (directory / "images").is_dir() else directory
    examples = []
    for record in records:
        ids, labels = encode_conversation(record, tokenizer, image_tokens, max_length)
        examples.append(Example(ids, labels, images / record["image"]))
    return examples


def main(argv: list[str] | None = None) -> int:
    parser = common_parser("LLaVA-style VLM training (hpcai workload)")
    parser.add_argument("--trainable", default="projector")
    parser.add_argument("--z_loss_weight", type=float, default=0.0)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--qk_norm", type=boolean, default=False, help="use the Qwen3 preset of the same size")
    args = parser.parse_args(argv)
    preset = args.preset
    if args.qk_norm and not preset.endswith("qwen3"):
        preset = "tiny-qwen3" if preset.startswith("tiny") else preset
    data = data_dir(args, "llava")

    def make_task() -> LlavaTask:
        if args.model_path:
            from transformers import LlavaForConditionalGeneration

            model = LlavaForConditionalGeneration.from_pretrained(args.model_path, dtype=torch.float32)
        else:
            model = build_model(preset)
        set_trainable(model, [t.strip() for t in args.trainable.split(",") if t.strip()])
        if args.activation_checkpointing:
            model.gradient_checkpointing_enable()  # type: ignore[no-untyped-call]
        image_tokens = model.config.image_seq_length
        tokenizer = ByteTokenizer()
        return LlavaTask(
            model=model,
            layer_classes=layer_classes(model),
            examples=load_examples(data, tokenizer, image_tokens, args.max_length),
            image_size=int(model.config.vision_config.image_size),  # type: ignore[union-attr]
            z_loss_weight=args.z_loss_weight,
            tokenizer=tokenizer,
        )

    return train(make_task, train_config(args))


if __name__ == "__main__":
    sys.exit(main())
