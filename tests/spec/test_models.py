"""`hpcai models stage`: a model from the local Hugging Face cache (the hub's own layout: refs, snapshots
of links into blobs) or a folder, checked, staged, and its path printed for the workloads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_cli


def fake_cache(hub: Path, repo: str, files: dict[str, bytes], commit: str = "0123abcd" * 5) -> Path:
    """A cache entry as huggingface_hub leaves it: blobs by hash, snapshot files linking to them."""
    entry = hub / f"models--{repo.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    (entry / "blobs").mkdir()
    snapshot = entry / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for i, (name, data) in enumerate(files.items()):
        blob = entry / "blobs" / f"blob{i}"
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / name)
    return snapshot


FILES = {"config.json": json.dumps({"model_type": "qwen2"}).encode(), "model.safetensors": b"w" * 4096,
         "tokenizer.json": b"{}", "tokenizer_config.json": b"{}"}  # fmt: skip


def test_a_cached_model_is_staged_with_the_link_targets_and_its_path_printed(
    isolated_hpcai: Path, tmp_path: Path
) -> None:
    hub = tmp_path / "hub"
    fake_cache(hub, "Qwen/Qwen2-0.5B-Instruct", FILES)
    env = {"HF_HUB_CACHE": str(hub)}
    result = run_cli("models", "stage", "Qwen/Qwen2-0.5B-Instruct", "--cluster", "local", "--json", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model_type"] == "qwen2" and report["revision"] == "0123abcd" * 5 and report["tokenizer"]
    staged = Path(report["remote_path"])
    assert (staged / "model.safetensors").read_bytes() == b"w" * 4096  # the blob's bytes, not a dangling link
    assert not (staged / "model.safetensors").is_symlink()
    text = run_cli("models", "stage", "Qwen/Qwen2-0.5B-Instruct", "--cluster", "local", env=env)
    assert text.returncode == 0 and f"--set model_path={staged}" in text.stdout.replace("\n", "")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("org/absent", "is not in your Hugging Face cache"),
        ("not a model id", "neither a folder nor a Hugging Face model id"),
    ],
)
def test_what_is_not_there_is_refused_with_the_fix(
    isolated_hpcai: Path, tmp_path: Path, name: str, message: str
) -> None:
    result = run_cli("models", "stage", name, "--cluster", "local", env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_a_partial_download_is_refused(isolated_hpcai: Path, tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    index = json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    )
    files = {"config.json": FILES["config.json"], "model.safetensors.index.json": index.encode(),
             "model-00001-of-00002.safetensors": b"x"}  # fmt: skip
    fake_cache(hub, "org/big", files)
    result = run_cli("models", "stage", "org/big", "--cluster", "local", env={"HF_HUB_CACHE": str(hub)})
    assert result.returncode == 2 and "lacks weight shards ['model-00002-of-00002.safetensors']" in result.stderr
    other = run_cli(
        "models", "stage", "org/big", "--revision", "v2", "--cluster", "local", env={"HF_HUB_CACHE": str(hub)}
    )
    assert other.returncode == 2 and "revision 'v2'" in other.stderr and "cached refs: main" in other.stderr
