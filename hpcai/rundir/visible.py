"""Text that came from a cluster or a run folder, made safe to show in a terminal.

Anything read from there may have been written by someone else: an escape sequence in a "reason" or a
log line can clear the screen, rewrite what was printed before, set the window title or plant an OSC 8
link. Control characters are shown as visible escapes (`\\x1b`) instead of being sent to the terminal."""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, the C1 controls (U+0080-U+009F), and the bidirectional overrides
# that can reorder what a line appears to say.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f\x80-\x9f\u202a-\u202e\u2066-\u2069]")
_CONTROL_KEEP_CR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x80-\x9f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible_line(text: str, limit: int = 2000) -> str:
    """One line of text (a reason, a message): controls escaped, line breaks folded to spaces."""
    return _CONTROL.sub(_escape, text.replace("\r\n", " ").replace("\n", " "))[:limit]


def visible_log(text: str) -> str:
    """Log output: controls escaped, but newlines, tabs and carriage returns (progress bars) kept."""
    return _CONTROL_KEEP_CR.sub(_escape, text)


def visible_dict(record: dict[str, object]) -> dict[str, object]:
    """`visible_record` of a JSON object."""
    return {visible_line(str(k)): visible_record(v) for k, v in record.items()}


def visible_record(value: object) -> object:
    """A record read from a run folder (JSON), with every string in it made a visible line."""
    if isinstance(value, str):
        return visible_line(value)
    if isinstance(value, dict):
        return visible_dict(value)
    if isinstance(value, list):
        return [visible_record(v) for v in value]
    return value
