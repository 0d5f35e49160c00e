"""Staging over a real sshd: only what changed moves, a broken transfer resumes, checksums are verified,
two runs share one copy, and a remote submit refers to the staged data."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hpcai.backends.staging import HashCache, Stager
from hpcai.backends.transport.ssh import SshTransport
from hpcai.errors import HpcaiError
from tests.backends.transport.test_ssh import reach_over_ssh, ssh_config


@pytest.fixture
def remote(sshd: Path, tmp_path: Path) -> SshTransport:
    return SshTransport("hpcai-test", config_path=ssh_config(tmp_path, sshd), backoff_s=0.05)


def make_data(root: Path, files: int = 5, size: int = 200_000) -> Path:
    root.mkdir(parents=True)
    (root / "sub").mkdir()
    for i in range(files):
        (root / ("sub" if i % 2 else ".") / f"f{i}.bin").write_bytes(os.urandom(size))
    return root


def test_restage_sends_nothing_and_a_change_sends_only_that_file(remote: SshTransport, tmp_path: Path) -> None:
    data = make_data(tmp_path / "data")
    stager = Stager(remote, str(tmp_path / "cluster" / "store"))
    cache = HashCache(tmp_path / "hashes.json")
    first = stager.stage(data, cache)
    assert first.objects_sent == 5 and first.bytes_sent == 1_000_000
    staged = Path(first.remote_path)
    assert sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*.bin")) == [
        "f0.bin", "f2.bin", "f4.bin", "sub/f1.bin", "sub/f3.bin"]  # fmt: skip
    assert (staged / "sub" / "f3.bin").read_bytes() == (data / "sub" / "f3.bin").read_bytes()
    again = stager.stage(data, cache)
    assert again.objects_sent == 0 and again.bytes_sent == 0 and again.tree_id == first.tree_id
    (data / "f2.bin").write_bytes(os.urandom(1000))
    changed = stager.stage(data, cache)
    assert changed.objects_sent == 1 and changed.bytes_sent == 1000 and changed.tree_id != first.tree_id


def test_two_copies_of_the_same_data_share_one_staged_copy(remote: SshTransport, tmp_path: Path) -> None:
    one = make_data(tmp_path / "one")
    two = tmp_path / "two"
    import shutil

    shutil.copytree(one, two)
    stager = Stager(remote, str(tmp_path / "cluster" / "store"))
    cache = HashCache(tmp_path / "hashes.json")
    first = stager.stage(one, cache)
    second = stager.stage(two, cache)
    assert second.tree_id == first.tree_id and second.objects_sent == 0


def test_a_transfer_cut_off_midway_resumes_without_resending(
    remote: SshTransport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hpcai.backends.staging.stager as staging

    monkeypatch.setattr(staging, "LARGE_FILE_BYTES", 1 << 20)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(8 << 20))
    root = str(tmp_path / "cluster" / "store")
    sent = [0]

    def cut_after_3mb(n: int) -> None:
        sent[0] += n
        if sent[0] >= 3 << 20 and remote._client is not None:
            remote._client.get_transport().sock.close()  # type: ignore[union-attr]  # the link drops

    cache = HashCache(tmp_path / "h.json")
    with pytest.raises((HpcaiError, OSError, EOFError, Exception)):
        Stager(remote, root, progress=cut_after_3mb).stage(big, cache)
    cache.save()  # as `hpcai stage` does, however the stage ended
    remote.close()
    parts = list((tmp_path / "cluster" / "store" / "objects" / "tmp").glob("*.part"))
    assert len(parts) == 1 and 0 < parts[0].stat().st_size < 8 << 20  # a partial copy is left
    report = Stager(remote, root).stage(big, HashCache(tmp_path / "h.json"))
    # What had arrived (the server may still flush buffered writes after the drop) is not sent again.
    assert 0 < report.resumed_bytes < 8 << 20 and report.bytes_sent == (8 << 20) - report.resumed_bytes
    assert Path(report.remote_path).read_bytes() == big.read_bytes()


def test_a_corrupted_transfer_is_caught_by_the_checksum(
    remote: SshTransport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hpcai.backends.staging.stager as staging

    monkeypatch.setattr(staging, "LARGE_FILE_BYTES", 1000)
    data = tmp_path / "x.bin"
    data.write_bytes(os.urandom(100_000))
    cache = HashCache(tmp_path / "h.json")
    root = tmp_path / "cluster" / "store"
    (root / "objects" / "tmp").mkdir(parents=True)
    # A partial copy whose bytes are wrong: resuming after it must not produce a bad object.
    (root / "objects" / "tmp" / f"{cache.sha256(data)}.other-writer.part").write_bytes(b"garbage" * 100)
    with pytest.raises(HpcaiError, match="arrived corrupted"):
        Stager(remote, str(root)).stage(data, cache)
    assert not list((root / "objects" / "tmp").glob("*.part"))  # removed, so the next try starts clean
    report = Stager(remote, str(root)).stage(data, cache)
    assert Path(report.remote_path).read_bytes() == data.read_bytes()


def test_stage_command_and_submit_with_local_data_refers_to_the_staged_copy(
    sshd: Path, slurm_cluster: str, isolated_hpcai: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("accelerate")
    import json

    from hpcai.store.db import Store
    from tests.conftest import run_cli
    from tests.helpers import wait_terminal

    reach_over_ssh(monkeypatch, sshd, tmp_path, isolated_hpcai, slurm_cluster)
    data = tmp_path / "laptop-data"
    assert run_cli("data", "synth", "llava", str(data), "--samples", "16").returncode == 0
    staged = json.loads(run_cli("stage", str(data), "--cluster", slurm_cluster, "--json").stdout)
    assert staged[0]["files"] == 17 and staged[0]["objects_sent"] == 17
    again = json.loads(run_cli("stage", str(data), "--cluster", slurm_cluster, "--json").stdout)
    assert again[0]["objects_sent"] == 0 and again[0]["remote_path"] == staged[0]["remote_path"]
    submitted = run_cli("submit", "llava", "--cluster", slurm_cluster, "--set", f"data={data}", "--set", "max_steps=4",
                        "--set", "checkpoint_every=4", "--json")  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    run_id = json.loads(submitted.stdout)["run_id"]
    store = Store()
    assert store.run(run_id).spec["parameters"]["data"] == staged[0]["remote_path"]
    assert wait_terminal(store, run_id, timeout=300).state == "COMPLETED"


def test_large_files_go_by_rsync_over_the_same_ssh_settings(
    remote: SshTransport, sshd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hpcai.backends.staging.stager as staging

    monkeypatch.setattr(staging, "LARGE_FILE_BYTES", 100_000)
    data = make_data(tmp_path / "data", files=3, size=150_000)
    (data / "tiny.txt").write_text("small files still go by SFTP\n")
    config = ssh_config(tmp_path, sshd)
    ssh = ["ssh", "-F", str(config), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
    stager = Stager(remote, str(tmp_path / "cluster" / "store"), rsync_target="hpcai-test:", rsync_ssh=ssh)
    report = stager.stage(data, HashCache(tmp_path / "h.json"))
    assert report.via == {"rsync": 3, "tar": 1}
    staged = Path(report.remote_path)
    assert all((staged / p.relative_to(data)).read_bytes() == p.read_bytes() for p in data.rglob("*") if p.is_file())


def test_remote_job_runs_the_staged_workload_code_and_runtime(
    sshd: Path, slurm_cluster: str, isolated_hpcai: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A site profile (python given explicitly, not this interpreter): submit stages the workload folder
    and the hpcai package, and the job imports them from the staged copies."""
    pytest.importorskip("accelerate")
    import json
    import sys

    import yaml

    from hpcai.store.db import Store
    from tests.conftest import REPO, run_cli
    from tests.helpers import wait_terminal

    monkeypatch.setenv("HPCAI_SSH_CONFIG", str(ssh_config(tmp_path, sshd)))
    config = isolated_hpcai / "config"
    (config / "clusters").mkdir(parents=True, exist_ok=True)
    site = yaml.safe_load((REPO / "clusters" / "local-slurm.yaml").read_text())
    site["launch"]["python"] = sys.executable
    (config / "clusters" / "remote-site.yaml").write_text(yaml.safe_dump(site))
    (config / "config.toml").write_text('[clusters.remote-site]\nssh_host = "hpcai-test"\n')
    submitted = run_cli("submit", "llava", "--cluster", "remote-site", "--set", "max_steps=3", "--set", "samples=16",
                        "--set", "checkpoint_every=3", "--json")  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    run_id = json.loads(submitted.stdout)["run_id"]
    store = Store()
    spec = store.run(run_id).spec
    assert "/hpcai/store/trees/" in spec["code_dir"] and "/hpcai/store/trees/" in spec["python_path"]
    assert Path(spec["python_path"], "hpcai", "runtime", "trainer.py").is_file()
    view = wait_terminal(store, run_id, timeout=300)
    assert view.state == "COMPLETED"
    out = next(Path(view.run_dir, "logs").glob("slurm-*.out")).read_text()
    assert f"hpcai: runtime from {spec['python_path']}/hpcai" in out


def test_one_large_file_goes_by_rsync_while_it_is_hashed(
    remote: SshTransport, sshd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hash pass overlaps the transfer: the part sent while hashing becomes the object; when the cluster
    already has the content it is dropped; a file changed meanwhile is never installed from it."""
    import hpcai.backends.staging.stager as staging

    monkeypatch.setattr(staging, "LARGE_FILE_BYTES", 100_000)
    big = tmp_path / "weights.bin"
    big.write_bytes(os.urandom(3_000_000))
    config = ssh_config(tmp_path, sshd)
    ssh = ["ssh", "-F", str(config), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
    store = tmp_path / "cluster" / "store"
    stager = Stager(remote, str(store), rsync_target="hpcai-test:", rsync_ssh=ssh)
    adopted = []
    from hpcai.backends.staging.early import EarlyTransfer

    original_adopt = EarlyTransfer.adopt

    def spy(self, entries, owner, probe):  # type: ignore[no-untyped-def]
        result = original_adopt(self, entries, owner, probe)
        adopted.append(result)
        return result

    monkeypatch.setattr(EarlyTransfer, "adopt", spy)
    report = stager.stage(big, HashCache(tmp_path / "h1.json"))
    assert report.via == {"rsync": 1} and len(adopted) == 1 and adopted[0]  # sent early, installed
    assert Path(report.remote_path).read_bytes() == big.read_bytes()
    assert not list((store / "objects" / "tmp").glob("*.part"))
    # another machine's hash cache (cold) and a store that has it: the early copy is dropped, nothing sent
    again = stager.stage(big, HashCache(tmp_path / "h2.json"))
    assert again.objects_sent == 0 and len(adopted) == 2 and not list((store / "objects" / "tmp").glob("*.part"))

    # a file changed while it was sent and hashed: its early part is not trusted
    original_rsync = Stager._rsync

    def rsync_then_touch(self, local, part, arrived, **kwargs):  # type: ignore[no-untyped-def]
        original_rsync(self, local, part, arrived, **kwargs)
        if "/early-" in part:
            os.utime(local, ns=(1, 1))

    monkeypatch.setattr(Stager, "_rsync", rsync_then_touch)
    changed = tmp_path / "changed.bin"
    changed.write_bytes(os.urandom(2_000_000))
    report = stager.stage(changed, HashCache(tmp_path / "h3.json"))
    assert adopted[-1] == [] and report.via == {"rsync": 1}  # sent again the ordinary way
    assert Path(report.remote_path).read_bytes() == changed.read_bytes()
    assert not list((store / "objects" / "tmp").glob("*.part"))


def test_without_rsync_one_large_file_is_streamed_and_hashed_in_one_pass(
    remote: SshTransport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No rsync: the file is read once, hashed here and on the cluster as it is sent; the scan then finds the
    hash cached. A stage broken off mid-file (Ctrl-C: no hash known yet) goes on from what arrived, and a
    file changed while it was sent is never installed from that copy."""
    import hpcai.backends.staging.stager as staging

    monkeypatch.setattr(staging, "LARGE_FILE_BYTES", 100_000)
    big = tmp_path / "weights.bin"
    big.write_bytes(os.urandom(6 << 20))
    store = tmp_path / "cluster" / "store"
    reads = []
    original_sha256 = HashCache.sha256

    def counting(self, file, info=None):  # type: ignore[no-untyped-def]
        reads.append(not self.known(file, info or file.stat()))  # whether the scan reads the file to hash it
        return original_sha256(self, file, info)

    monkeypatch.setattr(HashCache, "sha256", counting)
    sent = [0]

    def interrupt_after_2mb(n: int) -> None:
        sent[0] += n
        if sent[0] >= 2 << 20:
            # Ctrl-C once bytes have arrived on the cluster: under load the first 2 MB can still be in the
            # SSH channel when the interrupt comes, and then nothing arrived to go on from.
            deadline = time.monotonic() + 30
            while not any(p.stat().st_size for p in (store / "objects" / "tmp").glob("*.part")):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Stager(remote, str(store), progress=interrupt_after_2mb).stage(big, HashCache(tmp_path / "h1.json"))
    remote.close()
    reads.clear()
    report = Stager(remote, str(store)).stage(big, HashCache(tmp_path / "h1.json"))  # still a cold cache
    assert reads == [False]  # the scan found the hash the stream computed: the file was read once
    assert report.via == {"stream": 1} and 0 < report.resumed_bytes < 6 << 20  # what arrived (not what was in flight)
    assert report.bytes_sent == (6 << 20) - report.resumed_bytes
    assert Path(report.remote_path).read_bytes() == big.read_bytes()
    assert not list((store / "objects" / "tmp").glob("*.part"))
    # another machine's cold cache and a store that has it: the early copy is dropped, nothing installed
    again = Stager(remote, str(store)).stage(big, HashCache(tmp_path / "h2.json"))
    assert again.objects_sent == 0 and not list((store / "objects" / "tmp").glob("*.part"))

    original_stream = staging.stream_part

    def stream_then_touch(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = original_stream(*args, **kwargs)
        if "/early-" in args[2]:
            os.utime(args[1], ns=(1, 1))
        return result

    monkeypatch.setattr(staging, "stream_part", stream_then_touch)
    changed = tmp_path / "changed.bin"
    changed.write_bytes(os.urandom(2_000_000))
    report = Stager(remote, str(store)).stage(changed, HashCache(tmp_path / "h3.json"))
    assert report.via == {"stream": 1} and report.bytes_sent == 2_000_000  # sent again the ordinary way
    assert Path(report.remote_path).read_bytes() == changed.read_bytes()
    assert not list((store / "objects" / "tmp").glob("*.part"))


def test_an_empty_folder_is_staged_as_an_empty_folder(tmp_path: Path) -> None:
    """An empty folder sent one empty record to the cluster's build step, which failed on it (a folder of
    wheels with nothing in it, say)."""
    from hpcai.backends.transport.local import LocalTransport

    empty = tmp_path / "empty"
    empty.mkdir()
    report = Stager(LocalTransport(), str(tmp_path / "store")).stage(empty, HashCache(tmp_path / "h.json"))
    assert Path(report.remote_path).is_dir() and list(Path(report.remote_path).iterdir()) == []
    again = Stager(LocalTransport(), str(tmp_path / "store")).stage(empty, HashCache(tmp_path / "h.json"))
    assert again.remote_path == report.remote_path and again.objects_sent == 0
