"""`hpcai onboard`: ask (or take from flags) who the user is on a cluster, write the SSH entry and
config.toml, explain the site's access procedure. `doctor` then says what is still missing."""

from __future__ import annotations

import getpass
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcai.errors import HpcaiError
from hpcai.flows.onboarding.configfile import ConfigChange, update_cluster_settings
from hpcai.flows.onboarding.keys import keygen_argv
from hpcai.flows.onboarding.sshconfig import HostEntry, SshConfigChange, write_host_entry
from hpcai.spec.profile_parts import DIRECTIVE_VALUE
from hpcai.spec.profiles import ClusterProfile, load_profile, profile_names, resolve_alias
from hpcai.spec.userconfig import load_user_config

# ask(question, default, choices) -> answer; confirm(question, default) -> bool
Ask = Callable[[str, str | None, list[str] | None], str]
Confirm = Callable[[str, bool], bool]


@dataclass
class OnboardRequest:
    cluster: str | None = None
    user: str | None = None
    account: str | None = None
    host_alias: str | None = None
    identity_file: str | None = None
    data_filesystem: str | None = None
    make_default: bool | None = None
    here: bool = False  # hpcai runs on the cluster's login node itself: no SSH entry, no ssh_host


@dataclass
class OnboardResult:
    cluster: str
    settings: dict[str, str | None]
    steps: list[str]
    ssh: SshConfigChange | None
    config: ConfigChange
    notes: list[str] = field(default_factory=list)
    public_key: str | None = None  # what to register with the site (the .pub of the key in the entry)

    def to_json(self) -> dict[str, Any]:
        ssh = None
        if self.ssh is not None:
            ssh = {
                "path": str(self.ssh.path),
                "changed": self.ssh.changed,
                "backup": _str(self.ssh.backup),
                "message": self.ssh.reason,
            }
        return {
            "cluster": self.cluster,
            "settings": self.settings,
            "access_steps": self.steps,
            "ssh_config": ssh,
            "config": {
                "path": str(self.config.path),
                "changed": self.config.changed,
                "backup": _str(self.config.backup),
            },
            "notes": self.notes,
            "public_key": self.public_key,
        }


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def site_clusters() -> list[str]:
    return [n for n in profile_names() if load_profile(n).access.method != "local"]


def _missing(flag: str, what: str) -> HpcaiError:
    return HpcaiError(f"onboard: {what} is needed; pass {flag} (or run `hpcai onboard` in a terminal to be asked).")


def _default_identity(profile: ClusterProfile) -> str | None:
    """The key the site's own steps have the user create (the entry must name that one: with IdentitiesOnly
    no other is offered), else one of the usual keys that exists; none where a certificate in the agent
    is how one logs in."""
    if profile.access.key_file is not None:
        return profile.access.key_file
    for name in ("id_ed25519", "id_ecdsa", "id_rsa"):
        if Path("~/.ssh", name).expanduser().is_file():
            return f"~/.ssh/{name}"
    return None if profile.access.method == "ssh-certificate" else "~/.ssh/id_ed25519"


# A login name as Unix and the sites allow it (no blanks, quotes or shell characters: it lands in
# ~/.ssh/config, config.toml and filesystem paths).
LOGIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def onboard(
    request: OnboardRequest,
    *,
    ask: Ask | None = None,
    confirm: Confirm | None = None,
    explain: Callable[[str], None] | None = None,
    create_key: Callable[[list[str]], None] | None = None,
) -> OnboardResult:
    """Resolve every answer (asking when `ask` is given and a flag is missing), then write the files.
    `explain(cluster)` is called once the cluster is known, before any other question; `create_key(argv)`
    runs ssh-keygen in the user's terminal when they agree to create a missing key."""
    config = load_user_config()
    if request.cluster is None:
        if ask is None:
            raise _missing("--cluster", "the cluster")
        sites = site_clusters()
        request.cluster = ask("Cluster", sites[0] if sites else None, profile_names())
    cluster = resolve_alias(request.cluster)
    profile = load_profile(cluster)
    current = config.for_cluster(cluster)
    if explain is not None:
        explain(cluster)

    def value(
        given: str | None,
        question: str,
        default: str | None,
        flag: str,
        *,
        required: bool = True,
        choices: list[str] | None = None,
    ) -> str | None:
        if given is not None:
            return given
        if ask is not None:
            answer = ask(question, default, choices).strip()
            return answer or (None if not required else default)
        if default is not None or not required:
            return default
        raise _missing(flag, question.lower())

    remote = profile.access.method != "local" and not request.here
    user = value(
        request.user, f"Your login name on {cluster}", current.user or (None if remote else getpass.getuser()), "--user"
    )
    account = value(
        request.account,
        "Account / project that pays for your jobs",
        current.account,
        "--account",
        required=profile.account_required,
    )
    if user is not None and not LOGIN_NAME.fullmatch(user):
        raise HpcaiError(
            f"--user: '{user}' is not a login name (letters, digits and . _ - only, as the site spells it: "
            "the name in your account mail, not your e-mail address)."
        )
    if account is not None and not DIRECTIVE_VALUE.fullmatch(account):
        raise HpcaiError(
            f"--account: '{account}' is not an account name (letters, digits and . _ : + @ - only, e.g. "
            "EUHPC_D17_084 or project_465000123)."
        )
    filesystems = list(profile.filesystems)
    data_fs = value(
        request.data_filesystem,
        "Where staged data should live (" + ", ".join(f"{n}: {_describe_fs(profile, n)}" for n in filesystems) + ")",
        current.data_filesystem or profile.runs_on,
        "--data-on",
        choices=filesystems,
    )
    if data_fs not in filesystems:
        raise HpcaiError(f"--data-on: '{data_fs}' is not a filesystem of {cluster}. Known: {', '.join(filesystems)}.")
    notes: list[str] = []
    ssh_change = None
    ssh_host = None
    if remote:
        alias_default = current.ssh_host or (profile.aliases[0] if profile.aliases else cluster)
        alias = value(request.host_alias, "Name for the SSH Host entry", alias_default, "--host-alias")
        identity = value(
            request.identity_file,
            "SSH key file (empty: only keys held by your agent)",
            _default_identity(profile),
            "--identity",
            required=False,
        )
        assert alias is not None and user is not None
        entry = HostEntry(
            alias=alias,
            hostname=profile.access.login_hosts[0],
            user=user,
            port=profile.access.port,
            identity_file=identity or None,
            certificate_login=profile.access.method == "ssh-certificate",
            jump_host=profile.access.jump_host,
        )
        from hpcai.backends.transport.ssh_config import ssh_config_path

        path = ssh_config_path()
        if confirm is None or confirm(f"Write the `Host {alias}` entry to {path}?", True):
            ssh_change = write_host_entry(path, entry)
        else:
            notes.append(f"{path} was left as it is; add a `Host {alias}` entry for {entry.hostname} yourself.")
        ssh_host = alias
        certificate_site = profile.access.method == "ssh-certificate"
        if identity and not Path(identity).expanduser().is_file() and certificate_site:
            notes.append(
                f"{identity} does not exist. On {cluster} the site's login step puts a key and its certificate "
                "in your ssh-agent, so no key file is needed: run `hpcai onboard --identity ''` to leave it out."
            )
        elif identity and not Path(identity).expanduser().is_file():
            keygen = keygen_argv(profile, Path(identity).expanduser(), f"{user}@{cluster}")
            if (
                create_key is not None
                and confirm is not None
                and confirm(
                    f"{identity} does not exist. Create it now with ssh-keygen (it asks for a passphrase)?", True
                )
            ):
                create_key(keygen)
            if Path(identity).expanduser().is_file():
                notes.append(f"Created {identity}; register {identity}.pub with the site as the steps above say.")
            else:
                notes.append(
                    f"{identity} does not exist yet: create it with `{shlex.join(keygen)}` and "
                    "register the .pub file as the steps above say."
                )
    make_default = request.make_default
    if make_default is None:
        make_default = confirm(f"Make {cluster} your default cluster?", True) if confirm else False
    settings = {"user": user, "account": account, "ssh_host": ssh_host, "data_filesystem": data_fs}
    change = update_cluster_settings(cluster, settings, make_default=make_default)
    public_key = None
    if remote and identity:
        pub = Path(f"{Path(identity).expanduser()}.pub")
        public_key = pub.read_text(encoding="utf-8").strip() if pub.is_file() else None
    return OnboardResult(cluster, settings, access_steps(profile), ssh_change, change, notes, public_key)


def _describe_fs(profile: ClusterProfile, name: str) -> str:
    fs = profile.filesystems[name]
    facts = [f for f in (fs.quota, f"purged after {fs.purge_days} days" if fs.purge_days else None) if f]
    return " ".join(facts) if facts else fs.path


def access_steps(profile: ClusterProfile) -> list[str]:
    """The site's access procedure: its steps, else its one-paragraph notes."""
    return profile.access.steps or ([profile.access.notes] if profile.access.notes else [])
