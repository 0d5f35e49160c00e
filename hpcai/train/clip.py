"""CLIP / SigLIP contrastive image-text training on transformers' CLIP towers.

`--loss infonce`: CLIP's softmax loss with a learnable temperature (init log 1/0.07).
`--loss sigmoid`: SigLIP's sigmoid loss with a learnable temperature and bias (init log 10 and -10).
Negatives come from the whole global batch, gathered across ranks.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hpcai.runtime.trainer import StepOutput, train
from hpcai.train.args import common_parser, data_dir, train_config
from hpcai.train.images import load_image
from hpcai.train.losses import gather, infonce_loss, sigmoid_loss
from hpcai.train.tokenizer import ByteTokenizer

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"v_hidden": 64, "v_layers": 2, "v_heads": 4, "v_inter": 128, "image": 32, "patch": 8,
             "t_hidden": 64, "t_layers": 2, "t_heads": 4, "t_inter": 128, "context": 32, "proj": 32, "vocab": 264},
    # ViT-B/16 shapes (CLIP / SigLIP base) for GPU benchmarks, random weights.
    "vit-b16": {"v_hidden": 768, "v_layers": 12, "v_heads": 12, "v_inter": 3072, "image": 224, "patch": 16,
                "t_hidden": 512, "t_layers": 12, "t_heads": 8, "t_inter": 2048, "context": 64, "proj": 512,
                "vocab": 32000},
}  # fmt: skip


class Contrastive(torch.nn.Module):
    def __init__(self, clip: Any, loss: str) -> None:
        super().__init__()
        self.clip = clip
        self.loss_kind = loss
        scale = math.log(10.0) if loss == "sigmoid" else math.log(1 / 0.07)
        # One-element tensors, not scalars: FSDP2 cannot shard 0-d parameters.
        self.logit_scale = torch.nn.Parameter(torch.tensor([scale]))
        self.logit_bias = torch.nn.Parameter(torch.tensor([-10.0]), requires_grad=loss == "sigmoid")
        # CLIPModel's own (scalar) temperature is replaced by the one above and never used.
        self.clip.logit_scale = torch.nn.Parameter(torch.zeros(1), requires_grad=False)

    def features(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        image = self.clip.get_image_features(pixel_values=pixel_values).pooler_output
        text = self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1)

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, offset: int
    ) -> torch.Tensor:
        """The loss of this rank's slice against the whole global batch (computed inside forward, so the
        temperature and bias are FSDP-managed like every other parameter)."""
        image, text = self.features(pixel_values, input_ids, attention_mask)
        image_all, text_all = gather(image), gather(text)
        if self.loss_kind == "sigmoid":
            return sigmoid_loss(image, text_all, offset, self.logit_scale, self.logit_bias)
        return infonce_loss(image, text, image_all, text_all, offset, self.logit_scale)


def build_model(preset: str, loss: str) -> Contrastive:
    from transformers import CLIPConfig, CLIPModel

    if preset not in PRESETS:
        raise SystemExit(f"--preset: unknown '{preset}'; choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    config = CLIPConfig(
        text_config={
            "vocab_size": p["vocab"], "hidden_size": p["t_hidden"], "intermediate_size": p["t_inter"],
            "num_hidden_layers": p["t_layers"], "num_attention_heads": p["t_heads"],
            "max_position_embeddings": p["context"], "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
        },
        vision_config={
            "hidden_size": p["v_hidden"], "intermediate_size": p["v_inter"], "num_hidden_layers": p["v_layers"],
            "num_attention_heads": p["v_heads"], "image_size": p["image"], "patch_size": p["patch"],
        },
        projection_dim=p["proj"],
    )  # fmt: skip
    clip = CLIPModel(config)
    # The vision tower's post-layernorm feeds the pooled output (used); nothing else is left unused.
    return Contrastive(clip, loss)


@dataclass
class Pair:
    image: Path
    tokens: list[int]


@dataclass
class ClipTask:
    model: Contrastive
    layer_classes: list[str]
    pairs: list[Pair]
    image_size: int
    context: int
    tokenizer: ByteTokenizer = field(default_factory=ByteTokenizer)

    @property
    def num_samples(self) -> int:
        return len(self.pairs)

    def batch(self, indices: list[int], device: torch.device) -> dict[str, torch.Tensor]:
        chosen = [self.pairs[i] for i in indices]
        ids = torch.full((len(chosen), self.context), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, pair in enumerate(chosen):
            tokens = pair.tokens[: self.context]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        pixels = torch.stack([load_image(p.image, self.image_size) for p in chosen])
        return {"pixel_values": pixels.to(device), "input_ids": ids.to(device), "attention_mask": mask.to(device)}

    def step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], accelerator: Any) -> StepOutput:
        offset = accelerator.process_index * batch["input_ids"].shape[0]
        with accelerator.autocast():
            loss = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], offset)
        return StepOutput(loss=loss, tokens=int(batch["attention_mask"].sum()))


def load_pairs(directory: Path, tokenizer: ByteTokenizer) -> list[Pair]:
    files = sorted(directory.glob("*.jsonl"))
    if not files:
        raise SystemExit(f"--data {directory}: no image-text .jsonl file there")
    images = directory / "images" if (directory / "images").is_dir() else directory
    pairs = []
    for line in files[0].read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            tokens = [tokenizer.bos_token_id, *tokenizer.encode(record["caption"]), tokenizer.eos_token_id]
            pairs.append(Pair(images / record["image"], tokens))
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = common_parser("CLIP / SigLIP contrastive training (hpcai workload)")
    parser.add_argument("--loss", choices=["infonce", "sigmoid"], default="infonce")
    args = parser.parse_args(argv)
    data = data_dir(args, "clip")

    def make_task() -> ClipTask:
        model = build_model(args.preset, args.loss)
        if args.activation_checkpointing:
            model.clip.gradient_checkpointing_enable()
        names = {type(m).__name__ for m in model.modules()}
        tokenizer = ByteTokenizer()
        return ClipTask(
            model=model,
            layer_classes=sorted(n for n in names if n.endswith("EncoderLayer")),
            pairs=load_pairs(data, tokenizer),
            image_size=model.clip.config.vision_config.image_size,
            context=model.clip.config.text_config.max_position_embeddings,
            tokenizer=tokenizer,
        )

    return train(make_task, train_config(args))


if __name__ == "__main__":
    sys.exit(main())
