"""`hpcai doctor`: every check a support engineer would run for a newcomer, each with the exact fix.

Checks run in order and later ones build on earlier ones: no login, no remote checks (they are reported
as skipped, with the reason). Nothing here changes anything on either machine.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

from hpcai.errors import HpcaiError
from hpcai.flows.onboarding.checks import Check, Doctor, onboard_hint
from hpcai.flows.onboarding.doctor_cluster import (
    check_account,
    check_budget,
    check_container,
    check_job_environment,
    check_offline,
    check_package_index,
    check_purge,
    check_python,
    check_quota,
    check_scheduler,
)
from hpcai.flows.onboarding.doctor_ssh import check_ssh
from hpcai.spec.profiles import load_profile, resolve_alias
from hpcai.spec.userconfig import config_path, load_user_config

SCHEDULER_COMMAND = {"slurm": "sbatch", "pbs": "qsub"}


REMOTE_CHECKS = ["scheduler", "account", "budget", "quota", "purge", "container", "python", "job-environment"]


def run_doctor(cluster_name: str, *, progress: Callable[[Check], None] | None = None) -> list[Check]:
    cluster = resolve_alias(cluster_name)
    profile = load_profile(cluster)
    doctor = Doctor(cluster, profile, progress=progress)
    try:
        if not check_config(doctor):
            doctor.skip_rest(["login", *REMOTE_CHECKS], "needs a valid config.toml")
            return doctor.checks
        if doctor.settings.ssh_host is not None:
            if not check_ssh(doctor):
                ssh_steps = ["ssh-key", "certificate", "host-key", "login"]
                if profile.access.method != "ssh-certificate":
                    ssh_steps.remove("certificate")
                done = {c.name for c in doctor.checks}
                doctor.skip_rest([n for n in ssh_steps if n not in done], "needs the SSH checks above to pass")
                doctor.skip_rest(REMOTE_CHECKS, "needs a working SSH login")
                return doctor.checks
        else:
            from hpcai.backends.transport.local import LocalTransport

            doctor.transport = LocalTransport()
        assert doctor.transport is not None  # the login check or the local branch set it
        who = doctor.transport.run(["id", "-un"])
        doctor.remote_user = who.stdout.strip() if who.ok else doctor.settings.user
        for check in (
            check_scheduler,
            check_account,
            check_budget,
            check_quota,
            check_purge,
            check_container,
            check_python,
            check_package_index,
            check_job_environment,
        ):
            check(doctor)
        check_offline(doctor)
        return doctor.checks
    finally:
        if doctor.transport is not None:
            doctor.transport.close()


# -- configuration ------------------------------------------------------------------------------------------


def check_config(doctor: Doctor) -> bool:
    cluster, profile = doctor.cluster, doctor.profile
    try:
        config = load_user_config()
    except HpcaiError as exc:
        doctor.add(
            Check("config", "fail", str(exc), f"Fix the file, or move it aside and run {onboard_hint(cluster)}.")
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
                f"Run {onboard_hint(cluster, ''.join(flags))}: it asks for what is missing and writes the "
                "SSH entry too.",
            )
        )
        return False
    where = f"over SSH via `{settings.ssh_host}`" if settings.ssh_host else "on this machine"
    account = f", account {settings.account}" if settings.account else ""
    if not path.is_file():
        # Nothing is wrong (the defaults reach this cluster), but nothing is written down either.
        hint = f"Run {onboard_hint(cluster)} to write one (default cluster, account, SSH host)."
        doctor.add(Check("config", "warn", f"no {path}: built-in defaults, {cluster} reached {where}.", hint))
        return True
    doctor.add(Check("config", "pass", f"{path}: {cluster} reached {where}{account}."))
    return True


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status == "fail" for c in checks) else 0
