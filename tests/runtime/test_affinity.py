"""Each training process binds itself to its GPU's CPUs (HPCAI_CPU_BIND, local rank by local rank)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hpcai.runtime.affinity import cpus_for, parse_cpu_list


def test_cpu_lists_parse_as_the_sites_write_them() -> None:
    assert parse_cpu_list("0-3,8") == {0, 1, 2, 3, 8}
    polaris = "24-31,56-63:16-23,48-55:8-15,40-47:0-7,32-39"
    assert cpus_for(polaris, 0) == set(range(24, 32)) | set(range(56, 64))
    assert cpus_for(polaris, 3) == set(range(0, 8)) | set(range(32, 40))
    assert cpus_for(polaris, 5) == cpus_for(polaris, 1)  # more ranks than lists: round robin


_CHILD = """
import json, os
from hpcai.runtime.affinity import bind_to_gpu_cpus
import torch
bound = bind_to_gpu_cpus()
print(json.dumps({"bound": sorted(bound) if bound else None, "now": sorted(os.sched_getaffinity(0)),
                  "threads": torch.get_num_threads()}))
"""


def _child(**env: str) -> dict[str, object]:
    environ = {k: v for k, v in os.environ.items() if k not in {"HPCAI_CPU_BIND", "LOCAL_RANK"}} | env
    out = subprocess.run([sys.executable, "-c", _CHILD], env=environ, capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to tell the ranks apart")
def test_a_process_binds_to_its_local_ranks_cpus_and_sizes_its_threads() -> None:
    pytest.importorskip("torch", reason="the training stack is the `train` extra")
    first, second = sorted(os.sched_getaffinity(0))[:2]
    spec = f"{first}:{second}"
    assert _child(HPCAI_CPU_BIND=spec, LOCAL_RANK="0") == {"bound": [first], "now": [first], "threads": 1}
    assert _child(HPCAI_CPU_BIND=spec, LOCAL_RANK="1") == {"bound": [second], "now": [second], "threads": 1}
    # CPUs outside the task's allocation are never taken; none left means no change.
    unbound = _child(HPCAI_CPU_BIND="4000-4001", LOCAL_RANK="0")
    assert unbound["bound"] is None and unbound["now"] == sorted(os.sched_getaffinity(0))
    assert _child()["bound"] is None
