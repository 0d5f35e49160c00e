"""`hpcai doctor`: every check a support engineer would run for a newcomer, each with the exact fix.

Checks run in order and later ones build on earlier ones: no login, no remote checks (they are reported
as skipped, with the reason). Nothing here changes anything on either machine.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hpcai.budget.parsers import Allocation
from hpcai.budget.query import BudgetUnavailable, find_allocation, job_cost, query_allocations
from hpcai.errors import HpcaiError
from hpcai.onboarding.checks import Check, Status, worst
from hpcai.onboarding.keys import keygen_argv
from hpcai.paths import state_dir
from hpcai.profiles import ClusterProfile, expand_path, load_profile, resolve_alias
from hpcai.quota import Usage, df_usage, parse_lumi_quota, usage_for
from hpcai.render import OFFLINE_ENV
from hpcai.transport.base import Transport
from hpcai.userconfig import ClusterSettings, config_path, load_user_config

if TYPE_CHECKING:  # paramiko loads only when a check needs SSH
    import paramiko

    from hpcai.transport.ssh import SshTarget

SCHEDULER_COMMAND = {"slurm": "sbatch", "pbs": "qsub"}


def _onboard_hint(cluster: str, flag: str = "") -> str:
    return f"`hpcai onboard --cluster {cluster}{flag}`"


@dataclass
class Doctor:
    cluster: str
    profile: ClusterProfile
    settings: ClusterSettings = field(default_factory=ClusterSettings)
    transport: Transport | None = None
    remote_user: str | None = None
    allocations: list[Allocation] | None = None
    budget_error: str | None = None
    checks: list[Check] = field(default_factory=list)
    progress: Callable[[Check], None] | None = None  # told of each check as it finishes

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        if self.progress is not None:
            self.progress(check)
        return check

    def skip_rest(self, names: list[str], reason: str) -> None:
        for name in names:
            self.add(Check(name, "skip", reason))


REMOTE_CHECKS = ["scheduler", "account", "budget", "quota", "purge", "container", "python", "job-environment"]


def run_doctor(cluster_name: str, *, progress: Callable[[Check], None] | None = None) -> list[Check]:
    cluster = resolve_alias(cluster_name)
    profile = load_profile(cluster)
    doctor = Doctor(cluster, profile, progress=progress)
    try:
        if not _check_config(doctor):
            doctor.skip_rest(["login", *REMOTE_CHECKS], "needs a valid config.toml")
            return doctor.checks
        if doctor.settings.ssh_host is not None:
            if not _check_ssh(doctor):
                ssh_steps = ["ssh-key", "certificate", "host-key", "login"]
                if profile.access.method != "ssh-certificate":
                    ssh_steps.remove("certificate")
                done = {c.name for c in doctor.checks}
                doctor.skip_rest([n for n in ssh_steps if n not in done], "needs the SSH checks above to pass")
                doctor.skip_rest(REMOTE_CHECKS, "needs a working SSH login")
                return doctor.checks
        else:
            from hpcai.transport.local import LocalTransport

            doctor.transport = LocalTransport()
        assert doctor.transport is not None  # the login check or the local branch set it
        who = doctor.transport.run(["id", "-un"])
        doctor.remote_user = who.stdout.strip() if who.ok else doctor.settings.user
        for check in (
            _check_scheduler,
            _check_account,
            _check_budget,
            _check_quota,
            _check_purge,
            _check_container,
            _check_python,
            _check_job_environment,
        ):
            check(doctor)
        _check_offline(doctor)
        return doctor.checks
    finally:
        if doctor.transport is not None:
            doctor.transport.close()


# -- configuration ------------------------------------------------------------------------------------------


def _check_config(doctor: Doctor) -> bool:
    cluster, profile = doctor.cluster, doctor.profile
    try:
        config = load_user_config()
    except HpcaiError as exc:
        doctor.add(
            Check("config", "fail", str(exc), f"Fix the file, or move it aside and run {_onboard_hint(cluster)}.")
        )
        return False
    doctor.settings = settings = config.for_cluster(cluster)
    path = config_path()
    problems: list[str] = []
    flags: list[str] = []
    if not settings.user and any("{user}" in fs.path for fs in profile.filesystems.values()):
        problems.append("no user: its paths need your login name")
        flags.append(" --user <login name>")
    if profile.account_required and not settings.account:
        problems.append("no account: jobs there must name one (the project from your allocation mail)")
        flags.append(" --account <project>")
    if settings.ssh_host is None and profile.scheduler in SCHEDULER_COMMAND:
        command = SCHEDULER_COMMAND[profile.scheduler]
        if shutil.which(command) is None:
            problems.append(f"no ssh_host, and no `{command}` here, so this is not its login node")
    if problems:
        doctor.add(
            Check(
                "config",
                "fail",
                f"{path}, cluster {cluster}: " + "; ".join(problems) + ".",
                f"Run {_onboard_hint(cluster, ''.join(flags))}: it asks for what is missing and writes the "
                "SSH entry too.",
            )
        )
        return False
    where = f"over SSH via `{settings.ssh_host}`" if settings.ssh_host else "on this machine"
    account = f", account {settings.account}" if settings.account else ""
    if not path.is_file():
        # Nothing is wrong (the defaults reach this cluster), but nothing is written down either.
        hint = f"Run {_onboard_hint(cluster)} to write one (default cluster, account, SSH host)."
        doctor.add(Check("config", "warn", f"no {path}: built-in defaults, {cluster} reached {where}.", hint))
        return True
    doctor.add(Check("config", "pass", f"{path}: {cluster} reached {where}{account}."))
    return True


# -- SSH ------------------------------------------------------------------------------------------------------


def _check_ssh(doctor: Doctor) -> bool:
    import paramiko

    from hpcai.session import transport_for
    from hpcai.transport.known_hosts import KnownHosts
    from hpcai.transport.ssh import SshError, fingerprint, resolve_target, ssh_config_path

    cluster, profile, alias = doctor.cluster, doctor.profile, doctor.settings.ssh_host
    assert alias is not None
    target = resolve_target(alias)
    config_file = ssh_config_path()
    if target.hostname == alias and alias not in profile.access.login_hosts:
        doctor.add(
            Check(
                "ssh-config",
                "fail",
                f"{config_file} has no `Host {alias}` entry, so `{alias}` names no machine.",
                f"{_onboard_hint(cluster)} writes one (HostName {profile.access.login_hosts[0]}).",
            )
        )
        return False
    doctor.add(Check("ssh-config", "pass", f"`{alias}` is {target.user}@{target.hostname}:{target.port}."))

    # Keys: the files the entry names, else the agent's keys.
    agent_keys = paramiko.Agent().get_keys() if os.environ.get("SSH_AUTH_SOCK") else ()
    missing = [p for p in target.identity_files if not p.is_file()]
    present = [p for p in target.identity_files if p.is_file()]
    upload = next((s for s in profile.access.steps if "upload" in s.lower() or "add the public key" in s.lower()), "")
    if missing and not agent_keys:
        key = missing[0]
        doctor.add(
            Check(
                "ssh-key",
                "fail",
                f"the key {key} named in {config_file} (Host {alias}) does not exist, and no agent holds a key.",
                f"Create it with `{shlex.join(keygen_argv(profile, key))}` (with a passphrase), then register "
                f"{key}.pub with the site. {upload}".strip(),
            )
        )
        return False
    if not present and not agent_keys and not target.identity_files:
        defaults = [Path("~/.ssh", n).expanduser() for n in ("id_ed25519", "id_ecdsa", "id_rsa")]
        if not any(p.is_file() for p in defaults):
            doctor.add(
                Check(
                    "ssh-key",
                    "fail",
                    "no SSH key: none named in the ssh config, none in ~/.ssh, none in an agent.",
                    f"Create one with `ssh-keygen -t ed25519` and register the .pub file with the site. {upload}",
                )
            )
            return False
    encrypted = [p for p in present if _encrypted(p)]
    summary = ", ".join(str(p) for p in present) or "default keys"
    if agent_keys:
        summary += f"; {len(agent_keys)} key(s) in the agent"
    if encrypted and not agent_keys:
        doctor.add(
            Check(
                "ssh-key",
                "warn",
                f"{encrypted[0]} has a passphrase and no agent is running, so hpcai cannot use it.",
                f"Start an agent and load the key: `eval $(ssh-agent)` and `ssh-add {encrypted[0]}`.",
            )
        )
    else:
        doctor.add(Check("ssh-key", "pass", summary + "."))

    if profile.access.method == "ssh-certificate" and not _check_certificate(doctor, target, agent_keys):
        return False

    # Host key, before any login: the user must have accepted it knowingly.
    known_hosts = KnownHosts.load(target.known_hosts)
    known = known_hosts.host_keys.lookup(target.known_hosts_name)
    authorities = known_hosts.authorities_for(target.known_hosts_name)
    if not known and authorities:
        doctor.add(Check("host-key", "pass", f"{target.known_hosts_name} is trusted through a @cert-authority line "
                         "of known_hosts (its host certificate is checked at login)."))  # fmt: skip
    elif not known:
        offered = _offered_key(target.hostname, target.port) if not target.proxy_jump else None
        seen = f" It offers {offered}." if offered else ""
        doctor.add(
            Check(
                "host-key",
                "fail",
                f"{target.known_hosts_name} is not in known_hosts "
                f"({', '.join(str(p) for p in target.known_hosts)}).{seen}",
                "Compare the fingerprint with the one your site publishes for its login nodes; if it matches, "
                f"accept it once with `ssh {alias}` (answer yes). hpcai never accepts host keys itself.",
            )
        )
        return False
    else:
        key = next(iter(known.values()))
        doctor.add(
            Check("host-key", "pass", f"{target.known_hosts_name} is known ({key.get_name()} {fingerprint(key)}).")
        )

    transport = transport_for(doctor.cluster, profile)
    try:
        result = transport.run(["true"], timeout=30)
    except SshError as exc:
        doctor.add(Check("login", "fail", f"`{alias}`: the login failed.", str(exc)))
        transport.close()
        return False
    if not result.ok:
        doctor.add(
            Check(
                "login",
                "fail",
                f"`{alias}`: `true` failed ({result.stderr.strip()}).",
                f"Try `ssh {alias} true` and read what the site says.",
            )
        )
        return False
    doctor.transport = transport
    doctor.add(Check("login", "pass", f"logged in to {target.hostname} as {target.user}."))
    return True


def _encrypted(path: Path) -> bool:
    from hpcai.transport.ssh import load_private_key

    try:
        return load_private_key(path) is None
    except Exception:  # unreadable keys are the login check's to report
        return False


def _offered_key(host: str, port: int) -> str | None:
    """The host key a server offers, read from the key exchange alone (no login, nothing stored)."""
    import socket

    import paramiko

    from hpcai.transport.ssh import fingerprint

    try:
        with socket.create_connection((host, port), timeout=10) as sock:
            transport = paramiko.Transport(sock)
            try:
                transport.start_client(timeout=10)
                key = transport.get_remote_server_key()
                return f"a {key.get_name()} key with fingerprint {fingerprint(key)}"
            finally:
                transport.close()
    except (OSError, paramiko.SSHException):
        return None


def _check_certificate(doctor: Doctor, target: SshTarget, agent_keys: Sequence[paramiko.PKey]) -> bool:
    from hpcai.transport.ssh import collect_certificates

    found = collect_certificates(target, [key.asbytes() for key in agent_keys])
    renew = next((s for s in doctor.profile.access.steps if "every day" in s.lower()), doctor.profile.access.notes)
    if not found:
        doctor.add(
            Check(
                "certificate",
                "fail",
                "this site logs in with short-lived SSH certificates and none was "
                "found (neither beside the key nor in the agent).",
                renew,
            )
        )
        return False
    newest = max(found, key=lambda c: c.valid_before)
    hours = newest.hours_left()
    when = f"{newest.valid_before:%Y-%m-%d %H:%M} UTC"
    if hours <= 0:
        doctor.add(
            Check(
                "certificate",
                "fail",
                f"your certificate '{newest.key_id}' expired at {when} ({-hours:.1f} h ago).",
                renew,
                {"hours_left": round(hours, 2)},
            )
        )
        return False
    status: Status = "warn" if hours < 1 else "pass"
    doctor.add(
        Check(
            "certificate",
            status,
            f"certificate '{newest.key_id}' valid for {hours:.1f} h more (until {when}).",
            renew if status == "warn" else None,
            {"hours_left": round(hours, 2)},
        )
    )
    return True


# -- on the cluster ------------------------------------------------------------------------------------------


def _run(doctor: Doctor, argv: list[str], timeout: float = 60) -> tuple[bool, str]:
    assert doctor.transport is not None
    result = doctor.transport.run(argv, timeout=timeout)
    return result.ok, (result.stdout if result.ok else (result.stderr or result.stdout).strip())


def _check_scheduler(doctor: Doctor) -> None:
    kind = doctor.profile.scheduler
    if kind == "local":
        doctor.add(Check("scheduler", "skip", "the local profile runs jobs without a scheduler."))
        return
    if kind == "slurm":
        ok, out = _run(doctor, ["sinfo", "-h", "-o", "%P"])
        if not ok:
            doctor.add(
                Check(
                    "scheduler",
                    "fail",
                    f"`sinfo` failed: {out or 'no output'}.",
                    "Check that you are on a login node of the cluster and that Slurm answers "
                    "(`sinfo`); during maintenance it does not.",
                )
            )
            return
        _report_queues(doctor, "Slurm", "partition", {p.strip().rstrip("*") for p in out.split()})
        return
    ok, out = _run(doctor, ["qstat", "-Q"])
    if not ok:
        doctor.add(
            Check(
                "scheduler",
                "fail",
                f"`qstat -Q` failed: {out or 'no output'}.",
                "Check that you are on a login node of the cluster and that PBS answers (`qstat -Q`).",
            )
        )
        return
    # Queue table: a header, a dashes line, then one row per queue (name first).
    lines = out.splitlines()
    rows = lines[next((i + 1 for i, line in enumerate(lines) if line.startswith("---")), 0) :]
    _report_queues(doctor, "PBS", "queue", {line.split()[0] for line in rows if line.split()})


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
    return f"{_onboard_hint(cluster, f' --account {account}')} (or set account in config.toml [clusters.{cluster}])"


def _check_account(doctor: Doctor) -> None:
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


def _check_budget(doctor: Doctor) -> None:
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


def _check_quota(doctor: Doctor) -> None:
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
            "directories), pack many small files into archives (inodes), or ask the site for more quota."
        )
    doctor.add(Check("quota", status, "; ".join(bad) + ".", fix, {"filesystems": measured}))


def _check_purge(doctor: Doctor) -> None:
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


def _check_container(doctor: Doctor) -> None:
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
    doctor.add(
        Check(
            "container", "pass", f"{container.runtime} at {out.strip()}" + (f"; image {image}" if image else "") + "."
        )
    )


def _check_python(doctor: Doctor) -> None:
    python = doctor.profile.launch.python or "python3"
    if python == "current":
        doctor.add(Check("python", "skip", "jobs use the Python running hpcai."))
        return
    ok, out = _run(doctor, [python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"])
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


def _check_job_environment(doctor: Doctor) -> None:
    """The pre-flight `submit` runs: the job's Python, set up as its script does (modules, container, the
    environment `hpcai env build` makes), imports what the shipped training workloads need."""
    from hpcai.errors import ConfigError
    from hpcai.jobenv import resolve
    from hpcai.jobspec import path_placeholders
    from hpcai.paths import state_dir
    from hpcai.preflight import JobEnvironment, run_preflight
    from hpcai.workloads import load_workload

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


def _check_offline(doctor: Doctor) -> None:
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


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status == "fail" for c in checks) else 0
