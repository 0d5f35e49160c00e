"""The parts of a cluster profile (hpcai.spec.profiles): access, partitions and QOS, the node, modules, the
container, the job environment, filesystems, launch, PBS settings, budget and quota -- each a strict
pydantic model whose fields carry their descriptions, and the patterns that keep values written into
scheduler directives and commands plain."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hpcai.spec.walltime import parse_walltime

# Patterns are matched with fullmatch: `$` would accept a trailing newline, which splits a directive.
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Names that reach scheduler directives (#SBATCH/#PBS lines are parsed by the scheduler, not a shell,
# so they are restricted rather than quoted).
DIRECTIVE_VALUE = re.compile(r"[A-Za-z0-9_.:+@-]+")
# PBS resource values also carry `=` and `,` (e.g. `system=polaris`, `home:grand,eagle`).
PBS_RESOURCE = re.compile(r"[A-Za-z0-9_.:+@=,-]+")
# A site's own scheduler option (a plugin's, e.g. CSCS's `--uenv=pytorch/v2.8.0:/user-environment`).
SCHEDULER_OPTION = re.compile(r"--[a-z][a-z0-9-]*(=[A-Za-z0-9_./:+@=,-]+)?")
# A word of the command that enters a site's software environment on the login node (`uenv run ... --`).
ENTER_WORD = re.compile(r"[A-Za-z0-9_./:+@=,-]+")
# Per-local-rank CPU lists: `0-7,32-39:8-15,40-47`.
CPU_BIND = re.compile(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*(:[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*)*")
# Variables that look like credentials: their values would be written into job scripts and run directories.
SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|CREDENTIAL|PRIVATE_KEY)", re.IGNORECASE)


def _directive_safe(value: str | None) -> str | None:
    if value is not None and not DIRECTIVE_VALUE.fullmatch(value):
        raise ValueError("must contain only letters, digits and . _ : + @ - (it is written into a directive)")
    return value


def _pbs_resource_safe(value: str | None) -> str | None:
    if value is not None and not PBS_RESOURCE.fullmatch(value):
        raise ValueError("must contain only letters, digits and . _ : + @ = , - (it is written into a #PBS line)")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_walltime(value: str | None) -> str | None:
    if value is not None:
        parse_walltime(value, source="max_walltime")
    return value


class Access(Strict):
    login_hosts: list[str] = Field(description="Login node host names, reached over SSH")
    method: Literal["ssh-key", "ssh-certificate", "ssh-otp", "local"] = Field(
        description="How users authenticate: plain keys, short-lived certificates (2FA), one-time passcodes"
    )
    datamover_hosts: list[str] = Field(default=[], description="Hosts for bulk transfers (scp/rsync/sftp)")
    jump_host: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]*$",
        description="The host every login goes through (CSCS: ela.cscs.ch); onboard's SSH entry jumps through it",
    )
    notes: str = Field(default="", description="What a newcomer must do once to get access")
    port: int = Field(default=22, ge=1, le=65535, description="SSH port of the login nodes")
    steps: list[str] = Field(
        default=[], description="The site's access procedure, step by step, as `hpcai onboard` explains it"
    )
    key_types: list[str] = Field(default=[], description="Key types the site accepts, e.g. ed25519, rsa-4096")
    key_file: str | None = Field(
        default=None,
        pattern=r"^~/\.ssh/[A-Za-z0-9_.-]+$",
        description="The key file the steps have users create (e.g. ~/.ssh/id_ed25519_jsc), named by onboard",
    )


class Route(Strict):
    """One execution queue behind a PBS routing queue: a job goes there when its size and walltime fit."""

    name: str = Field(default="", description="The execution queue's name, for messages (e.g. small)")
    min_nodes: int = Field(ge=1)
    max_nodes: int = Field(ge=1)
    max_walltime: str

    _walltime = field_validator("max_walltime")(_check_walltime)


class Partition(Strict):
    name: str = Field(description="Partition (Slurm) or queue (PBS) name")
    max_nodes: int = Field(ge=1, description="Most nodes one job may use")
    min_nodes: int = Field(default=1, ge=1, description="Fewest nodes a job must ask for")
    max_walltime: str = Field(description="Longest walltime, HH:MM:SS or D-HH:MM:SS")
    qos: list[str] = Field(default=[], description="QOS names allowed in this partition")
    default_qos: str | None = Field(default=None, description="QOS a job gets when it names none")
    default: bool = Field(default=False, description="Used when no --partition is given")
    routes: list[Route] = Field(
        default=[],
        description="A routing queue's execution queues: a job must fit one of them (else PBS drops it)",
    )
    description: str = ""
    caution: str = Field(
        default="",
        description="Said whenever hpcai suggests this partition, e.g. that its jobs can be preempted",
    )

    _walltime = field_validator("max_walltime")(_check_walltime)
    _name = field_validator("name", "default_qos")(_directive_safe)


class Qos(Strict):
    name: str = Field(description="QOS name, passed as --qos")
    max_walltime: str | None = Field(default=None, description="Longest walltime under this QOS")
    max_nodes: int | None = Field(default=None, ge=1, description="Most nodes per job under this QOS")
    min_nodes: int = Field(default=1, ge=1, description="Fewest nodes per job under this QOS")
    description: str = ""

    _walltime = field_validator("max_walltime")(_check_walltime)
    _name = field_validator("name")(_directive_safe)


class NodeShape(Strict):
    gpus: int = Field(ge=0, description="GPUs per node as the scheduler counts them (LUMI: 8 GCDs)")
    gpu_model: str | None = Field(default=None, description="e.g. A100 40GB, MI250X GCD")
    gpu_memory_gb: float | None = Field(default=None, description="Memory of one GPU (or GCD) in GB")
    cpus: int = Field(ge=1, description="CPU cores a job may use per node")
    memory_gb: float = Field(gt=0, description="Memory per node in GB")
    interconnect: str = Field(default="", description="Network between nodes")
    count: int | None = Field(default=None, description="Nodes of this kind in the machine")


class Modules(Strict):
    purge: bool = Field(default=False, description="Run `module purge` first")
    use: list[str] = Field(default=[], description="Directories for `module use`")
    load: list[str] = Field(default=[], description="Modules to load, in order, always")
    software: list[str] = Field(
        default=[], description="Modules that provide Python/PyTorch, loaded only when no container is used"
    )


class Container(Strict):
    runtime: Literal["apptainer", "singularity"] = Field(description="Container runtime command")
    flags: list[str] = Field(default=[], description="Flags for `<runtime> exec`, e.g. --nv or --rocm")
    binds: list[str] = Field(default=[], description="Paths bound into the container (--bind)")
    modules: list[str] = Field(default=[], description="Modules that provide the runtime")
    pbs_resources: list[str] = Field(
        default=[], description="Extra `-l` resources for PBS jobs that use the container (Polaris: fakeroot)"
    )
    group: str | None = Field(
        default=None,
        description="Unix group the site puts you in once you may run containers (JSC: after a request in JuDoor); "
        "doctor checks it",
    )
    group_request: str = Field(default="", description="How to be put in that group")

    _group = field_validator("group")(_directive_safe)

    @field_validator("pbs_resources")
    @classmethod
    def _resources_safe(cls, value: list[str]) -> list[str]:
        for item in value:
            _pbs_resource_safe(item)
        return value


class Environment(Strict):
    """How a job gets a Python with torch >= 2.6 (FSDP2), accelerate and transformers on this site.

    `venv`: `hpcai env build` makes a virtual environment on the login node (which has the package index;
    compute nodes may not), on top of the Python the profile's modules give, from hpcai's own `train`
    extra; jobs run its interpreter. `container`: jobs run in `image`; with `pack: squashfs` a venv of
    the packages the image lacks is built inside the image and packed into one SquashFS file (LUMI's advice
    for the inode-limited parallel filesystems), bound at /user-software in the job. `modules`: the
    modules' Python as it is (the local and test clusters), nothing built.
    """

    default: Literal["venv", "container", "modules"] = Field(
        default="modules", description="What a job without --container gets: venv, container or modules"
    )
    filesystem: str | None = Field(
        default=None, description="Filesystem (key of `filesystems`) that holds built environments; unset: runs_on"
    )
    subdir: str = Field(default="hpcai/envs", description="Folder inside that filesystem")
    image: str | None = Field(default=None, description="The site's recommended container image (default: container)")
    system_site_packages: bool = Field(
        default=True, description="The venv sees the packages of the Python (or image) it is built on"
    )
    torch: Literal["install", "base"] = Field(
        default="install",
        description="install: pip installs hpcai's tested torch; base: keep the torch of the modules or image "
        "(ROCm builds, site-tuned builds), which must be >= 2.6",
    )
    pack: Literal["none", "squashfs"] = Field(default="none", description="squashfs: pack the venv into one file")
    pip_index: str | None = Field(default=None, description="Extra package index for torch, e.g. a CUDA build's")
    conda_env: str | None = Field(
        default=None, description="`conda activate` this env after the modules load (Polaris: base)"
    )
    internet: bool | None = Field(
        default=None,
        description="The login node reaches the package index: true, false (`env build` downloads the wheels on "
        "your machine, stages them, installs offline), or unset (env build asks pip there first)",
    )
    platform: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9_]+$",
        description="pip platform tag of the cluster's nodes when they differ from your machine's, e.g. "
        "manylinux_2_28_aarch64 (wheels for it are downloaded here, installed there offline)",
    )
    python_version: str | None = Field(
        default=None, pattern=r"^3\.[0-9]{1,2}$", description="The cluster Python's version (e.g. 3.11)"
    )
    enter: list[str] = Field(
        default=[],
        description="The command that runs a command in the site's software environment on the login node, as "
        "jobs get it from `launch.directives` (CSCS: uenv run pytorch/v2.8.0:v1 --view=default --): env build, "
        "pre-flight and doctor run in it",
    )
    notes: str = Field(default="", description="Why this is the site's way, with its source")

    _names = field_validator("conda_env")(_directive_safe)

    @field_validator("enter")
    @classmethod
    def _words(cls, value: list[str]) -> list[str]:
        for item in value:
            if not ENTER_WORD.fullmatch(item):
                raise ValueError(
                    f"'{item}' must be a plain word (letters, digits, / . _ : + @ = , -): it is run as a command's "
                    "word, like a directive's value, never through a shell"
                )
        return value

    @field_validator("subdir")
    @classmethod
    def _relative(cls, value: str) -> str:
        if value.startswith("/") or ".." in value.split("/") or not DIRECTIVE_VALUE.fullmatch(value.replace("/", "_")):
            raise ValueError("must be a relative folder of letters, digits and . _ : + @ - (no ..)")
        return value


class Filesystem(Strict):
    path: str = Field(description="Path pattern; {user}, {account} and {state_dir} are filled in")
    env_var: str | None = Field(default=None, description="Site variable pointing at it, e.g. SCRATCH")
    quota: str | None = Field(default=None, description="Capacity quota, e.g. 50 TB")
    files_quota: str | None = Field(default=None, description="Inode quota, e.g. 2M files")
    purge_days: int | None = Field(default=None, description="Files unused this long are deleted")
    share_with_group: bool = Field(
        default=False,
        description="Staged data here is readable by the project's group (store folders 0750); else private (0700)",
    )
    description: str = ""


class Launch(Strict):
    launcher: Literal["srun", "mpiexec", "direct"] = Field(
        description="How one launcher per node is started: srun (Slurm), mpiexec (PBS), direct (local)"
    )
    launcher_flags: list[str] = Field(default=[], description="Extra flags for srun/mpiexec")
    machine_rank_var: str = Field(
        default="SLURM_NODEID", description="Variable holding the node's rank inside the launcher task"
    )
    master_addr_suffix: str = Field(
        default="", description="Appended to the first host name (JUWELS: 'i' for the InfiniBand name)"
    )
    master_port: int | Literal["from-job-id"] = Field(
        default=29500,
        description="Rendezvous port, or 'from-job-id' (20000 + job number mod 12000, below the ephemeral port "
        "range, so jobs sharing a node do not clash; LUMI's guide derives it from the job id the same way)",
    )
    gpu_request: Literal["gres", "gpus-per-node", "none"] = Field(
        default="gres", description="How GPUs are requested from Slurm"
    )
    cpus_per_task: int | None = Field(default=None, description="CPUs for the per-node launcher task")
    mem: str | None = Field(default=None, description="--mem for the job, e.g. 480G")
    cpu_processes_per_node: int = Field(
        default=1, ge=1, description="Training processes per node when the node has no GPU"
    )
    emulate_nodes: bool = Field(
        default=False,
        description="Run N 'machines' as N tasks on one node (the local test Slurm); ranks from SLURM_PROCID",
    )
    python: str | None = Field(
        default=None,
        description="Python on the compute nodes; 'current' = the interpreter running hpcai (local only)",
    )
    cpu_bind_per_rank: str | None = Field(
        default=None,
        description="CPUs of each GPU's training process, local rank by local rank, e.g. 24-31,56-63:16-23,48-55 "
        "(the hpcai runtime binds each process to its list: accelerate starts one launcher per node)",
    )
    library_path: list[str] = Field(
        default=[], description="Folders put in front of LD_LIBRARY_PATH (e.g. a site's NCCL network plugin)"
    )
    directives: list[str] = Field(
        default=[],
        description="The site's own Slurm options, each written as an #SBATCH line (CSCS: --uenv=..., --view=...)",
    )

    _mem = field_validator("mem")(_directive_safe)

    @field_validator("directives")
    @classmethod
    def _options(cls, value: list[str]) -> list[str]:
        for item in value:
            if not SCHEDULER_OPTION.fullmatch(item):
                raise ValueError(
                    f"'{item}' must be one --option or --option=value (letters, digits and / . _ : + @ = , -): it is "
                    "written as an #SBATCH directive"
                )
        return value

    @field_validator("cpu_bind_per_rank")
    @classmethod
    def _cpu_lists(cls, value: str | None) -> str | None:
        if value is not None and not CPU_BIND.fullmatch(value):
            raise ValueError("must be CPU lists (e.g. 0-7,32-39) separated by ':' one per local rank")
        return value

    @field_validator("library_path")
    @classmethod
    def _absolute(cls, value: list[str]) -> list[str]:
        for item in value:
            if not item.startswith("/") or ":" in item:
                raise ValueError(f"'{item}' must be an absolute folder without ':'")
        return value

    @field_validator("machine_rank_var")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not ENV_NAME.fullmatch(value):
            raise ValueError("must be a shell variable name")
        return value


class PbsSettings(Strict):
    select_extra: list[str] = Field(default=[], description="Extra select resources, e.g. system=polaris")
    place: str | None = Field(default="scatter", description="-l place=")
    filesystems: str | None = Field(default=None, description="-l filesystems= (ALCF requires it)")

    _values = field_validator("place", "filesystems")(_pbs_resource_safe)

    @field_validator("select_extra")
    @classmethod
    def _select_safe(cls, value: list[str]) -> list[str]:
        for item in value:
            _pbs_resource_safe(item)
        return value


BudgetFormat = Literal["saldo", "jutil", "lumi-allocations", "sbank"]


class Budget(Strict):
    commands: list[str] = Field(default=[], description="Commands that show the remaining allocation")
    billing: str = Field(default="", description="How usage is charged")
    query: str | None = Field(
        default=None,
        description="The command hpcai runs on the login node and parses; {account} and {user} are filled "
        "in (each one shell word)",
    )
    format: BudgetFormat | None = Field(default=None, description="Which parser reads `query`'s output")
    unit: str = Field(default="node-hours", description="Unit the site's numbers are in")
    per_node_hour: float = Field(default=1.0, gt=0, description="Units charged for one node for one hour")

    @model_validator(mode="after")
    def _query_has_format(self) -> Budget:
        if (self.query is None) != (self.format is None):
            raise ValueError("`query` and `format` go together: give both or neither")
        return self


class Quota(Strict):
    query: str | None = Field(
        default=None, description="Site quota command whose output names each path with used/max (lumi-quota)"
    )
    format: Literal["lumi-quota", "df"] = Field(
        default="df", description="lumi-quota: parse `query`; df: `df -P` and `df -Pi` on each filesystem"
    )
    warn_percent: float = Field(default=85, description="Warn at this much of the space or inodes used")
    fail_percent: float = Field(default=95, description="Fail at this much of the space or inodes used")
