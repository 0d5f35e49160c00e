"""`hpcai stage --squashfs`: a folder becomes one reproducible SquashFS image, staged as one file; mounted
(squashfuse here, a container bind at a site), every file is where it was and the workloads read it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcai.backends.staging.squash import squash
from hpcai.errors import HpcaiError
from hpcai.train.synth import synth_clip

needs_mksquashfs = pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="needs squashfs-tools")


@contextlib.contextmanager
def mounted(image: Path, where: Path) -> Iterator[Path]:
    """The image mounted read-only with squashfuse, as a node without a container would; skips where FUSE
    is not available."""
    where.mkdir()
    if shutil.which("squashfuse") is None:
        pytest.skip("needs squashfuse")
    if subprocess.run(["squashfuse", str(image), str(where)], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("squashfuse cannot mount here (no FUSE)")
    try:
        yield where
    finally:
        for umount in (["fusermount3", "-u"], ["fusermount", "-u"], ["umount", "-l"]):
            if shutil.which(umount[0]) and subprocess.run([*umount, str(where)], capture_output=True).returncode == 0:
                break


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@needs_mksquashfs
def test_an_image_is_reproducible_cached_and_holds_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    synth_clip(data, samples=12)
    (data / "odd name $(touch pwned).txt").write_text("odd\n")
    (data / "link.json").symlink_to("odd name $(touch pwned).txt")  # inside the folder: kept as a link
    first = squash(data, cache=tmp_path / "cache1")
    again = squash(data, cache=tmp_path / "cache1")
    other = squash(data, cache=tmp_path / "cache2")
    assert not first.reused and again.reused and again.image == first.image
    assert first.image.read_bytes() == other.image.read_bytes()  # the same folder, the same bytes
    assert first.files_before == len([p for p in data.rglob("*") if p.is_file() and not p.is_symlink()])
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    with mounted(first.image, tmp_path / "mnt") as mnt:
        assert tree(mnt) == tree(data)
        assert os.readlink(mnt / "link.json") == "odd name $(touch pwned).txt"
    os.utime(data / "odd name $(touch pwned).txt", ns=(1, 1))
    changed = squash(data, cache=tmp_path / "cache1")
    assert not changed.reused and changed.image != first.image  # a changed folder is built again
    assert not list((tmp_path / "cache1").rglob("*.partial"))
    # a build broken off (Ctrl-C) leaves no partial image; one left by a killed process is cleared
    import hpcai.backends.staging.squash as squash_module

    def interrupted(*args: object) -> int:
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(squash_module, "_follow", interrupted)
        with pytest.raises(KeyboardInterrupt):
            squash(data, cache=tmp_path / "cache2")
    assert not list((tmp_path / "cache2").rglob("*.partial"))
    changed.image.unlink()
    stale = changed.image.parent / f".{changed.image.name}.999999999.partial"
    stale.write_bytes(b"half an image")
    assert not squash(data, cache=tmp_path / "cache1").reused and not stale.exists()
    monkeypatch.chdir(tmp_path)  # a folder whose relative name reads like an option is still a folder
    shutil.copytree(data, tmp_path / "-noappend")
    assert squash(Path("-noappend"), cache=tmp_path / "cache3").image.name == "-noappend.sqfs"


def test_what_an_image_cannot_hold_is_refused_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a")
    with pytest.raises(HpcaiError, match="stage a single file without it"):
        squash(data / "a.txt", cache=tmp_path / "c")
    (data / "out").symlink_to("/etc/hostname")
    if shutil.which("mksquashfs"):
        with pytest.raises(HpcaiError, match=r"out links outside the folder .*stage without --squashfs"):
            squash(data, cache=tmp_path / "c")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(HpcaiError, match=r"needs mksquashfs.*apt install squashfs-tools"):
        squash(data, cache=tmp_path / "c")


@needs_mksquashfs
def test_squashfs_stage_over_ssh_is_one_file_and_the_workload_reads_it_mounted(
    sshd: Path, slurm_cluster: str, isolated_hpcai: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stage --squashfs over the test sshd: one file on the cluster, a re-stage sends nothing, and the image,
    mounted as a node would, gives the CLIP loader the same samples as the laptop's folder."""
    pytest.importorskip("torch")
    from hpcai.train.clip import load_pairs
    from hpcai.train.images import ImageTransform, image_bytes_or_path
    from tests.backends.transport.test_ssh import reach_over_ssh
    from tests.conftest import run_cli

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "laptop-cache"))
    reach_over_ssh(monkeypatch, sshd, tmp_path, isolated_hpcai, slurm_cluster)
    data = tmp_path / "laptop-data"
    synth_clip(data, samples=16)
    args = ("stage", str(data), "--cluster", slurm_cluster, "--squashfs", "--json")
    result = run_cli(*args, timeout=120)
    assert result.returncode == 0, result.stderr
    staged = json.loads(result.stdout)[0]
    image = Path(staged["remote_path"])
    assert staged["source"] == str(data) and image.name == "laptop-data.sqfs" and staged["files"] == 1
    assert staged["squashfs"]["files_before"] == 17 and staged["squashfs"]["bind"] == f"{image}:/data:image-src=/"
    again = json.loads(run_cli(*args, timeout=120).stdout)[0]
    assert again["objects_sent"] == 0 and again["squashfs"]["reused"] and again["remote_path"] == str(image)
    text = run_cli("stage", str(data), "--cluster", slurm_cluster, "--squashfs", timeout=120).stdout
    assert "--bind" in text and "image-src=/" in text and "squashfuse" in text
    both = run_cli("stage", str(data), "--cluster", slurm_cluster, "--squashfs", "--pack", timeout=120)
    assert both.returncode == 2 and "choose one" in both.stderr and "Traceback" not in both.stderr
    with mounted(image, tmp_path / "node-mount") as mnt:
        plain, from_image = load_pairs(data), load_pairs(mnt)
        assert [p.text() for p in plain] == [p.text() for p in from_image]
        transform = ImageTransform(size=32)
        for a, b in zip(plain, from_image, strict=True):
            assert transform.pixels(image_bytes_or_path(a.image)).equal(transform.pixels(image_bytes_or_path(b.image)))
