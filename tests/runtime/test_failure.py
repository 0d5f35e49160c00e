"""Why a job ended, in words: the rank's record (also for torch's BaseException-derived checkpoint errors,
unwrapped to the rank's own cause) and the error log read through torchrun's `[rankN]: ` prefixes."""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import pytest

from hpcai.flows.runs.why import reason_from_log
from hpcai.runtime.failure import record_failure

ENOSPC_LOG = """[rank1]: Traceback (most recent call last):
[rank1]:   File "/opt/train.py", line 40, in <module>
[rank1]:     save(state)
[rank1]:   File "/opt/hpcai/runtime/checkpoint.py", line 90, in save
[rank1]:     handle.write(data)
[rank1]: OSError: [Errno 28] No space left on device
E1207 10:00:00.000 torch/distributed/elastic/multiprocessing/api.py:900] failed (exitcode: 1)
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
"""


def test_a_ranked_log_names_the_exception_and_a_full_disk_says_what_to_do() -> None:
    reason = reason_from_log(ENOSPC_LOG.splitlines())
    assert reason is not None and reason.startswith("OSError: [Errno 28] No space left on device"), reason
    assert "(rank 1)" in reason and "checkpoint.py:90" in reason and "free space" in reason
    assert reason_from_log(["just noise", "exit 1"]) is None
    planted = reason_from_log(["[rank0]: ValueError: \x1b[2Jgone"])
    assert planted is not None and "\x1b" not in planted


def test_a_checkpoint_error_is_recorded_with_the_ranks_own_cause(tmp_path: Path) -> None:
    api = pytest.importorskip("torch.distributed.checkpoint.api", reason="the `train` extra")
    assert not issubclass(api.CheckpointException, Exception)  # why `except Exception` recorded nothing
    inner = RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory")
    try:
        raise api.CheckpointException("read", {1: (ValueError("other"), None), 0: (inner, traceback.StackSummary())})
    except BaseException as exc:  # what the trainer does with it
        record_failure(tmp_path, exc)
    record = json.loads((tmp_path / "errors" / "rank-0.json").read_text())
    assert record["type"] == "RuntimeError" and record["message"].startswith("PytorchStreamReader failed")
    assert record["where"] and record["where"].startswith("test_failure.py:")
