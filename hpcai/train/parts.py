"""Tiny model parts in the real formats, built locally: nothing is downloaded (compute nodes are offline).

They stand in for what a user stages (a CLIP/SigLIP vision folder with its image processor, a causal LM
folder with its tokenizer and chat template, a CLIPModel/SiglipModel folder) and go down exactly the
same loading path: `save_pretrained` folders, a byte-level BPE tokenizer trained with `tokenizers` and
saved as a fast tokenizer, a chat template, an image processor. The tiny LM is pre-trained for a few
seconds on plain sentences, so stage 1 (projector only) has a language model worth aligning to.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcai.presets import TINY_LM, TINY_VISION, TINY_VOCAB
from hpcai.train.synth import COLORS, SHAPES

# Chat templates of the two families the tiny LMs imitate. ChatML (Qwen2/Qwen3) ends a turn with
# <|im_end|>; Vicuna v1 (LLaVA-1.5's own LM) writes `USER: ... ASSISTANT: ...</s>`.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VICUNA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}USER: {{ message['content'] }} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: {{ message['content'] }}{{ eos_token }}"
    "{% else %}{{ message['content'] }} {% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
CHATML_SPECIALS = {"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>", "bos_token": None}
VICUNA_SPECIALS = {"pad_token": "<unk>", "eos_token": "</s>", "bos_token": "<s>"}


def corpus(seed: int = 0, sentences: int = 2000) -> list[str]:
    """Plain sentences about coloured shapes: what the tiny tokenizer and LM learn from."""
    rng = random.Random(seed)
    made = []
    for _ in range(sentences):
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        made.append(
            rng.choice(
                [
                    f"A {color} {shape} on a grey background.",
                    f"It is {color}.",
                    f"A {shape}.",
                    f"The {shape} is {color}.",
                    "What color is the shape? And its shape? Describe the image.",
                ]
            )
        )
    return made


def train_tokenizer(texts: list[str], family: str, vocab_size: int = TINY_VOCAB) -> Any:
    """A byte-level BPE tokenizer (GPT-2/Qwen style) as a transformers fast tokenizer with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    chatml = family != "llama"
    specials = CHATML_SPECIALS if chatml else VICUNA_SPECIALS
    special_tokens = [t for t in specials.values() if t] + (["<|im_start|>"] if chatml else [])
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )  # fmt: skip
    core.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, **{k: v for k, v in specials.items() if v})  # type: ignore[no-untyped-call]
    if chatml:
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = CHATML_TEMPLATE if chatml else VICUNA_TEMPLATE
    tokenizer.model_max_length = TINY_LM["max_position_embeddings"]
    return tokenizer


def build_vision(directory: Path, kind: str, image_size: int = 32) -> None:
    """A CLIP or SigLIP vision tower folder with its image processor (random weights)."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        SiglipImageProcessor,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    shape: dict[str, Any] = {**TINY_VISION, "image_size": image_size}
    if kind == "clip":
        CLIPVisionModel(CLIPVisionConfig(**shape)).save_pretrained(directory)
        CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
                           ).save_pretrained(directory)  # fmt: skip
    else:
        SiglipVisionModel(SiglipVisionConfig(**shape)).save_pretrained(directory)
        SiglipImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(directory)


def build_lm(directory: Path, family: str, texts: list[str], seed: int, pretrain_steps: int = 150) -> None:
    """A causal LM folder (Llama, Qwen2 or Qwen3 shape) with its tokenizer and chat template, pre-trained
    briefly on `texts` so it is a language model rather than noise."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    tokenizer = train_tokenizer(texts, family)
    config_cls, model_cls = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    }[family]
    config = config_cls(
        **TINY_LM, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = model_cls(config)
    _pretrain(model, tokenizer, texts, pretrain_steps, seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def _pretrain(model: Any, tokenizer: Any, texts: list[str], steps: int, seed: int) -> None:
    import torch

    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch = tokenizer([t + tokenizer.eos_token for t in rng.sample(texts, 32)], padding=True,
                          return_tensors="pt", add_special_tokens=False)  # fmt: skip
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()


def build_clip(directory: Path, kind: str, texts: list[str], shape: dict[str, Any] | None = None) -> None:
    """A CLIPModel or SiglipModel folder with its tokenizer and image processor (random weights)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, SiglipConfig, SiglipImageProcessor, SiglipModel

    p = {"v_hidden": 64, "v_layers": 2, "v_heads": 4, "v_inter": 128, "image": 32, "patch": 8, "t_hidden": 64,
         "t_layers": 2, "t_heads": 4, "t_inter": 128, "context": 32, "proj": 32, **(shape or {})}  # fmt: skip
    tokenizer = train_tokenizer(texts, "qwen2")
    # The end-of-text token gets the lowest ids here, unlike OpenAI's BPE: a model that pooled at argmax(ids)
    # would pick the wrong token (the workload pools at the first EOS itself).
    text = {
        "vocab_size": len(tokenizer), "hidden_size": p["t_hidden"], "intermediate_size": p["t_inter"],
        "num_hidden_layers": p["t_layers"], "num_attention_heads": p["t_heads"],
        "max_position_embeddings": p["context"], "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.eos_token_id,
    }  # fmt: skip
    vision = {"hidden_size": p["v_hidden"], "intermediate_size": p["v_inter"], "num_hidden_layers": p["v_layers"],
              "num_attention_heads": p["v_heads"], "image_size": p["image"], "patch_size": p["patch"]}  # fmt: skip
    size = p["image"]
    if kind == "clip":
        CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=p["proj"])).save_pretrained(
            directory
        )
        CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(
            directory
        )
    else:
        text["projection_size"] = p["t_hidden"]
        SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).save_pretrained(directory)
        SiglipImageProcessor(size={"height": size, "width": size}).save_pretrained(directory)
    tokenizer.model_max_length = p["context"]
    tokenizer.save_pretrained(directory)


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Build a folder once even when every rank asks at the same time: each builds its own copy, the first
    complete one wins the rename, so nobody reads a half-written folder."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    mine = target.parent / f".{target.name}-{os.getpid()}"
    shutil.rmtree(mine, ignore_errors=True)
    mine.mkdir(parents=True)
    # Building draws on the random generators; the caller's state is restored so a run that built the parts
    # initialises the rest of its model exactly as a run that found them built (the same losses either way).
    import random

    import torch

    python_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        build(mine)
    random.setstate(python_state)
    try:
        os.rename(mine, target)
    except OSError:
        shutil.rmtree(mine, ignore_errors=True)
    return target


PARTS_VERSION = 1  # bump when what the builders make changes: cached folders of another version are not used


def parts_cache() -> Path:
    """Where tiny parts are kept between runs (they are deterministic for a seed): $HPCAI_PARTS_CACHE, else
    $XDG_CACHE_HOME/hpcai/parts (~/.cache/...). Every run built its own before: seconds of CPU per rank."""
    configured = os.environ.get("HPCAI_PARTS_CACHE")
    base = Path(configured) if configured else Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "hpcai" / "parts"
    return base.expanduser() / f"v{PARTS_VERSION}"


def tiny_llava_parts(root: Path, vision: str, lm: str, seed: int = 0) -> tuple[Path, Path]:
    """Tiny vision tower and LM folders under `root` (built once): (vision_tower, language_model)."""
    texts = corpus(seed)
    tower = build_once(root / f"vision-{vision}", lambda d: build_vision(d, vision))
    language = build_once(root / f"lm-{lm}-seed{seed}", lambda d: build_lm(d, lm, texts, seed))
    return tower, language


def tiny_clip(root: Path, kind: str, seed: int = 0, shape: dict[str, Any] | None = None, name: str = "") -> Path:
    """A tiny (or `shape`d) CLIPModel/SiglipModel folder under `root`, built once."""
    return build_once(
        root / f"{name or kind + '-model'}-seed{seed}", lambda d: build_clip(d, kind, corpus(seed), shape)
    )
