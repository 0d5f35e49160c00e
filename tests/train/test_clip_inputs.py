"""What CLIP and SigLIP see, as they were trained: CLIP's text framed by start- and end-of-text with the end
kept on truncation (it is the pooled position), SigLIP's by its end token; images cropped to the centre for
CLIP (open_clip's Resize + CenterCrop), squashed for SigLIP, padded for LLaVA."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("torch")

from hpcai.train.clip import frame_text
from hpcai.train.images import ImageTransform

OPENAI = SimpleNamespace(bos_token_id=49406, eos_token_id=49407)


def test_a_long_caption_keeps_its_end_of_text_and_clip_gets_its_start() -> None:
    words = list(range(100, 200))  # 100 tokens into a 77-token context
    framed = frame_text(words, OPENAI, 77, siglip=False)
    assert len(framed) == 77 and framed[0] == 49406 and framed[-1] == 49407 and framed[1:-1] == words[:75]
    assert frame_text([5, 6], OPENAI, 77, siglip=False) == [49406, 5, 6, 49407]
    siglip = frame_text(words, SimpleNamespace(bos_token_id=None, eos_token_id=1), 64, siglip=True)
    assert len(siglip) == 64 and siglip[-1] == 1 and siglip[:-1] == words[:63]


def _stripes(path: Path) -> Path:
    """64 x 32: green quarters left and right, red in the middle half."""
    from PIL import Image

    img = Image.new("RGB", (64, 32), (255, 0, 0))
    for x in [*range(16), *range(48, 64)]:
        for y in range(32):
            img.putpixel((x, y), (0, 255, 0))
    img.save(path)
    return path


def test_clip_crops_the_centre_siglip_squashes_llava_pads(tmp_path: Path) -> None:
    path = _stripes(tmp_path / "wide.png")
    crop = ImageTransform(32, resize="crop").pixels(path)
    assert crop.shape == (3, 32, 32) and int(crop[1].max()) < 40 and int(crop[0].min()) > 200  # all red
    squash = ImageTransform(32, resize="squash").pixels(path)
    assert int(squash[1, :, :4].min()) > 200 and int(squash[0, :, 14:18].min()) > 200  # green edges, red centre
    pad = ImageTransform(32, resize="pad").pixels(path)
    assert int(pad[1, 16, :4].min()) > 200 and abs(int(pad[0, 2, 16]) - int(0.48145466 * 255)) <= 2  # padded rows
    with pytest.raises(ValueError, match="resize"):
        ImageTransform.from_processor(object(), 32, resize="stretch")
