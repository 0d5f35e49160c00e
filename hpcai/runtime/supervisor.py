"""The supervisor of a user's own program on one node (standard library only): what gives a script that
knows nothing of hpcai the protection of the built-in workloads.

Started by the node agent (hpcai.runtime.node_agent) in place of the hpcai runtime, it

- adds the program's resume arguments on every attempt after the first, and on a first one that finds a
  checkpoint (a moved run, a resume by hand) (`--resume-arg` words with
  `{checkpoint}`, `{run_dir}`, `{attempt}`; an argument naming `{checkpoint}` is left out, with its option
  word, while no checkpoint matches the pattern);
- starts the program (its launcher) in a process group of its own, killed with the supervisor;
- copies the program's output to its own, byte for byte, and on node 0 reads step and loss from it
  (hpcai.runtime.outputparse) into `metrics.jsonl` and the node's heartbeat, so `status`, `plot`, the spike
  scan, the goodput account and the hang watchdog work for it;
- when the job asks for a checkpoint before walltime (`$HPCAI_RUN_DIR/STOP`), sends the program's workers
  the stop signal (default SIGUSR1), SIGTERM after the grace, SIGKILL 30 s later, and leaves the REQUEUE
  marker: the job script requeues and the next attempt resumes;
- on a failure, writes the failing rank's own exception to `errors/rank-<N>.json` (torchrun's error file
  where the program wrote one, else the first traceback in the output that is not the launcher's wrapper);
- on a hang (SIGUSR2 from the watchdog), saves the program's stacks: `py-spy dump` where installed, else
  SIGABRT to the workers, whose faulthandler (enabled here by PYTHONFAULTHANDLER) prints every thread.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import glob
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hpcai.rundir.contract import ERRORS_DIR, REQUEUE_MARKER, STOP_FILE
from hpcai.runtime.api import read_pending_decision
from hpcai.runtime.heartbeat import VARIABLE as HEARTBEAT_VARIABLE
from hpcai.runtime.metrics_log import MetricsLog
from hpcai.runtime.outputparse import ProgressParser, RankException, find_exception, find_root_cause

KILL_AFTER_TERM_S = 30.0
TAIL_LINES = 2000  # output lines kept for finding the exception
GUESS_DELAY_S = 2.0  # how long a metric read from the program's own output waits for an exact one


def checkpoint_matches(run_dir: Path, pattern: str) -> list[Path]:
    """What the pattern matches under the run directory, never a link out of it."""
    matches = [Path(p) for p in glob.glob(str(run_dir / pattern))]
    return [p for p in matches if p.exists() and run_dir.resolve() in p.resolve().parents]


def newest_checkpoint(run_dir: Path, pattern: str) -> str | None:
    """The newest match of `pattern` under the run directory: by the last number in its name (checkpoint-500
    after checkpoint-90), then by modification time. None when nothing matches."""
    matches = checkpoint_matches(run_dir, pattern)

    def key(path: Path) -> tuple[int, float]:
        numbers = re.findall(r"\d+", path.name)
        return (int(numbers[-1]) if numbers else -1, path.stat().st_mtime)

    return str(max(matches, key=key)) if matches else None


def resume_checkpoint(run_dir: Path, pattern: str | None) -> str | None:
    """What `{checkpoint}` names: the checkpoint a pending rollback decided on (hpcai.runtime.api, the HF
    callback), else the newest match of the pattern."""
    if not pattern:
        return None
    plan = read_pending_decision(run_dir)
    if plan is not None:
        chosen = [p for p in checkpoint_matches(run_dir, pattern) if checkpoint_step(str(p)) == plan.checkpoint_step]
        if chosen:
            return str(chosen[0])
    return newest_checkpoint(run_dir, pattern)


def checkpoint_step(path: str | None) -> int:
    """The step in a checkpoint's name (checkpoint-500 -> 500), 0 when it names none."""
    numbers = re.findall(r"\d+", Path(path).name) if path else []
    return int(numbers[-1]) if numbers and len(numbers[-1]) <= 12 else 0


def resume_words(words: list[str], *, run_dir: Path, attempt: int, pattern: str | None) -> list[str]:
    """The resume arguments for this attempt, placeholders filled: on every attempt after the first, and on a
    first attempt that finds a checkpoint already there (a run `hpcai move` carried to this folder, or one
    `hpcai resume` started counting afresh). A word that needs `{checkpoint}` while none exists is left out
    with the option word before it."""
    if not words:
        return []
    checkpoint = resume_checkpoint(run_dir, pattern)
    if attempt <= 1 and checkpoint is None:
        return []
    out: list[str] = []
    for word in words:
        if "{checkpoint}" in word and checkpoint is None:
            if out and out[-1].startswith("-") and "{" not in out[-1]:
                out.pop()
            continue
        out.append(word.format(checkpoint=checkpoint or "", run_dir=str(run_dir), attempt=attempt))
    return out


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the supervisor dies (Linux prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


class Supervisor:
    def __init__(
        self,
        command: list[str],
        *,
        run_dir: Path,
        node_rank: int,
        launcher: str,
        pattern: re.Pattern[str] | None,
        stop_signal: str,
        grace_s: float,
        start_step: int = 0,
    ) -> None:
        self.command, self.run_dir, self.node_rank, self.launcher = command, run_dir, node_rank, launcher
        self.stop_signal = getattr(signal, f"SIG{stop_signal}")
        self.grace_s = grace_s
        self.parser = ProgressParser(pattern, start_step)
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.lock = threading.Lock()
        self.stop_requested = threading.Event()
        self.done = threading.Event()
        self.job = os.environ.get("HPCAI_JOB_ID", "job")
        self.attempt = os.environ.get("HPCAI_ATTEMPT", "0")
        self.metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=node_rank == 0)
        beats = os.environ.get(HEARTBEAT_VARIABLE)
        self.beat_path = Path(beats) / f"rank-{node_rank}.json" if beats else None
        self.last_progress: tuple[int, float] | None = None  # (step, monotonic time)
        self.step_s: float | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.guesses: collections.deque[tuple[float, dict[str, Any]]] = collections.deque()

    # -- heartbeat and metrics -------------------------------------------------------------------------
    def beat(self, phase: str) -> None:
        if self.beat_path is None:
            return
        step = self.last_progress[0] if self.last_progress else None
        record = {
            "pid": os.getpid(),
            "rank": self.node_rank,
            "local_rank": 0,
            "phase": phase,
            "step": step,
            "step_s": self.step_s,
            "time": time.time(),
            "mono": time.monotonic(),
        }
        with contextlib.suppress(OSError):
            self.beat_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.beat_path.with_name(f".{self.beat_path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(record))
            os.replace(tmp, self.beat_path)

    def on_line(self, line: str) -> None:
        with self.lock:
            self.tail.append(line)
            seen = self.parser.feed(line)
            now = time.monotonic()
            if seen is not None:
                if self.last_progress is not None and seen.step > self.last_progress[0]:
                    self.step_s = round(now - self.last_progress[1], 3)  # between observations: what the watchdog needs
                self.last_progress = (seen.step, now)
                record = {"step": seen.step, "loss": seen.loss, "grad_norm": seen.grad_norm, "lr": seen.lr,
                          "step_s": self.step_s}  # fmt: skip
                if seen.exact:
                    self.guesses.clear()  # the program's callback speaks: what was guessed meanwhile goes
                    self.metrics.write(**record)
                else:
                    self.guesses.append((now, record))
            self.flush_guesses(now - GUESS_DELAY_S)
            # Output is life, progress or not: the watchdog's limit then counts from the last line.
            self.beat("step" if self.last_progress else "setup")

    def flush_guesses(self, before: float) -> None:
        """Write the guessed observations older than `before` (a trainer prints its log dict just before
        the callback's exact line: a guess is held a moment so the exact one can replace it)."""
        while self.guesses and self.guesses[0][0] <= before:
            self.metrics.write(**self.guesses.popleft()[1])

    def pump(self, streams: dict[int, Any]) -> None:
        """Copy the program's stdout and stderr to ours as they come, and split them into lines (\\n or \\r,
        for tqdm) for on_line. One loop for both, stdout's data first at each wake-up: a trainer prints a
        step's loss (stdout) after its progress bar moved (stderr), so the bar's count is not read ahead of
        the loss line it belongs to (two threads would race)."""
        pending = {fd: b"" for fd in streams}
        open_fds = list(streams)
        while open_fds:
            ready, _, _ = select.select(open_fds, [], [])
            for fd in sorted(ready, key=open_fds.index):
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    open_fds.remove(fd)
                    if pending[fd]:
                        self.on_line(pending[fd].decode("utf-8", "replace"))
                    os.close(fd)
                    continue
                with contextlib.suppress(OSError, ValueError):
                    streams[fd].write(chunk)
                    streams[fd].flush()
                parts = re.split(rb"[\r\n]", pending[fd] + chunk)
                pending[fd] = parts.pop()[-65536:]
                for part in parts:
                    if part:
                        self.on_line(part.decode("utf-8", "replace"))

    # -- signals ---------------------------------------------------------------------------------------
    def workers(self) -> list[int]:
        """Who gets the stop signal: the program itself (python, srun) or the launcher's workers (accelerate,
        torchrun: the launcher would die of SIGUSR1 and leave its workers behind)."""
        if self.process is None:
            return []
        if self.launcher in ("accelerate", "torchrun"):
            return _children(self.process.pid) or [self.process.pid]
        return [self.process.pid]

    def signal_group(self, signum: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signum)

    def watch_stop(self) -> None:
        stop = self.run_dir / STOP_FILE
        while not self.done.wait(0.5):
            with self.lock:
                self.flush_guesses(time.monotonic() - GUESS_DELAY_S)
            if stop.exists() and not self.stop_requested.is_set():
                self.stop_requested.set()
                print(
                    f"hpcai: walltime is near: sending SIG{signal.Signals(self.stop_signal).name.removeprefix('SIG')} "
                    f"to the program; SIGTERM in {self.grace_s:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
                for pid in self.workers():
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, self.stop_signal)
                if self.done.wait(self.grace_s):
                    return
                self.signal_group(signal.SIGTERM)
                if self.done.wait(KILL_AFTER_TERM_S):
                    return
                self.signal_group(signal.SIGKILL)

    def dump_stacks(self) -> None:
        """The watchdog declared a hang: save where the program is."""
        stacks = self.run_dir / "stacks"
        stacks.mkdir(parents=True, exist_ok=True)
        targets = [pid for pid in self.workers() if pid]
        spy = shutil.which("py-spy")
        if spy is not None:
            for pid in targets:
                with (
                    contextlib.suppress(OSError, subprocess.SubprocessError),
                    open(stacks / f"{self.job}-node{self.node_rank}-pid{pid}.py-spy.txt", "w") as out,
                ):
                    subprocess.run([spy, "dump", "--pid", str(pid)], stdout=out, stderr=out, timeout=30)
            return
        for pid in targets:  # faulthandler (PYTHONFAULTHANDLER) prints every thread's stack, into the job log
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGABRT)

    # -- failure ---------------------------------------------------------------------------------------
    def record_exception(self) -> None:
        found = self._from_error_file()
        if found is None:
            with self.lock:
                lines = list(self.tail)
            found = find_exception(lines) or find_root_cause(lines)
        if found is None:
            return
        rank = found.rank if found.rank is not None else self.node_rank
        record = {
            "rank": rank,
            "host": socket.gethostname(),
            "job_id": self.job,
            "time": time.time(),
            "type": found.type,
            "message": found.message,
            "where": found.where,
            "source": "output",
        }
        folder = self.run_dir / ERRORS_DIR
        with contextlib.suppress(OSError):
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".rank-{rank}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(record) + "\n")
            os.replace(tmp, folder / f"rank-{rank}.json")

    def error_file(self) -> Path:
        return self.run_dir / ERRORS_DIR / f".torchelastic-{self.job}-a{self.attempt}-node{self.node_rank}.json"

    def _from_error_file(self) -> RankException | None:
        """torchrun's error file: written when the program's main is wrapped in `@record`."""
        try:
            data = json.loads(self.error_file().read_text()[:1_000_000])
            message = data["message"]
            text = message["message"] if isinstance(message, dict) else str(message)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        kind, _, rest = str(text).partition(": ")
        return RankException(None, kind.strip()[:200], rest.strip().splitlines()[0][:500] if rest.strip() else "", None)

    # -- run -------------------------------------------------------------------------------------------
    def run(self) -> int:
        env = {**os.environ}
        env.setdefault("PYTHONFAULTHANDLER", "1")
        env.setdefault("PYTHONUNBUFFERED", "1")  # progress lines as they happen, not when a buffer fills
        self.error_file().parent.mkdir(parents=True, exist_ok=True)
        env["TORCHELASTIC_ERROR_FILE"] = str(self.error_file())
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.beat("setup")
        self.process = subprocess.Popen(
            self.command, env=env, stdout=out_w, stderr=err_w, start_new_session=True, preexec_fn=_die_with_parent
        )
        os.close(out_w)
        os.close(err_w)

        def forward(signum: int, _frame: object) -> None:
            self.signal_group(signum)

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, forward)
        signal.signal(signal.SIGUSR2, lambda *_: threading.Thread(target=self.dump_stacks, daemon=True).start())
        streams = {out_r: sys.stdout.buffer, err_r: sys.stderr.buffer}
        pumps = [threading.Thread(target=self.pump, args=(streams,), daemon=True)]
        stopper = threading.Thread(target=self.watch_stop, daemon=True)
        for thread in [*pumps, stopper]:
            thread.start()
        returncode = self.process.wait()
        self.done.set()
        for thread in pumps:
            thread.join(timeout=10)
        self.signal_group(signal.SIGKILL)  # what the program left behind
        status = 128 - returncode if returncode < 0 else returncode
        if self.stop_requested.is_set():
            # Stopped for walltime: whatever the program's exit status, the next attempt resumes it.
            (self.run_dir / REQUEUE_MARKER).touch()
            print(
                f"hpcai: the program stopped (status {status}) for walltime; the job requeues it",
                file=sys.stderr,
                flush=True,
            )
        elif status != 0:
            self.record_exception()
        with self.lock:
            self.flush_guesses(float("inf"))
        self.beat("done")
        self.metrics.close()
        return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--node-rank", type=int, default=0)
    parser.add_argument("--launcher", default="python")
    parser.add_argument("--resume-arg", action="append", default=[], help="one word of the resume arguments")
    parser.add_argument("--checkpoint-pattern", default=None)
    parser.add_argument("--metrics-pattern", default=None)
    parser.add_argument("--stop-signal", default="USR1")
    parser.add_argument("--grace", type=float, default=120.0)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the launcher and the program's arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command after --")
    attempt = int(os.environ.get("HPCAI_ATTEMPT", "1") or 1) if os.environ.get("HPCAI_ATTEMPT", "").isdigit() else 1
    extra = resume_words(args.resume_arg, run_dir=args.run_dir, attempt=attempt, pattern=args.checkpoint_pattern)
    resumed = resume_checkpoint(args.run_dir, args.checkpoint_pattern) if extra else None
    if extra:
        print(f"hpcai: attempt {attempt}: resuming with {' '.join(extra)}", file=sys.stderr, flush=True)
    pattern = re.compile(args.metrics_pattern) if args.metrics_pattern else None
    supervisor = Supervisor(
        [*command, *extra],
        run_dir=args.run_dir,
        node_rank=args.node_rank,
        launcher=args.launcher,
        pattern=pattern,
        stop_signal=args.stop_signal,
        grace_s=args.grace,
        start_step=checkpoint_step(resumed),
    )
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
