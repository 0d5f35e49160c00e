"""SSH as HPC users need it, against a real sshd on 127.0.0.1: strict host keys, certificates, config
aliases, ProxyJump, reconnect after a drop, and the whole remote submit -> status -> logs -f -> cancel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hpcai.backends.session import Session
from hpcai.backends.transport.ssh import SshTransport
from hpcai.backends.transport.ssh_config import SshError
from hpcai.store.db import Store
from tests.conftest import REPO
from tests.helpers import submit_probe, wait_for, wait_terminal


def ssh_config(tmp_path: Path, sshd: Path, *, known_hosts: Path | None = None, identity: Path | None = None) -> Path:
    port = os.environ.get("HPCAI_SSHD_PORT", "2222")
    path = tmp_path / "ssh_config"
    path.write_text(
        f"""Host hpcai-test
  HostName 127.0.0.1
  Port {port}
  User {os.environ.get("USER", "root")}
  IdentityFile {identity or sshd / "id_ed25519"}
  IdentitiesOnly yes
  UserKnownHostsFile {known_hosts or sshd / "known_hosts"}

Host hpcai-behind-jump
  HostName 127.0.0.1
  Port {port}
  User {os.environ.get("USER", "root")}
  IdentityFile {identity or sshd / "id_ed25519"}
  UserKnownHostsFile {known_hosts or sshd / "known_hosts"}
  ProxyJump hpcai-test
"""
    )
    return path


def reach_over_ssh(monkeypatch: pytest.MonkeyPatch, sshd: Path, tmp_path: Path, hpcai_home: Path, cluster: str) -> Path:
    """hpcai on this "laptop" reaches `cluster` through the test sshd (its config.toml names the host);
    returns the SSH config used."""
    config = ssh_config(tmp_path, sshd)
    monkeypatch.setenv("HPCAI_SSH_CONFIG", str(config))
    (hpcai_home / "config").mkdir(parents=True, exist_ok=True)
    (hpcai_home / "config" / "config.toml").write_text(f'[clusters.{cluster}]\nssh_host = "hpcai-test"\n')
    return config


def fingerprint_of(pub: Path) -> str:
    return subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout.split()[1]


def test_commands_and_files_over_one_reused_connection(sshd: Path, tmp_path: Path) -> None:
    transport = SshTransport("hpcai-test", config_path=ssh_config(tmp_path, sshd))
    result = transport.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    target = str(tmp_path / "remote" / "dir" / "file.txt")
    transport.makedirs(str(tmp_path / "remote" / "dir"))
    transport.write_text(target, "hello\nworld\n", mode=0o600)
    assert Path(target).read_text() == "hello\nworld\n" and oct(Path(target).stat().st_mode & 0o777) == "0o600"
    assert transport.read_text(target) == "hello\nworld\n" and transport.read_from(target, 6) == b"world\n"
    assert transport.tail(target, 3) == b"ld\n" and transport.list_dir(str(tmp_path / "remote" / "dir")) == ["file.txt"]
    assert transport.read_text(str(tmp_path / "missing")) is None and not transport.exists(str(tmp_path / "missing"))
    assert transport.connects == 1
    transport.close()


def test_a_changed_host_key_is_refused_with_both_fingerprints(sshd: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    port = os.environ.get("HPCAI_SSHD_PORT", "2222")
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {' '.join(Path(str(other) + '.pub').read_text().split()[:2])}\n")
    transport = SshTransport("hpcai-test", config_path=ssh_config(tmp_path, sshd, known_hosts=known))
    with pytest.raises(SshError) as err:
        transport.run(["true"])
    message = str(err.value)
    assert "CHANGED" in message and fingerprint_of(sshd / "host_ed25519.pub") in message
    assert fingerprint_of(Path(str(other) + ".pub")) in message and "ssh-keygen -R" in message


def test_an_unknown_host_is_refused_with_its_fingerprint_and_nothing_is_accepted(sshd: Path, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    transport = SshTransport("hpcai-test", config_path=ssh_config(tmp_path, sshd, known_hosts=known))
    with pytest.raises(SshError) as err:
        transport.run(["true"])
    assert "not in known_hosts" in str(err.value) and fingerprint_of(sshd / "host_ed25519.pub") in str(err.value)
    assert known.read_text() == ""  # never written


def _signed_key(sshd: Path, tmp_path: Path, validity: str) -> Path:
    key = tmp_path / "certkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    user = os.environ.get("USER", "root")
    subprocess.run(
        [
            "ssh-keygen",
            "-q",
            "-s",
            str(sshd / "ca"),
            "-I",
            "leonardo-2fa",
            "-n",
            user,
            "-V",
            validity,
            str(key) + ".pub",
        ],
        check=True,
    )
    return key


def test_an_expired_certificate_is_reported_with_how_to_renew(sshd: Path, tmp_path: Path) -> None:
    key = _signed_key(sshd, tmp_path, "-2h:-1h")
    hint = "Each day: `step ssh login '<email>' --provisioner cineca-hpc`."
    transport = SshTransport(
        "hpcai-test", config_path=ssh_config(tmp_path, sshd, identity=key), renew_hint=hint, certificates_required=True
    )
    with pytest.raises(SshError) as err:
        transport.run(["true"])
    assert "certificate 'leonardo-2fa' expired" in str(err.value) and "step ssh login" in str(err.value)


def test_a_valid_certificate_logs_in_without_an_authorized_key(sshd: Path, tmp_path: Path) -> None:
    key = _signed_key(sshd, tmp_path, "-5m:+1h")  # the key itself is in no authorized_keys: only the CA is trusted
    transport = SshTransport("hpcai-test", config_path=ssh_config(tmp_path, sshd, identity=key))
    assert transport.run(["echo", "certified"]).stdout == "certified\n"


def test_proxyjump_reaches_the_host_through_the_jump(sshd: Path, tmp_path: Path) -> None:
    transport = SshTransport("hpcai-behind-jump", config_path=ssh_config(tmp_path, sshd))
    assert transport.run(["echo", "through the jump"]).stdout == "through the jump\n"
    assert transport._jump is not None and transport._jump.connects == 1


def test_a_dropped_connection_is_reestablished_but_sbatch_is_never_repeated(sshd: Path, tmp_path: Path) -> None:
    transport = SshTransport("hpcai-test", config_path=ssh_config(tmp_path, sshd), backoff_s=0.05)
    assert transport.run(["true"]).ok
    assert transport._client is not None
    transport._client.get_transport().sock.close()  # type: ignore[union-attr]  # the link drops
    assert transport.run(["echo", "again"]).stdout == "again\n"
    assert transport.connects == 2

    # A link seen dead before anything was sent: a fresh login is safe even for a command that must not repeat.
    client_transport = transport._client.get_transport()  # type: ignore[union-attr]
    client_transport.sock.close()  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while client_transport.is_active() and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.01)
    assert transport.run(["echo", "fresh"], idempotent=False).stdout == "fresh\n"
    assert transport.connects == 3

    # The link drops while the command runs: it may have done its work, so it is not sent again.
    marker = tmp_path / "submitted"
    running = transport._client.get_transport()  # type: ignore[union-attr]
    threading.Timer(0.5, running.sock.close).start()  # type: ignore[union-attr]
    with pytest.raises(SshError, match="not repeated"):
        transport.run(["sh", "-c", f"echo once >> {marker}; sleep 3"], idempotent=False)
    assert marker.read_text() == "once\n"
    assert transport.connects == 3


def test_remote_submit_status_logs_follow_and_cancel(
    sshd: Path,
    slurm_cluster: str,
    probe_workload: str,
    isolated_hpcai: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reach_over_ssh(monkeypatch, sshd, tmp_path, isolated_hpcai, slurm_cluster)
    store = Store()
    run_id = submit_probe(store, slurm_cluster, lines=600, interval=0.1)
    backends = Session()
    assert isinstance(backends.get(slurm_cluster).transport, SshTransport)
    wait_for(store, run_id, {"RUNNING"})
    follow = subprocess.Popen(
        [sys.executable, "-m", "hpcai", "logs", run_id, "-f"], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert follow.stdout is not None
    first = [follow.stdout.readline() for _ in range(3)]
    assert first == [f"probe rank 0 line {i}\n" for i in range(3)]
    cancelled = subprocess.run(
        [sys.executable, "-m", "hpcai", "cancel", run_id], capture_output=True, text=True, cwd=REPO
    )
    assert cancelled.returncode == 0, cancelled.stderr
    follow.wait(timeout=60)
    assert follow.returncode == 0
    assert wait_terminal(store, run_id, timeout=60).state == "CANCELLED"
    log = (sshd / "sshd.log").read_text()
    assert "Accepted publickey" in log
    shutil.rmtree(tmp_path / "unused", ignore_errors=True)


def _known_hosts(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "known_hosts_variant"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_known_hosts_with_markers_and_bad_lines_still_reaches_other_hosts(sshd: Path, tmp_path: Path) -> None:
    plain = (sshd / "known_hosts").read_text().strip()
    other_ca = (sshd / "id_ed25519.pub").read_text().split()[:2]
    known = _known_hosts(
        tmp_path,
        "# a comment",
        f"@cert-authority *.example.org {' '.join(other_ca)}",
        f"@revoked other.example.org {' '.join(other_ca)}",
        "garbage line that is not a key",
        "host.example.org ssh-ed25519 !!notbase64!!",
        plain,
    )
    transport = SshTransport("hpcai-test", config_path=ssh_config(tmp_path, sshd, known_hosts=known))
    assert transport.run(["echo", "ok"]).stdout == "ok\n"


def test_a_host_certificate_signed_by_a_trusted_ca_is_accepted(sshd: Path, tmp_path: Path) -> None:
    port = os.environ.get("HPCAI_SSHD_PORT", "2222")
    ca = " ".join((sshd / "ca.pub").read_text().split()[:2])
    known = _known_hosts(tmp_path, f"@cert-authority [127.0.0.1]:{port},*.example.org {ca}")
    transport = SshTransport("hpcai-test", config_path=ssh_config(tmp_path, sshd, known_hosts=known))
    assert transport.run(["echo", "ok"]).stdout == "ok\n"
    # The same line naming other hosts only, or another CA for this host: refused with the reason.
    elsewhere = _known_hosts(tmp_path, f"@cert-authority *.example.org {ca}")
    with pytest.raises(SshError, match="not in known_hosts"):
        SshTransport("hpcai-test", config_path=ssh_config(tmp_path, sshd, known_hosts=elsewhere)).run(["true"])
    wrong_ca = " ".join((sshd / "id_ed25519.pub").read_text().split()[:2])
    wrong = _known_hosts(tmp_path, f"@cert-authority [127.0.0.1]:{port} {wrong_ca}")
    with pytest.raises(SshError, match="signed by a CA that known_hosts does not trust"):
        SshTransport("hpcai-test", config_path=ssh_config(tmp_path, sshd, known_hosts=wrong)).run(["true"])


def test_a_revoked_host_key_is_refused(sshd: Path, tmp_path: Path) -> None:
    plain = (sshd / "known_hosts").read_text().strip()
    host_key = " ".join((sshd / "host_ed25519.pub").read_text().split()[:2])
    known = _known_hosts(tmp_path, plain, f"@revoked * {host_key}")
    with pytest.raises(SshError, match="@revoked"):
        SshTransport("hpcai-test", config_path=ssh_config(tmp_path, sshd, known_hosts=known)).run(["true"])


def test_a_server_allowing_one_session_still_runs_commands_after_sftp(sshd: Path, tmp_path: Path) -> None:
    """MaxSessions 1: the SFTP channel is given up for a command channel (sbatch was never refused)."""
    import socket
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = (sshd / "sshd_config").read_text()
    config = config.replace("MaxSessions 50", "MaxSessions 1").replace(
        f"PidFile {sshd}/sshd.pid", f"PidFile {tmp_path}/one.pid"
    )
    config = "\n".join(f"Port {port}" if line.startswith("Port ") else line for line in config.splitlines())
    (tmp_path / "sshd_one").write_text(config + "\n")
    subprocess.run(["/usr/sbin/sshd", "-f", str(tmp_path / "sshd_one"), "-E", str(tmp_path / "one.log")], check=True)
    try:
        time.sleep(0.3)
        known = _known_hosts(
            tmp_path, f"[127.0.0.1]:{port} " + " ".join((sshd / "host_ed25519.pub").read_text().split()[:2])
        )
        ssh = ssh_config(tmp_path, sshd, known_hosts=known)
        ssh.write_text(ssh.read_text().replace(f"Port {os.environ.get('HPCAI_SSHD_PORT', '2222')}", f"Port {port}"))
        transport = SshTransport("hpcai-test", config_path=ssh)
        transport.write_text(str(tmp_path / "remote.txt"), "hello\n")  # opens the SFTP channel
        assert transport.run(["cat", str(tmp_path / "remote.txt")], idempotent=False).stdout == "hello\n"
        assert transport.read_text(str(tmp_path / "remote.txt")) == "hello\n"  # and SFTP comes back
        transport.close()
    finally:
        subprocess.run(["kill", (tmp_path / "one.pid").read_text().strip()], check=False)


def test_append_is_an_append_on_the_cluster(sshd: Path, tmp_path: Path) -> None:
    transport = SshTransport("hpcai-test", config_path=ssh_config(tmp_path, sshd))
    log = tmp_path / "log.jsonl"
    log.write_text("first\n")
    transport.append_text(str(log), "second\n")
    with open(log, "a") as handle:  # the job writes meanwhile
        handle.write("third\n")
    transport.append_text(str(log), "fourth\n")
    assert log.read_text() == "first\nsecond\nthird\nfourth\n"
