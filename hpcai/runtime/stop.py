"""The request to checkpoint and stop: SIGUSR1 (Slurm's warning before walltime, or `scancel -s USR1`)
or the `$HPCAI_RUN_DIR/STOP` file that the job script creates when it receives that signal."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from types import FrameType

from hpcai.rundir.contract import STOP_FILE


class StopRequest:
    def __init__(self, run_dir: Path) -> None:
        self.stop_file = run_dir / STOP_FILE
        self._signalled = False
        signal.signal(signal.SIGUSR1, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signalled = True

    def requested(self) -> bool:
        """This process's view; ranks agree on it with an all-reduce in the trainer."""
        return self._signalled or self.stop_file.exists()

    @staticmethod
    def clear(run_dir: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(run_dir / STOP_FILE)
