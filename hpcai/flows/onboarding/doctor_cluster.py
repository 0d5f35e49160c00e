"""`hpcai doctor`, the checks on the cluster: scheduler (the backend's own probe), account, budget, quota,
purge, container, Python, the job environment, offline settings."""

from __future__ import annotations

import shlex
from pathlib import Path

from hpcai.backends.quota import Usage, df_usage, parse_lumi_quota, usage_for
from hpcai.errors import HpcaiError
from hpcai.flows.budget.query import BudgetUnavailable, find_allocation, job_cost, query_allocations
from hpcai.flows.onboarding.checks import Check, Doctor, Status, onboard_hint, worst
from hpcai.paths import state_dir
from hpcai.render.script import OFFLINE_ENV
from hpcai.spec.profiles import expand_path

# -- on the cluster ------------------------------------------------------------------------------------------


def _run(doctor: Doctor, argv: list[str], timeout: float = 60) -> tuple[bool, str]:
    assert doctor.transport is not None
    result = doctor.transport.run(argv, timeout=timeout)
    return result.ok, (result.stdout if result.ok else (result.stderr or result.stdout).strip())


def check_scheduler(doctor: Doctor) -> None:
    """The scheduler answers, and offers the partitions (queues) the profile names: the backend's probe."""
    from hpcai.backends.schedulers import SchedulerError, scheduler_for

    if doctor.profile.scheduler == "local":
        doctor.add(Check("scheduler", "skip", "the local profile runs jobs without a scheduler."))
        return
    assert doctor.transport is not None
    scheduler = scheduler_for(doctor.profile, doctor.transport)
    scheduler.retries = 1  # doctor reports what it sees; a retry storm helps nobody
    try:
        offered = scheduler.queues()
    except SchedulerError as exc:
        doctor.add(Check("scheduler", "fail", f"{exc}.", scheduler.probe_fix))
        return
    _report_queues(doctor, scheduler.label, scheduler.queue_noun, offered)


def _report_queues(doctor: Doctor, scheduler: str, noun: str, offered: set[str]) -> None:
    """The scheduler answered: do the partitions (queues) the profile names exist?"""
    listed = ", ".join(sorted(offered)) or "none listed"
    missing = [p.name for p in doctor.profile.partitions if p.name not in offered]
    if missing:
        doctor.add(
            Check(
                "scheduler",
                "warn",
                f"{scheduler} answers, but has no {noun} {', '.join(missing)} as the profile says ({noun}s: {listed}).",
                f"The site may have renamed it: override `partitions` in your copy of the profile "
                f"(~/.config/hpcai/clusters/{doctor.cluster}.yaml).",
            )
        )
        return
    doctor.add(Check("scheduler", "pass", f"{scheduler} answers; {noun}s {listed}."))


def _load_allocations(doctor: Doctor) -> None:
    if doctor.allocations is not None or doctor.budget_error is not None or doctor.profile.budget.query is None:
        return
    assert doctor.transport is not None
    try:
        doctor.allocations = query_allocations(
            doctor.transport, doctor.profile, account=doctor.settings.account, user=doctor.remote_user
        )
    except BudgetUnavailable as exc:
        doctor.budget_error = str(exc)


def _switch_hint(cluster: str, account: str) -> str:
    return f"{onboard_hint(cluster, f' --account {account}')} (or set account in config.toml [clusters.{cluster}])"


def check_account(doctor: Doctor) -> None:
    account = doctor.settings.account
    if account is None:
        doctor.add(Check("account", "skip", "no account configured (none needed here)."))
        return
    _load_allocations(doctor)
    yours: list[str] = []
    source = ""
    if doctor.allocations:
        yours, source = sorted({a.account for a in doctor.allocations}), f"`{doctor.profile.budget.query}`"
    elif doctor.profile.scheduler == "slurm":
        ok, out = _run(
            doctor, ["sacctmgr", "-n", "-P", "show", "assoc", f"user={doctor.remote_user}", "format=account"]
        )
        if ok and out.strip():
            yours, source = sorted(set(out.split())), "Slurm's associations (sacctmgr)"
    if not yours:
        doctor.add(Check("account", "skip", f"could not list your accounts to compare '{account}' with."))
        return
    if account.lower() not in {a.lower() for a in yours}:
        doctor.add(
            Check(
                "account",
                "fail",
                f"account '{account}' is not one of yours; {source} lists {', '.join(yours)}.",
                _switch_hint(doctor.cluster, yours[0]),
                {"accounts": yours},
            )
        )
        return
    doctor.add(Check("account", "pass", f"'{account}' is one of your accounts ({source}).", None, {"accounts": yours}))


def check_budget(doctor: Doctor) -> None:
    budget, account = doctor.profile.budget, doctor.settings.account
    if budget.query is None:
        doctor.add(Check("budget", "skip", "the profile names no budget command."))
        return
    _load_allocations(doctor)
    if doctor.budget_error is not None:
        doctor.add(
            Check(
                "budget",
                "warn",
                doctor.budget_error,
                "See the site's accounting page; "
                f"`{budget.commands[0] if budget.commands else budget.query}` by hand shows what it says.",
            )
        )
        return
    allocation = find_allocation(doctor.allocations or [], account) if account else None
    if allocation is None:
        doctor.add(Check("budget", "skip", "no allocation row for the configured account (see `account`)."))
        return
    details = {"allocation": allocation.to_json()}
    left = f"{allocation.remaining:,.0f} of {allocation.total:,.0f} {allocation.unit} left"
    others = [
        a for a in doctor.allocations or [] if a.account != allocation.account and a.remaining > 0 and not a.expired()
    ]
    switch = (
        f" Or use {others[0].account} ({others[0].remaining:,.0f} left): "
        + _switch_hint(doctor.cluster, others[0].account)
        if others
        else ""
    )
    if allocation.expired():
        doctor.add(
            Check(
                "budget",
                "fail",
                f"the allocation of '{allocation.account}' ended on {allocation.end}.",
                "Ask your PI to renew it or apply for a new one." + switch,
                details,
            )
        )
        return
    if allocation.remaining <= 0:
        doctor.add(
            Check(
                "budget",
                "fail",
                f"the budget of '{allocation.account}' is exhausted: {allocation.used:,.0f} "
                f"of {allocation.total:,.0f} {allocation.unit} used.",
                "Jobs will not start (or run at the lowest priority). Ask your PI for more hours or apply "
                "for a new allocation." + switch,
                details,
            )
        )
        return
    one_node_hour = job_cost(doctor.profile, 1, 3600).amount
    if allocation.used_fraction >= 0.9 or allocation.remaining < one_node_hour:
        doctor.add(
            Check(
                "budget",
                "warn",
                f"'{allocation.account}': only {left} ({allocation.used_fraction:.0%} used).",
                "Plan the remaining runs with `hpcai budget`; ask your PI for more in time.",
                details,
            )
        )
        return
    until = f", until {allocation.end}" if allocation.end else ""
    doctor.add(Check("budget", "pass", f"'{allocation.account}': {left}{until}.", None, details))


def _filesystem_paths(doctor: Doctor) -> dict[str, str]:
    values = {"state_dir": str(state_dir())}
    if doctor.settings.user or doctor.remote_user:
        values["user"] = doctor.settings.user or doctor.remote_user or ""
    if doctor.settings.account:
        values["account"] = doctor.settings.account
    paths = {}
    for name, fs in doctor.profile.filesystems.items():
        try:
            paths[name] = expand_path(fs.path, values, field=f"filesystems.{name}.path")
        except HpcaiError:
            continue
    return paths


def check_quota(doctor: Doctor) -> None:
    quota = doctor.profile.quota
    paths = _filesystem_paths(doctor)
    rows: list[Usage] | None = None
    if quota.format == "lumi-quota" and quota.query:
        ok, out = _run(doctor, shlex.split(quota.query))
        rows = parse_lumi_quota(out) if ok else None
        if rows is None:
            doctor.add(Check("quota", "warn", f"`{quota.query}` failed: {out}.", "Run it by hand to see your quota."))
            return
    results: list[tuple[str, Status, str]] = []
    measured: dict[str, object] = {}
    for name, path in paths.items():
        usage = usage_for(rows, path) if rows is not None else df_usage(doctor.transport, path)  # type: ignore[arg-type]
        if usage is None:
            continue
        measured[name] = usage.to_json()
        worst_pct = max(p for p in (usage.space_percent, usage.files_percent, 0.0) if p is not None)
        status: Status = (
            "fail" if worst_pct >= quota.fail_percent else "warn" if worst_pct >= quota.warn_percent else "pass"
        )
        space = f"{usage.space_percent:.0f}% of space" if usage.space_percent is not None else "space n/a"
        files = f"{usage.files_percent:.0f}% of files" if usage.files_percent is not None else "files n/a"
        results.append((name, status, f"{name} ({path}): {space}, {files}"))
    if not results:
        doctor.add(Check("quota", "skip", "none of the profile's filesystems exists yet (or none could be measured)."))
        return
    status = worst([s for _, s, _ in results])
    bad = [text for _, s, text in results if s == status] if status != "pass" else [t for _, _, t in results]
    fix = None
    if status != "pass":
        fix = (
            "Free space or files there: delete old runs and checkpoints (`hpcai list`, then remove their run "
            "directories), stage data sets of many small files packed (`hpcai stage --pack`, or `--squashfs`: few "
            "inodes), or ask the site for more quota."
        )
    doctor.add(Check("quota", status, "; ".join(bad) + ".", fix, {"filesystems": measured}))


def check_purge(doctor: Doctor) -> None:
    paths = _filesystem_paths(doctor)
    purging = {n: fs.purge_days for n, fs in doctor.profile.filesystems.items() if fs.purge_days and n in paths}
    if not purging:
        doctor.add(Check("purge", "skip", "no filesystem of this profile is purged."))
        return
    at_risk: list[str] = []
    for name, days in purging.items():
        root = f"{paths[name].rstrip('/')}/hpcai"
        margin = max(days - 7, 1)
        ok, out = _run(doctor, ["find", root, "-type", "f", "-mtime", f"+{margin}"], timeout=120)
        old = [line for line in out.splitlines() if line.strip()] if ok else []
        if old:
            at_risk.append(
                f"{len(old)} file(s) under {root} are older than {margin} days; {name} deletes files after {days} days"
            )
    if at_risk:
        doctor.add(
            Check(
                "purge",
                "warn",
                "; ".join(at_risk) + ".",
                "Re-stage them (`hpcai stage PATH` sends only what is gone) or move what you keep to a "
                "filesystem that is not purged (data_filesystem in config.toml).",
            )
        )
        return
    doctor.add(
        Check(
            "purge",
            "pass",
            "nothing hpcai staged is close to the purge limit "
            f"({', '.join(f'{n}: {d} days' for n, d in purging.items())}).",
        )
    )


def check_container(doctor: Doctor) -> None:
    container = doctor.profile.container
    if container is None:
        doctor.add(Check("container", "skip", "the profile uses no container runtime."))
        return
    lookup = f"command -v {shlex.quote(container.runtime)}"
    if container.modules:  # `module` is a shell function that only a login shell defines
        modules = " ".join(shlex.quote(m) for m in container.modules)
        argv = ["bash", "-lc", f"module load {modules} >/dev/null 2>&1; {lookup}"]
    else:
        argv = ["sh", "-c", lookup]
    ok, out = _run(doctor, argv)
    if not ok or not out.strip():
        doctor.add(
            Check(
                "container",
                "fail",
                f"`{container.runtime}` is not available on the login node.",
                "Ask the site which module provides it and set container.modules in your profile override.",
            )
        )
        return
    image = doctor.settings.container
    if image and doctor.transport is not None and not doctor.transport.exists(image):
        doctor.add(
            Check(
                "container",
                "fail",
                f"the container {image} (config.toml) is not on the cluster.",
                f"Stage it: `hpcai stage {Path(image).name} --cluster {doctor.cluster}`, or fix the path.",
            )
        )
        return
    if container.group is not None:
        found, groups = _run(doctor, ["id", "-Gn"])
        if found and container.group not in groups.split():
            doctor.add(
                Check(
                    "container",
                    "warn",
                    f"{container.runtime} is there, but you are not in the group '{container.group}' that "
                    f"{doctor.cluster} puts container users in: jobs with --container may be refused to start.",
                    container.group_request or "Ask the site how to get access to its container runtime.",
                )
            )
            return
    doctor.add(
        Check(
            "container", "pass", f"{container.runtime} at {out.strip()}" + (f"; image {image}" if image else "") + "."
        )
    )


def check_python(doctor: Doctor) -> None:
    python = doctor.profile.launch.python or "python3"
    if python == "current":
        doctor.add(Check("python", "skip", "jobs use the Python running hpcai."))
        return
    # In the site's software environment, where jobs get theirs from a scheduler option (CSCS's uenv).
    argv = [*doctor.profile.environment.enter, python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"]
    ok, out = _run(doctor, argv)
    if not ok:
        doctor.add(
            Check(
                "python",
                "fail",
                f"`{python}` does not run on the cluster: {out}.",
                "Load the site's Python module (modules.software in the profile) or use a container.",
            )
        )
        return
    version = out.strip()
    major_minor = tuple(int(x) for x in version.split(".")[:2])
    if major_minor < (3, 11):
        doctor.add(
            Check(
                "python",
                "warn",
                f"{python} on the login node is {version}; the hpcai runtime needs 3.11+.",
                "Jobs must get a newer Python from the container or the site's modules.",
            )
        )
        return
    doctor.add(Check("python", "pass", f"{python} {version}; `submit` stages the hpcai runtime with each run."))


def check_job_environment(doctor: Doctor) -> None:
    """The pre-flight `submit` runs: the job's Python, set up as its script does (modules, container, the
    environment `hpcai env build` makes), imports what the shipped training workloads need."""
    from hpcai.errors import ConfigError
    from hpcai.flows.preflight import JobEnvironment, run_preflight
    from hpcai.paths import state_dir
    from hpcai.spec.jobenv import resolve
    from hpcai.spec.jobspec import path_placeholders
    from hpcai.spec.workloads import load_workload

    assert doctor.transport is not None
    settings = doctor.settings
    places = path_placeholders(settings, settings.account, state_dir())
    try:
        job_env = resolve(doctor.profile, placeholders=places, container=settings.container, own_python=settings.python)
    except ConfigError as exc:
        doctor.add(Check("job-environment", "warn", f"not checked: {exc}", "Set `account` for this cluster."))
        return
    built = job_env if job_env.built_by_hpcai else None
    env = JobEnvironment(doctor.cluster, doctor.profile, job_env.python, job_env.image, built)
    workload = load_workload("llava")
    result = run_preflight(doctor.transport, env, workload)  # a pass is remembered for a day, as by submit
    rebuild = f"`hpcai env build --cluster {doctor.cluster} --rebuild`"
    if not result.checked:
        doctor.add(Check("job-environment", "warn", f"not checked: {result.summary}.",
                         "Check from a compute node (an interactive job) that the job's Python imports "
                         + ", ".join(workload.spec.requires) + "."))  # fmt: skip
    elif result.missing_environment:
        doctor.add(Check("job-environment", "fail", f"jobs cannot start: {result.summary}",
                         f"`hpcai env build --cluster {doctor.cluster}`."))  # fmt: skip
    elif not result.ok:
        fix = (
            f"Rebuild it: {rebuild}."
            if built is not None
            else f"Install {', '.join(workload.spec.requires)} where `{job_env.python}` runs (after the profile's "
            "modules), or set a container (`container` in config.toml)."
        )
        doctor.add(Check("job-environment", "fail", f"jobs cannot train here: {result.summary}.", fix))
    else:
        when = " (checked earlier today)" if result.cached else ""
        doctor.add(Check("job-environment", "pass", f"the job's Python has {result.summary}{when}."))


def check_package_index(doctor: Doctor) -> None:
    """Where `env build` pips on the login node: does it reach the package index from there?"""
    spec = doctor.profile.environment
    if spec.default == "modules" or doctor.profile.launch.python == "current" or doctor.transport is None:
        doctor.add(Check("package-index", "skip", "no job environment is built on this cluster."))
        return
    from hpcai.flows.wheels import index_reachable

    if spec.internet is False or spec.platform is not None:
        doctor.add(Check("package-index", "pass", "env build downloads the wheels on your machine and installs "
                         "them offline there (the profile's environment.internet/platform)."))  # fmt: skip
    elif index_reachable(doctor.transport, doctor.profile):
        doctor.add(Check("package-index", "pass", "the login node reaches the package index (env build pips there)."))
    else:
        doctor.add(Check("package-index", "warn", "the login node does not reach the package index.",
                         "`hpcai env build` then downloads the wheels on your machine and stages them by itself "
                         "(--offline does so always)."))  # fmt: skip


def check_offline(doctor: Doctor) -> None:
    if doctor.profile.compute_internet:
        doctor.add(Check("offline", "pass", "compute nodes reach the internet; nothing to set."))
        return
    names = " ".join(f"{k}={v}" for k, v in OFFLINE_ENV.items())
    doctor.add(
        Check(
            "offline",
            "pass",
            f"compute nodes have no internet: job scripts export {names}; models and "
            "data must be on the cluster first (`submit` stages local paths, `hpcai stage` any other).",
        )
    )
