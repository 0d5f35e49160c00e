#!/usr/bin/env bash
# A real sshd on 127.0.0.1 for hpcai's tests, with throwaway keys, a strict known_hosts file, a user CA
# (for OpenSSH certificate tests), an ssh_config entry `hpcai-test` that uses all of them, and DIR/sitebin
# first on the sessions' PATH (fixture site commands).
#
#   tests/infra/sshd.sh start DIR    writes DIR/{ssh_config,known_hosts,id_ed25519,ca,...}, starts sshd
#   tests/infra/sshd.sh stop DIR     stops it by its PID file
# Facts behind the settings: ../shared/notes/local-slurm-and-sshd.md (StrictModes no, /run/sshd).
set -euo pipefail

cmd=${1:-}
dir=${2:-/tmp/hpcai-sshd}
port=${HPCAI_SSHD_PORT:-2222}

start() {
  if ! command -v sshd >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server rsync >/dev/null
  fi
  mkdir -p "$dir" "$dir/sitebin"
  install -d -m 755 /run/sshd
  [ -f "$dir/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$dir/host_ed25519"
  [ -f "$dir/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C hpcai-test -f "$dir/id_ed25519"
  [ -f "$dir/ca" ] || ssh-keygen -q -t ed25519 -N '' -C hpcai-test-ca -f "$dir/ca"
  cp "$dir/id_ed25519.pub" "$dir/authorized_keys"
  # A host certificate signed by the same CA (known_hosts @cert-authority tests); plain-key clients still
  # get the plain host key, as at sites that publish both.
  [ -f "$dir/host_ed25519-cert.pub" ] || ssh-keygen -q -s "$dir/ca" -h -I hpcai-test-host -n 127.0.0.1 -V -5m:+52w \
    "$dir/host_ed25519.pub"
  echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$dir/host_ed25519.pub")" > "$dir/known_hosts"
  cat > "$dir/sshd_config" <<CONF
Port $port
ListenAddress 127.0.0.1
HostKey $dir/host_ed25519
HostCertificate $dir/host_ed25519-cert.pub
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
TrustedUserCAKeys $dir/ca.pub
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
MaxStartups 50
MaxSessions 50
# Site commands (saldo, jutil, lumi-allocations, sbank, lumi-quota) are fixture scripts in sitebin,
# first on the PATH of every session, as a site's own tools are on its login nodes.
SetEnv PATH=$dir/sitebin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CONF
  cat > "$dir/ssh_config" <<CONF
Host hpcai-test
  HostName 127.0.0.1
  Port $port
  User $(id -un)
  IdentityFile $dir/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $dir/known_hosts
  StrictHostKeyChecking yes
CONF
  if [ -f "$dir/sshd.pid" ] && kill -0 "$(cat "$dir/sshd.pid" 2>/dev/null)" 2>/dev/null; then
    return 0
  fi
  /usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log"
  for _ in $(seq 50); do
    ssh -F "$dir/ssh_config" -o BatchMode=yes hpcai-test true 2>/dev/null && return 0
    sleep 0.1
  done
  echo "sshd did not come up; see $dir/sshd.log" >&2
  return 1
}

stop() {
  if [ -f "$dir/sshd.pid" ]; then
    kill "$(cat "$dir/sshd.pid" 2>/dev/null)" 2>/dev/null || true
    rm -f "$dir/sshd.pid"
  fi
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
