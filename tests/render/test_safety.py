"""Hostile values in every user-supplied field: the rendered script runs with the site commands replaced
by recording stubs, and nothing the user typed is executed, and no extra directive appears."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from hpcai.render.script import render_script
from hpcai.spec.jobspec import Overrides, resolve_jobspec
from hpcai.spec.profiles import ClusterProfile, load_profile
from hpcai.spec.userconfig import ClusterSettings
from hpcai.spec.workloads import load_workload


def hostile(mark: Path) -> str:
    """Every way to break out of a shell word, each one trying to create a file next to `mark`."""
    return (
        f"x'; touch {mark}1; echo '"
        f"\n#SBATCH --wrap=touch {mark}2\n#PBS -l select=99\n"
        f"$(touch {mark}3) `touch {mark}4` && touch {mark}5 ; touch {mark}6 | touch {mark}7 "
        f'"; touch {mark}8; echo " \\" ${{IFS}} $HOME'
    )


STUB_RECORD = r"""#!/bin/bash
# Record argv (NUL-separated) and the hostile variable, then behave like the real command just enough.
name=$(basename "$0")
printf '%s\0' "$@" > "$RECORD_DIR/$name.argv"
case "$name" in
  scontrol) [ "$1" = show ] && echo node0001 ;;
  getent) echo "10.1.2.3 STREAM node0001" ;;
  srun|mpiexec)
    while [ $# -gt 0 ]; do
      case "$1" in
        -n|--ppn|--cpu-bind) shift 2 ;;
        -*) shift ;;
        *) break ;;
      esac
    done
    exec "$@" ;;
  apptainer|singularity)
    shift
    while [ $# -gt 0 ]; do
      case "$1" in --bind) shift 2 ;; -*) shift ;; *) break ;; esac
    done
    printf '%s' "$1" > "$RECORD_DIR/container"
    shift
    exec "$@" ;;
  python|python3)
    printf '%s' "$HOSTILE" > "$RECORD_DIR/env.HOSTILE" ;;
esac
exit 0
"""

STUBS = [
    "srun",
    "sbatch",
    "scontrol",
    "module",
    "apptainer",
    "singularity",
    "python",
    "python3",
    "accelerate",
    "mpiexec",
    "qsub",
    "getent",
]


def make_stubs(directory: Path) -> None:
    directory.mkdir()
    for name in STUBS:
        stub = directory / name
        stub.write_text(STUB_RECORD)
        stub.chmod(0o755)


def load_with_stub_python(cluster: str) -> ClusterProfile:
    """The profile, with `python` resolved through PATH (the local profile would use this interpreter)."""
    profile = load_profile(cluster)
    return profile.model_copy(update={"launch": profile.launch.model_copy(update={"python": "python"})})


def render_with(cluster: str, tmp_path: Path, value: str | None) -> str:
    """The script with `value` in every user-supplied field, or a clean one when `value` is None."""
    profile = load_with_stub_python(cluster)
    workload = load_workload("llava")
    hostile_fields: dict[str, object] = {}
    if value is not None:
        # Path parameters must be absolute (a relative one names a local file, which must exist).
        paths = (f"data=/{value}", f"model_path=/{value}")
        hostile_fields = {"name": value, "env": (f"HOSTILE={value}",), "set": paths}
    container = (value if value is not None else "/c.sif") if profile.container else None
    job = resolve_jobspec(
        cluster=cluster,
        profile=profile,
        workload=workload,
        overrides=Overrides(
            container=container,
            account="acct" if profile.account_required else None,
            run_id="hostile",
            run_dir=str(tmp_path / "run"),
            **hostile_fields,  # type: ignore[arg-type]
        ),
        settings=ClusterSettings(user="jdoe"),
        state_dir=tmp_path / "state",
    )
    return render_script(job, profile, workload)


def directives(script: str, prefix: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith(prefix)]


@pytest.mark.parametrize(
    ("cluster", "prefix"), [("juwels-booster", "#SBATCH"), ("polaris", "#PBS"), ("local", "#SBATCH")]
)
def test_hostile_values_are_never_executed(cluster: str, prefix: str, tmp_path: Path) -> None:
    mark = tmp_path / "pwned"
    script = render_with(cluster, tmp_path, hostile(mark))
    path = tmp_path / "job.sh"
    path.write_text(script)

    # No injected directive: the header is exactly the template's, nothing after the shebang block.
    clean = render_with(cluster, tmp_path, None)
    assert len(directives(script, prefix)) == len(directives(clean, prefix))
    header_end = next(i for i, line in enumerate(script.splitlines()[1:], 1) if not line.startswith("#"))
    assert not any(line.startswith(("#SBATCH", "#PBS")) for line in script.splitlines()[header_end:])

    stubs = tmp_path / "stubs"
    make_stubs(stubs)
    record = tmp_path / "record"
    record.mkdir()
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("x3000c0s1b0n0\n")
    env = {
        "PATH": f"{stubs}:{os.environ['PATH']}",
        "RECORD_DIR": str(record),
        "HOME": str(tmp_path),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "node0001",
        "SLURM_NODEID": "0",
        "SLURM_CPUS_PER_TASK": "48",
        "PBS_JOBID": "4242.polaris-pbs-01",
        "PBS_NODEFILE": str(nodefile),
        "PMI_RANK": "0",
    }
    result = subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr

    assert not list(tmp_path.glob("pwned*")), "a hostile value was executed"
    # The values reached the program exactly as typed, as single arguments.
    value = hostile(mark)
    argv = (record / "python.argv").read_text().split("\0")
    assert argv[argv.index("--data") + 1] == "/" + value
    assert argv[argv.index("--model_path") + 1] == "/" + value
    assert (record / "env.HOSTILE").read_text() == value
    if cluster != "local":
        assert (record / "container").read_text() == value
    events = [json.loads(line) for line in (tmp_path / "run" / "attempts.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "end"] and events[-1]["rc"] == 0


def test_trailing_newline_cannot_split_a_directive(tmp_path: Path) -> None:
    """`$` in a regex accepts a trailing newline; every pattern that guards a directive uses fullmatch."""
    from hpcai.errors import ValidationError

    profile = load_profile("local-slurm")
    workload = load_workload("llava")
    for fields in ({"run_dir": str(tmp_path / "run") + "\n"}, {"qos": "normal\n"}, {"account": "acct\n"}):
        overrides = {"run_id": "nl", "run_dir": str(tmp_path / "run"), **fields}
        with pytest.raises(ValidationError):
            resolve_jobspec(
                cluster="local-slurm",
                profile=profile,
                workload=workload,
                overrides=Overrides(**overrides),  # type: ignore[arg-type]
                settings=ClusterSettings(user="jdoe"),
                state_dir=tmp_path / "state",
            )


def test_render_refuses_any_directive_value_with_a_line_break(tmp_path: Path) -> None:
    """The last guard: a value that slipped past every check still cannot add a directive."""
    from hpcai.errors import ValidationError

    profile = load_profile("local-slurm")
    workload = load_workload("llava")
    job = resolve_jobspec(
        cluster="local-slurm",
        profile=profile,
        workload=workload,
        overrides=Overrides(run_id="ok", run_dir=str(tmp_path / "run")),
        settings=ClusterSettings(user="jdoe"),
        state_dir=tmp_path / "state",
    )
    forged = job.model_copy(update={"partition": "debug\n#SBATCH --wrap=id"})
    with pytest.raises(ValidationError, match="directive"):
        render_script(forged, profile, workload)
    mem = profile.model_copy(update={"launch": profile.launch.model_copy(update={"mem": "1G\n#SBATCH --wrap=id"})})
    with pytest.raises(ValidationError, match="directive"):
        render_script(job, mem, workload)
