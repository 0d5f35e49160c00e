"""What a job sees on its node: Python, torch (FSDP2), accelerate, transformers, the GPUs. One JSON file per
node in the run directory (`envcheck-<rank>.json`), read back by `hpcai env check --job`. Standard
library plus what it checks."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import socket
import sys
from pathlib import Path


def report() -> dict[str, object]:
    out: dict[str, object] = {
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "problems": [],
    }
    problems: list[str] = out["problems"]  # type: ignore[assignment]
    for name in ("accelerate", "transformers"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{name} is not installed")
    try:
        import torch
    except Exception as exc:  # a wrong CUDA/ROCm stack fails here, not at install time
        problems.append(f"torch cannot be imported: {type(exc).__name__}: {exc}"[:300])
        return out
    out["torch"] = str(torch.__version__)
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401

        out["fsdp2"] = True
    except ImportError:
        out["fsdp2"] = False
        problems.append(f"torch {torch.__version__} has no FSDP2")
    out["backend"] = "rocm" if torch.version.hip else ("cuda" if torch.version.cuda else "cpu")
    try:
        count = torch.cuda.device_count()
        out["gpus"] = count
        out["gpu_names"] = sorted({torch.cuda.get_device_name(i) for i in range(count)})
    except Exception as exc:
        out["gpus"] = 0
        problems.append(f"asking for GPUs failed: {type(exc).__name__}: {exc}"[:300])
    out["visible_devices"] = {
        k: v
        for k, v in os.environ.items()
        if k in {"CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"}
    }
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--machine_rank", type=int, required=True)
    parser.add_argument("--num_machines", type=int, required=True)
    args = parser.parse_args()
    result = report()
    target = args.run_dir / f"envcheck-{args.machine_rank}.json"
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(target)
    print("envcheck", json.dumps(result), flush=True)
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
