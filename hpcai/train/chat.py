"""LLaVA conversations as token ids and labels, through the LM's own tokenizer and chat template.

The assistant's turns are found by rendering the template twice per turn: the conversation up to the turn
with the generation prompt, and with the turn; what the second adds is the answer (with the template's
end-of-turn token, so the model learns to stop). Tokens whose text lies there are supervised, nothing
else (`IGNORE` = -100 elsewhere, image tokens included). The `<image>` placeholder is one special token
in the text; it is expanded to the tower's `image_tokens` copies *before* truncation to `max_length`
(LLaVA truncates after splicing the image features in); a sample whose image would be cut is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE = -100
IMAGE_TOKEN = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class TemplateError(ValueError):
    """The chat template cannot be used to find the assistant's tokens."""


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    images: int  # how many <image> placeholders (0 for a text-only sample, else 1)


def messages_of(record: dict[str, Any]) -> list[dict[str, str]]:
    """LLaVA's `conversations` ({"from": "human"|"gpt", "value"}) as chat messages."""
    messages = []
    turns = record.get("conversations") if isinstance(record, dict) else None
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"sample {record.get('id') if isinstance(record, dict) else record!r}: no conversations list")
    for turn in turns:
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise ValueError(f'sample {record.get("id")}: a turn is not {{"from": ..., "value": "text"}}')
        role = ROLES.get(str(turn.get("from", "")).lower())
        if role is None:
            raise ValueError(f"sample {record.get('id')}: turn from {turn.get('from')!r} (expected human or gpt)")
        messages.append({"role": role, "content": turn["value"]})
    return messages


def render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
    text: str = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return text


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The whole conversation's text and the character ranges of the assistant's answers in it.

    Each answer starts where the conversation before it, with the generation prompt, ends (that must be
    how the whole conversation begins), and runs through its text and the end-of-turn the template puts
    after it. Templates that render the *last* answer differently from earlier ones are fine: Qwen3's adds
    an empty think block to the answers after the last user turn only, so an earlier answer rendered as the
    last one differs from its place in the whole conversation."""
    full = render(tokenizer, messages)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], generation_prompt=True)
        content = message["content"].strip()
        start = full.find(content, len(before)) if full.startswith(before) else -1
        if start < 0 or (spans and len(before) < spans[-1][1]):
            raise TemplateError(
                "the chat template renders a conversation's beginning differently once more turns follow, so the "
                "assistant's tokens cannot be found; use a template whose turns are appended (ChatML, Llama 3, "
                "Vicuna, Qwen3) or fix the template in the model folder's tokenizer_config.json / chat_template.jinja"
            )
        end = start + len(content)
        through = render(tokenizer, messages[: i + 1])
        turn_end = through[through.rfind(content) + len(content) :] if content in through else ""
        if turn_end and full.startswith(turn_end, end):
            end += len(turn_end)  # the end-of-turn token (and what the template puts with it): learnt, to stop
        spans.append((len(before), end))
    return full, spans


PROMPT_FORMATS = ("chat", "plain")


def plain_text(messages: list[dict[str, str]], has_image: bool) -> tuple[str, list[tuple[int, int]]]:
    """LLaVA-1.5's stage-1 format ("plain"): the image, then the first answer (the caption) and a newline --
    no system prompt, no question, no template -- with the caption and the newline supervised."""
    answer = next((m["content"] for m in messages if m["role"] == "assistant"), None)
    if answer is None:
        raise ValueError("the plain (stage 1) format needs an answer turn (from: gpt) with the caption")
    prefix = IMAGE_TOKEN if has_image else ""
    text = f"{prefix}{answer.replace(IMAGE_TOKEN, '').strip()}\n"
    return text, [(len(prefix), len(text))]


def encode(
    record: dict[str, Any],
    tokenizer: Any,
    image_token_id: int,
    image_tokens: int,
    max_length: int,
    prompt_format: str = "chat",
) -> Encoded | None:
    """Ids and labels of one LLaVA sample, or None when truncation would cut its image. `prompt_format`:
    `chat` (the LM's chat template, LLaVA-1.5's stage 2) or `plain` (image + caption, its stage 1)."""
    messages = messages_of(record)
    placeholders = sum(m["content"].count(IMAGE_TOKEN) for m in messages)
    has_image = "image" in record and record["image"] not in (None, "")
    if placeholders > 1 or (has_image and placeholders == 0):
        if has_image and placeholders == 0:
            # LLaVA's data always places the image first in the first human turn when it is missing.
            first = next(m for m in messages if m["role"] == "user")
            first["content"] = f"{IMAGE_TOKEN}\n{first['content']}"
        else:
            raise ValueError(f"sample {record.get('id')}: {placeholders} <image> placeholders (one at most)")
    if not has_image:
        for m in messages:
            m["content"] = m["content"].replace(IMAGE_TOKEN, "").strip()
    if prompt_format == "plain":  # as LLaVA tokenizes it: with the tokenizer's own BOS, where it has one
        text, spans = plain_text(messages, has_image)
        enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    else:
        text, spans = assistant_spans(tokenizer, messages)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = []
    labels: list[int] = []
    for token, (start, _end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        if token == image_token_id:
            ids += [image_token_id] * image_tokens
            labels += [IGNORE] * image_tokens
            continue
        ids.append(token)
        labels.append(token if any(a <= start < b for a, b in spans) else IGNORE)
    images = 1 if has_image else 0
    ids, labels = ids[:max_length], labels[:max_length]
    if ids.count(image_token_id) != images * image_tokens:
        return None
    return Encoded(ids, labels, images)
