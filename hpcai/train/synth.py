"""Synthetic data sets in the real formats, with learnable structure (the answer depends on the image),
for tests and the quick start. Pure Python + Pillow; deterministic for a given seed."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 60, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 40, 170),
    "orange": (245, 140, 20),
    "black": (20, 20, 20),
    "cyan": (40, 200, 210),
}
SHAPES = ("square", "circle", "triangle")
IMAGE_SIZE = 64


def _image(color: tuple[int, int, int], shape: str, rng: random.Random) -> Any:
    from PIL import Image, ImageDraw

    grey = rng.randint(200, 250)
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (grey, grey, grey))
    draw = ImageDraw.Draw(img)
    size = rng.randint(28, 44)
    x, y = rng.randint(2, IMAGE_SIZE - size - 2), rng.randint(2, IMAGE_SIZE - size - 2)
    box = (x, y, x + size, y + size)
    if shape == "square":
        draw.rectangle(box, fill=color)
    elif shape == "circle":
        draw.ellipse(box, fill=color)
    else:
        draw.polygon([(x + size // 2, y), (x, y + size), (x + size, y + size)], fill=color)
    return img


def _draw(color: tuple[int, int, int], shape: str, rng: random.Random, path: Path) -> None:
    _image(color, shape, rng).save(path, format="PNG")


def _samples(directory: Path, samples: int, seed: int) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    images = directory / "images"
    images.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(samples):
        color = rng.choice(list(COLORS))
        shape = rng.choice(SHAPES)
        name = f"{i:06d}.png"
        _draw(COLORS[color], shape, rng, images / name)
        made.append((name, color, shape))
    return made


def synth_llava(directory: Path, samples: int = 256, seed: int = 0) -> Path:
    """LLaVA conversation JSON (`id`, `image`, `conversations` of human/gpt turns with `<image>`)."""
    rng = random.Random(seed + 1)
    records = []
    for i, (name, color, shape) in enumerate(_samples(directory, samples, seed)):
        if rng.random() < 0.5:
            turns = [("What color is the shape?", f"It is {color}."), ("And its shape?", f"A {shape}.")]
        else:
            turns = [("Describe the image.", f"A {color} {shape} on a grey background.")]
        conversations = []
        for k, (question, answer) in enumerate(turns):
            conversations.append({"from": "human", "value": ("<image>\n" if k == 0 else "") + question})
            conversations.append({"from": "gpt", "value": answer})
        records.append({"id": f"synth-{i:06d}", "image": name, "conversations": conversations})
    path = directory / "conversations.json"
    path.write_text(json.dumps(records, indent=1))
    return path


def synth_clip(directory: Path, samples: int = 256, seed: int = 0) -> Path:
    """Image-text pairs: JSONL lines `{"image": ..., "caption": ...}` next to an `images/` folder."""
    made = _samples(directory, samples, seed)
    path = directory / "pairs.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for name, color, shape in made:
            handle.write(json.dumps({"image": name, "caption": f"a {color} {shape}"}) + "\n")
    return path


def synth_clip_shards(directory: Path, samples: int = 256, seed: int = 0, per_shard: int = 64) -> list[Path]:
    """The same pairs as tar shards in the img2dataset layout (`key.png` + `key.txt`), each with its index."""
    import io

    from hpcai.train.shards import write_shards

    rng = random.Random(seed)
    made = []
    for i in range(samples):
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        buffer = io.BytesIO()
        _image(COLORS[color], shape, rng).save(buffer, format="PNG")
        made.append((f"{i:09d}", {"png": buffer.getvalue(), "txt": f"a {color} {shape}".encode()}))
    return write_shards(directory, made, per_shard)
