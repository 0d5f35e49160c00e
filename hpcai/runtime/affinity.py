"""Bind each training process to the CPUs nearest its GPU.

accelerate starts one launcher per node, which forks one process per GPU, so the scheduler's per-task CPU
masks (LUMI's one-rank-per-GCD `--cpu-bind=mask_cpu:...`, ALCF's `--cpu-bind list:...`) cannot reach the
workers. The job script exports the site's per-GPU lists as HPCAI_CPU_BIND (`24-31,56-63:16-23,48-55:...`,
local rank by local rank, the format ALCF's Parsl examples use); each process binds itself here, before
torch starts its thread pools, and sizes them to its share.
"""

from __future__ import annotations

import os

VARIABLE = "HPCAI_CPU_BIND"


def parse_cpu_list(text: str) -> set[int]:
    """`0-3,8` -> {0, 1, 2, 3, 8}."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def cpus_for(spec: str, local_rank: int) -> set[int]:
    groups = [g for g in spec.split(":") if g]
    return parse_cpu_list(groups[local_rank % len(groups)])


def bind_to_gpu_cpus(environ: dict[str, str] | None = None) -> set[int] | None:
    """Bind this process as HPCAI_CPU_BIND says for its LOCAL_RANK; returns the CPUs, None when unset.
    CPUs the task may not use (outside its allocation) are dropped; if none is left, nothing changes."""
    env = os.environ if environ is None else environ
    spec = env.get(VARIABLE, "")
    if not spec:
        return None
    wanted = cpus_for(spec, int(env.get("LOCAL_RANK", "0")))
    chosen = wanted & os.sched_getaffinity(0)
    if not chosen:
        return None
    os.sched_setaffinity(0, chosen)
    import torch

    torch.set_num_threads(len(chosen))
    return chosen
