"""Staging under attack and under faults, over the real test sshd: hostile file names, concurrent stages,
damaged stores, modes, special files, links, sparse files, dropped links, full disks, odd store paths."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

import pytest

import hpcai.backends.staging.early as early_module
import hpcai.backends.staging.stager as stager_module
from hpcai.backends.staging import HashCache, Stager
from hpcai.backends.transport.base import TransportError
from hpcai.backends.transport.ssh import SshTransport
from hpcai.errors import HpcaiError
from tests.backends.transport.test_ssh import reach_over_ssh, ssh_config

HOSTILE = [
    b'--rsh=sh -c "touch PWN"',
    b"-e touch PWN2",
    b'it\'s "quoted" $(touch PWN3)',
    b"new\nline",
    b"back\\slash",
    b"\xff\xfe not utf-8 \x80",
    b";touch PWN4;",
]


@pytest.fixture
def remote(sshd: Path, tmp_path: Path) -> SshTransport:
    return SshTransport("hpcai-test", config_path=ssh_config(tmp_path, sshd), backoff_s=0.05)


def rsync_stager(remote: SshTransport, sshd: Path, tmp_path: Path, root: Path) -> Stager:
    ssh = ["ssh", "-F", str(ssh_config(tmp_path, sshd)), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
    return Stager(remote, str(root), rsync_target="hpcai-test:", rsync_ssh=ssh)


def tree_bytes(root: Path) -> dict[bytes, bytes]:
    """Every file under root by its byte-exact relative name."""
    found = {}
    for folder, _, files in os.walk(os.fsencode(root)):
        for name in files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, os.fsencode(root))] = Path(os.fsdecode(path)).read_bytes()
    return found


@pytest.mark.parametrize("path", ["rsync", "stream", "sftp", "tar"])
def test_hostile_names_run_nothing_and_arrive_byte_exact(
    path: str, remote: SshTransport, sshd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    os.makedirs(os.fsencode(data / "sub"))
    for i, name in enumerate(HOSTILE):
        for folder in (os.fsencode(data), os.fsencode(data / "sub")):
            Path(os.fsdecode(os.path.join(folder, name))).write_bytes(os.urandom(3000 + i))
    if path != "tar":
        monkeypatch.setattr(stager_module, "LARGE_FILE_BYTES", 1000)  # every file travels alone
    if path == "sftp":  # a cluster without python3: SFTP, then sha256sum
        probe = stager_module.Stager._probe
        monkeypatch.setattr(stager_module.Stager, "_probe", lambda self, tree: replace(probe(self, tree), python=False))
    root = tmp_path / "cluster store"
    stager = rsync_stager(remote, sshd, tmp_path, root) if path == "rsync" else Stager(remote, str(root))
    monkeypatch.chdir(data)  # `hpcai stage .`: names reach rsync relative to "."
    report = stager.stage(Path("."), HashCache(tmp_path / "h.json"))
    assert report.via == {path: len(HOSTILE) * 2}
    assert not list(tmp_path.rglob("PWN*")) and not list(Path("/tmp").glob("PWN*"))
    assert not any(name.startswith(b"PWN") for name in os.listdir(os.fsencode(os.getcwd())))
    assert tree_bytes(Path(report.remote_path)) == tree_bytes(data)


def test_concurrent_stages_never_leave_an_incomplete_tree(sshd: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for i in range(1500):
        folder = data / f"d{i % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i}.txt").write_bytes(os.urandom(200))
    root = str(tmp_path / "cluster" / "store")
    reports: list[object] = []
    config = ssh_config(tmp_path, sshd)

    def stage_once(k: int) -> None:
        transport = SshTransport("hpcai-test", config_path=config)
        try:
            reports.append(Stager(transport, root).stage(data, HashCache(tmp_path / f"h{k}.json")))
        except Exception as exc:  # collected, asserted below
            reports.append(exc)
        finally:
            transport.close()

    threads = [threading.Thread(target=stage_once, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(not isinstance(r, Exception) for r in reports), reports
    staged = Path(reports[0].remote_path)  # type: ignore[attr-defined]
    assert tree_bytes(staged) == tree_bytes(data)
    trees = os.listdir(tmp_path / "cluster" / "store" / "trees")
    assert trees == [staged.name]  # no half-built folder left behind
    assert not os.listdir(tmp_path / "cluster" / "store" / "objects" / "tmp")


def test_damage_on_the_cluster_is_found_and_repaired(remote: SshTransport, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        (data / f"f{i}").write_bytes(os.urandom(5000))
    root = tmp_path / "cluster" / "store"
    cache = HashCache(tmp_path / "h.json")
    staged = Path(Stager(remote, str(root)).stage(data, cache).remote_path)
    (staged / "f0").unlink()  # a file deleted from the tree
    obj = next(p for p in (root / "objects").rglob("*") if p.is_file() and p.read_bytes() == (data / "f1").read_bytes())
    obj.chmod(0o644)
    obj.write_bytes(b"x" * 10)  # an object truncated (and, being a hard link, the tree's f1 with it)
    report = Stager(remote, str(root)).stage(data, cache)
    assert report.repaired and tree_bytes(staged) == tree_bytes(data)
    # Same-size tampering is invisible to the cheap check; --verify finds it and repairs it.
    obj = next(p for p in (root / "objects").rglob("*") if p.is_file() and p.read_bytes() == (data / "f2").read_bytes())
    obj.chmod(0o644)
    obj.write_bytes(os.urandom(5000))
    obj.chmod(0o444)
    assert not Stager(remote, str(root)).stage(data, cache).repaired
    report = Stager(remote, str(root)).stage(data, cache, verify=True)
    assert report.repaired and report.objects_sent == 1 and tree_bytes(staged) == tree_bytes(data)
    # A new tree sharing the content links the repaired object, not the tampered bytes.
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(data / "f2", other / "copy")
    assert (Path(Stager(remote, str(root)).stage(other, cache).remote_path) / "copy").read_bytes() == (
        data / "f2"
    ).read_bytes()
    again = Stager(remote, str(root)).stage(data, cache, verify=True)
    assert not again.repaired and again.objects_sent == 0


def test_modes_stay_per_tree_and_are_never_widened(remote: SshTransport, tmp_path: Path) -> None:
    content = b"#!/bin/sh\necho hi\n"
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (one / "run.sh").write_bytes(content)
    (one / "run.sh").chmod(0o755)
    (two / "run.sh").write_bytes(content)
    (two / "run.sh").chmod(0o644)
    (two / "secret.txt").write_bytes(b"private")
    (two / "secret.txt").chmod(0o600)
    root = tmp_path / "cluster" / "store"
    cache = HashCache(tmp_path / "h.json")
    first = Path(Stager(remote, str(root)).stage(one, cache).remote_path)
    second = Path(Stager(remote, str(root)).stage(two, cache).remote_path)
    assert stat.S_IMODE((first / "run.sh").stat().st_mode) == 0o555  # not changed by the second tree
    assert stat.S_IMODE((second / "run.sh").stat().st_mode) == 0o444
    assert stat.S_IMODE((second / "secret.txt").stat().st_mode) == 0o400
    for folder in (root, root / "objects", root / "trees", second):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    shared = tmp_path / "cluster" / "shared"
    Stager(remote, str(shared), group_shared=True).stage(one, cache)
    assert stat.S_IMODE((shared / "trees").stat().st_mode) == 0o750


def test_special_files_are_refused_quickly(remote: SshTransport, tmp_path: Path) -> None:
    root = str(tmp_path / "cluster" / "store")
    data = tmp_path / "data"
    data.mkdir()
    (data / "ok.txt").write_text("fine\n")
    os.mkfifo(data / "pipe")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(data / "sock"))
        with pytest.raises(HpcaiError, match=r"2 thing\(s\).*pipe is a FIFO.*sock is a socket"):
            Stager(remote, root).stage(data, HashCache(tmp_path / "h.json"))
    with pytest.raises(HpcaiError, match="character device"):
        Stager(remote, root).stage(Path("/dev/null"), HashCache(tmp_path / "h.json"))
    with pytest.raises(HpcaiError, match="FIFO"):
        Stager(remote, root).stage(data / "pipe", HashCache(tmp_path / "h.json"))


def test_links_inside_stay_links_outside_are_refused_or_followed(remote: SshTransport, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("from elsewhere\n")
    data = tmp_path / "data"
    (data / "real").mkdir(parents=True)
    (data / "real" / "a.txt").write_text("a\n")
    (data / "to-dir").symlink_to("real")
    (data / "to-file").symlink_to("real/a.txt")
    root = str(tmp_path / "cluster" / "store")
    cache = HashCache(tmp_path / "h.json")
    report = Stager(remote, root).stage(data, cache)
    staged = Path(report.remote_path)
    assert report.links == 2 and os.readlink(staged / "to-dir") == "real" and (staged / "to-file").read_text() == "a\n"
    (data / "escape").symlink_to(outside)
    (data / "dangling").symlink_to("nowhere")
    with pytest.raises(HpcaiError, match="dangling is a link to nowhere, which does not exist"):
        Stager(remote, root).stage(data, cache)
    (data / "dangling").unlink()
    with pytest.raises(HpcaiError, match=r"escape is a link to .*outside the folder.*--follow-links"):
        Stager(remote, root).stage(data, cache)
    followed = Path(Stager(remote, root).stage(data, cache, follow_links=True).remote_path)
    assert not (followed / "escape").is_symlink() and (followed / "escape").read_text() == "from elsewhere\n"


def test_a_sparse_file_stays_sparse(remote: SshTransport, tmp_path: Path) -> None:
    sparse = tmp_path / "disk.img"
    with open(sparse, "wb") as handle:
        handle.write(b"head")
        handle.seek(100 << 20)
        handle.write(b"tail")
        handle.seek(200 << 20)
        handle.truncate()
    report = Stager(remote, str(tmp_path / "cluster" / "store")).stage(sparse, HashCache(tmp_path / "h.json"))
    staged = Path(report.remote_path)
    assert staged.read_bytes() == sparse.read_bytes()
    assert staged.stat().st_blocks * 512 <= 4 << 20  # 200 MB long, two 1 MB blocks on disk


def test_a_dropped_link_is_a_clear_resumable_error(
    remote: SshTransport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stager_module, "LARGE_FILE_BYTES", 1 << 20)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 << 20))

    def drop(_: int) -> None:
        if remote._client is not None:
            remote._client.get_transport().sock.close()  # type: ignore[union-attr]

    with pytest.raises(TransportError, match="connection dropped") as caught:
        Stager(remote, str(tmp_path / "store"), progress=drop).stage(big, HashCache(tmp_path / "h.json"))
    assert caught.value.exit_code == 3
    remote.close()
    report = Stager(remote, str(tmp_path / "store")).stage(big, HashCache(tmp_path / "h.json"))
    assert Path(report.remote_path).read_bytes() == big.read_bytes()


@pytest.fixture
def small_disk(tmp_path: Path) -> object:
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,nr_inodes=400", "tmpfs",
                                             str(mount)], capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("needs root to mount a small tmpfs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_stops_with_its_fix_and_free_space_counts_only_what_moves(
    remote: SshTransport, tmp_path: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.bin").write_bytes(os.urandom(2 << 20))
    cache = HashCache(tmp_path / "h.json")
    root = str(small_disk / "store")
    Stager(remote, root).stage(data, cache)
    # 2 MB staged, ~1 MB free: re-staging the same data, and a folder holding it plus a little, still work.
    assert Stager(remote, root).stage(data, cache).objects_sent == 0
    (data / "b.txt").write_text("small\n")
    assert Stager(remote, root).stage(data, cache).objects_sent == 1
    (data / "c.bin").write_bytes(os.urandom(3 << 20))
    with pytest.raises(HpcaiError, match=r"must be sent .* but only .* free"):
        Stager(remote, root).stage(data, cache)
    (data / "c.bin").unlink()
    # The free-space figure can lie (quota elsewhere); the refused write itself is explained.
    monkeypatch.setattr(stager_module.Stager, "_check_space", lambda *a: None)
    monkeypatch.setattr(stager_module, "LARGE_FILE_BYTES", 1 << 20)
    (data / "d.bin").write_bytes(os.urandom(3 << 20))
    streamed = []
    original_stream = stager_module.stream_part

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        streamed.append(args[2])
        return original_stream(*args, **kwargs)

    monkeypatch.setattr(stager_module, "stream_part", counted)
    monkeypatch.setattr(early_module, "stream_part", counted)  # the large file's first, streamed try
    with pytest.raises(TransportError, match="disk or your quota is probably full") as caught:
        Stager(remote, root).stage(data, cache)
    assert caught.value.exit_code == 3
    assert len(streamed) == 1  # the cluster said no: the file is not sent again to the full disk
    (data / "d.bin").unlink()
    many = tmp_path / "many"
    many.mkdir()
    for i in range(600):  # more files than the disk has inodes
        (many / f"{i}.txt").write_text(str(i))
    with pytest.raises(TransportError, match=r"(?s)did not arrive intact.*inode quota is full"):
        Stager(remote, root).stage(many, cache)


def test_a_store_path_with_backslash_and_newline_works(remote: SshTransport, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "x").write_bytes(os.urandom(1000))
    root = tmp_path / "odd\\path\nwith newline" / "store"
    cache = HashCache(tmp_path / "h.json")
    report = Stager(remote, str(root)).stage(data, cache)
    assert (Path(report.remote_path) / "x").read_bytes() == (data / "x").read_bytes()
    assert Stager(remote, str(root)).stage(data, cache, verify=True).objects_sent == 0


def test_many_small_files_cost_a_constant_number_of_round_trips(
    remote: SshTransport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(800):
        (data / f"img{i:04d}.jpg").write_bytes(os.urandom(2000))
    calls: list[str] = []
    original = remote.run

    def counted(argv, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(argv[0])
        return original(argv, **kwargs)

    monkeypatch.setattr(remote, "run", counted)
    sftp_ops = []
    monkeypatch.setattr(remote, "put_file", lambda *a, **k: sftp_ops.append(a))
    report = Stager(remote, str(tmp_path / "store")).stage(data, HashCache(tmp_path / "h.json"))
    assert report.objects_sent == 800 and not sftp_ops
    assert len(calls) <= 4, calls  # probe, tar stream, materialise
    assert tree_bytes(Path(report.remote_path)) == tree_bytes(data)


def test_stage_command_refuses_a_fifo_with_exit_2_and_verifies_on_request(
    sshd: Path, slurm_cluster: str, isolated_hpcai: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from tests.conftest import run_cli

    reach_over_ssh(monkeypatch, sshd, tmp_path, isolated_hpcai, slurm_cluster)
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a\n")
    os.mkfifo(data / "pipe")
    refused = run_cli("stage", str(data), "--cluster", slurm_cluster, timeout=30)
    assert refused.returncode == 2 and "pipe is a FIFO" in refused.stderr and "Traceback" not in refused.stderr
    (data / "pipe").unlink()
    staged = json.loads(run_cli("stage", str(data), "--cluster", slurm_cluster, "--json").stdout)[0]
    Path(staged["remote_path"], "a.txt").unlink()
    repaired = json.loads(run_cli("stage", str(data), "--cluster", slurm_cluster, "--verify", "--json").stdout)[0]
    assert repaired["repaired"] and Path(repaired["remote_path"], "a.txt").read_text() == "a\n"
