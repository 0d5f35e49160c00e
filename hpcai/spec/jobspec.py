"""JobSpec: a cluster profile x a workload x the user's overrides, resolved and checked against limits.

Everything here is pure: the same inputs give the same JobSpec, and every rejection is a ValidationError
whose message names the option, what the cluster allows and what to pass instead.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from hpcai.errors import ValidationError, closest
from hpcai.spec.jobenv import JobEnv, resolve
from hpcai.spec.parameters import absolute_paths, parse_assignments, resolve_parameters, resolve_stage
from hpcai.spec.profile_parts import DIRECTIVE_VALUE, ENV_NAME, SECRET_NAME, Partition, Qos
from hpcai.spec.profiles import ClusterProfile, expand_path
from hpcai.spec.userconfig import ClusterSettings
from hpcai.spec.walltime import parse_walltime, slurm_walltime
from hpcai.spec.workloads import Scalar, Workload

RESERVED_ENV_PREFIXES = ("HPCAI_", "SLURM_", "PBS_")
RESERVED_ENV = {"MASTER_ADDR", "MASTER_PORT", "PATH"}
# Characters a run directory may hold: it appears in #SBATCH/#PBS lines, which no shell quotes, and
# Slurm expands % patterns in --output.
RUN_DIR_SAFE = re.compile(r"/[A-Za-z0-9_./+@=,-]*")


class Overrides(BaseModel):
    """What the user typed on the command line; None = take the workload's or profile's default."""

    model_config = ConfigDict(frozen=True)

    nodes: int | None = None
    spare_nodes: int | None = None
    gpus_per_node: int | None = None
    time: str | None = None
    partition: str | None = None
    qos: str | None = None
    account: str | None = None
    name: str | None = None
    container: str | None = None
    stage: str | None = None
    env: tuple[str, ...] = ()
    set: tuple[str, ...] = ()
    run_id: str = "run"
    run_dir: str | None = None
    # Set by staging, not typed by users: where the workload code and the hpcai package are on the cluster.
    code_dir: str | None = None
    python_path: str | None = None
    # Set by staging: data images the job's container mounts (`IMAGE:/hpcai-data/KEY:image-src=/`).
    binds: tuple[str, ...] = ()


class JobSpec(BaseModel):
    """Everything a template needs, resolved; `render` turns it into a script."""

    model_config = ConfigDict(frozen=True)

    cluster: str
    workload: str
    stage: str | None
    run_id: str
    run_dir: str
    job_name: str
    nodes: int
    gpus_per_node: int
    processes_per_node: int
    # Nodes allocated beyond `nodes`, idle until a failed or hung node's place must be taken without
    # going back to the queue (hpcai.runtime.recovery).
    spare_nodes: int = 0
    # Nodes this cluster's runs found failing (hpcai.store.nodes), left out of the allocation (Slurm --exclude).
    exclude_nodes: tuple[str, ...] = ()
    walltime_s: int
    partition: str
    qos: str | None
    account: str | None
    container: str | None
    env: dict[str, str]
    parameters: dict[str, Scalar]
    code_dir: str
    python_path: str | None = None
    binds: tuple[str, ...] = ()  # data images mounted in the container (pack_data: squashfs)
    cache_dir: str | None = None  # the job's default HF_HOME/TORCH_HOME/XDG_CACHE_HOME parent (profile `caches`)
    entrypoint: str
    python: str
    environment: JobEnv = JobEnv()
    mixed_precision: str
    signal_lead_s: int
    # The run folder is the project group's to read (the filesystem's share_with_group): modes 0750/0640;
    # else private, 0700/0600. Never group- or world-writable, whatever the umask of whoever submits.
    share_with_group: bool = False

    @property
    def umask(self) -> str:
        return "027" if self.share_with_group else "077"

    @property
    def allocated_nodes(self) -> int:
        """Nodes the job asks the scheduler for (and pays for): the training's and the spares."""
        return self.nodes + self.spare_nodes

    @property
    def num_processes(self) -> int:
        return self.nodes * self.processes_per_node

    @property
    def walltime(self) -> str:
        return slurm_walltime(self.walltime_s)


def sanitize_job_name(name: str) -> str:
    """Letters, digits, `_ . -`, starting with a letter, at most 64 characters (Slurm and PBS Pro accept it)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.-")
    if not cleaned or not cleaned[0].isalpha():
        cleaned = "j" + cleaned
    return cleaned[:64]


def _check_directive_value(option: str, value: str) -> None:
    if not DIRECTIVE_VALUE.fullmatch(value):
        raise ValidationError(
            f"{option}: '{value}' has characters a scheduler directive cannot carry safely. "
            "Use only letters, digits and . _ : + @ - (as the site spells the name)."
        )


def _check_routes(profile: ClusterProfile, partition: Partition, nodes: int, walltime_s: int) -> None:
    """A routing queue forwards a job to the first execution queue its size and walltime fit; a job that
    fits none is silently dropped by PBS, so it is refused here with the queue (or walltime) that fits."""
    for route in partition.routes:
        if route.min_nodes <= nodes <= route.max_nodes and walltime_s <= parse_walltime(route.max_walltime):
            return
    routes = "; ".join(
        f"{r.name + ': ' if r.name else ''}{r.min_nodes}-{r.max_nodes} nodes up to {r.max_walltime}"
        for r in partition.routes
    )
    same_size = [r for r in partition.routes if r.min_nodes <= nodes <= r.max_nodes]
    hints = []
    if same_size:
        hints.append(f"--time {same_size[0].max_walltime} or less for {nodes} nodes")
    others = _other_partitions(profile, partition, nodes, walltime_s)
    if others:
        hints.append(f"--partition {others[0]}")
    raise ValidationError(
        f"--nodes/--time: {nodes} nodes for {slurm_walltime(walltime_s)} match no route of queue '{partition.name}' "
        f"({routes}); PBS would drop the job without a word. Use "
        + (" or ".join(hints) if hints else "a size and walltime that fit one of them")
        + "."
    )


def _other_partitions(profile: ClusterProfile, than: Partition, nodes: int, walltime_s: int) -> list[str]:
    """The other partitions that allow the job, as said to people: each with its caution where the profile
    gives one (Polaris' `preemptable`: jobs there can be killed at any time)."""
    return [
        f"{p.name} ({p.caution})" if p.caution else p.name
        for p in profile.partitions
        if p.name != than.name and p.min_nodes <= nodes <= p.max_nodes and parse_walltime(p.max_walltime) >= walltime_s
    ]


def _qos_allows(qos: Qos, nodes: int, walltime_s: int) -> bool:
    if qos.max_walltime is not None and parse_walltime(qos.max_walltime) < walltime_s:
        return False
    if qos.max_nodes is not None and nodes > qos.max_nodes:
        return False
    return nodes >= qos.min_nodes


def _check_limits(
    profile: ClusterProfile, partition: Partition, qos_name: str | None, nodes: int, walltime_s: int
) -> None:
    kind = "queue" if profile.scheduler == "pbs" else "partition"
    if nodes > partition.max_nodes or nodes < partition.min_nodes:
        others = _other_partitions(profile, partition, nodes, 1)
        hint = f" The {kind}s that allow {nodes} nodes: {', '.join(others)}." if others else ""
        raise ValidationError(
            f"--nodes: {nodes} nodes is outside {kind} '{partition.name}' "
            f"({partition.min_nodes}-{partition.max_nodes} nodes).{hint} "
            f"Ask for fewer nodes or pick another {kind} with --partition."
        )
    if partition.routes:
        _check_routes(profile, partition, nodes, walltime_s)
    limit = parse_walltime(partition.max_walltime)
    if walltime_s > limit:
        others = _other_partitions(profile, partition, nodes, walltime_s)
        hint = (
            f" {kind.capitalize()}s that allow it: {', '.join(others)} (--partition)."
            if others
            else f" No {kind} of this cluster allows it: checkpoint and let hpcai chain attempts instead."
        )
        raise ValidationError(
            f"--time: {slurm_walltime(walltime_s)} is over {kind} '{partition.name}''s maximum of "
            f"{partition.max_walltime}.{hint}"
        )
    if qos_name is None:
        return
    qos = profile.qos_named(qos_name)
    if qos is None or (partition.qos and qos_name not in partition.qos):
        allowed = partition.qos or [q.name for q in profile.qos]
        raise ValidationError(
            f"--qos: '{qos_name}' is not a QOS of {kind} '{partition.name}'.{closest(qos_name, allowed)} "
            f"Allowed: {', '.join(allowed) or '(none defined; leave --qos out)'}."
        )
    if not _qos_allows(qos, nodes, walltime_s):
        fitting = [
            q.name for q in profile.qos if q.name in (partition.qos or [q.name]) and _qos_allows(q, nodes, walltime_s)
        ]
        hint = f" QOS that allow it: {', '.join(fitting)} (--qos)." if fitting else ""
        limits = (
            f"walltime up to {qos.max_walltime or 'the partition limit'}, "
            f"{qos.min_nodes}-{qos.max_nodes or partition.max_nodes} nodes"
        )
        raise ValidationError(
            f"--time/--nodes: {nodes} nodes for {slurm_walltime(walltime_s)} do not fit QOS '{qos.name}' "
            f"({limits}).{hint}"
        )


def _resolve_env(items: tuple[str, ...]) -> dict[str, str]:
    env = parse_assignments(items, "--env")
    for key in env:
        if not ENV_NAME.fullmatch(key):
            raise ValidationError(
                f"--env: '{key}' is not a valid variable name. Use letters, digits and _, not starting "
                "with a digit (e.g. --env NCCL_DEBUG=INFO)."
            )
        if SECRET_NAME.search(key):
            raise ValidationError(
                f"--env: {key} looks like a secret, and --env values are written into the job script and "
                "run directory. Keep it in a file on the cluster readable only by you (chmod 600, e.g. "
                "~/.netrc or the tool's own config file) and let your code read it there."
            )
        if key in RESERVED_ENV or key.startswith(RESERVED_ENV_PREFIXES):
            raise ValidationError(
                f"--env: {key} is set by hpcai or the scheduler and cannot be overridden. "
                "Use another name, or the matching option (--nodes, --time, ...)."
            )
    return env


def resolve_jobspec(
    *,
    cluster: str,
    profile: ClusterProfile,
    workload: Workload,
    overrides: Overrides,
    settings: ClusterSettings,
    state_dir: Path,
) -> JobSpec:
    spec = workload.spec
    walltime_s = parse_walltime(overrides.time or spec.resources.time)
    partition = profile.partition(overrides.partition)
    nodes = overrides.nodes if overrides.nodes is not None else spec.resources.nodes
    if nodes < 1:
        raise ValidationError(f"--nodes: {nodes} is not a node count. Give 1 or more.")
    spares = overrides.spare_nodes or 0
    if spares < 0:
        raise ValidationError(f"--spare-nodes: {spares} is not a node count. Give 0 or more.")
    if spares and profile.scheduler != "slurm":
        raise ValidationError(
            f"--spare-nodes: cluster '{cluster}' runs {profile.scheduler}, and hpcai replaces a failed node by a "
            "spare only under Slurm (srun picks the nodes of each launch inside the allocation). Leave "
            "--spare-nodes out: a failed node then sends the run back to the queue without it."
        )

    gpus = overrides.gpus_per_node
    if gpus is None:
        gpus = spec.resources.gpus_per_node if spec.resources.gpus_per_node is not None else profile.node.gpus
    if gpus < 0 or gpus > profile.node.gpus:
        raise ValidationError(
            f"--gpus-per-node: {gpus} GPUs per node, but a node of this cluster has {profile.node.gpus}"
            f"{' (' + profile.node.gpu_model + ')' if profile.node.gpu_model else ''}. "
            f"Ask for at most {profile.node.gpus}, and more nodes with --nodes."
        )

    qos = overrides.qos or partition.default_qos
    if overrides.qos is not None:
        _check_directive_value("--qos", overrides.qos)
    _check_limits(profile, partition, qos, nodes + spares, walltime_s)

    account = overrides.account or settings.account
    if account is not None:
        _check_directive_value("--account", account)
    elif profile.account_required:
        raise ValidationError(
            f"--account: cluster '{cluster}' charges every job to an account (budget/project), and none "
            f'was given. Pass --account NAME, or set `account = "NAME"` under [clusters.{cluster}] in '
            "config.toml; `hpcai clusters show` lists the command that shows your accounts."
        )

    stage = resolve_stage(workload, overrides.stage)
    assignments = parse_assignments(overrides.set, "--set")
    if "stage" in assignments:
        stage = resolve_stage(workload, assignments.pop("stage"))
    here = settings.ssh_host is None
    parameters = absolute_paths(workload, resolve_parameters(workload, stage, assignments), here=here)
    env = _resolve_env(overrides.env)

    placeholders = path_placeholders(settings, account, state_dir)
    fs = profile.filesystems[profile.runs_on]
    fs_root = expand_path(fs.path, placeholders, field=f"filesystems.{profile.runs_on}.path")
    run_dir = overrides.run_dir or f"{fs_root.rstrip('/')}/{profile.runs_subdir}/{overrides.run_id}"
    if not RUN_DIR_SAFE.fullmatch(run_dir):
        raise ValidationError(
            f"run directory: '{run_dir}' must be an absolute path of letters, digits and / . _ + @ = , - "
            "only (it appears in #SBATCH/#PBS lines, which no shell quotes, and Slurm expands %). "
            "Choose another --run-dir, or set HPCAI_HOME to such a path."
        )

    cache_dir = None
    if profile.caches is not None:
        cache_fs = profile.filesystems[profile.caches]
        cache_root = expand_path(cache_fs.path, placeholders, field=f"filesystems.{profile.caches}.path").rstrip("/")
        cache_dir = (
            f"{cache_root}/.cache" if "{user}" in cache_fs.path else f"{cache_root}/{placeholders['user']}/.cache"
        )
        if not RUN_DIR_SAFE.fullmatch(cache_dir):
            raise ValidationError(
                f"filesystems.{profile.caches}.path: the jobs' cache folder '{cache_dir}' must be an absolute path of "
                "letters, digits and / . _ + @ = , - only. Check `user` and `account` in config.toml."
            )

    local_code = profile.launch.python == "current"
    code_dir = overrides.code_dir or (
        str(workload.directory) if local_code else f"{fs_root.rstrip('/')}/hpcai/code/{workload.name}"
    )
    processes = gpus if gpus > 0 else profile.launch.cpu_processes_per_node
    precision = spec.mixed_precision.gpu if gpus > 0 else spec.mixed_precision.cpu
    container = overrides.container or settings.container
    if container is not None and profile.container is None:
        raise ValidationError(
            f"--container: cluster '{cluster}' has no container runtime in its profile. Leave --container "
            "out, or add a `container:` section to the profile."
        )
    environment = resolve(profile, placeholders=placeholders, container=container, own_python=settings.python)
    if overrides.binds and environment.image is None:
        raise ValidationError(
            f"pack_data: squashfs (profile '{cluster}'): the data is staged as a SquashFS image that the job's "
            "container mounts, and this job runs without a container. Give --container IMAGE (or set "
            "environment.default: container in the profile), or set pack_data: true (tar shards, no mount needed)."
        )
    name = sanitize_job_name(overrides.name or f"hpcai-{workload.name}" + (f"-{stage}" if stage else ""))
    # Ask for the checkpoint early enough, but never before a quarter of the walltime has passed.
    lead = max(10, min(spec.checkpoint_lead_s, walltime_s // 4))

    return JobSpec(
        cache_dir=cache_dir,
        cluster=cluster,
        workload=workload.name,
        stage=stage,
        run_id=overrides.run_id,
        run_dir=run_dir,
        job_name=name,
        nodes=nodes,
        gpus_per_node=gpus,
        processes_per_node=processes,
        spare_nodes=spares,
        walltime_s=walltime_s,
        partition=partition.name,
        qos=qos,
        account=account,
        container=environment.image,
        env=env,
        parameters=parameters,
        code_dir=code_dir,
        python_path=overrides.python_path,
        binds=overrides.binds,
        entrypoint=spec.entrypoint,
        python=environment.python,
        environment=environment,
        mixed_precision=precision,
        signal_lead_s=lead,
        share_with_group=fs.share_with_group,
    )


def path_placeholders(settings: ClusterSettings, account: str | None, state_dir: Path) -> dict[str, str]:
    """What fills `{user}`, `{account}` and `{state_dir}` in a profile's paths for a job (and for doctor,
    which must look where the job will)."""
    values = {"user": settings.user or _local_user(), "state_dir": str(state_dir)}
    if account is not None:
        values["account"] = account
    return values


def _local_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "user"
