"""Render a JobSpec into a batch script: a pure function of profile x workload x overrides."""

from __future__ import annotations

import re
from typing import Any

import jinja2

from hpcai import __version__
from hpcai.backends.schedulers import script_fragments
from hpcai.errors import ValidationError
from hpcai.paths import data_dir
from hpcai.render.setup import container_prefix, environment_guard, setup_lines
from hpcai.rundir.contract import (
    ATTEMPT_COUNT_FILE,
    ATTEMPT_START_FILE,
    ATTEMPTS_LOG,
    CHECKPOINTS_DIR,
    EXCLUDE_FILE,
    EXIT_GAVE_UP,
    EXIT_HANG,
    EXIT_LEASE_HELD,
    EXIT_NODE_FAILED,
    EXIT_REQUEUE,
    EXIT_ROLLBACK,
    GAVE_UP_FILE,
    JOB_ID_FILE,
    LATEST_FILE,
    LEASE_FILE,
    LEASE_REFRESH_S,
    LEASE_STALE_S,
    LOGS_DIR,
    MAX_ATTEMPTS,
    MAX_REQUEUES,
    NEXT_STAGE_FILE,
    REQUEUE_COUNT_FILE,
    REQUEUE_MARKER,
    ROLLBACK_FILE,
    STOP_FILE,
)
from hpcai.runtime.watchdog import HANGS_DIR
from hpcai.shellquote import Expr, join, quote, quote_with_variables
from hpcai.spec.jobspec import JobSpec
from hpcai.spec.profiles import ClusterProfile
from hpcai.spec.walltime import pbs_walltime
from hpcai.spec.workloads import Workload

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

# What a value in a #SBATCH/#PBS line may hold (paths included): no blanks, quotes, `%` or line breaks.
_DIRECTIVE_TEXT = re.compile(r"[A-Za-z0-9_./:+@=,-]+")


def directive_value(value: object) -> str:
    """The last guard for values written into #SBATCH/#PBS lines, which no shell quotes: the scheduler
    reads them up to the line's end, so a newline would add a directive of its own. Every value that
    reaches such a line passes here, whatever checked it before."""
    text = str(value)
    if not _DIRECTIVE_TEXT.fullmatch(text):
        raise ValidationError(
            f"'{text}' cannot be written into a scheduler directive: only letters, digits and / . _ : + @ = , - "
            "are allowed there. Check the option or profile field that gave this value."
        )
    return text


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(data_dir("templates"))),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["q"] = quote
    env.filters["directive"] = directive_value
    return env


def _env_lines(job: JobSpec, profile: ClusterProfile) -> list[str]:
    lines = [f"export {key}={quote_with_variables(value)}" for key, value in profile.env.items()]
    if not profile.compute_internet:
        lines.append("# Compute nodes have no internet: never reach for a model hub.")
        lines += [f"export {key}={value}" for key, value in OFFLINE_ENV.items()]
    if profile.accelerator == "cpu" or job.gpus_per_node == 0:
        lines.append("# accelerate runs FSDP on CPU only in its multi-CPU mode (see the workload runtime).")
        lines.append("export ACCELERATE_USE_CPU=true")
    if profile.scheduler == "slurm" and profile.launch.cpus_per_task:
        lines.append("# Since Slurm 22.05 srun no longer inherits --cpus-per-task from the job.")
        lines.append('export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"')
    if profile.launch.launcher == "direct":
        lines.append(f"export {profile.launch.machine_rank_var}=0")
    if job.cache_dir is not None:
        lines.append("# Caches on project or scratch storage, not the small $HOME; what you exported yourself wins.")
        for variable, folder in (("HF_HOME", "huggingface"), ("TORCH_HOME", "torch"), ("XDG_CACHE_HOME", "")):
            path = f"{job.cache_dir}/{folder}".rstrip("/")
            lines.append(f'export {variable}="${{{variable}:-{path}}}"')
    if profile.launch.library_path:
        folders = quote(":".join(profile.launch.library_path))
        lines.append(f'export LD_LIBRARY_PATH={folders}"${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"')
        if job.container is not None and profile.container is not None:
            # A container does not inherit LD_LIBRARY_PATH: hand the folders in (the profile binds them).
            variable = f"{profile.container.runtime.upper()}ENV_LD_LIBRARY_PATH"
            lines.append(f'export {variable}="$LD_LIBRARY_PATH"')
    if profile.launch.cpu_bind_per_rank and job.gpus_per_node > 0:
        lines.append("# Each training process binds itself to the CPUs nearest its GPU (hpcai.runtime.affinity).")
        lines.append(f"export HPCAI_CPU_BIND={quote(profile.launch.cpu_bind_per_rank)}")
    if job.python_path:
        lines.append("# The hpcai runtime as staged to the cluster, ahead of anything installed there.")
        lines.append(f'export PYTHONPATH={quote(job.python_path)}"${{PYTHONPATH:+:$PYTHONPATH}}"')
    lines += [f"export {key}={quote(value)}" for key, value in job.env.items()]
    return lines


def _rendezvous_lines(profile: ClusterProfile, job: JobSpec) -> list[str]:
    """Lines run before each launch: its nodes (Slurm), the rendezvous host (the launch's first node) and
    port (a new one per relaunch: the last launch's store may still hold the old one)."""
    fragments = script_fragments(profile.scheduler)
    suffix = quote(profile.launch.master_addr_suffix) if profile.launch.master_addr_suffix else ""
    lines = fragments.master_lines(suffix, job.nodes, profile.launch.emulate_nodes)
    port = profile.launch.master_port
    if port == "from-job-id":
        lines.append(f'hpcai_job_number="{fragments.job_number}"')
        # Below Linux's ephemeral range (32768-60999): an outgoing connection on the node cannot hold it.
        lines.append("MASTER_PORT=$(( 20000 + (hpcai_job_number + hpcai_launch) % 12000 ))")
    else:
        lines.append(f"MASTER_PORT=$(( {int(port)} + hpcai_launch ))")
    return lines


def _accelerate_flags(job: JobSpec, workload: Workload) -> list[object]:
    flags: list[object] = ["--use_fsdp"]
    for key, value in workload.spec.accelerate.items():
        flags += [f"--{key}", value]
    if job.gpus_per_node == 0:
        # The accelerate CLI defaults this to true, which needs a GPU to broadcast from.
        flags += ["--fsdp_sync_module_states", "false"]
    return flags


def _node_command(job: JobSpec, profile: ClusterProfile, workload: Workload) -> list[object]:
    """The node's launcher and its arguments (without the container words)."""
    if workload.spec.app is not None:
        return _app_command(job, profile, workload)
    machine_rank = Expr(f'"${profile.launch.machine_rank_var}"')
    words: list[object]
    if workload.spec.launcher == "accelerate":
        words = [job.python, "-m", "accelerate.commands.launch"]
        words += ["--num_machines", job.nodes, "--machine_rank", machine_rank]
        words += ["--num_processes", job.num_processes]
        words += ["--main_process_ip", Expr('"$MASTER_ADDR"'), "--main_process_port", Expr('"$MASTER_PORT"')]
        words += ["--mixed_precision", job.mixed_precision, *_accelerate_flags(job, workload)]
        words += [f"{job.code_dir}/{job.entrypoint}"]
    else:
        words = [job.python, f"{job.code_dir}/{job.entrypoint}"]
        words += ["--machine_rank", machine_rank, "--num_machines", job.nodes]
    words += ["--run-dir", Expr('"$HPCAI_RUN_DIR"')]
    if job.stage is not None:
        words += ["--stage", job.stage]
    for key, value in job.parameters.items():
        if value != "":  # an empty string means "not set": the entrypoint's own default applies
            words += [f"--{key}", value]
    return words


def _app_command(job: JobSpec, profile: ClusterProfile, workload: Workload) -> list[object]:
    """A user's own program under its launcher, with nothing added that the user did not ask for (no FSDP,
    no precision): the allocation's shape and the rendezvous only."""
    app = workload.spec.app
    assert app is not None
    launcher = workload.spec.launcher
    machine_rank = Expr(f'"${profile.launch.machine_rank_var}"')
    program: list[object] = [f"{job.code_dir}/{app.script}"] if app.script else [str(app.module)]
    words: list[object]
    if launcher == "accelerate":
        words = [job.python, "-m", "accelerate.commands.launch"]
        if app.accelerate_config:
            words += ["--config_file", app.accelerate_config]
        elif job.num_processes > 1:
            words += ["--multi_gpu"]  # accelerate's name for "start N processes"; on CPU: ACCELERATE_USE_CPU
        words += ["--num_machines", job.nodes, "--machine_rank", machine_rank, "--num_processes", job.num_processes]
        words += ["--main_process_ip", Expr('"$MASTER_ADDR"'), "--main_process_port", Expr('"$MASTER_PORT"')]
        words += [*(["--module"] if app.module else []), *program]
    elif launcher == "torchrun":
        words = [job.python, "-m", "torch.distributed.run", "--nnodes", job.nodes, "--node_rank", machine_rank]
        words += ["--nproc_per_node", job.processes_per_node]
        words += ["--master_addr", Expr('"$MASTER_ADDR"'), "--master_port", Expr('"$MASTER_PORT"')]
        words += [*(["--module"] if app.module else []), *program]
    else:  # python, srun: the program itself (srun starts one task per GPU)
        words = [job.python, *(["-m"] if app.module else []), *program]
    params: list[object] = []
    for key, value in job.parameters.items():
        if value != "":  # an empty string means "not set": the program's own default applies
            params += [f"--{key}", value]
    return [*words, *app.args, *params]


def _supervisor(job: JobSpec, workload: Workload, node_rank: Expr) -> list[object]:
    app = workload.spec.app
    assert app is not None
    words: list[object] = [job.python, "-m", "hpcai.runtime.supervisor", "--run-dir", Expr('"$HPCAI_RUN_DIR"')]
    words += ["--node-rank", node_rank, "--launcher", workload.spec.launcher]
    words += ["--stop-signal", app.stop_signal, "--grace", app.stop_grace_s]
    for word in app.resume_args:
        words.append(f"--resume-arg={word}")  # one word each: an argument starting with - stays a value
    if app.checkpoint_pattern:
        words.append(f"--checkpoint-pattern={app.checkpoint_pattern}")
    if app.metrics_pattern:
        words.append(f"--metrics-pattern={app.metrics_pattern}")
    return [*words, "--"]


def _per_node(job: JobSpec, profile: ClusterProfile, workload: Workload) -> list[object]:
    """What runs on each node. A workload on the hpcai runtime (accelerate) runs under the node agent
    (hpcai.runtime.node_agent): its hang watchdog, and the records the recovery decision reads. A user's
    own program runs under the node agent too, through its supervisor (hpcai.runtime.supervisor)."""
    words = container_prefix(profile, job.container, job.environment.mount, job.binds)
    app = workload.spec.app
    if workload.spec.launcher != "accelerate" and app is None:
        return [*words, *_node_command(job, profile, workload)]
    rank = Expr(f'"${profile.launch.machine_rank_var}"')
    if app is not None and workload.spec.launcher == "srun":
        rank = Expr('"$SLURM_PROCID"')  # one task per GPU: each its own agent and supervisor
    floor = app.hang_timeout_s if app is not None else job.parameters.get("hang_timeout_s", 180)
    agent = [job.python, "-m", "hpcai.runtime.node_agent", "--run-dir", Expr('"$HPCAI_RUN_DIR"'), "--node-rank", rank,
             "--floor", floor]  # fmt: skip
    if "hang_timeout_s" in job.parameters:  # on the hpcai runtime: no heartbeat at all in time is a hang too
        agent.append("--expect-heartbeats")
    agent.append("--")
    supervised = _supervisor(job, workload, rank) if app is not None else []
    return [*words, *agent, *supervised, *_node_command(job, profile, workload)]


def _srun_rank_env() -> str:
    """What programs started by srun read besides SLURM_*: torch.distributed's env:// variables."""
    return 'export RANK="$SLURM_PROCID" LOCAL_RANK="$SLURM_LOCALID" WORLD_SIZE="$SLURM_NTASKS"; '


def _launch_line(job: JobSpec, profile: ClusterProfile, workload: Workload) -> str:
    launch = profile.launch
    if workload.spec.app is not None and workload.spec.launcher == "srun":
        return _srun_tasks_line(job, profile, workload)
    per_node = "bash -c " + quote("exec " + join(_per_node(job, profile, workload)))
    if launch.launcher == "srun":
        if launch.emulate_nodes:
            placement: list[object] = ["--nodes=1", f"--ntasks={job.nodes}", f"--ntasks-per-node={job.nodes}"]
        else:  # the node list the launch's fragments picked (hpcai.backends.schedulers.slurm). --ntasks said: srun
            # would take the allocation's SLURM_NTASKS, spares included ("More processors requested than
            # permitted" on a real cluster as soon as a spare node is allocated). --overlap: a relaunch after
            # a node failure must not wait for the dead node's step to be cleared ("Requested nodes are
            # busy" until the node returns); the run's lease keeps two trainings from running at once.
            placement = [f"--nodes={job.nodes}", f"--ntasks={job.nodes}", "--ntasks-per-node=1", "--overlap",
                         Expr('--nodelist="$hpcai_nodelist"')]  # fmt: skip
        return join(["srun", *placement, "--kill-on-bad-exit=1", *launch.launcher_flags]) + " " + per_node
    if launch.launcher == "mpiexec":
        return join(["mpiexec", "-n", job.nodes, "--ppn", 1, *launch.launcher_flags]) + " " + per_node
    return per_node


def _srun_tasks_line(job: JobSpec, profile: ClusterProfile, workload: Workload) -> str:
    """`--launcher srun` for a user's program: one task per GPU (per CPU process on CPU), each with the
    SLURM_* variables and RANK/LOCAL_RANK/WORLD_SIZE; on PBS, mpiexec's equivalent."""
    per_task = "bash -c " + quote(_srun_rank_env() + "exec " + join(_per_node(job, profile, workload)))
    launch = profile.launch
    tasks = job.num_processes
    if launch.launcher == "mpiexec":
        env = (
            'export SLURM_PROCID="${PMI_RANK:-${PALS_RANKID:-0}}" '
            'SLURM_LOCALID="${PMI_LOCAL_RANK:-${PALS_LOCAL_RANKID:-0}}" '
            f"SLURM_NTASKS={tasks}; "
        )
        command = env + _srun_rank_env() + "exec " + join(_per_node(job, profile, workload))
        per_task = "bash -c " + quote(command)
        return join(["mpiexec", "-n", tasks, "--ppn", job.processes_per_node, *launch.launcher_flags]) + " " + per_task
    if launch.emulate_nodes:
        placement: list[object] = ["--nodes=1", f"--ntasks={tasks}", f"--ntasks-per-node={tasks}"]
    else:
        placement = [f"--nodes={job.nodes}", f"--ntasks={tasks}", f"--ntasks-per-node={job.processes_per_node}"]
        placement.append(Expr('--nodelist="$hpcai_nodelist"'))
    return join(["srun", *placement, "--kill-on-bad-exit=1", *launch.launcher_flags]) + " " + per_task


def _recovery_command(job: JobSpec, profile: ClusterProfile) -> str:
    words = container_prefix(profile, job.container, job.environment.mount, job.binds)
    return join([*words, job.python, "-m", "hpcai.runtime.recovery"])


def render_script(job: JobSpec, profile: ClusterProfile, workload: Workload) -> str:
    fragments = script_fragments(profile.scheduler)
    context: dict[str, Any] = {
        "version": __version__,
        "job": job,
        "launch": profile.launch,
        "node": profile.node,
        "pbs": profile.pbs,
        "container": profile.container,
        "pbs_walltime": pbs_walltime(job.walltime_s),
        "job_id_expr": fragments.job_id,
        "module_lines": setup_lines(profile, job.container is not None),
        "environment_guard": environment_guard(job),
        "env_lines": _env_lines(job, profile),
        "rendezvous_lines": _rendezvous_lines(profile, job),
        "walltime_timer": fragments.times_itself,
        "launch_line": _launch_line(job, profile, workload),
        "requeue_lines": fragments.requeue_lines(),
        "exit_requeue": EXIT_REQUEUE,
        "requeue_marker": REQUEUE_MARKER,
        "exit_rollback": EXIT_ROLLBACK,
        "rollback_file": ROLLBACK_FILE,
        "exit_gave_up": EXIT_GAVE_UP,
        "gave_up_file": GAVE_UP_FILE,
        "submit_next": fragments.submit_next(job.python, job.walltime_s, profile.launch.emulate_nodes),
        "queued_next_lines": fragments.queued_next_lines(),
        "max_requeues": MAX_REQUEUES,
        "max_attempts": MAX_ATTEMPTS,
        "attempt_count_file": ATTEMPT_COUNT_FILE,
        "lease_file": LEASE_FILE,
        "lease_refresh_s": LEASE_REFRESH_S,
        "lease_stale_s": LEASE_STALE_S,
        "exit_lease_held": EXIT_LEASE_HELD,
        "exit_hang": EXIT_HANG,
        "hangs_dir": HANGS_DIR,
        "exclude_file": EXCLUDE_FILE,
        "exclude_nodes": fragments.picks_nodes(profile.launch.emulate_nodes),
        "exit_node_failed": EXIT_NODE_FAILED,
        "recovery_command": _recovery_command(job, profile),
        "emulated": profile.launch.emulate_nodes,
        "next_stage_file": NEXT_STAGE_FILE,
        "job_id_file": JOB_ID_FILE,
        "checkpoints_dir": CHECKPOINTS_DIR,
        "latest_file": LATEST_FILE,
        "attempts_log": ATTEMPTS_LOG,
        "stop_file": STOP_FILE,
        "attempt_start_file": ATTEMPT_START_FILE,
        "requeue_count_file": REQUEUE_COUNT_FILE,
        "logs_dir": LOGS_DIR,
    }
    template = _environment().get_template(f"{profile.scheduler}.sh.j2")
    return template.render(context)
