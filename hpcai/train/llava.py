"""LLaVA-style vision-language model on transformers' LlavaForConditionalGeneration.

A vision tower (CLIP or SigLIP), LLaVA-1.5's two-layer GELU projector and a causal LM with its own
tokenizer and chat template (see `compose` for where the parts come from). Data: LLaVA conversation
JSON files (all `*.json` of the folder, mixed) + an image folder; text-only samples allowed; the loss
covers only the assistant's tokens. Stage `pretrain` trains the projector; `finetune` the projector and
the LM; the vision tower stays frozen, in eval mode (LLaVA-1.5's recipe). When the run completes,
`<run dir>/model` holds a Hugging Face folder (model + processor) that the next stage starts from.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hpcai.presets import PRESETS, TINY
from hpcai.runtime.flops import Shape, transformer_flops
from hpcai.runtime.loader import LEFT_OUT
from hpcai.runtime.trainer import StepOutput, train
from hpcai.train import speed
from hpcai.train.args import boolean, common_parser, data_dir, train_config
from hpcai.train.chat import IGNORE, PROMPT_FORMATS, Encoded, encode
from hpcai.train.compose import LlavaParts, PartError, compose, export_llava, from_preset, load_llava
from hpcai.train.images import ImageFiles, check_images_exist, image_bytes_or_path
from hpcai.train.parts import corpus, parts_cache, tiny_llava_parts
from hpcai.train.shards import Member

PRESET_NAMES = [*TINY, *PRESETS]
STAGE_TRAINABLE = {"pretrain": "projector", "finetune": "projector,language_model"}
TRAINABLE = {"projector": "multi_modal_projector", "language_model": "language_model"}


def load_parts(args: Any) -> LlavaParts:
    """The model from `model_path`, from `vision_tower` + `language_model`, or from the preset."""
    try:
        if args.model_path:
            return load_llava(Path(args.model_path))
        if args.vision_tower or args.language_model:
            if not (args.vision_tower and args.language_model):
                raise PartError("vision_tower and language_model go together: set both (or model_path for a whole "
                                "LLaVA folder)")  # fmt: skip
            return compose(Path(args.vision_tower), Path(args.language_model))
        if args.preset in TINY:
            vision, lm = TINY[args.preset]
            tower, language = tiny_llava_parts(parts_cache(), vision, lm, seed=args.seed)
            return compose(tower, language)
        if args.preset in PRESETS:
            return from_preset(PRESETS[args.preset], corpus(args.seed))
    except PartError as exc:
        raise SystemExit(f"hpcai llava: {exc}") from None
    raise SystemExit(f"--preset: unknown '{args.preset}'; choose one of {', '.join(PRESET_NAMES)}")


def layer_classes(model: Any) -> list[str]:
    """The transformer block classes FSDP wraps one by one: the LM's decoder layer, the tower's encoder layer."""
    names = {type(m).__name__ for m in model.modules()}
    return sorted(n for n in names if n.endswith(("DecoderLayer", "EncoderLayer")))


def trainable_parts(stage: str | None, trainable: str) -> list[str]:
    """`--trainable` when given, else what the stage trains (so a bare `--stage finetune` trains the LM)."""
    chosen = trainable or STAGE_TRAINABLE.get(stage or "pretrain", "")
    if not chosen:
        raise SystemExit(f"--stage: unknown '{stage}'; choose one of {', '.join(STAGE_TRAINABLE)}")
    return [t.strip() for t in chosen.split(",") if t.strip()]


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


@dataclass(frozen=True)
class Example:
    """One sample as read: tokenized in the data workers (a 665k-sample set would take minutes to
    tokenize up front on every rank); `length` is an estimate for length-grouped batching."""

    record: dict[str, Any]
    image: Path | Member | None  # a file, or a member of a packed data set's shards
    length: int


@dataclass
class LlavaTask:
    parts: LlavaParts
    layer_classes: list[str]
    examples: list[Example]
    z_loss_weight: float
    max_length: int = 2048
    prompt_format: str = "chat"  # chat (the LM's template) or plain (image + caption: LLaVA-1.5's stage 1)
    unusable: int = 0  # samples left out so far (in this process)

    def __post_init__(self) -> None:
        model = self.parts.model
        inner = model.model
        self.lm_shape = Shape.of(inner.language_model, model.config.text_config)
        self.vision_shape = Shape.of(inner.vision_tower, model.config.vision_config)
        self.projector_params = sum(p.numel() for p in inner.multi_modal_projector.parameters())
        self.vocab = int(model.lm_head.weight.shape[0])
        self.trains_lm = any(p.requires_grad for p in inner.language_model.parameters())
        # the tower sees every patch (and CLIP's CLS token), whatever LLaVA keeps of its output
        self.tower_tokens = self.parts.image_tokens + (1 if self.parts.vision_kind == "clip" else 0)

    def flops(self, lengths: list[int], images: int, logit_positions: int) -> float:
        """Model FLOPs of one rank's step (see hpcai.runtime.flops)."""
        lm_factor = 6.0 if self.trains_lm else 4.0
        return float(
            transformer_flops(self.lm_shape, lengths, lm_factor)
            + lm_factor * self.lm_shape.hidden * self.vocab * logit_positions
            + transformer_flops(self.vision_shape, [self.tower_tokens] * images, 2.0, causal=False)
            + 6.0 * self.projector_params * self.parts.image_tokens * images
        )

    @property
    def model(self) -> Any:
        return self.parts.model

    @property
    def num_samples(self) -> int:
        return len(self.examples)

    @property
    def lengths(self) -> list[int]:
        return [e.length for e in self.examples]

    def make(self, example: Example) -> tuple[Encoded, torch.Tensor | None]:
        """One sample's ids, labels and image. A sample that cannot be made -- its image would be cut, its
        image file is missing or unreadable, its conversation is malformed -- teaches nothing (one padding
        token, no label) and is named on the job's output, rather than ending a run hours in."""
        p = self.parts
        empty = Encoded([int(p.tokenizer.pad_token_id)], [IGNORE], 0)
        try:
            result = encode(example.record, p.tokenizer, p.image_token_id, p.image_tokens, self.max_length,
                            self.prompt_format)  # fmt: skip
            if result is None:
                return empty, None
            image = example.image
            pixels = p.transform.pixels(image_bytes_or_path(image)) if result.images and image is not None else None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.unusable += 1
            if self.unusable <= 5:
                name = example.record.get("id", "?") if isinstance(example.record, dict) else "?"
                print(f"hpcai: sample {name} left out: {str(exc).splitlines()[0][:300]}", flush=True)
            return empty, None
        return result, pixels

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        before = self.unusable
        made = [self.make(self.examples[i]) for i in indices]
        left_out = self.unusable - before
        samples = [sample for sample, _ in made]
        width = max(len(s.input_ids) for s in samples)
        pad = int(self.parts.tokenizer.pad_token_id)
        ids = torch.full((len(samples), width), pad, dtype=torch.long)
        labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(samples), width), dtype=torch.long)
        for row, sample in enumerate(samples):
            n = len(sample.input_ids)
            ids[row, :n] = torch.tensor(sample.input_ids)
            labels[row, :n] = torch.tensor(sample.labels)
            mask[row, :n] = 1
        # Logits only where some sample of the batch has a supervised next token: never at image positions,
        # never a full-vocabulary logit tensor over the whole sequence. Chosen here, on the CPU: on the device
        # it would be a host sync (a data-dependent shape) every step.
        keep = (labels[:, 1:] != IGNORE).any(dim=0).nonzero().squeeze(1)
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask, "logits_to_keep": keep,
                 LEFT_OUT: torch.tensor([left_out])}  # fmt: skip
        # one image per sample that has one, in order; text-only samples have none
        images = [pixels for _, pixels in made if pixels is not None]
        if images:
            batch["pixel_values"] = torch.stack(images)
        return batch

    def work(self, batch: dict[str, torch.Tensor]) -> tuple[int, float]:
        """Tokens and model FLOPs of one rank's step, from its CPU batch (no device sync)."""
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        images = int(batch["pixel_values"].shape[0]) if "pixel_values" in batch else 0
        positions = int(batch["logits_to_keep"].numel()) * int(batch["input_ids"].shape[0])
        return int(sum(lengths)), self.flops(lengths, images, logit_positions=positions)

    def step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], accelerator: Any) -> StepOutput:
        model.model.vision_tower.eval()  # type: ignore[union-attr]  # frozen: no dropout, fixed statistics
        keep = batch["logits_to_keep"]
        raw = batch.get("pixel_values")
        pixels = self.parts.transform.normalize(raw) if raw is not None else None
        idle: list[torch.Tensor] = []
        hook = None
        if pixels is None:
            hook = self._tower_on_every_rank(model, batch["input_ids"].device, idle)
        try:
            with accelerator.autocast():
                out = model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    pixel_values=pixels, logits_to_keep=keep,
                )  # fmt: skip
        finally:
            if hook is not None:
                hook.remove()
        logits = out.logits.float()
        if idle:
            logits = logits + idle[0]  # zero, but the projector's backward (its gradient reduction) runs too
        # Every rank, every step, before anything may return: the supervised tokens of the whole step.
        scale = token_scale(batch["labels"], accelerator)
        if keep.shape[0] == 0:
            # Nothing to learn in this batch (all answers truncated away): a zero loss that still touches the
            # graph, not the NaN of an empty mean. (The shape is known on the host: no sync.)
            return StepOutput(loss=logits.sum() * 0.0, z_loss=None)
        chosen = batch["labels"][:, 1:][:, keep]
        valid = (chosen != IGNORE).float()
        # Sums over the supervised positions by masking, not by boolean indexing (a host sync).
        flat = logits.reshape(-1, logits.shape[-1])
        loss = F.cross_entropy(flat, chosen.reshape(-1), ignore_index=IGNORE, reduction="sum") * scale
        z_loss = None
        if self.z_loss_weight > 0:
            # PaLM's z-loss: keeps the softmax normaliser log Z near 0, a guard against logit drift.
            log_z = torch.logsumexp(flat, dim=-1).reshape(valid.shape)
            z_loss = self.z_loss_weight * (log_z.pow(2) * valid).sum() * scale
            loss = loss + z_loss
        return StepOutput(loss=loss, z_loss=z_loss)

    def _tower_on_every_rank(self, model: torch.nn.Module, device: torch.device, out: list[torch.Tensor]) -> Any:
        """A batch without an image still runs the vision tower and the projector, on a blank image, and
        its result times zero joins the loss. Under FSDP their parameters are gathered by collectives that
        every rank must issue in the same order: a rank whose batch has no image would skip them while the
        others wait (a collective mismatch on gloo, a hang on NCCL). Text-only samples cluster under length
        grouping, so at 64 ranks that is the first steps of a run; LLaVA feeds a zero image for the same
        reason. It runs where the model itself would run the tower -- inside the forward, before the
        language model (a hook on it) -- so the collectives come in the same order as on a rank with images."""
        size = self.parts.transform.size
        blank = self.parts.transform.normalize(torch.zeros((1, 3, size, size), dtype=torch.uint8, device=device))
        inner: Any = getattr(model, "module", model)  # accelerate may wrap it

        def run_tower(module: torch.nn.Module, args: Any, kwargs: Any) -> None:
            features = inner.model.get_image_features(pixel_values=blank)
            pooled = features.pooler_output if hasattr(features, "pooler_output") else features[0]
            first = pooled[0] if isinstance(pooled, list | tuple) else pooled
            out.append(first.float().sum() * 0.0)

        return inner.model.language_model.register_forward_pre_hook(run_tower, with_kwargs=True)

    def export(self, state_dict: dict[str, Any], target: Path) -> None:
        export_llava(self.parts, state_dict, target)


def token_scale(labels: torch.Tensor, accelerator: Any) -> torch.Tensor:
    """What a rank's summed token loss is multiplied by so that the step's gradient is the mean over every
    supervised token of the step, on all ranks: world / (global token count). A mean of per-rank means (each
    rank dividing by its own count) weighed a rank's few tokens like another's many -- LLaVA's samples differ
    in length tenfold. As torchtitan and current transformers do: one all-reduce of a count per step, on the
    device (no host sync); FSDP's gradient reduction then averages over the ranks."""
    local = (labels[:, 1:] != IGNORE).sum().float().reshape(1)
    reduce = getattr(accelerator, "reduce", None)
    world = int(getattr(accelerator, "num_processes", 1))
    total = reduce(local.clone(), reduction="sum") if reduce is not None and world > 1 else local
    return (world / total.clamp(min=1.0)).reshape(())


def conversation_files(data: Path) -> list[Path]:
    """The data's conversation files: the file itself, or every `*.json` of the folder (mixed, sorted)."""
    files = [data] if data.is_file() else sorted(data.glob("*.json"))
    if not files:
        raise SystemExit(f"--data {data}: no LLaVA conversation .json file there")
    return files


def estimated_length(record: dict[str, Any], image_tokens: int) -> int:
    """Tokens, roughly (4 characters a token, plus the image's and a few per turn): for grouping only."""
    text = sum(len(str(turn.get("value", ""))) for turn in record["conversations"])
    return text // 4 + 8 * len(record["conversations"]) + (image_tokens if record.get("image") else 0)


def load_examples(data: Path, parts: LlavaParts, max_length: int, prompt_format: str = "chat") -> list[Example]:
    if max_length < parts.image_tokens + 16:
        raise SystemExit(
            f"--max_length {max_length}: an image alone takes {parts.image_tokens} tokens in this model; LLaVA-1.5 "
            "uses 2048 (set max_length=2048)"
        )
    images = ImageFiles(data)
    examples = []
    for path in conversation_files(data):
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(records, list):
                raise ValueError("the top level is not a list")
        except (OSError, ValueError) as exc:
            raise SystemExit(f"--data {path}: not a LLaVA conversation JSON list ({exc})") from None
        for number, record in enumerate(records):
            if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
                raise SystemExit(f"--data {path}: sample {number} has no 'conversations' list")
            image = images.resolve(str(record["image"])) if record.get("image") else None
            examples.append(Example(record, image, estimated_length(record, parts.image_tokens)))
    if not examples:
        raise SystemExit(f"--data {data}: no sample")
    # The template, the roles and where the images are: checked on the first samples here, not found out
    # in the workers after a queue wait (there, one bad sample is left out, named, and training goes on).
    for example in examples[:8]:
        try:
            encode(example.record, parts.tokenizer, parts.image_token_id, parts.image_tokens, max_length, prompt_format)
        except (KeyError, TypeError, ValueError) as exc:
            raise SystemExit(f"--data {data}: {exc}") from None
    check_images_exist(data, [e.image for e in examples[:8] if e.image is not None], "JSON", images)
    if images.packed is not None:
        print(f"hpcai: images read from {images.where}", flush=True)
    return examples


def main(argv: list[str] | None = None) -> int:
    parser = common_parser("LLaVA-style VLM training (hpcai workload)")
    parser.add_argument("--vision_tower", default="", help="a CLIP/SigLIP vision model folder with its processor")
    parser.add_argument("--language_model", default="", help="a causal LM folder with its tokenizer")
    parser.add_argument("--trainable", default="", help="parts that train; default: the stage's")
    parser.add_argument("--z_loss_weight", type=float, default=0.0)
    parser.add_argument("--max_length", type=int, default=2048)
    parser.add_argument("--prompt_format", choices=PROMPT_FORMATS, default="chat",
                        help="chat: the LM's chat template; plain: image + caption (LLaVA-1.5's stage 1)")  # fmt: skip
    parser.add_argument("--qk_norm", type=boolean, default=False, help="use the Qwen3 preset of the same size")
    args = parser.parse_args(argv)
    if args.qk_norm and args.preset == "tiny":
        args.preset = "tiny-qwen3"
    trainable = trainable_parts(args.stage, args.trainable)
    data = data_dir(args, "llava")

    def make_task() -> LlavaTask:
        parts = load_parts(args)
        set_trainable(parts.model, trainable)
        layers = layer_classes(parts.model)
        speed.apply(parts.model, layers, compile=args.compile, checkpointing=args.activation_checkpointing,
                    every=args.activation_checkpointing_every)  # fmt: skip
        return LlavaTask(
            parts=parts,
            layer_classes=layers,
            examples=load_examples(data, parts, args.max_length, args.prompt_format),
            z_loss_weight=args.z_loss_weight,
            max_length=args.max_length,
            prompt_format=args.prompt_format,
        )

    return train(make_task, train_config(args))


if __name__ == "__main__":
    sys.exit(main())
