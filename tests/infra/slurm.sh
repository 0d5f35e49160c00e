#!/usr/bin/env bash
# Bring up (or stop) a real single-node Slurm 22.05 on this machine for hpcai's tests:
# munge, MariaDB + slurmdbd (so sacct is real), slurmctld, slurmd, and the PBS wrappers (slurm-wlm-torque).
# No systemd is assumed: daemons are started directly and stopped by their PID files.
#
#   tests/infra/slurm.sh install   apt packages (idempotent)
#   tests/infra/slurm.sh start     configure and start everything; waits until the node is idle
#   tests/infra/slurm.sh stop      stop everything it started
#   tests/infra/slurm.sh status    exit 0 when the node answers and is usable
#
# Facts behind the settings: ../shared/notes/local-slurm-and-sshd.md (DefMemPerCPU, batch_sched_delay...).
set -euo pipefail

DIR=${HPCAI_SLURM_DIR:-/tmp/hpcai-slurm}
CLUSTER=hpcai
NODE=$(hostname -s)
DB_PASS=hpcai-test-only

log() { printf 'slurm-infra: %s\n' "$*" >&2; }

install_packages() {
  local missing=()
  for pkg in munge slurmctld slurmd slurm-client slurmdbd mariadb-server slurm-wlm-torque; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

running() {  # pidfile
  [ -f "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null
}

wait_for() {  # seconds description command...
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      log "timed out waiting for $what"
      return 1
    fi
    sleep 0.2
  done
}

write_configs() {
  mkdir -p "$DIR"/{state,spool,mysql-run} /etc/slurm/plugstack.conf.d
  local cpus sockets cores threads memory
  read -r cpus sockets cores threads memory < <(slurmd -C | awk '
    /NodeName/ { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
    END { print v["CPUs"], v["SocketsPerBoard"], v["CoresPerSocket"], v["ThreadsPerCore"], v["RealMemory"] }')
  cat > /etc/slurm/slurm.conf <<CONF
ClusterName=$CLUSTER
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=20
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
SchedulerParameters=batch_sched_delay=0,sched_interval=5
MailProg=/bin/true
ReturnToService=2
MinJobAge=300
KillWait=5
InactiveLimit=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
NodeName=$NODE CPUs=$cpus Sockets=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=01:00:00 State=UP
CONF
  cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=hpcai_slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
PidFile=$DIR/slurmdbd.pid
LogFile=$DIR/slurmdbd.log
CONF
  chmod 600 /etc/slurm/slurmdbd.conf   # slurmdbd refuses a readable one
  # PBS_JOBID / PBS_O_WORKDIR for jobs submitted through the qsub wrapper.
  local spank
  spank=$(find /usr/lib -name spank_pbs.so -print -quit 2>/dev/null || true)
  if [ -n "$spank" ]; then
    echo "optional $spank" > /etc/slurm/plugstack.conf.d/pbs.conf
  fi
}

start_munge() {
  install -d -o munge -g munge -m 755 /run/munge
  if ! pgrep -x munged >/dev/null; then
    runuser -u munge -- /usr/sbin/munged
  fi
  wait_for 10 munge munge -n
}

start_mariadb() {
  install -d -o mysql -g mysql -m 755 /run/mysqld
  if ! running /run/mysqld/hpcai.pid; then
    if [ ! -d /var/lib/mysql/mysql ]; then
      mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    fi
    setsid mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file=/run/mysqld/hpcai.pid \
      --innodb-use-native-aio=0 \
      >"$DIR/mariadb.log" 2>&1 < /dev/null &
  fi
  wait_for 30 mariadb mariadb -e "SELECT 1"
  # A database user of our own, its password set every time: a `slurm` user that a site or another
  # installation created (with its own password) is never touched, and never blocks this one.
  mariadb -e "CREATE USER IF NOT EXISTS 'hpcai_slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
              ALTER USER 'hpcai_slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
              GRANT ALL ON slurm_acct_db.* TO 'hpcai_slurm'@'localhost'; FLUSH PRIVILEGES;"
}

start_slurm() {
  if ! running "$DIR/slurmdbd.pid"; then
    slurmdbd
  fi
  wait_for 30 slurmdbd sacctmgr -n list cluster
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
  running "$DIR/slurmctld.pid" || slurmctld
  wait_for 30 slurmctld scontrol ping
  running "$DIR/slurmd.pid" || slurmd
  wait_for 60 "an idle node" node_idle
}

node_idle() {
  local state
  state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n 1)
  case "$state" in
    idle|mixed|allocated) return 0 ;;
    down*|drain*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true; return 1 ;;
    *) return 1 ;;
  esac
}

stop_all() {
  for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/slurmdbd.pid" /run/mysqld/hpcai.pid; do
    if running "$pidfile"; then
      kill "$(cat "$pidfile")" 2>/dev/null || true
      for _ in $(seq 50); do running "$pidfile" || break; sleep 0.1; done
    fi
  done
  pkill -x munged 2>/dev/null || true
}

case "${1:-}" in
  install) install_packages ;;
  start)
    install_packages
    write_configs
    start_munge
    start_mariadb
    start_slurm
    log "up: $(sinfo -h -o '%P %T %D')"
    ;;
  stop) stop_all ;;
  status) scontrol ping >/dev/null 2>&1 && node_idle ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
