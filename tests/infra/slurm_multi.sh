#!/usr/bin/env bash
# A second, real multi-node Slurm on this machine for the node-failure tests: its own slurmctld (cluster
# `hpcaimulti`, ports 6917/6918, accounting in the test slurmdbd) and one slurmd per node, each in a network
# namespace of its own (own address on a bridge, own hostname through a UTS namespace). `srun` crosses
# nodes over real sockets, a node whose processes are killed is marked DOWN by slurmctld itself, its job
# ends NODE_FAIL, and `--exclude` is Slurm's. Only the addresses created here are used (10.77.0.0/24).
#
#   tests/infra/slurm_multi.sh start      needs tests/infra/slurm.sh start first (munge, slurmdbd)
#   tests/infra/slurm_multi.sh stop
#   tests/infra/slurm_multi.sh status     exit 0 when all nodes are up
#   tests/infra/slurm_multi.sh kill NODE  what a crashed node does: every process in its namespace dies
#   tests/infra/slurm_multi.sh conf       print the path for SLURM_CONF
set -euo pipefail

DIR=${HPCAI_SLURM_MULTI_DIR:-/tmp/hpcai-slurm-multi}
CONF=$DIR/slurm.conf
CLUSTER=hpcaimulti
NODES=(hn1 hn2 hn3)
BRIDGE=hpcai-br0
NET=10.77.0
HOSTS_MARK="# hpcai-slurm-multi"

log() { printf 'slurm-multi: %s\n' "$*" >&2; }

address() {  # node -> its address
  local i
  for i in "${!NODES[@]}"; do
    if [ "${NODES[$i]}" = "$1" ]; then echo "$NET.$((11 + i))"; return; fi
  done
  return 1
}

write_config() {
  mkdir -p "$DIR/state"
  local cpus memory
  read -r cpus memory < <(slurmd -C | awk '/NodeName/ { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
    END { print v["CPUs"], v["RealMemory"] }')
  memory=$((memory / ${#NODES[@]}))
  {
    cat <<CONF
ClusterName=$CLUSTER
SlurmctldHost=$(hostname -s)($NET.1)
SlurmctldPort=6917
SlurmdPort=6918
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=20
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool-%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
SchedulerParameters=batch_sched_delay=0,sched_interval=5
MailProg=/bin/true
ReturnToService=2
SlurmdTimeout=10
MinJobAge=300
KillWait=5
InactiveLimit=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
CONF
    for node in "${NODES[@]}"; do
      echo "NodeName=$node NodeAddr=$(address "$node") CPUs=$cpus RealMemory=$memory State=UNKNOWN"
    done
    echo "PartitionName=multi Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=01:00:00 State=UP"
  } > "$CONF"
}

network_up() {
  ip link show "$BRIDGE" >/dev/null 2>&1 || {
    ip link add "$BRIDGE" type bridge
    ip addr add "$NET.1/24" dev "$BRIDGE"
  }
  ip link set "$BRIDGE" up
  local node ns
  for node in "${NODES[@]}"; do
    ns=hpcai-$node
    ip netns list | grep -qw "$ns" || ip netns add "$ns"
    if ! ip link show "hpcai-v-$node" >/dev/null 2>&1; then
      ip link add "hpcai-v-$node" type veth peer name eth0 netns "$ns"
      ip link set "hpcai-v-$node" master "$BRIDGE"
      ip netns exec "$ns" ip addr add "$(address "$node")/24" dev eth0
    fi
    ip link set "hpcai-v-$node" up
    ip netns exec "$ns" ip link set lo up
    ip netns exec "$ns" ip link set eth0 up
    ip netns exec "$ns" ip route replace default via "$NET.1" 2>/dev/null || true
  done
  # The jobs name their peers by node name (MASTER_ADDR): resolvable from every namespace.
  if ! grep -q "$HOSTS_MARK" /etc/hosts; then
    for node in "${NODES[@]}"; do echo "$(address "$node") $node $HOSTS_MARK"; done >> /etc/hosts
  fi
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }

start_node() {  # node: its slurmd in its namespace, under its own hostname
  local node=$1
  running "$DIR/slurmd-$node.pid" && return 0
  mkdir -p "$DIR/spool-$node"
  # nsenter, not `ip netns exec`: that remounts /sys, and slurmd needs the cgroup filesystem under it.
  nsenter --net="/run/netns/hpcai-$node" unshare --uts sh -c "hostname $node && exec slurmd -f $CONF -N $node"
}

all_idle() {
  local states
  states=$(SLURM_CONF=$CONF sinfo -h -p multi -o %T 2>/dev/null | sort -u | tr '\n' ' ')
  case "$states" in
    "idle " | "idle mixed " | "mixed " | "allocated "*) return 0 ;;
  esac
  for node in "${NODES[@]}"; do
    SLURM_CONF=$CONF scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true
  done
  return 1
}

wait_for() {  # seconds description command...
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then log "timed out waiting for $what"; return 1; fi
    sleep 0.5
  done
}

start() {
  munge -n >/dev/null 2>&1 || { log "munge is not running: start tests/infra/slurm.sh first"; exit 1; }
  write_config
  network_up
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
  running "$DIR/slurmctld.pid" || slurmctld -f "$CONF"
  wait_for 30 slurmctld env SLURM_CONF="$CONF" scontrol ping
  for node in "${NODES[@]}"; do start_node "$node"; done
  wait_for 90 "idle nodes" all_idle
  log "up: $(SLURM_CONF=$CONF sinfo -h -o '%P %T %D')"
}

kill_node() {  # node: everything in its namespace (slurmd, slurmstepd, the job's tasks) dies at once
  local pids
  pids=$(ip netns pids "hpcai-$1" 2>/dev/null || true)
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
  fi
}

stop() {
  for node in "${NODES[@]}"; do kill_node "$node"; done
  if running "$DIR/slurmctld.pid"; then
    kill "$(cat "$DIR/slurmctld.pid")" 2>/dev/null || true
    for _ in $(seq 50); do running "$DIR/slurmctld.pid" || break; sleep 0.1; done
  fi
  for node in "${NODES[@]}"; do
    ip link del "hpcai-v-$node" 2>/dev/null || true
    ip netns del "hpcai-$node" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  if grep -q "$HOSTS_MARK" /etc/hosts; then
    grep -v "$HOSTS_MARK" /etc/hosts > "$DIR/hosts.tmp" && cat "$DIR/hosts.tmp" > /etc/hosts
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) SLURM_CONF=$CONF scontrol ping >/dev/null 2>&1 && all_idle ;;
  kill) kill_node "${2:?node}" ;;
  conf) echo "$CONF" ;;
  *) echo "usage: $0 start|stop|status|kill NODE|conf" >&2; exit 2 ;;
esac
