"""The rendered job scripts of every Slurm site, at 1 and 4 nodes, with and without a container, pass
`sbatch --test-only` on a Slurm controller shaped like that site: its nodes (CPUs as Slurm counts them,
memory Slurm may allocate, GPUs as gres) and the profile's partitions with their walltime and node limits.

The controller is a second `slurmctld` beside the test Slurm (its own port and state), with the site's
nodes declared as CLOUD nodes (powered down, so none has to exist): Slurm's own parser and scheduler then
say whether the header's resources fit one of the site's nodes. Node shapes come from the sites' facts
(`../shared/notes/clusters.md`), not from the profiles, so a profile asking for more than a node has fails
here. Not checked: QOS names (they live in a site's accounting database, which this controller has not).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcai.spec.profiles import load_profile
from hpcai.spec.walltime import parse_walltime
from tests.render.test_script import CASES, render_case

# Each site's compute node as its Slurm declares it (facts with sources in ../shared/notes/clusters.md).
SHAPES = {
    # 2x AMD EPYC 7402, 24 cores each, SMT-2: Slurm counts 96 CPUs; 512 GB.
    "juwels-booster": "CPUs=96 Sockets=2 CoresPerSocket=24 ThreadsPerCore=2 RealMemory=512000 Gres=gpu:4",
    # 1x Xeon 8358, 32 cores; CINECA's template: 494000 MB per node may be allocated.
    "leonardo-booster": "CPUs=32 Sockets=1 CoresPerSocket=32 ThreadsPerCore=1 RealMemory=494000 Gres=gpu:4",
    # EPYC 7A53: 56 of 64 cores usable (low-noise mode), SMT-2; 480 GB of 512 allocatable; 8 GCDs.
    "lumi-g": "CPUs=112 Sockets=1 CoresPerSocket=56 ThreadsPerCore=2 RealMemory=491520 Gres=gpu:8",
    # 4x Grace, 72 cores each, no SMT; 4x 120 GB LPDDR5X.
    "jupiter-booster": "CPUs=288 Sockets=4 CoresPerSocket=72 ThreadsPerCore=1 RealMemory=480000 Gres=gpu:4",
    # 2x Xeon Platinum 8460Y+, 40 cores each; 512 GB.
    "marenostrum5-acc": "CPUs=80 Sockets=2 CoresPerSocket=40 ThreadsPerCore=1 RealMemory=512000 Gres=gpu:4",
    # Alps GH200: 4x Grace, 72 cores each; GPUs not requested (exclusive nodes), so none declared.
    "alps-clariden": "CPUs=288 Sockets=4 CoresPerSocket=72 ThreadsPerCore=1 RealMemory=480000",
}
# Options a site's own Slurm plugins add (CSCS's uenv SPANK plugin): a stock sbatch does not know them, so
# they are left out of what the site-shaped controller sees (the golden renders hold them).
PLUGIN_OPTIONS = ("#SBATCH --uenv=", "#SBATCH --view=")
PORT = 6917  # the test Slurm's controller listens on Slurm's default, 6817


def _slurm_time(text: str) -> str:
    seconds = parse_walltime(text, source="test")
    return f"{seconds // 86400}-{seconds % 86400 // 3600:02d}:{seconds % 3600 // 60:02d}:00"


def _config(site: str, root: Path) -> str:
    profile = load_profile(site)
    nodes = "site[001-008]"
    lines = [
        "ClusterName=siteshape",
        "SlurmctldHost=localhost",
        f"SlurmctldPort={PORT}",
        "SlurmUser=root",
        "AuthType=auth/munge",
        f"StateSaveLocation={root}/state",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmctldLogFile={root}/slurmctld.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "GresTypes=gpu",
        "MailProg=/bin/true",
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "SuspendProgram=/bin/true",  # CLOUD nodes: declared, powered down, scheduled as if they could start
        "ResumeProgram=/bin/true",
        f"NodeName={nodes} {SHAPES[site]} State=CLOUD",
    ]
    for part in profile.partitions:
        limit = f" MaxTime={_slurm_time(part.max_walltime)}" if part.max_walltime else ""
        lines.append(f"PartitionName={part.name} Nodes={nodes} MaxNodes={part.max_nodes}{limit} "
                     f"Default={'YES' if part.default else 'NO'} State=UP")  # fmt: skip
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def site_controller(slurm_cluster: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Start (and restart per site) a slurmctld shaped like a site; the test Slurm is up for munge."""
    if shutil.which("slurmctld") is None:
        pytest.skip("slurmctld is not installed (.ci/run installs it)")
    root = tmp_path_factory.mktemp("siteshape")
    current: dict[str, object] = {}

    def stop() -> None:
        conf = current.get("conf")
        if conf is None:
            return
        env = {**os.environ, "SLURM_CONF": str(conf)}
        subprocess.run(["scontrol", "shutdown"], env=env, capture_output=True, timeout=30)
        pid_file = root / "slurmctld.pid"
        deadline = time.monotonic() + 20
        while pid_file.exists() and time.monotonic() < deadline:
            try:
                os.kill(int(pid_file.read_text().strip() or 0), 0)
            except (ProcessLookupError, ValueError):
                break
            time.sleep(0.2)

    def start(site: str) -> dict[str, str]:
        if current.get("site") == site:
            return current["env"]  # type: ignore[return-value]
        stop()
        shutil.rmtree(root / "state", ignore_errors=True)
        (root / "state").mkdir()
        conf = root / f"{site}.conf"
        conf.write_text(_config(site, root))
        env = {**os.environ, "SLURM_CONF": str(conf)}
        subprocess.run(["slurmctld", "-i"], env=env, check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 30
        while subprocess.run(["scontrol", "ping"], env=env, capture_output=True, text=True).stdout.count("UP") == 0:
            assert time.monotonic() < deadline, (root / "slurmctld.log").read_text()[-2000:]
            time.sleep(0.3)
        current.update(site=site, conf=conf, env=env)
        return env

    yield start
    stop()


SLURM_CASES = sorted(name for name, (cluster, _, _) in CASES.items() if cluster in SHAPES)


def test_every_slurm_site_has_a_shape_and_cases_at_1_and_4_nodes() -> None:
    sites = {cluster for cluster, _, _ in CASES.values()} & set(SHAPES)
    assert sites == set(SHAPES)
    for site in SHAPES:
        names = [n for n in SLURM_CASES if CASES[n][0] == site]
        assert {"1n", "4n"} <= {n.split("-")[-1] for n in names} | {n.split("-")[-2] for n in names}, names


@pytest.mark.parametrize("name", SLURM_CASES)
def test_the_rendered_script_is_accepted_by_a_slurm_shaped_like_its_site(name: str, site_controller: object,
                                                                        tmp_path: Path) -> None:  # fmt: skip
    env = site_controller(CASES[name][0])  # type: ignore[operator]
    script = tmp_path / f"{name}.sh"
    script.write_text(
        "".join(ln for ln in render_case(name).splitlines(keepends=True) if not ln.startswith(PLUGIN_OPTIONS))
    )
    result = subprocess.run(["sbatch", "--test-only", str(script)], env=env, capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    said = result.stdout + result.stderr
    assert result.returncode == 0 and re.search(r"Job \d+ to start at", said), said


def test_a_header_asking_more_than_the_node_has_is_refused(site_controller: object, tmp_path: Path) -> None:
    """The check can fail: one CPU more than a JUPITER node has, or a partition the site lacks."""
    env = site_controller("jupiter-booster")  # type: ignore[operator]
    script = render_case("jupiter-booster-4n")
    for change, says in ((("--cpus-per-task=288", "--cpus-per-task=289"), "Requested node configuration"),
                         (("--partition=booster", "--partition=develbooster"), "invalid partition")):  # fmt: skip
        bad = tmp_path / "bad.sh"
        bad.write_text(script.replace(*change))
        result = subprocess.run(["sbatch", "--test-only", str(bad)], env=env, capture_output=True, text=True)
        assert result.returncode != 0 and says in result.stderr, result.stderr
