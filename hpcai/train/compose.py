"""A LLaVA model, its tokenizer and its image transform, from the parts a user has.

- `vision_tower=DIR` + `language_model=DIR`: a CLIP or SigLIP vision folder (CLIPVisionModel/CLIPModel,
  SiglipVisionModel/SiglipModel, with its image processor) and a causal LM folder (with its tokenizer and
  chat template) become one `LlavaForConditionalGeneration` with a fresh LLaVA-1.5 projector; `<image>`
  is added to the tokenizer as a special token (embeddings resized) when the LM lacks it.
- `model_path=DIR`: a whole LLaVA folder in the llava-hf layout (model + processor), e.g. a previous
  stage's export (`<run dir>/model`).
- A random-weight preset (benchmarks): LLaVA-1.5's shapes with a small trained tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcai.train.chat import IMAGE_TOKEN
from hpcai.train.images import ImageTransform

VISION_TYPES = {"clip": "clip", "clip_vision_model": "clip", "siglip": "siglip", "siglip_vision_model": "siglip"}


class PartError(ValueError):
    """A model folder that cannot be used, with what to do about it."""


@dataclass
class LlavaParts:
    model: Any
    tokenizer: Any
    image_processor: Any
    transform: ImageTransform
    image_token_id: int
    image_tokens: int
    vision_kind: str


def _config(folder: Path, what: str) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise PartError(f"{what} {folder}: no config.json there; expected a save_pretrained folder "
                        "(stage one with `hpcai stage` or `hpcai models stage`)")  # fmt: skip
    config: dict[str, Any] = json.loads(path.read_text())
    return config


def vision_kind(folder: Path) -> str:
    model_type = str(_config(folder, "vision_tower").get("model_type", ""))
    if model_type not in VISION_TYPES:
        raise PartError(f"vision_tower {folder}: model_type '{model_type}' is not a CLIP or SigLIP vision model")
    return VISION_TYPES[model_type]


def _tokenizer_with_image_token(folder: Path) -> tuple[Any, int, bool]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.chat_template is None:
        raise PartError(f"language_model {folder}: the tokenizer has no chat template; add one "
                        "(chat_template.jinja) or use the model's instruct/chat variant")  # fmt: skip
    added = False
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
        added = True
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    image_id: Any = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    return tokenizer, int(image_id), added


def patches(vision_config: Any) -> int:
    return int((vision_config.image_size // vision_config.patch_size) ** 2)


def llava_config(vision_config: Any, text_config: Any, kind: str, image_token_id: int) -> Any:
    from transformers import LlavaConfig

    # LLaVA-1.5: features of the second-to-last layer; CLIP's CLS token dropped ("default"), SigLIP has none.
    return LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_token_index=image_token_id,
        image_seq_length=patches(vision_config), vision_feature_layer=-2,
        vision_feature_select_strategy="default" if kind == "clip" else "full", projector_hidden_act="gelu",
    )  # fmt: skip


def compose(vision_folder: Path, lm_folder: Path) -> LlavaParts:
    """A pretrained tower and LM joined by a fresh projector."""
    from transformers import (
        AutoImageProcessor,
        AutoModelForCausalLM,
        CLIPVisionModel,
        LlavaForConditionalGeneration,
        SiglipVisionModel,
    )

    kind = vision_kind(vision_folder)
    _config(lm_folder, "language_model")
    tower_cls = CLIPVisionModel if kind == "clip" else SiglipVisionModel
    tower = _pretrained(tower_cls, vision_folder, "vision_tower")
    lm = _pretrained(AutoModelForCausalLM, lm_folder, "language_model")
    tokenizer, image_id, added = _tokenizer_with_image_token(lm_folder)
    if added or lm.get_input_embeddings().weight.shape[0] < len(tokenizer):
        lm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    config = llava_config(tower.config, lm.config, kind, image_id)
    model = LlavaForConditionalGeneration(config)
    _load_exactly(model.model.vision_tower, tower.state_dict(), f"vision_tower {vision_folder}")
    _load_exactly(model.model.language_model, lm.model.state_dict(), f"language_model {lm_folder}")
    _load_exactly(model.lm_head, lm.lm_head.state_dict(), f"language_model {lm_folder} (lm_head)")
    processor = AutoImageProcessor.from_pretrained(vision_folder)  # type: ignore[no-untyped-call]
    return _parts(model, tokenizer, processor, image_id, kind)


def load_llava(folder: Path) -> LlavaParts:
    """A whole LLaVA folder (llava-hf layout: LlavaForConditionalGeneration + its processor)."""
    from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration

    config = _config(folder, "model_path")
    if config.get("model_type") != "llava":
        raise PartError(f"model_path {folder}: model_type '{config.get('model_type')}' is not llava; for separate "
                        "parts pass vision_tower=DIR and language_model=DIR instead")  # fmt: skip
    model = _pretrained(LlavaForConditionalGeneration, folder, "model_path")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    processor = AutoImageProcessor.from_pretrained(folder)  # type: ignore[no-untyped-call]
    kind = VISION_TYPES.get(model.config.vision_config.model_type, "clip")
    return _parts(model, tokenizer, processor, int(model.config.image_token_index), kind)


def from_preset(p: dict[str, Any], tokenizer_texts: list[str]) -> LlavaParts:
    """LLaVA-1.5-shaped random weights for benchmarks, with a small trained tokenizer (ids < its size)."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaForConditionalGeneration,
        Qwen2Config,
        Qwen3Config,
        SiglipVisionConfig,
    )

    from hpcai.train.parts import train_tokenizer

    tokenizer = train_tokenizer(tokenizer_texts, p["lm"])
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    image_id = int(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    vision_cls = CLIPVisionConfig if p["vision"] == "clip" else SiglipVisionConfig
    vision = vision_cls(
        hidden_size=p["v_hidden"], intermediate_size=p["v_inter"], num_hidden_layers=p["v_layers"],
        num_attention_heads=p["v_heads"], image_size=p["image"], patch_size=p["patch"],
    )  # fmt: skip
    text_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[p["lm"]]
    text = text_cls(
        vocab_size=max(p["vocab"], len(tokenizer)), hidden_size=p["hidden"], intermediate_size=p["inter"],
        num_hidden_layers=p["layers"], num_attention_heads=p["heads"], num_key_value_heads=p["kv_heads"],
        max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )  # fmt: skip
    model = LlavaForConditionalGeneration(llava_config(vision, text, p["vision"], image_id))
    from transformers import CLIPImageProcessor, SiglipImageProcessor

    size = p["image"]
    processor = (
        CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        if p["vision"] == "clip"
        else SiglipImageProcessor(size={"height": size, "width": size})
    )
    return _parts(model, tokenizer, processor, image_id, p["vision"])


def _parts(model: Any, tokenizer: Any, processor: Any, image_id: int, kind: str) -> LlavaParts:
    size = int(model.config.vision_config.image_size)
    return LlavaParts(
        model=model, tokenizer=tokenizer, image_processor=processor,
        transform=ImageTransform.from_processor(processor, size), image_token_id=image_id,
        image_tokens=int(model.config.image_seq_length), vision_kind=kind,
    )  # fmt: skip


def _pretrained(cls: Any, folder: Path, what: str) -> Any:
    """`from_pretrained`, refusing what transformers only warns about: weights missing from the folder
    (they would be random) or left over (another architecture)."""
    import torch

    try:
        model, info = cls.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise PartError(f"{what} {folder}: cannot be loaded ({str(exc).splitlines()[0]})") from None
    missing = list(info.get("missing_keys", []))
    mismatched = list(info.get("mismatched_keys", []))
    if missing or mismatched:
        raise PartError(
            f"{what} {folder}: the weights do not cover the model its config describes (missing "
            f"{(missing or mismatched)[:3]}); is the folder complete (every *.safetensors shard copied)?"
        )
    return model


def _load_exactly(module: Any, state: dict[str, Any], what: str) -> None:
    """A pretrained part loads completely or not at all: a silent partial load trains from noise."""
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise PartError(
            f"{what}: its weights do not fit the model built from its config (missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}); is it a complete save_pretrained folder of that model?"
        )


# Put in front of the LM's chat template in the exported processor: messages whose content is a list of
# parts ({"type": "image"}, {"type": "text", "text": ...}, as apply_chat_template is called for vision models)
# become the text training saw -- "<image>\n" for the image, then the text -- before the LM's own template
# renders them. Messages with string content pass unchanged.
STRUCTURED_CONTENT = (
    "{%- set hpcai = namespace(messages=[]) -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set hpcai.messages = hpcai.messages + [message] -%}"
    "{%- else -%}{%- set text = namespace(value='') -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{%- set text.value = text.value + '" + IMAGE_TOKEN + "\\n' -%}"
    "{%- elif part['type'] == 'text' -%}{%- set text.value = text.value + part['text'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- set hpcai.messages = hpcai.messages + [{'role': message['role'], 'content': text.value}] -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- set messages = hpcai.messages -%}"
)


def export_llava(parts: LlavaParts, state_dict: dict[str, Any], target: Path) -> None:
    """A Hugging Face folder that LlavaForConditionalGeneration / AutoProcessor load, preprocessing as
    training did: the trained weights; an image processor that pads a non-square image to a square of the
    mean colour before resizing (the tower's own resizes its short edge and crops: another image than the one
    trained on); a chat template that takes structured image/text content (the LM's text-only template
    printed the list); image-token expansion as in training."""
    from transformers import LlavaImageProcessorPil, LlavaProcessor

    model = parts.model
    model.save_pretrained(target, state_dict=state_dict)
    size = parts.transform.size
    image_processor = LlavaImageProcessorPil(
        do_pad=True, do_resize=True, size={"shortest_edge": size}, do_center_crop=True,
        crop_size={"height": size, "width": size}, image_mean=list(parts.transform.mean),
        image_std=list(parts.transform.std), do_convert_rgb=True,
    )  # fmt: skip
    template = STRUCTURED_CONTENT + str(parts.tokenizer.chat_template or "")
    processor = LlavaProcessor(  # type: ignore[no-untyped-call]
        image_processor=image_processor, tokenizer=parts.tokenizer,
        patch_size=int(model.config.vision_config.patch_size),
        vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        chat_template=template, image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1 if parts.vision_kind == "clip" else 0,
    )  # fmt: skip
    parts.tokenizer.save_pretrained(target)
    processor.save_pretrained(target)  # after the tokenizer: its chat_template.jinja is the structured one
