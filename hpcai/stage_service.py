"""`hpcai stage` and staging on submit: which filesystem, progress, purge and quota warnings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from hpcai.errors import HpcaiError, closest
from hpcai.jobspec import Overrides
from hpcai.orchestrator import Backends
from hpcai.output import error_console
from hpcai.paths import state_dir
from hpcai.profiles import ClusterProfile, expand_path, load_profile, resolve_alias
from hpcai.staging import HashCache, Stager, StageReport, rsync_available
from hpcai.transport.base import Transport
from hpcai.userconfig import load_user_config


def store_root(cluster: str, profile: ClusterProfile, filesystem: str | None) -> tuple[str, str]:
    settings = load_user_config().for_cluster(cluster)
    name = filesystem or settings.data_filesystem or profile.runs_on
    if name not in profile.filesystems:
        known = list(profile.filesystems)
        where = "--to" if filesystem else f"config.toml [clusters.{cluster}] data_filesystem"
        raise HpcaiError(
            f"{where}: '{name}' is not a filesystem of {cluster}.{closest(name, known)} Known: {', '.join(known)}."
        )
    values = {"user": settings.user or "user", "state_dir": str(state_dir())}
    if settings.account:
        values["account"] = settings.account
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


def stage_paths(
    cluster: str,
    paths: list[Path],
    *,
    filesystem: str | None = None,
    show_progress: bool = True,
    keep_name: bool = False,
    verify: bool = False,
    follow_links: bool = False,
) -> list[StageReport]:
    cluster = resolve_alias(cluster)
    profile = load_profile(cluster)
    fs_name, root = store_root(cluster, profile, filesystem)
    backends = Backends()
    try:
        return _stage_with(backends, cluster, profile, fs_name, root, paths, show_progress=show_progress,
                           keep_name=keep_name, verify=verify, follow_links=follow_links)  # fmt: skip
    finally:
        backends.close()


def _stage_with(
    backends: Backends,
    cluster: str,
    profile: ClusterProfile,
    fs_name: str,
    root: str,
    paths: list[Path],
    *,
    show_progress: bool,
    keep_name: bool,
    verify: bool,
    follow_links: bool,
) -> list[StageReport]:
    transport = backends.get(cluster).transport
    cache = HashCache()
    total = sum(f.stat().st_size for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if _is_file(f))
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
            for path in paths:
                report = stager.stage(
                    path.expanduser(), cache, keep_name=keep_name, verify=verify, follow_links=follow_links
                )
                report.warnings = warnings
                reports.append(report)
        finally:
            cache.save()
    return reports


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


def stage_inputs_for_submit(cluster: str, workload: str, overrides: Overrides) -> Overrides:
    """On a cluster reached over SSH, local paths given as data/model_path/container are staged first and
    the job refers to the staged copies, not the laptop's paths."""
    cluster = resolve_alias(cluster)
    if load_user_config().for_cluster(cluster).ssh_host is None:
        return overrides
    new_set = []
    for item in overrides.set:
        key, _, value = item.partition("=")
        path = Path(value).expanduser()
        if key in {"data", "model_path"} and value and path.exists():
            (report,) = stage_paths(cluster, [path])
            new_set.append(f"{key}={report.remote_path}")
        else:
            new_set.append(item)
    container = overrides.container
    if container and Path(container).expanduser().is_file():
        (report,) = stage_paths(cluster, [Path(container).expanduser()])
        container = report.remote_path
    update: dict[str, object] = {"set": tuple(new_set), "container": container}
    profile = load_profile(cluster)
    if profile.launch.python != "current":
        # The job runs the workload code and the hpcai runtime from staged copies, not the laptop's.
        import hpcai
        from hpcai.workloads import load_workload

        (code,) = stage_paths(cluster, [load_workload(workload).directory])
        (package,) = stage_paths(cluster, [Path(hpcai.__file__).resolve().parent], keep_name=True)
        update.update(code_dir=code.remote_path, python_path=package.remote_path)
    return overrides.model_copy(update=update)
