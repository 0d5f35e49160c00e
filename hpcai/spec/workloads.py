"""Workload specs (`workloads/<name>/workload.yaml`): what to run, with which defaults and FSDP settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hpcai.errors import NotFoundError, closest
from hpcai.paths import config_dir, data_dir
from hpcai.spec.appspec import AppSpec
from hpcai.spec.walltime import parse_walltime
from hpcai.spec.yamlfiles import load_model, read_yaml_mapping

Scalar = str | int | float | bool


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Stage(Strict):
    description: str = ""
    parameters: dict[str, Scalar] = Field(default={}, description="Parameter values for this stage")


class ParameterRule(Strict):
    """What a parameter accepts, checked at render/submit (exit 2) so no job waits in a queue to fail on it."""

    min: float | None = Field(default=None, description="Smallest allowed value (numbers)")
    max: float | None = Field(default=None, description="Largest allowed value (numbers)")
    choices: list[Scalar] | None = Field(default=None, description="The only values allowed")
    path: bool = Field(
        default=False,
        description="A file or folder: a local one is staged (or used in place on this machine), a cluster "
        "path must be absolute and is checked to exist there before the job is queued",
    )
    json_list: bool = Field(
        default=False,
        description="With path: a JSON file (or a folder of *.json files) whose top level must be a list of "
        "samples; checked before queueing where the files are on this machine",
    )


class Resources(Strict):
    nodes: int = Field(default=1, ge=1, description="Default node count")
    gpus_per_node: int | None = Field(default=None, ge=0, description="Default GPUs per node (None: all)")
    time: str = Field(default="01:00:00", description="Default walltime")

    @field_validator("time")
    @classmethod
    def _walltime(cls, value: str) -> str:
        parse_walltime(value, source="resources.time")
        return value


class MixedPrecision(Strict):
    gpu: Literal["no", "fp16", "bf16"] = "bf16"
    cpu: Literal["no", "bf16"] = "no"


class Outputs(Strict):
    metrics: str = Field(default="metrics.jsonl", description="Metrics JSONL, relative to the run directory")
    checkpoints: str = Field(default="checkpoints", description="Checkpoint folder, relative to the run dir")


class WorkloadSpec(Strict):
    description: str
    entrypoint: str = Field(description="Training script, relative to the workload's folder")
    launcher: Literal["accelerate", "torchrun", "srun", "python"] = Field(
        default="accelerate",
        description="accelerate: `accelerate launch` with FSDP, one process per GPU; python: one plain "
        "process per node (preprocessing, probes), given --machine_rank and --num_machines. For your own "
        "program (`app:`): accelerate and torchrun start one process per GPU with nothing added, srun one "
        "task per GPU, python one process per node",
    )
    parameters: dict[str, Scalar] = Field(description="Defaults, overridable with --set KEY=VALUE")
    requires: list[str] = Field(
        default=[],
        description="Python packages the job imports, e.g. 'torch>=2.6': checked on the target before queueing",
    )
    parameter_rules: dict[str, ParameterRule] = Field(
        default={}, description="Ranges, choices and paths the parameters must respect"
    )
    stages: dict[str, Stage] = Field(default={}, description="Named stages with their own parameters")
    default_stage: str | None = None
    resources: Resources = Resources()
    accelerate: dict[str, Scalar] = Field(default={}, description="`accelerate launch` FSDP options")
    mixed_precision: MixedPrecision = MixedPrecision()
    outputs: Outputs = Outputs()
    log_metrics_regex: str | None = Field(
        default=None,
        description="For workloads without the hpcai runtime: a regex with named groups step and loss "
        "(optionally grad_norm) that `hpcai watch` reads from the job's output",
    )
    app: AppSpec | None = Field(
        default=None, description="Your own program (script or module) instead of an hpcai runtime entrypoint"
    )
    demo_when: dict[str, str] = Field(
        default={},
        description="Parameter values that make a job this workload's built-in demo (tiny model, synthetic data; "
        "a value ending in * is a prefix): on a cluster that charges an allocation it is submitted only with --yes",
    )
    checkpoint_lead_s: int = Field(
        default=300, ge=10, description="Seconds before walltime at which the job is told to checkpoint"
    )

    @model_validator(mode="after")
    def _stages_consistent(self) -> WorkloadSpec:
        if self.stages and self.default_stage not in self.stages:
            raise ValueError(f"default_stage must be one of {', '.join(self.stages)}")
        for name, stage in self.stages.items():
            unknown = set(stage.parameters) - set(self.parameters)
            if unknown:
                raise ValueError(f"stage {name} sets undeclared parameters {', '.join(sorted(unknown))}")
        unknown = set(self.parameter_rules) - set(self.parameters)
        if unknown:
            raise ValueError(f"parameter_rules names undeclared parameters {', '.join(sorted(unknown))}")
        return self

    def is_demo(self, parameters: dict[str, Scalar]) -> bool:
        """The parameters are the built-in demo's (every `demo_when` value matches)."""
        if not self.demo_when:
            return False
        for key, wanted in self.demo_when.items():
            value = str(parameters.get(key, ""))
            if not (value.startswith(wanted[:-1]) if wanted.endswith("*") else value == wanted):
                return False
        return True

    def path_parameters(self) -> list[str]:
        return [name for name, rule in self.parameter_rules.items() if rule.path]


class Workload(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    directory: Path
    spec: WorkloadSpec

    @property
    def entrypoint_path(self) -> Path:
        return self.directory / self.spec.entrypoint

    def parameter_help(self) -> dict[str, str]:
        """What each parameter does, in the words of its workload.yaml: the comment at the end of its line
        under `parameters:` (the file stays the one place that says it)."""
        try:
            text = (self.directory / "workload.yaml").read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return {}
        found: dict[str, str] = {}
        inside = False
        for line in text.splitlines():
            if not line.startswith((" ", "#")):
                inside = line.startswith("parameters:")
                continue
            match = _PARAMETER_COMMENT.match(line) if inside else None
            if match and match.group(1) in self.spec.parameters:
                found[match.group(1)] = match.group(2).strip()
        return found


# `  name: value   # what it does` (a value holding no # of its own)
_PARAMETER_COMMENT = re.compile(r"^  ([A-Za-z_][A-Za-z0-9_]*):[^#\n]*#\s?(.+)$")
TEST_HOOK_PREFIX = "inject_"  # parameters that inject faults, for tests and drills only


def workload_dirs() -> list[Path]:
    """Your own workloads (`<config dir>/workloads/<name>/`) first, then the shipped ones."""
    return [config_dir() / "workloads", data_dir("workloads")]


def workload_names() -> list[str]:
    return sorted({p.parent.name for root in workload_dirs() for p in root.glob("*/workload.yaml")})


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def load_workload(name: str) -> Workload:
    if not _NAME.fullmatch(name):
        known = workload_names()
        raise NotFoundError(f"unknown workload '{name}'. Known workloads: {', '.join(known)}.")
    candidates = [root / name for root in workload_dirs() if (root / name / "workload.yaml").is_file()]
    directory = candidates[0] if candidates else data_dir("workloads") / name
    path = directory / "workload.yaml"
    if not path.is_file() or "/" in name:
        known = workload_names()
        raise NotFoundError(f"unknown workload '{name}'.{closest(name, known)} Known workloads: {', '.join(known)}.")
    spec = load_model(WorkloadSpec, read_yaml_mapping(path), str(path))
    return Workload(name=name, directory=directory, spec=spec)
