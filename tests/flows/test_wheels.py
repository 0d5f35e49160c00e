"""Job environments without the package index on the login node, or for another platform (issue 31, item 2):
what the cluster's Python lacks, wheels downloaded here for the cluster's platform, an offline install;
then `hpcai env build` end to end over SSH on a test site whose profile says it has no index."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hpcai.backends.transport.local import LocalTransport
from hpcai.errors import EnvironmentFailure
from hpcai.flows.wheels import download_wheels, index_reachable, missing_on_cluster
from hpcai.render.setup import build_script
from hpcai.spec.jobenv import JobEnv
from hpcai.spec.profiles import load_profile
from tests.conftest import run_cli
from tests.site import SITE, install_site_commands, user, user_ssh_config, write_site_profile

ACCOUNT = "EUHPC_D17_084"


def _profile(**environment: object):  # type: ignore[no-untyped-def]
    profile = load_profile("local-slurm")
    launch = profile.launch.model_copy(update={"python": sys.executable})
    env = profile.environment.model_copy(update={"default": "venv", **environment})
    return profile.model_copy(update={"launch": launch, "environment": env})


def test_an_offline_build_installs_from_the_staged_wheels_alone(tmp_path: Path) -> None:
    profile = _profile(internet=False, pip_index="https://download.pytorch.org/whl/cu128")
    env = JobEnv(kind="venv", python=f"{tmp_path}/env/bin/python", home=f"{tmp_path}/env", env_id="py3-x",
                 requirements=("torch==2.13.0", "accelerate>=1.0"))  # fmt: skip
    script = build_script(profile, env, rebuild=False, find_links="/work/store/trees/abc")
    install = [line for line in script.splitlines() if " pip install " in line]
    assert len(install) == 1 and "--no-index --find-links /work/store/trees/abc" in install[0]
    assert "--extra-index-url" not in script  # never the network, not even the extra index
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    if shutil.which("shellcheck"):
        checked = subprocess.run(["shellcheck", "-s", "bash", "-"], input=script, capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout
    online = build_script(profile, env, rebuild=False)
    assert "--no-index" not in online and "--extra-index-url" in online


def test_only_what_the_clusters_python_lacks_is_downloaded() -> None:
    profile = _profile()
    env = JobEnv(kind="venv", python="x", home="/x", env_id="py3-x",
                 requirements=("pytest>=7", "pyyaml>=999", "hpcai-surely-not-a-package==1.0"))  # fmt: skip
    assert missing_on_cluster(LocalTransport(), profile, env) == ["pyyaml>=999", "hpcai-surely-not-a-package==1.0"]
    # In a container (the image's Python is not asked here) every requirement is fetched.
    boxed = JobEnv(kind="container", python="python", image="/x.sif", home="/x.sqsh", requirements=env.requirements)
    assert missing_on_cluster(LocalTransport(), profile, boxed) == list(env.requirements)


@pytest.mark.slow  # it reaches the package index: not in the offline fast tier
def test_wheels_for_another_platform_are_downloaded_here(tmp_path: Path) -> None:
    """An aarch64 cluster (JUPITER's GH200 nodes) from this x86_64 machine: PyYAML's compiled wheel for
    aarch64 and CPython 3.11, from the package index."""
    reach = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(tmp_path / "probe"),
                            "six==1.16.0"], capture_output=True, text=True, timeout=120)  # fmt: skip
    if reach.returncode != 0:
        pytest.skip(f"the package index cannot be reached from here: {reach.stderr.strip()[-200:]}")
    profile = _profile(platform="manylinux2014_aarch64", python_version="3.11")
    wheels = download_wheels(["PyYAML==6.0.2"], tmp_path / "wheels", profile)
    assert wheels == ["PyYAML-6.0.2-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"]
    with pytest.raises(EnvironmentFailure, match="without a wheel for the cluster's platform"):
        download_wheels(["hpcai-surely-not-a-package==1.0"], tmp_path / "none", profile)


@pytest.mark.usefixtures("slurm_cluster")
def test_env_build_without_an_index_on_the_login_node_over_ssh(
    sshd: Path, probe_workload: str, isolated_hpcai: Path, tmp_path: Path
) -> None:
    """The site's profile says its login node has no package index: env build asks the cluster what its
    Python lacks -- nothing: the test site's Python has the training stack -- so nothing is downloaded or
    staged and pip does not run there; the environment then passes its check."""
    root = tmp_path / "site"
    offline = {"environment": {"default": "venv", "filesystem": "work", "internet": False}}
    write_site_profile(isolated_hpcai / "config", root, extra=offline)
    install_site_commands(sshd, root, ACCOUNT)
    env = {"HPCAI_SSH_CONFIG": str(user_ssh_config(tmp_path, sshd / "known_hosts")), "SSH_AUTH_SOCK": ""}
    onboarded = run_cli("onboard", "-c", SITE, "-u", user(), "-A", ACCOUNT, "-i", str(sshd / "id_ed25519"),
                        "--make-default", "--yes", "--no-doctor", env=env)  # fmt: skip
    assert onboarded.returncode == 0, onboarded.stderr
    built = run_cli("env", "build", "--json", env=env, timeout=600)
    assert built.returncode == 0, built.stderr
    result = json.loads(built.stdout)
    assert result["state"] == "built" and result["check"]["ok"]
    assert result["offline"] == {"missing": [], "wheels": [], "staged": None, "platform": None}


def test_whether_the_login_nodes_pip_reaches_its_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pip as the site configures it (here: an index served on this machine, then one that is down)."""
    import functools
    import http.server
    import threading

    page = tmp_path / "simple" / "pip"
    page.mkdir(parents=True)
    (page / "index.html").write_text('<a href="pip-24.0-py3-none-any.whl">pip-24.0-py3-none-any.whl</a>\n')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    for name in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"):
        monkeypatch.delenv(name, raising=False)
    try:
        monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple")
        assert index_reachable(LocalTransport(), _profile()) is True
        monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens there
        assert index_reachable(LocalTransport(), _profile()) is False
    finally:
        server.shutdown()
