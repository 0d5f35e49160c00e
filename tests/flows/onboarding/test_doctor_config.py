"""Doctor before any SSH: a missing or broken config is the first failure, with the command that fixes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli


def test_unconfigured_site_names_the_onboard_command_with_the_missing_answers() -> None:
    result = run_cli("doctor", "--cluster", "leonardo", "--json")
    assert result.returncode == 1, result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["config"]["status"] == "fail" and "no account" in checks["config"]["summary"]
    assert "hpcai onboard --cluster leonardo-booster --user <login name> --account <project>" in checks["config"]["fix"]
    assert {c["status"] for n, c in checks.items() if n != "config"} == {"skip"}


def test_a_malformed_config_file_is_reported_with_its_path(isolated_hpcai: Path) -> None:
    config = isolated_hpcai / "config" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[clusters.leonardo-booster\nuser = 'x'\n")
    result = run_cli("doctor", "--cluster", "leonardo", "--json")
    check = json.loads(result.stdout)["checks"][0]
    assert result.returncode == 1 and check["status"] == "fail" and str(config) in check["summary"]
    assert "malformed TOML" in check["summary"]


def test_the_local_cluster_passes_with_nothing_configured_and_says_so() -> None:
    # `local` runs jobs with this interpreter: its job-environment check passes only with the training stack.
    pytest.importorskip("torch", reason="the training stack is the `train` extra")
    result = run_cli("doctor", "--json")
    assert result.returncode == 0, result.stdout
    config = next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "config")
    assert config["status"] == "warn" and config["summary"].startswith("no ") and "hpcai onboard" in config["fix"]
    assert "all checks passed." in run_cli("doctor").stdout
