"""A byte-level tokenizer for the random-weight presets: no vocabulary files, nothing to download."""

from __future__ import annotations

PAD, BOS, EOS, IMAGE = 0, 1, 2, 3
OFFSET = 4
VOCAB_SIZE = 256 + OFFSET


class ByteTokenizer:
    pad_token_id = PAD
    bos_token_id = BOS
    eos_token_id = EOS
    image_token_id = IMAGE
    vocab_size = VOCAB_SIZE

    def encode(self, text: str) -> list[int]:
        return [b + OFFSET for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        return bytes(i - OFFSET for i in ids if i >= OFFSET).decode("utf-8", errors="replace")
