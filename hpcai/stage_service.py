"""`hpcai stage` and staging on submit: which filesystem, progress, purge and quota warnings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from hpcai.errors import HpcaiError, closest
from hpcai.output import error_console
from hpcai.paths import state_dir
from hpcai.profiles import ClusterProfile, expand_path, load_profile, resolve_alias
from hpcai.session import Session
from hpcai.staging import HashCache, Stager, StageReport, rsync_available
from hpcai.transport.base import Transport
from hpcai.userconfig import load_user_config


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
    from hpcai.transport.ssh import SshTransport, ssh_config_path

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
) -> list[StageReport]:
    """Stage files or folders over the session's connection to the cluster, with one progress bar."""
    cluster = resolve_alias(cluster)
    profile = load_profile(cluster)
    fs_name, root = store_root(cluster, profile, filesystem, account)
    items = [p if isinstance(p, StageItem) else StageItem(p.expanduser(), keep_name) for p in paths]
    transport = Session.current().get(cluster).transport
    cache = HashCache()
    total = sum(_size(item.path) for item in items)
    warnings = []
    fs = profile.filesystems[fs_name]
    if fs.purge_days:
        warnings.append(
            f"{fs_name} deletes files unused for {fs.purge_days} days: staged copies there can vanish before a "
            f"long run ends; re-staging is cheap (only missing files move), or stage with --to to a safer one."
        )
    reports = []
    with Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=error_console, disable=not show_progress, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task(f"staging to {cluster}:{fs_name}", total=total)
        stager = _stager(transport, root, lambda n: bar.advance(task, n), fs.share_with_group)
        try:
            for item in items:
                report = stager.stage(item.path, cache, keep_name=item.keep_name, verify=verify,
                                      follow_links=follow_links)  # fmt: skip
                report.warnings = warnings
                reports.append(report)
        finally:
            cache.save()
    return reports


def _size(path: Path) -> int:
    """Bytes under a path, for the progress bar (links and special files count as nothing)."""
    try:
        if path.is_file():
            return path.stat().st_size
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    except OSError:
        return 0
