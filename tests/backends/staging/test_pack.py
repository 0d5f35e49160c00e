"""`hpcai stage --pack`: a folder of many small files becomes a few tar shards beside its manifests; the
workloads read the images by the names the manifests give them; the same folder packs to the same bytes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hpcai.backends.staging.pack import SHARDS_DIR, pack
from hpcai.errors import HpcaiError
from hpcai.train.shards import PackedFiles, index_shard, shard_files
from hpcai.train.synth import synth_clip, synth_llava


def test_packing_keeps_manifests_shards_the_rest_and_is_deterministic(tmp_path: Path) -> None:
    data = tmp_path / "data"
    synth_llava(data, samples=40)
    (data / "images" / "odd name $(touch pwned).png").write_bytes(b"not really a png")
    deep = data / "images" / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    (deep / "long.png").write_bytes(os.urandom(3000))  # a member name past ustar's 100 bytes
    first = pack(data, shard_bytes=1 << 14, cache=tmp_path / "cache1")
    files = sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file())
    assert first.files_before == len(files) and not first.reused
    packed = first.folder
    manifest = "conversations.json"
    assert (packed / manifest).read_bytes() == (data / manifest).read_bytes()  # manifests untouched
    shards = shard_files(packed / SHARDS_DIR)
    assert len(shards) == first.shards > 1 and first.files_after == 1 + 2 * len(shards)  # + an index each
    members = PackedFiles(packed / SHARDS_DIR)
    for name in files:  # every file by its path, byte for byte (the manifest stays a file)
        if name != "conversations.json":
            found = members.get(name)
            assert found is not None and found.read() == (data / name).read_bytes(), name
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    # plain tar readers see the same members and bytes (webdataset, `tar -x`)
    import tarfile

    seen = {}
    for shard in shards:
        with tarfile.open(shard) as archive:
            for info in archive:
                handle = archive.extractfile(info)
                assert handle is not None and info.mtime == 0 and info.uid == 0
                seen[info.name] = handle.read()
    assert seen == {name: (data / name).read_bytes() for name in files if name != manifest}
    # the same folder packs to the same bytes (a re-stage sends nothing); an unchanged one is not repacked
    second = pack(data, shard_bytes=1 << 14, cache=tmp_path / "cache2")
    assert [p.read_bytes() for p in shard_files(second.folder / SHARDS_DIR)] == [p.read_bytes() for p in shards]
    assert pack(data, shard_bytes=1 << 14, cache=tmp_path / "cache1").reused
    # a pack killed half-way (its process gone) leaves a partial folder: the next pack removes it
    abandoned = second.folder.parent / f".{data.name}.999999999.partial"
    abandoned.mkdir()
    second.folder.rename(second.folder.with_name("moved"))
    pack(data, shard_bytes=1 << 14, cache=tmp_path / "cache2")
    assert not abandoned.exists()


def test_a_copied_index_stays_valid_and_a_changed_shard_is_rescanned(tmp_path: Path) -> None:
    data = tmp_path / "data"
    synth_clip(data, samples=8)
    shard = shard_files(pack(data, cache=tmp_path / "cache").folder / SHARDS_DIR)[0]
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / shard.name).write_bytes(shard.read_bytes())  # newer than its index after a copy: still valid
    index = copy / (shard.name + ".idx.json")
    index.write_text(shard.with_name(shard.name + ".idx.json").read_text())
    os.utime(index, (1, 1))
    moved = copy / shard.name
    original = index_shard(shard)
    expected = {k: {e: m.__class__(moved, m.offset, m.size) for e, m in v.items()} for k, v in original.items()}
    assert index_shard(moved) == expected
    stale = json.loads(index.read_text())
    stale["members"] = {"bogus": {"png": [0, 1]}}
    stale["shard_bytes"] += 1  # written for another shard: not trusted, the tar is scanned instead
    index.write_text(json.dumps(stale))
    assert "bogus" not in index_shard(copy / shard.name)


def test_what_cannot_be_packed_is_refused_with_the_fix(tmp_path: Path) -> None:
    data = tmp_path / "data"
    synth_clip(data, samples=4)
    (data / "images" / "link.png").symlink_to(next((data / "images").iterdir()))
    with pytest.raises(HpcaiError, match="link or not a regular file"):
        pack(data, cache=tmp_path / "cache")
    (data / "images" / "link.png").unlink()
    packed = pack(data, cache=tmp_path / "cache").folder
    with pytest.raises(HpcaiError, match="looks packed"):
        pack(packed, cache=tmp_path / "cache")
    with pytest.raises(HpcaiError, match="single file"):
        pack(data / "pairs.jsonl", cache=tmp_path / "cache")
    sharded = tmp_path / "img2dataset"
    from hpcai.train.synth import synth_clip_shards

    synth_clip_shards(sharded, samples=8, per_shard=4)
    with pytest.raises(HpcaiError, match="holds tar shards already"):
        pack(sharded, cache=tmp_path / "cache")


def test_both_workloads_read_packed_images_as_they_read_files(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from hpcai.train.clip import load_pairs
    from hpcai.train.images import ImageTransform, image_bytes_or_path

    data = tmp_path / "clip"
    synth_clip(data, samples=6)
    packed = pack(data, cache=tmp_path / "cache").folder
    plain, from_shards = load_pairs(data), load_pairs(packed)
    assert [p.text() for p in plain] == [p.text() for p in from_shards]
    transform = ImageTransform(size=32)
    for a, b in zip(plain, from_shards, strict=True):
        assert isinstance(a.image, Path) and not isinstance(b.image, Path)
        assert transform.pixels(image_bytes_or_path(a.image)).equal(transform.pixels(image_bytes_or_path(b.image)))


def test_packed_stage_over_ssh_then_the_job_reads_the_shards_and_learns(
    sshd: Path, slurm_cluster: str, isolated_hpcai: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stage --pack over the test sshd -> submit LLaVA with the staged copy -> the job reads its images from
    the shards (a handful of files on the cluster instead of one per image) and its loss falls."""
    pytest.importorskip("accelerate")
    import statistics

    from hpcai.store.db import Store
    from tests.backends.transport.test_ssh import reach_over_ssh
    from tests.conftest import run_cli
    from tests.helpers import wait_terminal
    from tests.train.launch import losses

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "laptop-cache"))
    reach_over_ssh(monkeypatch, sshd, tmp_path, isolated_hpcai, slurm_cluster)
    data = tmp_path / "laptop-data"
    assert run_cli("data", "synth", "llava", str(data), "--samples", "64").returncode == 0
    args = ("stage", str(data), "--cluster", slurm_cluster, "--pack", "--shard-size", "256M", "--json")
    result = run_cli(*args, timeout=120)
    assert result.returncode == 0, result.stderr
    staged = json.loads(result.stdout)[0]
    assert staged["source"] == str(data) and staged["packed"]["files_before"] == 65
    remote = Path(staged["remote_path"])
    on_cluster = [p for p in remote.rglob("*") if p.is_file()]
    assert len(on_cluster) == staged["packed"]["files_after"] <= 5 and not (remote / "images").exists()
    again = json.loads(run_cli(*args, timeout=120).stdout)[0]
    assert again["objects_sent"] == 0 and again["packed"]["reused"] and again["remote_path"] == str(remote)

    # a site whose profile packs data by default: submit with the laptop's folder stages the same shards
    (isolated_hpcai / "config" / "clusters").mkdir()
    (isolated_hpcai / "config" / "clusters" / f"{slurm_cluster}.yaml").write_text("pack_data: true\n")
    settings = ("--set", "max_steps=24", "--set", "checkpoint_every=24", "--set", "lr=2e-3")
    submitted = run_cli("submit", "llava", "--cluster", slurm_cluster, "--stage", "finetune", "--set", f"data={data}",
                        *settings, "--json")  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    run_id = json.loads(submitted.stdout)["run_id"]
    store = Store()
    assert store.run(run_id).spec["parameters"]["data"] == str(remote)
    view = wait_terminal(store, run_id, timeout=400)
    assert view.state == "COMPLETED", view
    out = "".join(p.read_text() for p in Path(view.run_dir, "logs").glob("slurm-*.out"))
    assert f"images read from the 64 files packed in {remote}/shards" in out, out[-2000:]
    values = losses(Path(view.run_dir))
    assert statistics.mean(values[-5:]) < 0.8 * statistics.mean(values[:5]), values


def test_a_stage_of_many_files_warns_near_the_inode_quota(tmp_path: Path) -> None:
    """Measured as doctor does (`df -i` here); the warning names the fix (--pack)."""
    from hpcai.backends.transport import LocalTransport
    from hpcai.flows.stage import _inode_warning
    from hpcai.spec.profiles import load_profile

    profile = load_profile("local")
    strict = profile.model_copy(update={"quota": profile.quota.model_copy(update={"warn_percent": 0.0})})
    warning = _inode_warning(LocalTransport(), strict, "scratch", str(tmp_path / "not" / "yet"), 50_000)
    assert warning is not None and "hpcai stage --pack" in warning and "50,000" in warning
    assert _inode_warning(LocalTransport(), profile, "scratch", str(tmp_path), 50_000) is None  # far from full
    assert _inode_warning(LocalTransport(), strict, "scratch", str(tmp_path), 10) is None  # a handful of files


def test_a_file_changed_while_packing_leaves_no_pack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hpcai.backends.staging.pack as packing

    data = tmp_path / "data"
    synth_clip(data, samples=4)
    original = packing._groups

    def grow_one(members, shard_bytes):  # type: ignore[no-untyped-def]
        groups = original(members, shard_bytes)
        with open(groups[0][0].path, "ab") as handle:  # written to after it was listed
            handle.write(b"more")
        return groups

    monkeypatch.setattr(packing, "_groups", grow_one)
    with pytest.raises(HpcaiError, match="changed while it was packed"):
        pack(data, cache=tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # no half-written pack
