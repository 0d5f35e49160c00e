"""Cluster profiles: what hpcai knows about a site, one YAML file each, validated by these models.

Shipped profiles live in `clusters/`; a file of the same name in `<config dir>/clusters/` is merged over
the shipped one (so a user can change one value when a site changes), a file of a new name adds a cluster.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hpcai.errors import ConfigError, NotFoundError, closest
from hpcai.spec.profile_files import profile_names, profile_source, shipped_profile_dir, user_profile_dir
from hpcai.spec.read_once import remembered
from hpcai.spec.walltime import parse_walltime
from hpcai.spec.yamlfiles import deep_merge, load_model, read_yaml_mapping

# Patterns are matched with fullmatch: `$` would accept a trailing newline, which splits a directive.
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Names that reach scheduler directives (#SBATCH/#PBS lines are parsed by the scheduler, not a shell,
# so they are restricted rather than quoted).
DIRECTIVE_VALUE = re.compile(r"[A-Za-z0-9_.:+@-]+")
# PBS resource values also carry `=` and `,` (e.g. `system=polaris`, `home:grand,eagle`).
PBS_RESOURCE = re.compile(r"[A-Za-z0-9_.:+@=,-]+")
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
    notes: str = Field(default="", description="Why this is the site's way, with its source")

    _names = field_validator("conda_env")(_directive_safe)

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

    _mem = field_validator("mem")(_directive_safe)

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


class ClusterProfile(Strict):
    description: str = Field(description="One line about the machine")
    aliases: list[str] = Field(default=[], description="Short names accepted by --cluster")
    scheduler: Literal["slurm", "pbs", "local"] = Field(description="Batch system")
    access: Access
    partitions: list[Partition] = Field(min_length=1, description="Partitions (Slurm) or queues (PBS)")
    qos: list[Qos] = Field(default=[], description="Quality-of-service levels")
    node: NodeShape
    accelerator: Literal["cuda", "rocm", "cpu"] = Field(description="GPU vendor stack")
    modules: Modules = Modules()
    container: Container | None = None
    environment: Environment = Environment()
    env: dict[str, str] = Field(default={}, description="Communication and runtime variables (NCCL/RCCL...)")
    filesystems: dict[str, Filesystem] = Field(min_length=1)
    runs_on: str = Field(description="Filesystem (key of `filesystems`) that holds run directories")
    runs_subdir: str = Field(default="hpcai/runs", description="Run directories' folder inside `runs_on`")
    caches: str | None = Field(
        default=None,
        description="Filesystem (key of `filesystems`) for the caches of jobs (HF_HOME, TORCH_HOME, XDG_CACHE_HOME "
        "in <its path>/<user>/.cache) where $HOME is small; a value the user exported wins. Unset: $HOME's",
    )
    compute_internet: bool = Field(description="Whether compute nodes reach the internet")
    account_required: bool = Field(default=True, description="Jobs must name an account/budget")
    launch: Launch
    pbs: PbsSettings | None = None
    budget: Budget = Budget()
    quota: Quota = Quota()
    pack_data: bool | Literal["squashfs"] = Field(
        default=False,
        description="Stage a local data folder given to submit (--set data=DIR) packed: `true`, into tar shards, "
        "as `hpcai stage --pack` does; `squashfs`, as one SquashFS image the job's container mounts at "
        "/hpcai-data/data (as `hpcai stage --squashfs`). For sites that cap the number of files per project",
    )
    sources: list[str] = Field(default=[], description="Where these facts come from")

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not ENV_NAME.fullmatch(k)]
        if bad:
            raise ValueError(f"not valid variable names: {', '.join(bad)}")
        secret = [k for k in value if SECRET_NAME.search(k)]
        if secret:
            raise ValueError(
                f"{', '.join(secret)} look(s) like a secret, and profile variables are written into every job "
                "script: keep it in a file on the cluster readable only by you (chmod 600) and let your code "
                "read it there"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ClusterProfile:
        if self.runs_on not in self.filesystems:
            raise ValueError(f"runs_on '{self.runs_on}' is not one of filesystems: {', '.join(self.filesystems)}")
        if self.caches is not None and self.caches not in self.filesystems:
            raise ValueError(f"caches '{self.caches}' is not one of filesystems: {', '.join(self.filesystems)}")
        if sum(p.default for p in self.partitions) > 1:
            raise ValueError("only one partition may be marked default")
        known = {q.name for q in self.qos}
        for part in self.partitions:
            unknown = [q for q in [*part.qos, part.default_qos] if q is not None and q not in known]
            if unknown:
                raise ValueError(f"partition {part.name} names undefined qos {', '.join(unknown)}")
        env_fs = self.environment.filesystem
        if env_fs is not None and env_fs not in self.filesystems:
            raise ValueError(
                f"environment.filesystem '{env_fs}' is not one of filesystems: {', '.join(self.filesystems)}"
            )
        if self.environment.default == "container" and (self.environment.image is None or self.container is None):
            raise ValueError("environment.default: container needs environment.image and a `container:` section")
        if self.pack_data == "squashfs" and self.container is None:
            raise ValueError("pack_data: squashfs needs a `container:` section (the job's container mounts the image)")
        if self.environment.pack == "squashfs" and self.container is None:
            raise ValueError("environment.pack: squashfs needs a `container:` section (the venv is built in it)")
        if self.scheduler == "pbs" and self.pbs is None:
            raise ValueError("a pbs scheduler needs a `pbs:` section")
        return self

    def partition(self, name: str | None) -> Partition:
        if name is None:
            return next((p for p in self.partitions if p.default), self.partitions[0])
        for part in self.partitions:
            if part.name == name:
                return part
        names = [p.name for p in self.partitions]
        raise NotFoundError(
            f"--partition: '{name}' is not a partition of this cluster.{closest(name, names)} "
            f"Known: {', '.join(names)}."
        )

    def qos_named(self, name: str) -> Qos | None:
        return next((q for q in self.qos if q.name == name), None)


def resolve_alias(name: str) -> str:
    """The profile name for `name`, which may be an alias (e.g. leonardo -> leonardo-booster)."""
    if profile_source(name):
        return name
    for candidate in profile_names():
        for path in profile_source(candidate):
            aliases = read_yaml_mapping(path).get("aliases") or []
            if isinstance(aliases, list) and name in aliases:
                return candidate
    return name


def load_profile(name: str) -> ClusterProfile:
    """The validated profile (shipped file with the user's overrides merged over it); validated once per
    command (see read_once)."""
    name = resolve_alias(name)
    return remembered(f"profile:{name}", lambda: _read_profile(name))


def _read_profile(name: str) -> ClusterProfile:
    files = profile_source(name)
    if not files:
        known = profile_names()
        raise NotFoundError(
            f"unknown cluster '{name}'.{closest(name, known)} Known clusters: {', '.join(known)}. "
            f"Add your own as {user_profile_dir()}/{name}.yaml (see README, 'Adding a cluster')."
        )
    data: dict[str, object] = {}
    for path in files:
        data = deep_merge(data, read_yaml_mapping(path))
    source = " merged over ".join(str(p) for p in reversed(files))
    return load_model(ClusterProfile, data, source)


def load_all_profiles() -> dict[str, ClusterProfile]:
    return {name: load_profile(name) for name in profile_names()}


def expand_path(pattern: str, values: dict[str, str], *, field: str) -> str:
    """Fill `{user}`, `{account}`, `{state_dir}` into a filesystem path pattern."""
    try:
        return pattern.format_map(values)
    except (IndexError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"{field}: the path '{pattern}' is not a valid pattern ({exc}); only {{user}}, {{account}} and "
            "{state_dir} may appear in braces (write a literal brace as {{ or }})."
        ) from None
    except KeyError as exc:
        missing = exc.args[0]
        hint = (
            "pass --account or set `account` for this cluster in config.toml"
            if missing == "account"
            else ("set `user` for this cluster in config.toml" if missing == "user" else "remove it from the pattern")
        )
        raise ConfigError(f"{field}: the path '{pattern}' needs {{{missing}}}, which is not known: {hint}.") from exc


__all__ = [
    "ClusterProfile",
    "ConfigError",
    "load_all_profiles",
    "load_profile",
    "profile_names",
    "profile_source",
    "shipped_profile_dir",
    "user_profile_dir",
]
