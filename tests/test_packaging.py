"""`pip install .` (a real wheel, not editable) ships templates, profiles and workload specs."""

from __future__ import annotations

import json
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_ships_and_finds_its_data(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("hpcai-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    # The dependencies come from the environment running the tests (a venv in CI, whose packages
    # system_site_packages would not see): a path-only .pth adds its site-packages *after* the new
    # venv's own, so `hpcai` is imported from the wheel and its editable finder is never activated.
    own_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(own_site, "test-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        capture_output=True,
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    hpcai = env_dir / "bin" / "hpcai"

    shown = subprocess.run([hpcai, "clusters", "show", "lumi-g", "--json"], cwd=outside, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    (profile_file,) = json.loads(shown.stdout)["files"]
    assert "site-packages/hpcai/_data/clusters" in profile_file

    workload = subprocess.run(
        [hpcai, "workloads", "show", "llava", "--json"], cwd=outside, capture_output=True, text=True
    )
    assert "site-packages/hpcai/_data/workloads/llava" in json.loads(workload.stdout)["directory"]

    script = subprocess.run(
        [hpcai, "render", "clip", "--cluster", "polaris", "-A", "p"],
        cwd=outside,
        capture_output=True,
        text=True,
    )
    assert script.returncode == 0 and script.stdout.startswith("#!/bin/bash\n#PBS")
