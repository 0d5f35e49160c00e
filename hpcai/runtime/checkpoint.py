"""Atomic, sharded checkpoints with exact resume.

A checkpoint is written to `checkpoints/.partial-step-N/`: every rank's shards (torch.distributed
.checkpoint) and RNG state, then -- after all ranks are done -- rank 0 writes the trainer state and the
`COMPLETE.json` marker, renames the folder to `step-N` and only then moves the `latest` pointer. A folder
without the marker is never loaded, so a job killed mid-save resumes from the previous checkpoint.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from hpcai.rundir.contract import LATEST_FILE

MARKER = "COMPLETE.json"
LATEST = LATEST_FILE
# What `latest` may name: a checkpoint folder directly inside checkpoints/, never a path that leaves it.
_STEP_NAME = re.compile(r"step-[0-9]+")


def _fsync_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fault_point(step: int, rank: int) -> None:
    """Test hook: HPCAI_FAULT_KILL_IN_SAVE=<step> SIGKILLs rank 0 with its shards written but before the
    marker -- the worst moment for a crash -- to prove that resume ignores the partial checkpoint."""
    if rank == 0 and os.environ.get("HPCAI_FAULT_KILL_IN_SAVE") == str(step):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def step_of(path: Path) -> int:
    return int(path.name.removeprefix("step-"))


class Checkpoints:
    def __init__(self, root: Path, *, keep: int, rank: int, world_size: int, barrier: Callable[[], None]) -> None:
        self.root = root
        self.keep = max(1, keep)
        self.rank = rank
        self.world_size = world_size
        self.barrier = barrier
        if rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            for stale in root.glob(".partial-step-*"):
                shutil.rmtree(stale, ignore_errors=True)
        barrier()

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        found = [
            p
            for p in self.root.glob("step-*")
            if _STEP_NAME.fullmatch(p.name) and not p.is_symlink() and p.is_dir() and (p / MARKER).is_file()
        ]
        return sorted(found, key=step_of)

    def latest(self) -> Path | None:
        pointer = self.root / LATEST
        if pointer.is_file():
            name = pointer.read_text(encoding="utf-8", errors="replace").strip()
            candidate = self.root / name
            if _STEP_NAME.fullmatch(name) and not candidate.is_symlink() and (candidate / MARKER).is_file():
                return candidate
        complete = self.complete()
        return complete[-1] if complete else None

    def save(
        self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, trainer: dict[str, Any]
    ) -> Path:
        final = self.root / f"step-{step:08d}"
        partial = self.root / f".partial-step-{step:08d}"
        if self.rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        self.barrier()
        model_state, optim_state = get_state_dict(model, optimizer)
        dcp_save({"model": model_state, "optim": optim_state}, checkpoint_id=str(partial / "shards"))
        torch.save(rng_state(), partial / f"rng-rank{self.rank}.pt")
        self.barrier()  # every rank's shards and RNG state are on disk
        _fault_point(step, self.rank)
        if self.rank == 0:
            torch.save(trainer, partial / "trainer.pt")
            # What `hpcai move` checks before carrying the checkpoint to another cluster: whose it is.
            marker = {"step": step, "world_size": self.world_size, "time": time.time(),
                      "workload": os.environ.get("HPCAI_WORKLOAD")}  # fmt: skip
            _fsync_write(partial / MARKER, json.dumps(marker) + "\n")
            if final.exists():
                shutil.rmtree(final)
            os.rename(partial, final)
            _fsync_write(self.root / LATEST, final.name + "\n")
            for old in self.complete()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.barrier()
        return final

    def load(self, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        if not (path / MARKER).is_file():
            raise RuntimeError(f"{path} is not a complete checkpoint (no {MARKER}); refusing to load it")
        model_state, optim_state = get_state_dict(model, optimizer)
        state: dict[str, Any] = {"model": model_state, "optim": optim_state}
        dcp_load(state, checkpoint_id=str(path / "shards"), planner=DefaultLoadPlanner(allow_partial_load=True))
        _require_every_weight(path / "shards", state["model"])
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        marker = json.loads((path / MARKER).read_text())
        rng_file = path / f"rng-rank{self.rank}.pt"
        if marker.get("world_size") == self.world_size and rng_file.is_file():
            set_rng_state(read_tensors(rng_file))
        trainer: dict[str, Any] = read_tensors(path / "trainer.pt")
        return trainer


def read_tensors(path: Path) -> Any:
    """A torch file from a run folder, which anyone in the project group may have written: tensors and
    plain containers only (`weights_only`), never an unpickled object that could run code."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise RuntimeError(
            f"{path} holds something other than tensors and plain values (refused: loading it could run code). "
            "If you did not put it there, someone else did; resume from another checkpoint."
        ) from exc


def _require_every_weight(shards: Path, model_state: dict[str, Any]) -> None:
    """A partial load is allowed for the optimizer (a part frozen now may have trained before), never for
    the model: a weight missing from the checkpoint would silently stay as initialised."""
    from torch.distributed.checkpoint.filesystem import FileSystemReader

    saved = FileSystemReader(str(shards)).read_metadata().state_dict_metadata
    missing = [name for name in model_state if f"model.{name}" not in saved]
    if missing:
        raise RuntimeError(
            f"{shards.parent} does not hold {len(missing)} of the model's weights (e.g. {missing[:3]}): it was "
            "saved from another model; start a new run, or resume with the model it was saved from"
        )
