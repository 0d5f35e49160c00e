"""MkDocs hook: the site's home page is the README (one text, not two), its links made relative to docs/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent.parent / "README.md"


def on_page_read_source(page: Any, config: Any) -> str | None:
    if page.file.src_uri != "index.md":
        return None
    text = README.read_text(encoding="utf-8").replace("](docs/", "](")
    lines = [
        line for line in text.splitlines() if not line.startswith(("**Contents**", "[Bring your own", "[Where to"))
    ]
    return "\n".join(lines) + "\n"
