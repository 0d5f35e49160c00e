"""`clusters list` remembers what it validated: the same listing without pydantic at the next start,
and a changed or broken profile is validated again (and refused as before)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from hpcai.spec.profiles import load_all_profiles
from tests.conftest import REPO, run_cli

PROBE = (
    "import sys, json; from hpcai.spec.profile_index import profile_summaries; "
    "s = profile_summaries(); "
    "print(json.dumps({'pydantic': 'pydantic' in sys.modules, 'names': [x['name'] for x in s]}))"
)


def probe() -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    result: dict[str, object] = json.loads(out)
    return result


def test_the_listing_is_validated_once_and_then_read_without_pydantic(isolated_hpcai: Path) -> None:
    first = run_cli("clusters", "list", "--json")
    assert first.returncode == 0, first.stderr
    listed = json.loads(first.stdout)
    profiles = load_all_profiles()
    assert [row["name"] for row in listed] == list(profiles)
    assert all(row["scheduler"] == profiles[row["name"]].scheduler for row in listed)
    assert probe() == {"pydantic": False, "names": list(profiles)}  # remembered: no validation, no pydantic

    # a new user profile is validated (pydantic again) and listed; a broken one fails as before
    user = isolated_hpcai / "config" / "clusters"
    user.mkdir(parents=True)
    local = yaml.safe_load((REPO / "clusters" / "local.yaml").read_text())
    local["description"] = "my laptop"
    (user / "mine.yaml").write_text(yaml.safe_dump(local))
    seen = probe()
    assert seen["pydantic"] is True and "mine" in seen["names"]  # type: ignore[operator]
    assert probe()["pydantic"] is False
    rows = json.loads(run_cli("clusters", "list", "--json").stdout)
    assert next(r for r in rows if r["name"] == "mine")["description"] == "my laptop"
    local["scheduler"] = "nonsense"
    (user / "mine.yaml").write_text(yaml.safe_dump(local) + "\n")  # another size: looked at again
    broken = run_cli("clusters", "list")
    assert broken.returncode == 2 and "mine.yaml" in broken.stderr and "scheduler" in broken.stderr
    assert "Traceback" not in broken.stderr
    (user / "mine.yaml").unlink()
    assert "mine" not in probe()["names"]  # type: ignore[operator]
    # a damaged cache is rebuilt, not trusted
    cache = isolated_hpcai / "state" / "profile-index.json"
    assert cache.is_file()
    cache.write_text("{not json")
    assert run_cli("clusters", "list", "--json").returncode == 0
