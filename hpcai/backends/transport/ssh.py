"""Transport over SSH (paramiko), as HPC users need it.

- Honours `~/.ssh/config` (or `$HPCAI_SSH_CONFIG`): Host aliases, HostName, User, Port, IdentityFile,
  CertificateFile, UserKnownHostsFile, ProxyJump (one hop or a chain).
- Keys from the files named there and from ssh-agent; OpenSSH certificates (Leonardo's 12-hour 2FA
  certificates) are checked before connecting: an expired one is reported with how to renew it.
- Strict host key checking against known_hosts: an unknown or changed key stops with its fingerprint and
  how to verify it; nothing is ever accepted silently, nothing is written to known_hosts.
- One connection per command (hpcai.backends.session.Session), re-established with backoff when it drops; commands
  that must not run twice (sbatch) are not retried after a drop.
- No secret ever reaches a log or the store: errors name files and fingerprints, never key material.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import paramiko

from hpcai.backends.transport.base import CommandResult, Input, Transport
from hpcai.backends.transport.certs import parse_certificate_file
from hpcai.backends.transport.known_hosts import CertificateFirstTransport, KnownHosts
from hpcai.backends.transport.ssh_config import (
    RejectUnknown,
    SshError,
    SshOutcomeUnknown,
    SshRefused,
    check_certificates,
    fingerprint,
    load_private_key,
    resolve_target,
    ssh_config_path,
)

T = TypeVar("T")


ZERO_BLOCK = bytes(1 << 20)


class SshTransport(Transport):
    def __init__(
        self,
        alias: str,
        *,
        config_path: Path | None = None,
        renew_hint: str = "Get a new certificate as your site describes (e.g. `step ssh login ...`).",
        connect_timeout: float = 15,
        retries: int = 4,
        backoff_s: float = 0.5,
        via: str | None = None,
        certificates_required: bool = False,
    ) -> None:
        target = resolve_target(alias, config_path)
        # A chain `ProxyJump a,b` reaches b through a: the last hop is our jump, the rest is its own path.
        self.target = target if via is None else replace(target, proxy_jump=via or None)
        self.config_path = config_path
        self.renew_hint = renew_hint
        # Sites that log in by certificate only (Leonardo): an expired one is the error, not a fallback.
        self.certificates_required = certificates_required
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._jump: SshTransport | None = None
        self.connects = 0  # how many times a connection was made (tests: reuse and reconnect)
        self.operations = 0  # remote operations (commands, file reads and writes): tests and benchmarks

    # -- connection -----------------------------------------------------------------------------------

    def _keys(self) -> list[paramiko.PKey]:
        keys = []
        for path in self.target.identity_files:
            if not path.is_file():
                continue
            try:
                key = load_private_key(path)
            except (paramiko.SSHException, ValueError) as exc:
                raise SshError(f"{self.target.alias}: cannot read the key {path} ({exc}).") from None
            if key is None:
                continue  # encrypted: the agent holds it, or it cannot be used without a prompt
            for cert in self.target.certificate_files:
                info = parse_certificate_file(cert.read_text()) if cert.is_file() else None
                if cert.name == path.name + "-cert.pub" and info is not None and not info.expired():
                    key.load_certificate(str(cert))
            keys.append(key)
        return keys

    def connect(self) -> paramiko.SSHClient:
        if self._client is not None and self._client.get_transport() is not None:
            transport = self._client.get_transport()
            if transport is not None and transport.is_active():
                return self._client
        self.close()
        target = self.target
        agent_keys = paramiko.Agent().get_keys() if os.environ.get("SSH_AUTH_SOCK") else ()
        if self.certificates_required:
            check_certificates(target, [k.asbytes() for k in agent_keys], self.renew_hint)
        client = paramiko.SSHClient()
        known = KnownHosts.load(target.known_hosts)
        client.get_host_keys()._entries.extend(known.host_keys._entries)
        client.set_missing_host_key_policy(RejectUnknown(target, known))
        # A host trusted through a @cert-authority line: ask it for its certificate first.
        factory = CertificateFirstTransport if known.authorities_for(target.known_hosts_name) else None
        sock: Any = None
        if target.proxy_jump:
            hop = target.proxy_jump.split(",")
            self._jump = (
                SshTransport(",".join(hop[:-1]) or hop[-1], config_path=self.config_path)
                if len(hop) > 1
                else SshTransport(hop[0], config_path=self.config_path)
            )
            jump_client = self._jump.connect()
            jump_transport = jump_client.get_transport()
            assert jump_transport is not None
            sock = jump_transport.open_channel("direct-tcpip", (target.hostname, target.port), ("127.0.0.1", 0))
        keys = self._keys()
        last_error: Exception | None = None
        for pkey in keys or [None]:
            try:
                client.connect(
                    target.hostname,
                    port=target.port,
                    username=target.user,
                    pkey=pkey,
                    allow_agent=True,
                    look_for_keys=not target.identity_files,
                    timeout=self.connect_timeout,
                    banner_timeout=self.connect_timeout,
                    auth_timeout=self.connect_timeout,
                    sock=sock,
                    transport_factory=factory,
                )
                self._refuse_revoked(client, known)
                self._client = client
                self.connects += 1
                return client
            except paramiko.BadHostKeyException as exc:
                raise SshError(
                    f"{target.alias} ({target.known_hosts_name}): the host key CHANGED. Expected "
                    f"{fingerprint(exc.expected_key)} (from known_hosts), got {fingerprint(exc.key)}. This can be "
                    "a re-installed login node or an attack: check the fingerprint your site publishes; if the "
                    f"site announced new keys, remove the old one with `ssh-keygen -R '{target.known_hosts_name}'` "
                    f"and accept the new one with `ssh {target.alias}`."
                ) from None
            except paramiko.AuthenticationException as exc:
                last_error = exc
            except SshError:
                raise
            except (OSError, paramiko.SSHException) as exc:
                raise SshError(
                    f"{target.alias} ({target.hostname}:{target.port}): cannot connect ({exc}). Check the network "
                    f"(VPN?), the host name in {self.config_path or ssh_config_path()}, and try `ssh {target.alias}`."
                ) from None
        raise SshError(
            f"{target.alias}: the server refused every key (user {target.user}; keys: "
            + (", ".join(str(p) for p in target.identity_files) or "the agent's and ~/.ssh/id_*")
            + f"). Load your key into the agent (`ssh-add`), check `User` in the ssh config, and try "
            f"`ssh {target.alias}`. ({last_error})"
        )

    def _refuse_revoked(self, client: paramiko.SSHClient, known: KnownHosts) -> None:
        transport = client.get_transport()
        key = transport.get_remote_server_key() if transport is not None else None
        if key is not None and key.asbytes() in known.revoked:
            client.close()
            raise SshError(
                f"{self.target.alias} ({self.target.known_hosts_name}): its host key {fingerprint(key)} is marked "
                "@revoked in known_hosts, so hpcai will not use this connection. Ask your site which login node "
                "keys are current."
            )

    def close(self) -> None:
        for closer in (self._sftp, self._client):
            if closer is not None:
                with contextlib.suppress(Exception):
                    closer.close()
        self._sftp = None
        self._client = None
        if self._jump is not None:
            self._jump.close()
            self._jump = None

    def _retrying(self, operation: Callable[[], T], *, idempotent: bool = True) -> T:
        self.operations += 1
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return operation()
            except SshError:
                raise
            except (TimeoutError, paramiko.SSHException, EOFError, OSError) as exc:
                if self._refused(exc):
                    raise SshRefused(
                        f"{self.target.alias}: the server refused the operation ({exc.__class__.__name__}: {exc})."
                    ) from None
                if not idempotent or attempt == self.retries:
                    raise (SshError if idempotent else SshOutcomeUnknown)(
                        f"{self.target.alias}: the connection dropped ({exc.__class__.__name__}: {exc})"
                        + ("" if idempotent else "; the command was not repeated, as it must not run twice")
                        + ". Run hpcai again; `hpcai status` finds what was submitted."
                    ) from None
                self.close()
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _refused(self, exc: BaseException) -> bool:
        """An SFTP status error (a plain OSError or PermissionError) while the link is still up, as opposed
        to a dropped link (socket errors, EOF, timeouts)."""
        if not isinstance(exc, OSError) or isinstance(exc, TimeoutError | ConnectionError | EOFError):
            return False
        if str(exc) == "Socket is closed":
            return False
        transport = self._client.get_transport() if self._client is not None else None
        return transport is not None and transport.is_active()

    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._sftp = self.connect().open_sftp()
        return self._sftp

    # -- Transport -------------------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 60,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        idempotent: bool = True,
        input: Input = None,
    ) -> CommandResult:
        command = shlex.join(argv)
        if env:
            command = shlex.join(["env", *(f"{k}={v}" for k, v in env.items())]) + " " + command
        if cwd:
            command = f"cd {shlex.quote(cwd)} && {command}"

        def execute() -> CommandResult:
            # SSHClient.exec_command, minus its stdin file: a ChannelStdinFile left to the garbage collector
            # can be finalised on paramiko's transport thread while that thread holds the channel lock,
            # and its close() takes the same lock -- a deadlock (seen: doctor hanging on its next command).
            # Input is sent on the channel itself, then stdin is shut.
            channel = self._open_session(timeout)
            try:
                channel.settimeout(timeout)
                channel.exec_command(command)
                # As memoryviews: paramiko's sendall re-slices what is left after every packet, which for
                # bytes copies the rest each time -- quadratic: 8.8 s for one 39 MB chunk, 0.25 s as a view.
                if isinstance(input, bytes):
                    channel.sendall(memoryview(input))
                elif input is not None:
                    for chunk in input:
                        channel.sendall(memoryview(chunk))
                channel.shutdown_write()
                out = channel.makefile("rb").read().decode("utf-8", errors="replace")
                err = channel.makefile_stderr("rb").read().decode("utf-8", errors="replace")
                code = channel.recv_exit_status()
                link = channel.get_transport()
                if code == -1 and (link is None or not link.is_active()):
                    # paramiko ends a channel whose link died as if the command had exited -1: the command may
                    # have run or not, and that is a dropped link, not a result.
                    raise EOFError("the link closed before the command's exit status came")
            except TimeoutError:
                return CommandResult(tuple(argv), 124, "", f"timed out after {timeout:g} s")
            finally:
                channel.close()
            return CommandResult(tuple(argv), code, out, err)

        streamed = input is not None and not isinstance(input, bytes)  # an iterator cannot be replayed
        return self._retrying(execute, idempotent=idempotent and not streamed)

    def _open_session(self, timeout: float) -> paramiko.Channel:
        """A new channel for a command. A server that allows few sessions per connection (`MaxSessions 1`)
        refuses it while our SFTP channel is open: that channel is closed and the open tried once more.
        A refused channel never ran anything, so this is safe for sbatch too."""
        transport = self.connect().get_transport()
        assert transport is not None
        try:
            return transport.open_session(timeout=timeout)
        except paramiko.ChannelException as exc:
            if self._sftp is None:
                raise SshError(
                    f"{self.target.alias}: the server refused a new session ({exc}); nothing was run. Its "
                    "MaxSessions setting may be too low, or too many hpcai commands run at once; try again."
                ) from None
            with contextlib.suppress(Exception):
                self._sftp.close()
            self._sftp = None
            for attempt in range(20):  # the server frees the session once it has seen our close
                time.sleep(0.02 * (attempt + 1))
                with contextlib.suppress(paramiko.ChannelException):
                    return transport.open_session(timeout=timeout)
            raise SshError(
                f"{self.target.alias}: the server refused a new session even with no other open ({exc}); "
                "nothing was run. Try again; if it persists, ask your site about its MaxSessions limit."
            ) from None

    def write_bytes(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        def write() -> None:
            sftp = self._sftp_client()
            tmp = f"{path}.hpcai-tmp-{os.getpid()}"
            with sftp.open(tmp, "w") as handle:
                handle.set_pipelined(True)
                handle.write(data)
            if int(sftp.stat(tmp).st_size or 0) != len(data):  # pipelined writes report no errors
                with contextlib.suppress(OSError):
                    sftp.remove(tmp)
                raise SshRefused(f"{self.target.alias}: cannot write {path}: the server stored a short file "
                                 "(disk or quota full?).")  # fmt: skip
            sftp.chmod(tmp, mode)
            sftp.posix_rename(tmp, path)

        self._retrying(write)

    def _regular(self, path: str) -> int | None:
        """The size of `path` when it is a regular file; None for anything else (missing, a folder, a FIFO
        that would block the SFTP server's read forever)."""
        try:
            st = self._sftp_client().stat(path)
        except FileNotFoundError:
            return None
        return int(st.st_size or 0) if st.st_mode is not None and stat.S_ISREG(st.st_mode) else None

    def read_text(self, path: str) -> str | None:
        def read() -> str | None:
            if self._regular(path) is None:
                return None
            try:
                with self._sftp_client().open(path, "r") as handle:
                    return bytes(handle.read()).decode("utf-8", errors="replace")
            except FileNotFoundError:
                return None

        return self._retrying(read)

    def read_from(self, path: str, offset: int, limit: int | None = None) -> bytes:
        def read() -> bytes:
            if self._regular(path) is None:
                return b""
            try:
                with self._sftp_client().open(path, "r") as handle:
                    handle.seek(offset)
                    return bytes(handle.read(limit))
            except FileNotFoundError:
                return b""

        return self._retrying(read)

    def tail(self, path: str, max_bytes: int) -> bytes:
        def read() -> bytes:
            try:
                sftp = self._sftp_client()
                size = self._regular(path)
                if size is None:
                    return b""
                with sftp.open(path, "r") as handle:
                    handle.seek(max(0, size - max_bytes))
                    return bytes(handle.read())
            except FileNotFoundError:
                return b""

        return self._retrying(read)

    def read_many(self, paths: Sequence[str], max_bytes: int) -> dict[str, tuple[bytes, int] | None]:
        """One remote command for any number of files: the paths go in on stdin (NUL-separated, so no
        command-line limit), each tail comes back framed by a marker line no file holds."""
        if not paths:
            return {}
        marker = "@@hpcai-" + os.urandom(8).hex()
        each = (
            'm=$1; n=$2; shift 2; for f; do if [ -f "$f" ]; then s=$(wc -c < "$f"); printf "\\n%s 1 %s\\n" "$m" "$s"; '
            'tail -c "$n" -- "$f"; else printf "\\n%s 0 0\\n" "$m"; fi; done'
        )
        script = 'xargs -0 sh -c "$0" sh "$1" "$2"'
        argv = ["sh", "-c", script, each, marker, str(max_bytes)]
        result = self.run(argv, timeout=300, input=b"".join(os.fsencode(p) + b"\0" for p in paths))
        parts = result.stdout.split(f"\n{marker} ")[1:]
        if not result.ok or len(parts) != len(paths):
            return super().read_many(paths, max_bytes)  # something odd (unreadable file): one by one
        found: dict[str, tuple[bytes, int] | None] = {}
        for path, part in zip(paths, parts, strict=True):
            header, _, body = part.partition("\n")
            exists, _, size = header.partition(" ")
            found[path] = (body.encode("utf-8"), int(size.strip() or 0)) if exists == "1" else None
        return found

    def list_dir(self, path: str) -> list[str]:
        def listing() -> list[str]:
            try:
                return sorted(self._sftp_client().listdir(path))
            except FileNotFoundError:
                return []

        return self._retrying(listing)

    def size(self, path: str) -> int | None:
        def stat() -> int | None:
            try:
                return int(self._sftp_client().stat(path).st_size or 0)
            except FileNotFoundError:
                return None

        return self._retrying(stat)

    def put_file(
        self,
        local: str,
        remote: str,
        *,
        offset: int = 0,
        progress: Callable[[int], None] | None = None,
        sparse: bool = False,
    ) -> None:
        """Pipelined SFTP writes (without pipelining SFTP crawls at ~1 MB/s), appending from `offset`. A
        dropped link is re-opened and the upload goes on from what arrived; a refused write (full disk or
        quota) stops with what to do, keeping what arrived."""
        position = [offset]

        def upload() -> None:
            sftp = self._sftp_client()
            start = position[0]
            if start != offset:  # after a drop: go on from what really arrived
                try:
                    start = min(start, int(sftp.stat(remote).st_size or 0))
                except FileNotFoundError:
                    start = 0
            with open(local, "rb") as source, sftp.open(remote, "r+b" if start else "wb") as target:
                target.set_pipelined(True)
                target.truncate(start)
                target.seek(start)
                source.seek(start)
                while chunk := source.read(1 << 20):
                    if sparse and chunk == ZERO_BLOCK[: len(chunk)]:
                        target.seek(target.tell() + len(chunk))  # a hole: nothing written
                    else:
                        target.write(chunk)
                    position[0] += len(chunk)
                    if progress:
                        progress(len(chunk))
                end = source.tell()
            arrived = int(sftp.stat(remote).st_size or 0)
            if sparse and arrived < end:
                sftp.truncate(remote, end)  # a file ending in a hole gets its full length
            elif arrived != end:
                # Pipelined writes report no errors (paramiko drops their status replies): a short file
                # is how a refused write (full disk, quota) shows.
                raise SshRefused(f"{self.target.alias}: the server stored {arrived} of {end} bytes.")

        try:
            self._retrying(upload)
        except SshRefused as exc:  # paramiko's SFTP errors ("Failure") while the link is up
            free = self._free_hint(remote)
            raise SshError(
                f"{self.target.alias}: the upload to {remote} stopped: {exc} "
                f"Its disk or your quota is probably full{free}. What arrived is kept: free space (or stage "
                "elsewhere with --to) and run the same command again; it goes on from there."
            ) from None

    def _free_hint(self, remote: str) -> str:
        with contextlib.suppress(Exception):
            result = self.run(["df", "-Pk", os.path.dirname(remote)], timeout=15)
            fields = result.stdout.strip().splitlines()[-1].split()
            return f" ({int(fields[3]) / 1e6:.2f} GB free there)"
        return ""

    def makedirs(self, path: str) -> None:
        result = self.run(["mkdir", "-p", path])
        if not result.ok:
            raise SshError(f"{self.target.alias}: cannot create {path}: {result.stderr.strip()}")

    def exists(self, path: str) -> bool:
        def stat() -> bool:
            try:
                self._sftp_client().stat(path)
                return True
            except FileNotFoundError:
                return False

        return self._retrying(stat)
