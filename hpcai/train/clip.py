"""CLIP / SigLIP contrastive image-text training on transformers' CLIPModel / SiglipModel.

`--loss infonce`: CLIP's softmax loss with a learnable temperature (init log 1/0.07).
`--loss sigmoid`: SigLIP's sigmoid loss with a learnable temperature and bias (init log 10 and -10).
Negatives come from the whole global batch, gathered across ranks. The model, its tokenizer and image
processor come from `model_path` (a CLIPModel/SiglipModel folder) or a preset built locally in the
real formats. CLIP's text is pooled at the first end-of-text token (not at `argmax(input_ids)`, which
only finds it in OpenAI's vocabulary); SigLIP's at the last position of a max-length padded text, as it
was trained. The temperature is clamped to ln 100 on the parameter after each step (open_clip), so its
gradient is never cut inside the loss.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import torch
import torch.nn.functional as F

from hpcai.runtime.flops import Shape, transformer_flops
from hpcai.runtime.trainer import StepOutput, train
from hpcai.train import speed
from hpcai.train.args import common_parser, data_dir, train_config
from hpcai.train.images import ImageFiles, ImageTransform, check_images_exist
from hpcai.train.losses import MAX_LOGIT_SCALE, gather, infonce_loss, sigmoid_loss
from hpcai.train.parts import parts_cache, tiny_clip
from hpcai.train.shards import Member, ShardError, ShardPairs, image_text_samples, shard_files

# Presets built locally: (architecture, shape). `vit-b16`: CLIP/SigLIP base shapes for GPU benchmarks.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny": ("clip", {}),
    "tiny-siglip": ("siglip", {}),
    "vit-b16": ("clip", {"v_hidden": 768, "v_layers": 12, "v_heads": 12, "v_inter": 3072, "image": 224, "patch": 16,
                         "t_hidden": 512, "t_layers": 12, "t_heads": 8, "t_inter": 2048, "context": 64, "proj": 512}),
}  # fmt: skip


class Contrastive(torch.nn.Module):
    def __init__(self, model: Any, loss: str, eos_token_id: int, pretrained: bool) -> None:
        super().__init__()
        self.clip = model
        self.loss_kind = loss
        self.eos_token_id = eos_token_id
        self.siglip = type(model).__name__.startswith("Siglip")
        scale = math.log(10.0) if loss == "sigmoid" else math.log(1 / 0.07)
        bias = -10.0
        if pretrained:  # a trained model brings its own temperature (and SigLIP its bias)
            scale = float(model.logit_scale.detach().reshape(-1)[0])
            if self.siglip:
                bias = float(model.logit_bias.detach().reshape(-1)[0])
        # One-element tensors, not scalars: FSDP2 cannot shard 0-d parameters. The model's own are replaced
        # by these (and written back on export).
        self.logit_scale = torch.nn.Parameter(torch.tensor([scale]))
        self.logit_bias = torch.nn.Parameter(torch.tensor([bias]), requires_grad=loss == "sigmoid")
        self.clip.logit_scale = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
        if self.siglip:
            self.clip.logit_bias = torch.nn.Parameter(torch.zeros(1), requires_grad=False)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.siglip:
            return self.clip.get_text_features(input_ids=input_ids).pooler_output  # type: ignore[no-any-return]
        hidden = self.clip.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        is_eos = (input_ids == self.eos_token_id) & attention_mask.bool()
        # The first end-of-text token of each text (the last real token when a text has none).
        last = attention_mask.sum(dim=1) - 1
        position = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), last)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), position]
        return self.clip.text_projection(pooled)  # type: ignore[no-any-return]

    def features(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.clip.get_image_features(pixel_values=pixel_values).pooler_output
        text = self.text_features(input_ids, attention_mask)
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


@dataclass(frozen=True)
class Pair:
    """An image and its caption: files (JSONL + folder) or members of a tar shard, read in the workers."""

    image: Path | Member
    caption: str | Member

    def image_source(self) -> Path | bytes:
        return self.image.read() if isinstance(self.image, Member) else self.image

    def text(self) -> str:
        return (
            self.caption.read().decode("utf-8", errors="replace") if isinstance(self.caption, Member) else self.caption
        )


def image_resize(model: Contrastive) -> str:
    """SigLIP's processor squashes an image to the square; OpenAI CLIP and open_clip resize its short edge
    and take the centre (training must see what inference will)."""
    return "squash" if model.siglip else "crop"


def frame_text(tokens: list[int], tokenizer: Any, context: int, *, siglip: bool) -> list[int]:
    """A caption's ids as the model was trained on them, within `context`: CLIP's start-of-text, the text,
    and its end-of-text *kept* on truncation (CLIP pools the end-of-text position: truncating it away pooled
    a word); SigLIP's text and its end token (its tokenizer adds no start token)."""
    bos = None if siglip else tokenizer.bos_token_id
    eos = tokenizer.eos_token_id
    frame = [t for t in (bos,) if t is not None], [t for t in (eos,) if t is not None]
    room = context - len(frame[0]) - len(frame[1])
    return [*frame[0], *tokens[:room], *frame[1]]


class ShardPairList(Sequence[Pair]):
    """The pairs of tar shards, made one at a time from the compact index (hpcai.train.shards.ShardPairs)."""

    def __init__(self, members: ShardPairs) -> None:
        self.members = members

    def __len__(self) -> int:
        return len(self.members)

    @overload
    def __getitem__(self, index: int) -> Pair: ...
    @overload
    def __getitem__(self, index: slice) -> list[Pair]: ...
    def __getitem__(self, index: int | slice) -> Pair | list[Pair]:
        if isinstance(index, slice):
            return [Pair(*m) for m in self.members[index]]
        return Pair(*self.members[index])


@dataclass
class ClipTask:
    model: Contrastive
    layer_classes: list[str]
    pairs: Sequence[Pair]
    transform: ImageTransform
    context: int
    pad_token_id: int
    tokenizer: Any
    image_processor: Any

    def __post_init__(self) -> None:
        clip = self.model.clip
        self.vision_shape = Shape.of(clip.vision_model, clip.config.vision_config)
        self.text_shape = Shape.of(clip.text_model, clip.config.text_config)
        vision = clip.config.vision_config
        patches = (int(vision.image_size) // int(vision.patch_size)) ** 2
        self.image_tokens = patches + (0 if self.model.siglip else 1)

    @property
    def num_samples(self) -> int:
        return len(self.pairs)

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        chosen = [self.pairs[i] for i in indices]
        texts = self.tokenizer([p.text() for p in chosen], add_special_tokens=False)["input_ids"]
        encoded = [frame_text(t, self.tokenizer, self.context, siglip=self.model.siglip) for t in texts]
        ids = torch.full((len(chosen), self.context), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, tokens in enumerate(encoded):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        pixels = torch.stack([self.transform.pixels(p.image_source()) for p in chosen])  # uint8, normalised in step
        return {"pixel_values": pixels, "input_ids": ids, "attention_mask": mask}

    def step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], accelerator: Any) -> StepOutput:
        offset = accelerator.process_index * batch["input_ids"].shape[0]
        with accelerator.autocast():
            pixels = self.transform.normalize(batch["pixel_values"])
            loss = model(pixels, batch["input_ids"], batch["attention_mask"], offset)
        return StepOutput(loss=loss)

    def work(self, batch: dict[str, torch.Tensor]) -> tuple[int, float]:
        """Tokens and model FLOPs of one rank's step, from its CPU batch (no device sync)."""
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        text_lengths = [self.context] * len(lengths) if self.model.siglip else lengths  # SigLIP reads the padding
        flops = transformer_flops(self.vision_shape, [self.image_tokens] * len(lengths), 6.0, causal=False)
        flops += transformer_flops(self.text_shape, text_lengths, 6.0)
        # Tokens the step processed: the text's and every image's patches (they were left out).
        return int(sum(lengths)) + self.image_tokens * len(lengths), flops

    @torch.no_grad()
    def after_optimizer_step(self, model: torch.nn.Module) -> None:
        """open_clip: the temperature is clamped on the parameter, after the update."""
        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)  # type: ignore[operator]

    def export(self, state_dict: dict[str, Any], target: Path) -> None:
        """The CLIPModel/SiglipModel folder with the trained temperature (and bias) back in its own place."""
        inner = {k.removeprefix("clip."): v for k, v in state_dict.items() if k.startswith("clip.")}
        siglip = self.model.siglip
        inner["logit_scale"] = state_dict["logit_scale"].reshape(1 if siglip else ())
        if siglip:
            inner["logit_bias"] = state_dict["logit_bias"].reshape(1)
        clip = self.model.clip
        clip.save_pretrained(target, state_dict=inner)
        self.tokenizer.save_pretrained(target)
        self.image_processor.save_pretrained(target)


def load_pairs(data: Path) -> Sequence[Pair]:
    """Image-text pairs: tar shards (`*.tar`, img2dataset layout) when the folder has them, else JSONL
    `{"image", "caption"}` lines beside an image folder."""
    if data.is_dir() and shard_files(data):
        try:
            members = image_text_samples(data)
        except ShardError as exc:
            raise SystemExit(f"--data {data}: {exc}") from None
        if not members:
            raise SystemExit(f"--data {data}: its shards hold no sample with both an image and a .txt caption")
        return ShardPairList(members)
    files = [data] if data.is_file() else sorted(data.glob("*.jsonl"))
    if not files:
        raise SystemExit(f"--data {data}: no image-text .jsonl file and no .tar shard there")
    images = ImageFiles(data)
    pairs = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    record = json.loads(line)
                    pairs.append(Pair(images.resolve(str(record["image"])), str(record["caption"])))
                except (ValueError, KeyError, TypeError) as exc:
                    raise SystemExit(f"--data {path}, line {number}: not an image-text pair ({exc})") from None
    check_images_exist(data, [p.image for p in pairs[:8]], "JSONL", images)
    if images.packed is not None:
        print(f"hpcai: images read from {images.where}", flush=True)
    return pairs


def load_model(args: Any) -> tuple[Any, Any, Any, bool]:
    """(model, tokenizer, image processor, pretrained?) from model_path or the preset."""
    import torch as _torch
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    if args.model_path:
        folder, pretrained = Path(args.model_path), True
        config = folder / "config.json"
        kind = json.loads(config.read_text()).get("model_type") if config.is_file() else None
        if kind not in ("clip", "siglip"):
            raise SystemExit(
                f"hpcai clip: model_path {folder}: expected a CLIPModel or SiglipModel folder "
                f"(save_pretrained layout with tokenizer and processor), found model_type {kind!r}"
            )
    elif args.preset in PRESETS:
        kind, shape = PRESETS[args.preset]
        folder, pretrained = tiny_clip(parts_cache(), kind, args.seed, shape, args.preset), False
    else:
        raise SystemExit(f"--preset: unknown '{args.preset}'; choose one of {', '.join(PRESETS)}")
    model = AutoModel.from_pretrained(folder, dtype=_torch.float32)
    return model, AutoTokenizer.from_pretrained(folder), AutoImageProcessor.from_pretrained(folder), pretrained  # type: ignore[no-untyped-call]


@torch.no_grad()
def recall_at_1(model_folder: Path, data: Path, batch: int = 64) -> tuple[float, float]:
    """Image -> text retrieval of a trained model over a held-out set: the fraction of images whose nearest
    caption is their own text, and what picking a caption at random would score (captions may repeat)."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(model_folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    processor = AutoImageProcessor.from_pretrained(model_folder)  # type: ignore[no-untyped-call]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    wrapped = Contrastive(model, "infonce", int(tokenizer.eos_token_id), pretrained=True).eval()
    pairs = load_pairs(data)
    vision = model.config.vision_config
    task = ClipTask(
        model=wrapped, layer_classes=[], pairs=pairs,
        transform=ImageTransform.from_processor(processor, int(vision.image_size), resize=image_resize(wrapped)),
        context=int(model.config.text_config.max_position_embeddings), pad_token_id=int(tokenizer.pad_token_id),
        tokenizer=tokenizer, image_processor=processor,
    )  # fmt: skip
    images, texts = [], []
    for start in range(0, len(pairs), batch):
        b = task.collate(list(range(start, min(start + batch, len(pairs)))))
        image, text = wrapped.features(task.transform.normalize(b["pixel_values"]), b["input_ids"], b["attention_mask"])
        images.append(image)
        texts.append(text)
    similarity = torch.cat(images) @ torch.cat(texts).t()
    captions = [p.text() for p in pairs]
    best = similarity.argmax(dim=1).tolist()
    recall = sum(captions[j] == captions[i] for i, j in enumerate(best)) / len(pairs)
    chance = sum(captions.count(c) for c in captions) / len(pairs) ** 2
    return recall, chance


def main(argv: list[str] | None = None) -> int:
    parser = common_parser("CLIP / SigLIP contrastive training (hpcai workload)")
    parser.add_argument("--loss", choices=["infonce", "sigmoid"], default="")
    args = parser.parse_args(argv)
    loss = args.loss or ("sigmoid" if args.stage == "siglip" else "infonce")
    data = data_dir(args, "clip")

    def make_task() -> ClipTask:
        model, tokenizer, processor, pretrained = load_model(args)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        wrapped = Contrastive(model, loss, int(tokenizer.eos_token_id), pretrained)
        names = {type(m).__name__ for m in wrapped.modules()}
        layers = sorted(n for n in names if n.endswith("EncoderLayer"))
        speed.apply(model, layers, compile=args.compile, checkpointing=args.activation_checkpointing,
                    every=args.activation_checkpointing_every)  # fmt: skip
        vision = model.config.vision_config
        context = int(model.config.text_config.max_position_embeddings)
        # SigLIP was trained on texts padded to their full length and pools the last position.
        pad = int(tokenizer.pad_token_id)
        return ClipTask(
            model=wrapped,
            layer_classes=layers,
            pairs=load_pairs(data),
            transform=ImageTransform.from_processor(processor, int(vision.image_size), resize=image_resize(wrapped)),
            context=context,
            pad_token_id=pad,
            tokenizer=tokenizer,
            image_processor=processor,
        )

    return train(make_task, train_config(args))


if __name__ == "__main__":
    sys.exit(main())
