"""The real `hpcai` entry point, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcai import __version__
from tests.conftest import REPO, run_cli

FIXED = ["--run-id", "cli-test"]


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"hpcai {__version__}"


def test_clusters_list_json_names_every_profile() -> None:
    result = run_cli("clusters", "list", "--json")
    names = {c["name"] for c in json.loads(result.stdout)}
    assert {"juwels-booster", "leonardo-booster", "lumi-g", "polaris", "local", "local-slurm"} <= names


def test_clusters_show_prints_limits_and_sources() -> None:
    result = run_cli("clusters", "show", "leonardo")
    assert result.returncode == 0
    for fragment in [
        "leonardo-booster",
        "boost_qos_lprod",
        "saldo -b",
        "https://",
        "step ssh login",
        "40 days",
    ]:
        assert fragment in result.stdout
    data = json.loads(run_cli("clusters", "show", "lumi-g", "--json").stdout)
    assert data["node"]["gpus"] == 8 and data["sources"]


def test_workloads_list_and_show() -> None:
    listed = json.loads(run_cli("workloads", "list", "--json").stdout)
    assert {w["name"] for w in listed} == {"llava", "clip", "envcheck"}
    shown = json.loads(run_cli("workloads", "show", "llava", "--json").stdout)
    assert set(shown["stages"]) == {"pretrain", "finetune"} and shown["accelerate"]["fsdp_version"] == 2
    assert "warmup" in shown["parameter_help"]["lr"] and "test hook" in shown["parameter_help"]["inject_nan_at"]
    human = run_cli("workloads", "show", "clip")
    assert "siglip" in human.stdout and "max_steps" in human.stdout and "what it does" in human.stdout
    # The fault injectors are kept apart from what a user sets for training.
    main_table, hooks = human.stdout.split("test hooks:")
    assert "inject_" not in main_table and "inject_spike_at" in hooks


def test_render_prints_and_writes_the_same_script(tmp_path: Path) -> None:
    printed = run_cli("render", "llava", "--cluster", "lumi-g", "-A", "project_1", "--nodes", "2", *FIXED)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.startswith("#!/bin/bash\n#SBATCH")
    out = tmp_path / "job.sh"
    written = run_cli(
        "render", "llava", "--cluster", "lumi-g", "-A", "project_1", "--nodes", "2", *FIXED, "-o", str(out)
    )
    assert written.returncode == 0 and written.stdout == ""
    assert out.read_text() == printed.stdout


def test_submit_dry_run_prints_exactly_what_render_prints() -> None:
    args = [
        "llava",
        "--cluster",
        "polaris",
        "-A",
        "proj",
        "--time",
        "00:45:00",
        "--env",
        "A=b c",
        "--set",
        "lr=1e-4",
        *FIXED,
    ]
    rendered = run_cli("render", *args)
    dry = run_cli("submit", *args, "--dry-run")
    assert rendered.returncode == dry.returncode == 0
    assert dry.stdout == rendered.stdout


def test_render_json_carries_script_and_resolved_job() -> None:
    data = json.loads(run_cli("render", "clip", "--cluster", "local", "--json", *FIXED).stdout)
    assert data["script"].startswith("#!/bin/bash") and data["job"]["processes_per_node"] == 2


def test_default_cluster_is_local() -> None:
    result = run_cli("render", "llava", *FIXED)
    assert result.returncode == 0 and "on local, run cli-test" in result.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["render", "llava", "--cluster", "juwels-booster"], "--account"),
        (["render", "lava"], "Did you mean 'llava'"),
        (["render", "llava", "--cluster", "lumi"], None),
        (["render", "llava", "--cluster", "lumi-g", "-A", "p", "--time", "3-00:00:00"], "--time"),
        (["render", "llava", "--cluster", "lumi-g", "-A", "p", "--nodes", "2000"], "--nodes"),
        (["render", "llava", "--cluster", "lumi-g", "-A", "p", "--gpus-per-node", "16"], "--gpus-per-node"),
        (["render", "llava", "--time", "1h"], "HH:MM:SS"),
        (["render", "llava", "--env", "oops"], "--env"),
        (["render", "llava", "--set", "nope=1"], "--set"),
        (["clusters", "show", "nowhere"], "unknown cluster"),
    ],
)
def test_bad_input_exits_2_with_one_paragraph_and_no_traceback(args: list[str], fragment: str | None) -> None:
    result = run_cli(*args)
    if fragment is None:  # the alias resolves, but LUMI wants an account
        fragment = "--account"
    assert result.returncode == 2, result.stdout
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert result.stderr.startswith("error:")


def test_malformed_user_profile_is_reported_by_file(isolated_hpcai: Path) -> None:
    clusters = isolated_hpcai / "config" / "clusters"
    clusters.mkdir(parents=True)
    (clusters / "mine.yaml").write_text("scheduler: slurm\n  bad indent: [\n")
    result = run_cli("clusters", "show", "mine")
    assert result.returncode == 2 and "mine.yaml" in result.stderr and "Traceback" not in result.stderr


def test_malformed_user_config_is_reported_by_file(isolated_hpcai: Path) -> None:
    config = isolated_hpcai / "config"
    config.mkdir(parents=True)
    (config / "config.toml").write_text("[clusters.lumi-g]\nacount = 'x'\n")
    result = run_cli("render", "llava", "--cluster", "lumi-g")
    assert result.returncode == 2 and "config.toml" in result.stderr and "'account'" in result.stderr


def test_account_and_default_cluster_come_from_user_config(isolated_hpcai: Path) -> None:
    config = isolated_hpcai / "config"
    config.mkdir(parents=True)
    (config / "config.toml").write_text(
        'default_cluster = "leonardo-booster"\n'
        '[clusters.leonardo-booster]\nuser = "jdoe0000"\naccount = "EUHPC_D17_084"\n'
    )
    result = run_cli("render", "llava", *FIXED)
    assert result.returncode == 0, result.stderr
    assert "#SBATCH --account=EUHPC_D17_084" in result.stdout


def test_help_does_not_import_the_training_stack(tmp_path: Path) -> None:
    """Fake torch/accelerate/transformers packages that record their import: the test fails whether or
    not the real ones are installed."""
    fake = tmp_path / "fake"
    marker = tmp_path / "imported"
    for name in ["torch", "accelerate", "transformers"]:
        pkg = fake / name
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'a').write({name!r} + '\\n')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
    for args in (["--help"], ["--version"], ["clusters", "list"], ["render", "llava", "--run-id", "x"]):
        proc = subprocess.run([sys.executable, "-m", "hpcai", *args], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), f"imported at CLI start-up: {marker.read_text()}"
    # The fakes are importable, so the check above can fail:
    subprocess.run([sys.executable, "-c", "import torch"], env=env, check=True)
    assert marker.read_text() == "torch\n"


@pytest.mark.slow
@pytest.mark.usefixtures("isolated_hpcai")
def test_the_demo_on_a_charged_allocation_needs_yes() -> None:
    """The toy defaults (tiny model, synthetic data) sent to 4 Leonardo nodes: said on a dry run, refused
    (exit 2, before any connection) without --yes; real data, or a cluster that charges nothing, pass."""
    demo = ["submit", "llava", "--cluster", "leonardo-booster", "--account", "ABC", "-N", "4"]
    dry = run_cli(*demo, "--dry-run")
    assert dry.returncode == 0 and "built-in demo" in dry.stderr and "--yes" in dry.stderr
    refused = run_cli(*demo)
    assert refused.returncode == 2 and "Nothing was submitted" in refused.stderr and "Traceback" not in refused.stderr
    staged = run_cli(*demo, "--stages", "pretrain,finetune")
    assert staged.returncode == 2 and "built-in demo" in staged.stderr
    real = run_cli(*demo, "--set", "data=/leonardo_work/ABC/llava", "--dry-run")
    assert real.returncode == 0 and "built-in demo" not in real.stderr
    yes = run_cli(*demo, "--yes", "--dry-run")
    assert yes.returncode == 0 and "built-in demo" not in yes.stderr
    free = run_cli("submit", "clip", "--cluster", "local-slurm", "--dry-run")
    assert free.returncode == 0 and "built-in demo" not in free.stderr


def test_run_ids_fit_on_one_line_in_an_80_column_terminal(isolated_hpcai: Path) -> None:
    """Every command takes a run id: `list` and `status` never fold it, whatever the terminal's width."""
    import time

    from hpcai.store.db import Run, Store

    run_id = "llava-finetune-20261207-104858-e61d"
    Store().create_run(Run(run_id, "llava", "local", None, str(isolated_hpcai / "r"), {}, time.time(), "COMPLETED"))
    for width in ("80", "100", "140"):
        for command in (["list"], ["status"]):
            shown = run_cli(*command, env={"COLUMNS": width})
            assert shown.returncode == 0, shown.stderr
            assert any(run_id in line for line in shown.stdout.splitlines()), (width, command, shown.stdout)
            assert max(len(line) for line in shown.stdout.splitlines()) <= int(width)


def test_the_cli_reference_in_the_docs_is_current(tmp_path: Path) -> None:
    """docs/reference/cli.md is generated from the typer app; a changed command must regenerate it:
    `typer hpcai.cli.app utils docs --name hpcai --output docs/reference/cli.md`."""
    out = tmp_path / "cli.md"
    subprocess.run([sys.executable, "-m", "typer", "hpcai.cli.app", "utils", "docs", "--name", "hpcai", "--output",
                    str(out)], check=True, capture_output=True)  # fmt: skip
    assert out.read_text() == (REPO / "docs" / "reference" / "cli.md").read_text(), "regenerate the CLI reference"
