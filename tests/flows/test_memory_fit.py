"""Before queueing, a LLaVA job is sized against the profile's GPU memory (issue 28): a 7B finetune on
Leonardo without activation checkpointing is refused with what makes it fit (exit 2, nothing queued);
left to the default, checkpointing is turned on and said; `--dry-run` shows the estimate."""

from __future__ import annotations

import json

from tests.conftest import run_cli

SEVEN_B = ("submit", "llava", "--cluster", "leonardo", "--stage", "finetune", "-N", "16", "-A", "EUHPC_D17_084",
           "--set", "preset=clip-l336-vicuna-7b", "--dry-run")  # fmt: skip


def test_a_7b_finetune_without_checkpointing_is_refused_before_queueing() -> None:
    refused = run_cli(*SEVEN_B, "--set", "activation_checkpointing=false")
    assert refused.returncode == 2, refused.stdout
    message = " ".join(refused.stderr.split())
    assert "memory: the job needs about 6" in message and "GiB per GPU" in message
    assert "64 GB GPU on leonardo-booster" in message and "checkpointing off" in message
    assert "It fits with --set activation_checkpointing=true" in message and "Nothing was queued" in message
    assert "Traceback" not in refused.stderr


def test_left_to_the_default_checkpointing_is_turned_on_and_said() -> None:
    planned = run_cli(*SEVEN_B, "--json")
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    assert plan["job"]["parameters"]["activation_checkpointing"] is True
    assert "--activation_checkpointing true" in plan["script"]
    assert plan["memory"]["total_gib"] < 0.92 * 64 and plan["memory"]["ranks"] == 64
    assert "activation checkpointing turned on" in " ".join(planned.stderr.split())


def test_a_job_that_fits_is_left_as_it_is_and_its_estimate_shown() -> None:
    shown = run_cli("submit", "llava", "--cluster", "leonardo", "-A", "EUHPC_D17_084", "--dry-run",
                    "--set", "preset=clip-l336-qwen2-0.5b", "--yes")  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "memory: " in shown.stderr and "checkpointing off" in shown.stderr and "warning" not in shown.stderr
