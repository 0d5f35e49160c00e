"""Reading a user's program from its output (standard library only): progress and loss, and the failing
rank's own exception.

Progress: HF Trainer / TRL log dicts (`{'loss': 1.23, 'grad_norm': ..., 'learning_rate': ...}`, numbers
quoted or not), tqdm counters (`12/100 [`, the step of the next loss dict), `step N ... loss: x` prints,
and a user's regex with named groups `loss` (and `step`, `grad_norm`, `lr`). Lines may carry torch's
`[rankN]: ` prefix. Nothing read is evaluated: numbers are parsed by regex and float().

Exceptions: the first Python traceback in the output whose exception is not a launcher's wrapper
(torchrun's ChildFailedError, accelerate's CalledProcessError), with the rank from its `[rankN]:` prefix.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_RANK_PREFIX = re.compile(r"^\[(?:default)?rank(\d+)\]:\s?")
# A progress bar without a description (HF Trainer's and Lightning's training bars; data-set bars such as
# "Map:" or "Truncating train dataset:" have one): "  8%|8         | 1/12 [".
_TQDM = re.compile(r"(?:^|\])\s*\d{1,3}%\|[^|]{0,200}\|\s*(\d{1,12})/(\d{1,12}) \[")
_NUMBER = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf)"
_DICT_ITEM = re.compile(r"""['"]([A-Za-z_/]+)['"]\s*:\s*['"]?(""" + _NUMBER + r""")['"]?""")
_DICT_LOSS = re.compile(r"""\{\s*['"]loss['"]\s*:""")
_PLAIN_LOSS = re.compile(r"(?<![A-Za-z0-9])(?:train[_/ ])?loss\s*[:=]\s*(" + _NUMBER + ")", re.IGNORECASE)
_PLAIN_STEP = re.compile(r"(?<![A-Za-z0-9_])(?:global[_ ])?(?:step|iter|iteration)\s*[:=#]?\s*(\d{1,12})\b", re.I)
_MAX_STEP = 10**12  # a step beyond this is not a step (a planted or garbled line)
# What hpcai's own callbacks print on rank 0 (hpcai.integrations): exact steps, preferred over guesses.
EXACT_PREFIX = "hpcai-metrics "


def exact_line(step: int, loss: float, grad_norm: float | None, lr: float | None) -> str:
    return EXACT_PREFIX + json.dumps({"step": step, "loss": loss, "grad_norm": grad_norm, "lr": lr})


WRAPPERS = ("ChildFailedError", "CalledProcessError")


def strip_rank(line: str) -> tuple[int | None, str]:
    match = _RANK_PREFIX.match(line)
    if match is None:
        return None, line
    return int(match.group(1)), line[match.end() :]


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value


@dataclass(frozen=True)
class Observation:
    step: int
    loss: float
    grad_norm: float | None = None
    lr: float | None = None
    exact: bool = False  # from an hpcai callback's line, not a guess from the program's own output


class ProgressParser:
    """Feed it the program's output lines; it returns an Observation for each line that reports a loss."""

    def __init__(self, pattern: re.Pattern[str] | None = None, start_step: int = 0) -> None:
        """`start_step`: the step of the checkpoint the program resumed from (its next step is the one after)."""
        self.pattern = pattern
        self.hint: int | None = None  # the newest tqdm count: the step the next loss belongs to
        self.bar_total = 0
        self.last_step = start_step
        self.exact = False  # an hpcai callback reports the steps: every other pattern is ignored

    def _step(self, explicit: int | None) -> int:
        """A step the line names is taken as it is; otherwise the tqdm count, which lags (tqdm redraws at
        most every 0.1 s), so never behind the step after the last one seen."""
        if explicit is not None and 0 < explicit < _MAX_STEP:
            step = explicit
        else:
            step = max(self.hint or 0, self.last_step + 1)
        self.last_step = step
        return step

    def feed(self, raw: str) -> Observation | None:
        _, line = strip_rank(raw)
        if len(line) > 10_000:
            return None
        at = line.find(EXACT_PREFIX)  # after a progress bar's redraw on the same terminal line, maybe
        if at >= 0:
            return self._exact(line[at + len(EXACT_PREFIX) :])
        if self.exact:
            return None
        counts = _TQDM.findall(line)
        if counts:
            done, total = int(counts[-1][0]), int(counts[-1][1])
            # The training bar is the longest bar without a description; an evaluation bar is shorter.
            if total >= self.bar_total and 0 < done < _MAX_STEP:
                self.bar_total = total
                self.hint = done
        if self.pattern is not None:
            match = self.pattern.search(line)
            if match is None:
                return None
            groups = match.groupdict()
            loss = _number(groups.get("loss"))
            if loss is None:
                return None
            step_text = groups.get("step")
            explicit = int(step_text) if step_text is not None and step_text.isdigit() else None
            return Observation(self._step(explicit), loss, _number(groups.get("grad_norm")), _number(groups.get("lr")))
        if _DICT_LOSS.search(line):
            items = {key: value for key, value in _DICT_ITEM.findall(line)}
            loss = _number(items.get("loss"))
            if loss is None:
                return None
            step_text = items.get("step") or items.get("global_step")
            explicit = int(float(step_text)) if step_text is not None and _number(step_text) is not None else None
            return Observation(
                self._step(explicit), loss, _number(items.get("grad_norm")), _number(items.get("learning_rate"))
            )
        match = _PLAIN_LOSS.search(line)
        if match is None:
            return None
        loss = _number(match.group(1))
        if loss is None:
            return None
        step_match = _PLAIN_STEP.search(line)
        return Observation(self._step(int(step_match.group(1)) if step_match else None), loss)

    def _exact(self, text: str) -> Observation | None:
        try:
            data = json.loads(text)
            step, loss = data["step"], float(data["loss"])
            grad_norm = float(data["grad_norm"]) if data.get("grad_norm") is not None else None
            lr = float(data["lr"]) if data.get("lr") is not None else None
        except (ValueError, TypeError, KeyError):
            return None
        if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step < _MAX_STEP:
            return None
        self.exact = True
        self.last_step = step
        return Observation(step, loss, grad_norm, lr, exact=True)


_FRAME = re.compile(r'^\s+File "([^"]{1,4096})", line (\d+)')
_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Failure|Fault)?)(?::\s?(.*))?$")


@dataclass(frozen=True)
class RankException:
    rank: int | None
    type: str
    message: str
    where: str | None


def find_exception(lines: list[str]) -> RankException | None:
    """The first traceback's exception that is not a launcher's wrapper, in output order."""
    open_blocks: dict[int | None, list[str]] = {}  # rank -> frames seen, while inside its traceback
    for raw in lines:
        rank, line = strip_rank(raw.rstrip("\r\n"))
        if line.startswith("Traceback (most recent call last):"):
            open_blocks[rank] = []
            continue
        if rank not in open_blocks:
            continue
        frame = _FRAME.match(line)
        if frame is not None:
            name = frame.group(1).rsplit("/", 1)[-1]
            open_blocks[rank].append(f"{name}:{frame.group(2)}")
            continue
        if not line or line[0].isspace() or line.startswith(("^", "~")):
            continue  # source lines, carets
        frames = open_blocks.pop(rank)
        match = _EXCEPTION.match(line)
        if match is None:
            continue
        kind = match.group(1)
        if kind.rsplit(".", 1)[-1] in WRAPPERS:
            continue
        return RankException(rank, kind, (match.group(2) or "").strip()[:500], frames[-1] if frames else None)
    return None


_ROOT_CAUSE = re.compile(r"^Root Cause \(first observed failure\):")
_FIELD = re.compile(r"^\s+(rank|exitcode|traceback)\s*:\s?(.*)$")


def find_root_cause(lines: list[str]) -> RankException | None:
    """torchrun's "Root Cause" report, for a rank that died without a Python traceback (killed by a signal,
    a C++ abort, an exit code of its own): its rank and how it ended."""
    fields: dict[str, str] = {}
    inside = False
    for raw in lines:
        _, line = strip_rank(raw.rstrip("\r\n"))
        if _ROOT_CAUSE.match(line):
            inside, fields = True, {}
            continue
        if not inside:
            continue
        match = _FIELD.match(line)
        if match is not None:
            fields[match.group(1)] = match.group(2).strip()
        elif line.startswith("====") and fields:
            break
    if "exitcode" not in fields:
        return None
    rank_text = fields.get("rank", "").split(" ", 1)[0]
    code = fields["exitcode"].split(" ", 1)[0]
    signal_name = re.search(r"\((SIG[A-Z0-9]+)\)", fields.get("traceback", "") + " " + fields["exitcode"])
    kind = f"killed by {signal_name.group(1)}" if signal_name else f"exit code {code}"
    detail = fields.get("traceback", "")
    if detail.startswith("To enable traceback"):
        detail = "no Python traceback (the rank exited on its own, or in native code)"
    return RankException(int(rank_text) if rank_text.isdigit() else None, kind, detail[:500], None)
