from __future__ import annotations

import functools
import inspect
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REAL_CLUSTER_FIXTURES = {"slurm_cluster", "sshd", "slurm_multi"}


# What a test uses decides its tier (python -m pytest -q -m fast: seconds, `.[dev]` alone, no service):
#   real_cluster  the real test Slurm or sshd (one of REAL_CLUSTER_FIXTURES, by name or getfixturevalue)
#   training      the `train` extra: torch, accelerate, transformers or TRL, in the test or in a job it runs
#   slow          marked by hand: real processes against real timers (seconds to minutes)
#   fast          none of these
TRAINING_STACK = re.compile(r"""importorskip\(\s*["'](torch|accelerate|transformers|trl|datasets)\b""")
_RUNNING: list[pytest.Item] = []  # the test being set up, for the services' guard


def _needs_training(item: pytest.Item) -> bool:
    """The module asks for the training stack at its top (a module-level importorskip, in it or in a helper
    module it imports from tests), or the test function does."""
    module = getattr(item, "module", None)
    function = getattr(item, "function", None)
    if module is None or function is None:
        return False
    if _module_needs_training(module.__name__):
        return True
    try:
        return bool(TRAINING_STACK.search(inspect.getsource(function)))
    except (OSError, TypeError):
        return False


@functools.cache
def _module_needs_training(name: str) -> bool:
    module = sys.modules.get(name)
    if module is None or getattr(module, "__file__", None) is None:
        return False
    source = Path(module.__file__).read_text()
    if any(TRAINING_STACK.search(line) for line in source.splitlines() if not line.startswith((" ", "\t"))):
        return True
    helpers = re.findall(r"^from (tests(?:\.\w+)+) import", source, flags=re.MULTILINE)
    return any(_module_needs_training(h) for h in helpers if h != name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if REAL_CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_cluster)
        if _needs_training(item):
            item.add_marker(pytest.mark.training)
        if not any(item.get_closest_marker(m) for m in ("real_cluster", "training", "slow")):
            item.add_marker(pytest.mark.fast)


def pytest_runtest_setup(item: pytest.Item) -> None:
    _RUNNING[:] = [item]


def _only_for_real_cluster_tests(service: str) -> None:
    """The guard of the fast tier: a test that reaches the test Slurm or sshd without being marked for it
    (a fixture fetched by getfixturevalue, say) fails, instead of silently making the fast tier slow."""
    if _RUNNING and not _RUNNING[0].get_closest_marker("real_cluster"):
        pytest.fail(
            f"{_RUNNING[0].nodeid} starts the test {service} but is not marked real_cluster: request the "
            f"fixture by name (or mark it @pytest.mark.real_cluster) so the fast tier leaves it out."
        )


@pytest.fixture(autouse=True)
def isolated_hpcai(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own config and state directories, never the developer's."""
    root = tmp_path_factory.mktemp("hpcai")
    monkeypatch.setenv("HPCAI_CONFIG_DIR", str(root / "config"))
    monkeypatch.setenv("HPCAI_HOME", str(root / "state"))
    yield root


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60) -> CliResult:
    """Run the real `hpcai` entry point in a fresh interpreter, as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "hpcai", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        cwd=cwd,
        timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli() -> object:
    return run_cli


FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture
def probe_workload(isolated_hpcai: Path) -> str:
    """The probe workload and the test PBS profile, installed as the user's own."""
    import shutil

    config = isolated_hpcai / "config"
    shutil.copytree(FIXTURES / "workloads", config / "workloads", dirs_exist_ok=True)
    shutil.copytree(FIXTURES / "clusters", config / "clusters", dirs_exist_ok=True)
    return "probe"


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[str]:
    """The real Slurm (with slurmdbd and the PBS wrappers) that tests/infra/slurm.sh brings up, and stops
    again at the end of the session when this fixture started it."""
    if os.environ.get("HPCAI_SKIP_SLURM") == "1":
        pytest.skip("HPCAI_SKIP_SLURM=1: the Slurm tests were explicitly switched off")
    _only_for_real_cluster_tests("Slurm")
    script = REPO / "tests" / "infra" / "slurm.sh"
    started_here = subprocess.run([str(script), "status"], capture_output=True).returncode != 0
    if started_here:
        result = subprocess.run([str(script), "start"], capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"could not start the test Slurm:\n{result.stderr}"
    yield "local-slurm"
    if started_here and os.environ.get("HPCAI_KEEP_SLURM") != "1":
        subprocess.run([str(script), "stop"], capture_output=True, timeout=120)


@pytest.fixture(autouse=True)
def no_job_outlives_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test on the test Slurm leaves no job behind: one that failed mid-way (a run that never ended) would
    otherwise hold the nodes and every later test's job would wait until its own timeout (CI once lost five
    tests to one). Its jobs are cancelled, and the queue is empty, before the next test starts."""
    yield
    if "slurm_cluster" not in getattr(request, "fixturenames", ()):
        return
    import time

    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}  # the one-node test Slurm
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    queued = subprocess.run(["squeue", "-h", "-u", user, "-o", "%i %j %T"], capture_output=True, text=True, env=env)
    if queued.returncode != 0 or not queued.stdout.strip():
        return
    subprocess.run(["scancel", "-u", user], capture_output=True, env=env, timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        left = subprocess.run(["squeue", "-h", "-u", user], capture_output=True, text=True, env=env)
        if left.returncode == 0 and not left.stdout.strip():
            break
        time.sleep(0.5)
    sys.stderr.write(f"\n{request.node.nodeid} left jobs in the test Slurm, cancelled:\n{queued.stdout}")


MULTI = REPO / "tests" / "infra" / "slurm_multi.sh"


@pytest.fixture(scope="session")
def slurm_multi_cluster(slurm_cluster: str) -> Iterator[str]:
    """The multi-node test Slurm (tests/infra/slurm_multi.sh: 3 slurmd, each in a network namespace of its
    own) beside the one-node one; its slurm.conf path. Stopped at the end of the session."""
    import shutil

    if shutil.which("ip") is None or shutil.which("nsenter") is None:
        pytest.skip("the multi-node test Slurm needs `ip` (iproute2) and `nsenter` (util-linux): .ci/run installs them")
    probe = subprocess.run(["ip", "netns", "add", "hpcai-probe"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"network namespaces cannot be made here (the multi-node test Slurm needs them): {probe.stderr}")
    subprocess.run(["ip", "netns", "del", "hpcai-probe"], capture_output=True)
    result = subprocess.run([str(MULTI), "start"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"could not start the multi-node test Slurm:\n{result.stderr}"
    yield subprocess.run([str(MULTI), "conf"], capture_output=True, text=True, check=True).stdout.strip()
    if os.environ.get("HPCAI_KEEP_SLURM") != "1":
        subprocess.run([str(MULTI), "stop"], capture_output=True, timeout=120)


@pytest.fixture
def slurm_multi(slurm_multi_cluster: str, isolated_hpcai: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This test talks to the multi-node Slurm (SLURM_CONF) through the `local-slurm-multi` profile; nodes a
    test killed are started again afterwards."""
    import shutil

    monkeypatch.setenv("SLURM_CONF", slurm_multi_cluster)
    clusters = isolated_hpcai / "config" / "clusters"
    clusters.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / "multi" / "local-slurm-multi.yaml", clusters)
    yield "local-slurm-multi"
    subprocess.run([str(MULTI), "start"], capture_output=True, timeout=300)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real sshd on 127.0.0.1 (tests/infra/sshd.sh): throwaway keys, strict known_hosts, a user CA."""
    import socket

    _only_for_real_cluster_tests("sshd")
    directory = tmp_path_factory.mktemp("sshd")
    script = REPO / "tests" / "infra" / "sshd.sh"
    if "HPCAI_SSHD_PORT" not in os.environ:
        with socket.socket() as probe:  # a free port, so a developer's own sshd on 2222 does not clash
            probe.bind(("127.0.0.1", 0))
            os.environ["HPCAI_SSHD_PORT"] = str(probe.getsockname()[1])
    env = dict(os.environ)
    result = subprocess.run(
        [str(script), "start", str(directory)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, f"could not start the test sshd:\n{result.stderr}"
    yield directory
    subprocess.run([str(script), "stop", str(directory)], capture_output=True, env=env, timeout=60)


@pytest.fixture(scope="session")
def tiny_sft(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2-shaped causal LM folder (its own BPE tokenizer) and a folder of JSONL text, made here
    (nothing downloads): what the third-party training programs under test (TRL, HF Trainer) train."""
    import json

    pytest.importorskip("transformers", reason="the `train` extra")
    from hpcai.train.parts import build_lm, corpus

    root = tmp_path_factory.mktemp("sft")
    build_lm(root / "model", "qwen2", corpus(0, 400), 0, pretrain_steps=0)
    (root / "data").mkdir()
    with open(root / "data" / "train.jsonl", "w") as out:
        for text in corpus(1, 400):
            out.write(json.dumps({"text": text}) + "\n")
    return root
