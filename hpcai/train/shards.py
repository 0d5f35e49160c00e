"""Tar shards in the webdataset / img2dataset layout (`key.jpg` + `key.txt` (+ `key.json`) per sample),
read by random access through an index of where each member's bytes lie.

Why not stream them with the webdataset library: the runtime's batch order is a pure function of (seed,
step) over the whole data set, which makes resume, rollback and skipped batches exact. Streaming shards
in order resumes only approximately and shuffles within a buffer. An index (header scan once, or the
`<shard>.idx.json` written beside it) gives the same order with a few reads per sample from a handful
of big files -- what parallel filesystems serve well, unlike millions of small files.
"""

from __future__ import annotations

import json
import os
import tarfile
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

INDEX_SUFFIX = ".idx.json"
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


class ShardError(ValueError):
    """A shard that cannot be read as a sample archive."""


@dataclass(frozen=True)
class Member:
    """One file of one sample inside a shard: where its bytes are."""

    shard: Path
    offset: int
    size: int

    def read(self) -> bytes:
        handle = _open(self.shard)
        handle.seek(self.offset)
        data: bytes = handle.read(self.size)
        if len(data) != self.size:
            raise ShardError(f"{self.shard}: truncated (a member at byte {self.offset} ends past the file's end)")
        return data


OPEN_SHARDS = 64  # open shard files kept per process: LAION-400M is ~41k shards, a usual `ulimit -n` 1024
_HANDLES: OrderedDict[Path, Any] = OrderedDict()
_HANDLES_PID = os.getpid()


def _open(path: Path) -> Any:
    """An open file for the shard, from a per-process cache of the OPEN_SHARDS most recently read ones (the
    least recently read is closed): a random read order over thousands of shards kept every one open and
    ended the data worker with EMFILE. DataLoader workers start with the cache empty after the fork."""
    global _HANDLES_PID
    if os.getpid() != _HANDLES_PID:  # a forked worker: the parent's handles share its file offsets
        _HANDLES.clear()
        _HANDLES_PID = os.getpid()
    handle = _HANDLES.get(path)
    if handle is not None:
        _HANDLES.move_to_end(path)
        return handle
    while len(_HANDLES) >= OPEN_SHARDS:
        _, oldest = _HANDLES.popitem(last=False)
        oldest.close()
    handle = _HANDLES[path] = open(path, "rb")  # noqa: SIM115 -- closed when it leaves the cache
    return handle


class ShardPairs(Sequence[tuple[Member, Member]]):
    """(image, caption) members of many shards in compact arrays: 8 numbers per pair (36 bytes) where a list
    of Member objects took 384 (143 GiB per process for LAION-400M's 400M pairs, times ranks x workers).
    Item i is made on demand; the arrays are shared copy-on-write with forked DataLoader workers."""

    def __init__(self, shards: list[Path], columns: dict[str, array[int]]) -> None:
        self.shards = shards
        self._shard = columns["shard"]
        self._image = (columns["image_offset"], columns["image_size"])
        self._text = (columns["text_offset"], columns["text_size"])

    def __len__(self) -> int:
        return len(self._shard)

    @overload
    def __getitem__(self, index: int) -> tuple[Member, Member]: ...
    @overload
    def __getitem__(self, index: slice) -> list[tuple[Member, Member]]: ...
    def __getitem__(self, index: int | slice) -> tuple[Member, Member] | list[tuple[Member, Member]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        shard = self.shards[self._shard[index]]
        image = Member(shard, self._image[0][index], self._image[1][index])
        return image, Member(shard, self._text[0][index], self._text[1][index])

    def nbytes(self) -> int:
        columns = (self._shard, *self._image, *self._text)
        return sum(c.itemsize * len(c) for c in columns)


def split_key(name: str) -> tuple[str, str]:
    """webdataset's convention: the key is the path up to the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def index_shard(shard: Path) -> dict[str, dict[str, Member]]:
    """Samples of one shard by key: {key: {ext: Member}}, from its index file or a header scan."""
    sidecar = shard.with_name(shard.name + INDEX_SUFFIX)
    if sidecar.is_file():
        try:
            raw = json.loads(sidecar.read_text())
            # The index names the shard's size: a copy (staged, rsynced: new mtimes) keeps it valid; a shard
            # rewritten since does not. An index of the first format has no size: trusted when not older.
            if isinstance(raw.get("members"), dict) and isinstance(raw.get("shard_bytes"), int):
                fresh, raw = raw["shard_bytes"] == shard.stat().st_size, raw["members"]
            else:
                fresh = sidecar.stat().st_mtime >= shard.stat().st_mtime
            if fresh:
                return {k: {e: Member(shard, int(o), int(s)) for e, (o, s) in v.items()} for k, v in raw.items()}
        except (ValueError, TypeError, AttributeError):
            pass  # a damaged index is rebuilt from the tar itself
    samples: dict[str, dict[str, Member]] = {}
    try:
        with tarfile.open(shard, "r:") as archive:
            for info in archive:
                if info.isfile():
                    key, ext = split_key(info.name)
                    samples.setdefault(key, {})[ext] = Member(shard, info.offset_data, info.size)
    except (tarfile.TarError, OSError) as exc:
        raise ShardError(f"{shard}: not a readable tar shard ({exc})") from None
    end = shard.stat().st_size
    for members in samples.values():
        for member in members.values():
            if member.offset + member.size > end:
                raise ShardError(f"{shard}: truncated (its last sample ends past the file's end); copy it again")
    return samples


def write_index(shard: Path) -> Path:
    """Write `<shard>.idx.json` so later readers skip the header scan."""
    samples = index_shard(shard)
    return save_index(shard, {k: {e: [m.offset, m.size] for e, m in v.items()} for k, v in samples.items()})


def save_index(shard: Path, members: dict[str, dict[str, list[int]]]) -> Path:
    """The index file's one writer: {key: {ext: [offset, size]}} with the shard's size (see index_shard)."""
    sidecar = shard.with_name(shard.name + INDEX_SUFFIX)
    tmp = sidecar.with_name(sidecar.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"shard_bytes": shard.stat().st_size, "members": members}))
    os.replace(tmp, sidecar)
    return sidecar


def shard_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.tar") if p.is_file())


def image_text_samples(folder: Path) -> ShardPairs:
    """(image, caption) members of every sample in the folder's shards, in shard and key order; samples
    without an image or a caption are skipped (img2dataset leaves failed downloads out the same way). One
    shard's Member objects live at a time; what is kept is the compact ShardPairs."""
    shards = shard_files(folder)
    columns = {"shard": array("I"), "image_offset": array("q"), "image_size": array("q"),
               "text_offset": array("q"), "text_size": array("q")}  # fmt: skip
    for number, shard in enumerate(shards):
        for _key, members in sorted(index_shard(shard).items()):
            image = next((members[e] for e in IMAGE_EXTS if e in members), None)
            caption = members.get("txt")
            if image is not None and caption is not None:
                columns["shard"].append(number)
                columns["image_offset"].append(image.offset)
                columns["image_size"].append(image.size)
                columns["text_offset"].append(caption.offset)
                columns["text_size"].append(caption.size)
    return ShardPairs(shards, columns)


def write_shards(folder: Path, samples: list[tuple[str, dict[str, bytes]]], per_shard: int) -> list[Path]:
    """Samples (key, {ext: bytes}) as `shard-NNNNNN.tar` files of `per_shard` samples, each with its index."""
    import io

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for number, start in enumerate(range(0, len(samples), per_shard)):
        path = folder / f"shard-{number:06d}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
            for key, files in samples[start : start + per_shard]:
                for ext, data in files.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    info.mtime = 0
                    archive.addfile(info, io.BytesIO(data))
        write_index(path)
        written.append(path)
    return written


class PackedFiles:
    """Files of a packed data set (`hpcai stage --pack`: `shards/*.tar` beside the manifests), found by the
    path the manifest names them by."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._members: dict[str, dict[str, Member]] = {}
        for shard in shard_files(folder):
            self._members.update(index_shard(shard))

    def __len__(self) -> int:
        return len(self._members)

    def get(self, name: str) -> Member | None:
        key, ext = split_key(name.lstrip("/").removeprefix("./"))
        return self._members.get(key, {}).get(ext)


def packed_files(data: Path) -> PackedFiles | None:
    """The packed files beside a data set's manifest, or None when it is not packed."""
    folder = (data.parent if data.is_file() else data) / PACKED_DIR
    return PackedFiles(folder) if folder.is_dir() and shard_files(folder) else None


PACKED_DIR = "shards"  # hpcai.backends.staging.pack.SHARDS_DIR
