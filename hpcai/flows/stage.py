"""`hpcai stage` and staging on submit: which filesystem, progress, purge and quota warnings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcai.backends.session import Session
from hpcai.backends.staging import HashCache, Stager, StageReport, rsync_available
from hpcai.backends.transport.base import Transport
from hpcai.errors import HpcaiError, closest
from hpcai.flows.progress import reporter
from hpcai.paths import state_dir
from hpcai.spec.profiles import ClusterProfile, expand_path, load_profile, resolve_alias
from hpcai.spec.userconfig import load_user_config


def store_root(
    cluster: str, profile: ClusterProfile, filesystem: str | None, account: str | None = None
) -> tuple[str, str]:
    """The staging store's filesystem and folder; `account` (e.g. from --account) outranks config.toml's."""
    settings = load_user_config().for_cluster(cluster)
    name = filesystem or settings.data_filesystem or profile.runs_on
    if name not in profile.filesystems:
        known = list(profile.filesystems)
        where = "--to" if filesystem else f"config.toml [clusters.{cluster}] data_filesystem"
        raise HpcaiError(
            f"{where}: '{name}' is not a filesystem of {cluster}.{closest(name, known)} Known: {', '.join(known)}."
        )
    values = {"user": settings.user or "user", "state_dir": str(state_dir())}
    if account or settings.account:
        values["account"] = str(account or settings.account)
    root = expand_path(profile.filesystems[name].path, values, field=f"filesystems.{name}.path")
    return name, f"{root.rstrip('/')}/hpcai/store"


def _stager(transport: Transport, root: str, progress: Any, group_shared: bool) -> Stager:
    from hpcai.backends.transport.ssh import SshTransport
    from hpcai.backends.transport.ssh_config import ssh_config_path

    rsync_target = rsync_ssh = None
    if isinstance(transport, SshTransport) and rsync_available(transport):
        rsync_target = f"{transport.target.alias}:"
        rsync_ssh = ["ssh", "-F", str(transport.config_path or ssh_config_path()), "-o", "BatchMode=yes",
                     "-o", "StrictHostKeyChecking=yes"]  # fmt: skip
    return Stager(transport, root, progress=progress, rsync_target=rsync_target, rsync_ssh=rsync_ssh,
                  group_shared=group_shared)  # fmt: skip


@dataclass(frozen=True)
class StageItem:
    """A local file or folder to stage; `keep_name` lands a folder as `<tree>/<name>/` (a package)."""

    path: Path
    keep_name: bool = False


def stage_paths(
    cluster: str,
    paths: list[Path] | list[StageItem],
    *,
    filesystem: str | None = None,
    show_progress: bool = True,
    keep_name: bool = False,
    verify: bool = False,
    follow_links: bool = False,
    account: str | None = None,
    pack: bool = False,
    shard_bytes: int | None = None,
    squashfs: bool = False,
) -> list[StageReport]:
    """Stage files or folders over the session's connection to the cluster, with one progress bar. With
    `pack`, each folder is first packed into tar shards (hpcai.backends.staging.pack) and the packed copy staged;
    with `squashfs`, each folder is staged as one SquashFS image (hpcai.backends.staging.squash)."""
    if pack and squashfs:
        raise HpcaiError("stage: --pack and --squashfs are two ways to do the same thing; choose one.")
    cluster = resolve_alias(cluster)
    profile = load_profile(cluster)
    fs_name, root = store_root(cluster, profile, filesystem, account)
    items = [p if isinstance(p, StageItem) else StageItem(p.expanduser(), keep_name) for p in paths]
    packed: dict[int, Any] = {}
    originals = [item.path for item in items]
    cache = HashCache()
    if pack:
        packed = _pack_items(items, shard_bytes, show_progress, cache)
        items = [StageItem(packed[i].folder, item.keep_name) if i in packed else item for i, item in enumerate(items)]
    squashed: dict[int, Any] = _squash_items(items, show_progress) if squashfs else {}
    items = [StageItem(squashed[i].image) if i in squashed else item for i, item in enumerate(items)]
    transport = Session.current().get(cluster).transport
    total = sum(_size(item.path) for item in items)
    warnings = []
    fs = profile.filesystems[fs_name]
    if fs.purge_days:
        warnings.append(
            f"{fs_name} deletes files unused for {fs.purge_days} days: staged copies there can vanish before a "
            f"long run ends; re-staging is cheap (only missing files move), or stage with --to to a safer one."
        )
    inodes = _inode_warning(transport, profile, fs_name, root, sum(_count_files(item.path) for item in items))
    if inodes is not None:
        warnings.append(inodes)
    reports = []
    with reporter(show_progress).counter(f"staging to {cluster}:{fs_name}", total, eta=True) as advance:
        stager = _stager(transport, root, advance, fs.share_with_group)
        try:
            for item in items:
                report = stager.stage(item.path, cache, keep_name=item.keep_name, verify=verify,
                                      follow_links=follow_links)  # fmt: skip
                report.warnings = warnings
                reports.append(report)
            for i, done in packed.items():
                reports[i].source = str(originals[i])
                reports[i].packed = {
                    "files_before": done.files_before, "files_after": done.files_after, "shards": done.shards,
                    "packed_copy": str(done.folder), "reused": done.reused,
                }  # fmt: skip
            from hpcai.backends.staging.squash import container_bind

            for i, image in squashed.items():
                reports[i].source = str(originals[i])
                reports[i].squashfs = {
                    "files_before": image.files_before, "image": str(image.image), "reused": image.reused,
                    "bind": container_bind(reports[i].remote_path, "/data"),
                }  # fmt: skip
        finally:
            cache.save()
    return reports


def _pack_items(
    items: list[StageItem], shard_bytes: int | None, show_progress: bool, hashes: HashCache
) -> dict[int, Any]:
    """Pack every folder among the items (files stay as they are); {item index: Packed}."""
    from hpcai.backends.staging.pack import DEFAULT_SHARD_BYTES, pack

    found = {}
    folders = [(i, item) for i, item in enumerate(items) if item.path.is_dir()]
    for i, item in folders:
        with reporter(show_progress).counter(f"packing {item.path.name}", _size(item.path)) as advance:
            found[i] = pack(item.path, shard_bytes=shard_bytes or DEFAULT_SHARD_BYTES, progress=advance, hashes=hashes)
    return found


def _squash_items(items: list[StageItem], show_progress: bool) -> dict[int, Any]:
    """Every folder among the items as a SquashFS image (files stay as they are); {item index: Squashed}."""
    from hpcai.backends.staging.squash import squash

    found = {}
    for i, item in enumerate(items):
        if not item.path.is_dir():
            continue
        with reporter(show_progress).counter(f"building {item.path.name}.sqfs", _size(item.path)) as advance:
            found[i] = squash(item.path, progress=advance)
    return found


def parse_bytes(text: str, *, option: str) -> int:
    """`256M`, `1G`, `500000`: a size in bytes (K/M/G/T are powers of 1024)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, unit = text.strip().upper().rstrip("B").rstrip("I"), ""
    if number and number[-1] in units:
        number, unit = number[:-1], number[-1]
    try:
        value = int(float(number) * units[unit])
    except ValueError:
        value = 0
    if value < 1 << 20:
        raise HpcaiError(f"{option} {text}: give a size of 1M or more, e.g. 256M or 1G.")
    return value


def _count_files(path: Path) -> int:
    """Files and folders under a path: the inodes a stage of it can take on the cluster at most."""
    try:
        return 1 if path.is_file() else 1 + sum(1 for _ in path.rglob("*"))
    except OSError:
        return 0


def _inode_warning(transport: Transport, profile: ClusterProfile, fs_name: str, root: str, files: int) -> str | None:
    """A warning when staging `files` more files could take the filesystem's file (inode) quota past the
    profile's warning level -- parallel filesystems cap files per project (LUMI 2M, JUWELS 3-4M) and a
    data set of small images reaches that long before its bytes do. Measured as doctor does (the site's
    quota tool, else `df -i`); nothing is said when it cannot be measured."""
    from hpcai.backends.quota import df_usage, parse_lumi_quota, usage_for

    if files < 1000:
        return None
    quota = profile.quota
    try:
        if quota.format == "lumi-quota" and quota.query:
            import shlex

            result = transport.run(shlex.split(quota.query), timeout=60)
            usage = usage_for(parse_lumi_quota(result.stdout), root) if result.ok else None
        else:
            probe = transport.run(["sh", "-c", 'p="$1"; while [ ! -e "$p" ]; do p=$(dirname "$p"); done; echo "$p"',
                                   "sh", root], timeout=30)  # fmt: skip
            usage = df_usage(transport, probe.stdout.strip() or "/") if probe.ok else None
    except HpcaiError:
        return None
    if usage is None or usage.files_used is None or not usage.files_max:
        return None
    after = 100 * (usage.files_used + files) / usage.files_max
    if after < quota.warn_percent:
        return None
    return (
        f"{fs_name} holds {usage.files_used:,.0f} of its {usage.files_max:,.0f} files (inodes); this stage can add up "
        f"to {files:,} ({after:.0f}% then). Pack folders of many small files into shards (`hpcai stage --pack`: "
        "a few files per GB instead of one per sample; or `--squashfs`: one file, mounted by the job), or free files "
        "there."
    )


def _size(path: Path) -> int:
    """Bytes under a path, for the progress bar (links and special files count as nothing)."""
    try:
        if path.is_file():
            return path.stat().st_size
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    except OSError:
        return 0
