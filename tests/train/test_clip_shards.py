"""CLIP on tar shards (webdataset / img2dataset layout), read by random access through an index: the
index, damaged shards, and a real run whose exported model retrieves held-out captions far above chance."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

from hpcai.train.shards import INDEX_SUFFIX, ShardError, image_text_samples, index_shard, split_key, write_shards
from hpcai.train.synth import synth_clip_shards


def test_members_read_back_by_key_with_or_without_the_index(tmp_path: Path) -> None:
    samples = [(f"{i:04d}", {"jpg": bytes([i]) * (100 + i), "txt": f"caption {i}".encode()}) for i in range(10)]
    shards = write_shards(tmp_path, samples, per_shard=4)
    assert [s.name for s in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    pairs = image_text_samples(tmp_path)
    assert [(i.read(), c.read()) for i, c in pairs] == [(f["jpg"], f["txt"]) for _, f in samples]
    # without the index file the header scan finds the same members
    for shard in shards:
        os.unlink(shard.with_name(shard.name + INDEX_SUFFIX))
    assert [(i.read(), c.read()) for i, c in image_text_samples(tmp_path)] == [(f["jpg"], f["txt"]) for _, f in samples]
    # a damaged index is rebuilt from the tar, not trusted
    sidecar = shards[0].with_name(shards[0].name + INDEX_SUFFIX)
    sidecar.write_text('{"0000": {"jpg": [1, 2')
    assert index_shard(shards[0])["0000"]["jpg"].read() == samples[0][1]["jpg"]


def test_keys_follow_webdataset_convention() -> None:
    assert split_key("dir/000001.jpg") == ("dir/000001", "jpg")
    assert split_key("a.b.JSON") == ("a", "b.json")


def test_a_truncated_or_foreign_shard_is_refused_with_its_name(tmp_path: Path) -> None:
    (shard,) = write_shards(tmp_path / "t", [("k", {"jpg": b"x" * 5000, "txt": b"y"})], per_shard=4)
    os.unlink(shard.with_name(shard.name + INDEX_SUFFIX))
    data = shard.read_bytes()
    shard.write_bytes(data[:1500])  # cut inside the image's bytes
    with pytest.raises(ShardError, match=r"shard-000000.tar: (truncated|not a readable tar shard)"):
        index_shard(shard)
    foreign = tmp_path / "f" / "x.tar"
    foreign.parent.mkdir()
    foreign.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ShardError, match=r"x\.tar: not a readable tar shard"):
        index_shard(foreign)


def test_clip_trains_on_shards_and_retrieves_held_out_captions(tmp_path: Path) -> None:
    pytest.importorskip("accelerate")
    from hpcai.train.clip import recall_at_1
    from tests.train.launch import launch, losses

    train, held_out = tmp_path / "train", tmp_path / "held-out"
    synth_clip_shards(train, samples=512, seed=0, per_shard=100)
    synth_clip_shards(held_out, samples=96, seed=7, per_shard=96)
    with tarfile.open(train / "shard-000000.tar") as archive:
        assert archive.getnames()[:2] == ["000000000.png", "000000000.txt"]  # img2dataset's layout
    run = tmp_path / "run"
    result = launch("clip", run, params={"data": train, "max_steps": 60, "checkpoint_every": 60, "lr": 2e-3,
                                         "warmup_steps": 5, "per_device_batch_size": 16})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert losses(run)[-1] < losses(run)[0]
    recall, chance = recall_at_1(run / "model", held_out)
    assert recall > 3 * chance, (recall, chance)
    (run / "recall.json").write_text(json.dumps({"recall@1": recall, "chance": chance}))


def test_thousands_of_shards_read_at_random_stay_under_the_open_file_limit(tmp_path: Path) -> None:
    """1,100 shards read in random order in a process limited to 256 open files (LAION-400M has ~41k shards,
    `ulimit -n` is often 1024): every read succeeds; the pair index takes 36 bytes a pair, not 384."""
    import subprocess
    import sys

    samples = [(f"{i:05d}", {"jpg": bytes([i % 251]) * 20, "txt": f"c{i}".encode()}) for i in range(1100)]
    write_shards(tmp_path, samples, per_shard=1)
    script = f"""
import os, random, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
from pathlib import Path
from hpcai.train.shards import OPEN_SHARDS, image_text_samples
pairs = image_text_samples(Path({str(tmp_path)!r}))
order = list(range(len(pairs)))
random.Random(0).shuffle(order)
for i in order * 2:
    image, caption = pairs[i]
    assert caption.read() == f"c{{i}}".encode() and image.read() == bytes([i % 251]) * 20, i
assert len(os.listdir("/proc/self/fd")) < OPEN_SHARDS + 16
print(pairs.nbytes() / len(pairs))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout) <= 40  # bytes per pair in the index
