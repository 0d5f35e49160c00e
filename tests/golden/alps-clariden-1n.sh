#!/bin/bash
#SBATCH --job-name=hpcai-llava-pretrain
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=288
#SBATCH --time=00:30:00
#SBATCH --partition=debug
#SBATCH --account=a-g34
#SBATCH --uenv=pytorch/v2.8.0:/user-environment
#SBATCH --view=default
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --chdir=/capstor/scratch/cscs/jdoe/hpcai/runs/golden-alps-clariden-1n
#SBATCH --output=/capstor/scratch/cscs/jdoe/hpcai/runs/golden-alps-clariden-1n/logs/slurm-%j.out
#SBATCH --error=/capstor/scratch/cscs/jdoe/hpcai/runs/golden-alps-clariden-1n/logs/slurm-%j.err
# Rendered by hpcai 0.1.0: workload llava (stage pretrain) on alps-clariden, run golden-alps-clariden-1n.
set -euo pipefail
# Everything the job writes in the run folder is the user's alone (or readable by the project's group
# where the profile shares it): a folder others can write to could feed the job what it reads back.
umask 077

export HPCAI_RUN_ID=golden-alps-clariden-1n
export HPCAI_RUN_DIR=/capstor/scratch/cscs/jdoe/hpcai/runs/golden-alps-clariden-1n
export HPCAI_WORKLOAD=llava
export HPCAI_JOB_ID="${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_}${SLURM_ARRAY_TASK_ID:-$SLURM_JOB_ID}"
mkdir -p "$HPCAI_RUN_DIR/logs"
cd "$HPCAI_RUN_DIR"
# Unix time with microseconds where bash has it (5.0+), else whole seconds: the goodput account's clock.
hpcai_now() {
  local now="${EPOCHREALTIME:-}"
  now="${now/,/.}"
  printf '%s' "${now:-$(date +%s)}"
}
# `--exclude=` naming the nodes this run found failing (exclude_nodes), or nothing.
hpcai_excluded() {
  local nodes
  nodes=$(sort -u "$1" 2>/dev/null | grep -E '^[A-Za-z0-9._-]+$' | paste -sd, - || true)
  if [ -n "$nodes" ]; then printf -- '--exclude=%s' "$nodes"; fi
}
# After an sbatch that failed: a job of this user in this run directory, other than this one, that it
# queued all the same (a controller time-out after the job was accepted).
hpcai_queued_next() {
  sleep 5
  squeue -h -u "$(id -un)" -o '%i|%Z' 2>/dev/null \
    | awk -F'|' -v d="$HPCAI_RUN_DIR" -v me="$HPCAI_JOB_ID" '$2 == d && $1 != me {print $1}' \
    | tail -n 1 || true
}
# A counter the job keeps in the run directory, read as digits only: the file may have been written by
# someone else, and bash evaluates array subscripts inside $(( )) (a command in one would run).
hpcai_count() {
  local value
  value=$(head -c 20 "$1" 2>/dev/null | head -n 1 || true)
  if [[ "$value" =~ ^[0-9]{1,9}$ ]]; then printf '%s' "$((10#$value))"; else printf '0'; fi
}
# The newest complete checkpoint's name (what the next attempt resumes from), or nothing.
hpcai_latest_checkpoint() {
  tr -cd 'A-Za-z0-9_-' < "$HPCAI_RUN_DIR/checkpoints/latest" 2>/dev/null | head -c 64 || true
}
hpcai_event() {
  printf '{"event": "%s", "job_id": "%s", "time": "%s", "epoch": %s, "host": "%s", "rc": %s}\n' \
    "$1" "$HPCAI_JOB_ID" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(hpcai_now)" "$(hostname)" "${2:-null}" \
    >> "$HPCAI_RUN_DIR/attempts.jsonl"
}

# One live attempt per run: take the lease, or wait for another live attempt's lease to go stale.
hpcai_lease="$HPCAI_RUN_DIR/.lease"
hpcai_lease_age() { echo $(( $(date +%s) - $(stat -c %Y "$hpcai_lease" 2>/dev/null || echo 0) )); }
hpcai_waited=0
while ! ( set -C; printf '%s %s\n' "$HPCAI_JOB_ID" "$(hostname)" > "$hpcai_lease" ) 2>/dev/null; do
  hpcai_holder=$(head -c 200 "$hpcai_lease" 2>/dev/null | head -n 1 || true)
  if [ "${hpcai_holder%% *}" = "$HPCAI_JOB_ID" ] || [ "$(hpcai_lease_age)" -ge 120 ]; then
    rm -f "$hpcai_lease"  # our own (a requeue), or abandoned: take it over
    continue
  fi
  if [ "$hpcai_waited" -ge 240 ]; then
    echo "hpcai: another attempt of run $HPCAI_RUN_ID is live ($hpcai_holder); not training next to it. See: hpcai status $HPCAI_RUN_ID" >&2
    hpcai_event refused 88
    exit 88
  fi
  sleep 5
  hpcai_waited=$(( hpcai_waited + 5 ))
done
# Its own stderr goes nowhere: stopping it at the end must not leave "Terminated" in the job's error log.
( while sleep 30; do touch "$hpcai_lease" || true; done ) 2>/dev/null &
hpcai_lease_pid=$!
disown "$hpcai_lease_pid"
# shellcheck disable=SC2317  # invoked by the EXIT trap
hpcai_release_lease() {
  pkill -P "$hpcai_lease_pid" 2>/dev/null || true
  kill "$hpcai_lease_pid" 2>/dev/null || true
  if [ "$(head -n 1 "$hpcai_lease" 2>/dev/null | cut -d' ' -f1)" = "$HPCAI_JOB_ID" ]; then rm -f "$hpcai_lease"; fi
}
trap hpcai_release_lease EXIT

# The job records its own id, so a client killed between submitting and recording loses nothing.
printf '%s\n' "$HPCAI_JOB_ID" > "$HPCAI_RUN_DIR/job_id"
rm -f "$HPCAI_RUN_DIR/STOP" "$HPCAI_RUN_DIR/REQUEUE" "$HPCAI_RUN_DIR/GAVE_UP.json"

# Every launch of the training -- a job's first, a relaunch inside the allocation -- is an attempt of
# the run, counted here against the cap. Markers count only when written by this attempt: a
# ROLLBACK.json left by an attempt that crashed while applying it must not start yet another one.
hpcai_begin_attempt() {
  : > "$HPCAI_RUN_DIR/.attempt-start"
  hpcai_event start
  hpcai_attempts=$(( $(hpcai_count "$HPCAI_RUN_DIR/attempt_count") + 1 ))
  printf '%s\n' "$hpcai_attempts" > "$HPCAI_RUN_DIR/attempt_count"
  export HPCAI_ATTEMPT="$hpcai_attempts"
  if [ "$hpcai_attempts" -gt 30 ]; then
    echo "hpcai: run $HPCAI_RUN_ID has started 30 attempts already (requeues, rollbacks, relaunches); not starting another. See: hpcai status $HPCAI_RUN_ID" >&2
    printf '{"action": "give_up", "by": "job script", "reason": "%s attempts started: the cap of 30 is reached"}\n' \
      "$hpcai_attempts" > "$HPCAI_RUN_DIR/GAVE_UP.json"
    hpcai_event end 87
    hpcai_event gave_up 87
    exit 87
  fi
}
hpcai_begin_attempt

if [ ! -e /users/jdoe/hpcai/envs/py3-d31c65ae5f3f/.hpcai-env.json ]; then
  echo 'hpcai: the job environment /users/jdoe/hpcai/envs/py3-d31c65ae5f3f on alps-clariden is not built (or its build did not finish). Build it once from your machine: hpcai env build --cluster alps-clariden (it runs pip on the login node; minutes), then submit again.' >&2
  hpcai_event end 2
  exit 2
fi

export NCCL_NET='AWS Libfabric'
export NCCL_NET_GDR_LEVEL=PHB
export NCCL_CROSS_NIC=1
export NCCL_PROTO='^LL128'
export FI_CXI_DEFAULT_CQ_SIZE=131072
export FI_CXI_DEFAULT_TX_SIZE=16384
export FI_CXI_DISABLE_HOST_REGISTER=1
export FI_CXI_RX_MATCH_MODE=software
export FI_MR_CACHE_MONITOR=userfaultfd
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
export MPICH_GPU_SUPPORT_ENABLED=0
export CUDA_CACHE_DISABLE=1
# Since Slurm 22.05 srun no longer inherits --cpus-per-task from the job.
export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"
# Caches on project or scratch storage, not the small $HOME; what you exported yourself wins.
export HF_HOME="${HF_HOME:-/iopsstor/scratch/cscs/jdoe/.cache/huggingface}"
export TORCH_HOME="${TORCH_HOME:-/iopsstor/scratch/cscs/jdoe/.cache/torch}"
export XDG_CACHE_HOME="${XDG_CACHE_HOME:-/iopsstor/scratch/cscs/jdoe/.cache}"

# Before walltime the job is asked to checkpoint at its next step boundary: the training runtime
# watches for $HPCAI_RUN_DIR/STOP and then exits with 85.
# shellcheck disable=SC2317  # invoked by the USR1 trap below
hpcai_request_checkpoint() {
  hpcai_signalled=1
  echo "hpcai: walltime is near, asking the job to checkpoint and stop" >&2
  : > "$HPCAI_RUN_DIR/STOP"
}
hpcai_signalled=0
trap hpcai_request_checkpoint USR1

# A rollback, a hang or a failed node relaunches the training inside this allocation (no queue wait)
# when hpcai.runtime.recovery says it can; only walltime, and a failed node with no spare left, go back
# to the queue.
hpcai_launch=0
while :; do
  # This launch's nodes: the allocation's first ones not in the run's exclusion file.
  hpcai_nodelist=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | grep -vxF -f <(cat "$HPCAI_RUN_DIR/exclude_nodes" 2>/dev/null) | head -n 1 | paste -sd, - || true)
  hpcai_master_host="${hpcai_nodelist%%,*}"
  # The launch's first host, as an address every node can reach.
  MASTER_ADDR="$(getent ahostsv4 "$hpcai_master_host" | awk 'NR == 1 {print $1}' || true)"
  MASTER_ADDR="${MASTER_ADDR:-$hpcai_master_host}"
  MASTER_PORT=$(( 29500 + hpcai_launch ))
  export MASTER_ADDR MASTER_PORT

  # shellcheck disable=SC2016  # the single-quoted command is expanded by the shell on each node
  srun --nodes=1 --ntasks=1 --ntasks-per-node=1 --overlap --nodelist="$hpcai_nodelist" --kill-on-bad-exit=1 bash -c 'exec /users/jdoe/hpcai/envs/py3-d31c65ae5f3f/bin/python -m hpcai.runtime.node_agent --run-dir "$HPCAI_RUN_DIR" --node-rank "$SLURM_NODEID" --floor 180 --expect-heartbeats -- /users/jdoe/hpcai/envs/py3-d31c65ae5f3f/bin/python -m accelerate.commands.launch --num_machines 1 --machine_rank "$SLURM_NODEID" --num_processes 4 --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" --mixed_precision bf16 --use_fsdp --fsdp_version 2 --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP --fsdp_state_dict_type SHARDED_STATE_DICT --fsdp_reshard_after_forward true --fsdp_cpu_ram_efficient_loading false /capstor/scratch/cscs/jdoe/hpcai/code/llava/train.py --run-dir "$HPCAI_RUN_DIR" --stage pretrain --preset tiny --trainable projector --max_steps 60 --per_device_batch_size 4 --lr 0.001 --warmup_steps 5 --weight_decay 0.0 --grad_clip 1.0 --z_loss_weight 0.0 --qk_norm false --prompt_format plain --max_length 2048 --samples 256 --tracker tensorboard --data_workers 2 --max_left_out 0.02 --activation_checkpointing false --activation_checkpointing_every 1 --compile false --sync_every 0 --checkpoint_every 20 --keep_checkpoints 3 --seed 0 --spike_guard true --max_rollbacks 3 --rollback_lr_factor 0.5 --rollback_margin_steps 0 --rollback_skip_batches 0 --rollback_transient false --rerun_check false --spike_floor 0.2 --inject_spike_at 0 --inject_nan_at 0 --inject_nan_transient false --hang_timeout_s 180 --inject_hang_at 0 --inject_crash_at 0' &
  hpcai_launcher_pid=$!
  while :; do
    rc=0
    wait "$hpcai_launcher_pid" || rc=$?
    # A trapped signal interrupts wait with rc > 128 while the launcher keeps running: wait again.
    if [ "$rc" -gt 128 ] && [ "$hpcai_signalled" = 1 ]; then
      hpcai_signalled=2
      continue
    fi
    break
  done
  # The launcher reports any worker's non-zero exit as 1; the runtime's files say why it stopped.
  hpcai_outcome=ended
  if [ "$HPCAI_RUN_DIR/ROLLBACK.json" -nt "$HPCAI_RUN_DIR/.attempt-start" ] \
    && grep -q '"action": "rollback"' "$HPCAI_RUN_DIR/ROLLBACK.json"; then
    rc=86; hpcai_outcome=rollback
  elif [ -f "$HPCAI_RUN_DIR/GAVE_UP.json" ]; then
    rc=87; hpcai_outcome=gave_up
  elif [ -n "$(find "$HPCAI_RUN_DIR/hangs" -name '*.json' -newer "$HPCAI_RUN_DIR/.attempt-start" 2>/dev/null | head -n 1)" ]; then
    rc=89; hpcai_outcome=hang  # a node's watchdog declared a hang and stopped the workers
  elif [ -f "$HPCAI_RUN_DIR/REQUEUE" ]; then
    rc=85; hpcai_outcome=requeue
  elif [ "$rc" -ne 0 ] && [ "$hpcai_signalled" = 0 ]; then
    hpcai_outcome=failed
  fi
  hpcai_event end "$rc"
  hpcai_action=none
  hpcai_why="$hpcai_outcome"
  case "$hpcai_outcome" in
    rollback | hang | failed)
      if hpcai_verdict=$(/users/jdoe/hpcai/envs/py3-d31c65ae5f3f/bin/python -m hpcai.runtime.recovery --run-dir "$HPCAI_RUN_DIR" --job "$HPCAI_JOB_ID" --attempt "$HPCAI_ATTEMPT" --outcome "$hpcai_outcome" --nodes 1 --spares 0); then
        read -r hpcai_action _ hpcai_why <<< "$hpcai_verdict" || true
      fi
      case "$hpcai_action" in
        relaunch | queue | stop) ;;
        *)  # no verdict (recovery could not run): the safe old way
          hpcai_why="$hpcai_outcome"
          case "$hpcai_outcome" in failed) hpcai_action=stop ;; *) hpcai_action=queue ;; esac
          ;;
      esac
      # Walltime is near: the next allocation goes on, not this one.
      if [ "$hpcai_action" = relaunch ] && [ "$hpcai_signalled" != 0 ]; then hpcai_action=queue; fi
      ;;
  esac
  if [ "$hpcai_action" = relaunch ]; then
    hpcai_resume=$(hpcai_latest_checkpoint)
    printf '{"event": "relaunch", "job_id": "%s", "why": "%s", "resume": "%s", "time": "%s", "epoch": %s}\n' \
      "$HPCAI_JOB_ID" "$hpcai_why" "$hpcai_resume" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(hpcai_now)" \
      >> "$HPCAI_RUN_DIR/attempts.jsonl"
    echo "hpcai: $hpcai_why: relaunching the training inside this allocation" >&2
    hpcai_launch=$(( hpcai_launch + 1 ))
    hpcai_begin_attempt
    continue
  fi
  break
done
hpcai_release_lease  # training is over: the next attempt (requeue, rollback) may take the lease

if [ "$rc" -eq 85 ]; then
  requeues=$(( $(hpcai_count "$HPCAI_RUN_DIR/requeues") + 1 ))
  if [ "$requeues" -le 20 ]; then
    printf '%s\n' "$requeues" > "$HPCAI_RUN_DIR/requeues"
    # The same job goes back in the queue: its next start is the run's next attempt.
    hpcai_event requeue "$rc"
    # Slurm ends this script here; the job may start again after the site's cred_expire (120 s by
    # default, Reason=BeginTime): nothing after this line runs.
    scontrol requeue "$SLURM_JOB_ID"
  else
    echo "hpcai: checkpointed 20 times already; not requeueing again" >&2
  fi
fi
if [ "$hpcai_action" = queue ]; then
  # Recovery needs another allocation (a failed node and no spare left, a node that hung twice, hangs
  # that keep coming back): submit the next attempt, without the nodes in the run's exclusion file.
  # It resumes from the newest complete checkpoint (a rollback's decision is applied when it starts).
  if [ "$hpcai_outcome" = failed ]; then rc=90; fi
  hpcai_event "$hpcai_why" "$rc"
  hpcai_exclude=$(hpcai_excluded "$HPCAI_RUN_DIR/exclude_nodes")
  if hpcai_next=$(env -u SLURM_MEM_PER_CPU -u SLURM_MEM_PER_NODE -u SLURM_MEM_PER_GPU -u SLURM_ARRAY_JOB_ID -u SLURM_ARRAY_TASK_ID sbatch --parsable ${hpcai_exclude:+"$hpcai_exclude"} "$HPCAI_RUN_DIR/job.sh"); then
    hpcai_next=$(printf '%s' "$hpcai_next" | tail -n 1 | cut -d';' -f1)
  else
    # The submission may have queued the job and still failed (a controller time-out): look before
    # saying it did not, so the run is followed under its new job rather than shown as ended.
    hpcai_next=$(hpcai_queued_next)
  fi
  if [[ "$hpcai_next" =~ ^[A-Za-z0-9._-]+$ ]]; then
    # After a hang the next attempt resumes from the newest complete checkpoint: say which.
    hpcai_resume=$(hpcai_latest_checkpoint)
    printf '{"event": "submitted", "job_id": "%s", "after": "%s", "why": "%s", "resume": "%s", "time": "%s"}\n' \
      "$hpcai_next" "$HPCAI_JOB_ID" "$hpcai_why" "$hpcai_resume" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
      >> "$HPCAI_RUN_DIR/attempts.jsonl"
  else
    echo "hpcai: could not submit the next attempt; resume by hand with: hpcai resume $HPCAI_RUN_ID" >&2
  fi
elif [ "$rc" -eq 87 ]; then
  hpcai_event gave_up "$rc"
  echo "hpcai: the spike guard gave up; see $HPCAI_RUN_DIR/GAVE_UP.json" >&2
fi
if [ "$rc" -eq 0 ] && [ -s "$HPCAI_RUN_DIR/next_stage" ]; then
  # A pipeline (`submit --stages`): this stage completed, so the next one's job goes in now. Submitting it
  # here rather than with a scheduler dependency (afterok) survives what replaces this stage's job on
  # the way: a requeue under a new id, a resubmission without a failed node.
  hpcai_next_dir=$(head -c 4096 "$HPCAI_RUN_DIR/next_stage" | head -n 1)
  # Only a sibling run directory of this one, named as hpcai names them: the file may have been planted.
  if ! [[ "$hpcai_next_dir" =~ ^/[A-Za-z0-9_./+@=,-]+$ ]] || [[ "$hpcai_next_dir" == *..* ]] \
    || [ "$(dirname "$hpcai_next_dir")" != "$(dirname "$HPCAI_RUN_DIR")" ]; then
    echo "hpcai: $HPCAI_RUN_DIR/next_stage does not name a run directory beside this one; not submitting it" >&2
    hpcai_next_dir=""
  fi
  hpcai_submit_stage() {
    # the scheduler's usual submission, of the next stage's script in its own run directory
    local -x HPCAI_RUN_DIR="$1"
    cd "$HPCAI_RUN_DIR" && env -u SLURM_MEM_PER_CPU -u SLURM_MEM_PER_NODE -u SLURM_MEM_PER_GPU -u SLURM_ARRAY_JOB_ID -u SLURM_ARRAY_TASK_ID sbatch --parsable ${hpcai_exclude:+"$hpcai_exclude"} "$HPCAI_RUN_DIR/job.sh"
  }
  if [ -z "$hpcai_next_dir" ]; then
    :  # refused above
  elif hpcai_next=$(hpcai_submit_stage "$hpcai_next_dir"); then
    hpcai_next=$(printf '%s' "$hpcai_next" | tail -n 1 | cut -d';' -f1)
    printf '%s\n' "$hpcai_next" > "$hpcai_next_dir/job_id"
    printf '{"event": "next_stage", "job_id": "%s", "run_dir": "%s", "after": "%s", "time": "%s"}\n' \
      "$hpcai_next" "$hpcai_next_dir" "$HPCAI_JOB_ID" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >> "$HPCAI_RUN_DIR/attempts.jsonl"
  else
    echo "hpcai: could not submit the pipeline's next stage ($hpcai_next_dir); submit it with: hpcai resume RUN" >&2
  fi
fi
exit "$rc"
