"""A user's own program on the command line: checked before anything is queued, rendered with nothing
added that the user did not ask for, its arguments quoted byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hpcai.cli.app import app
from hpcai.flows.resolve import prepare_job
from hpcai.spec.jobspec import Overrides
from hpcai.spec.userapp import program_workload
from tests.conftest import run_cli

runner = CliRunner()
HOSTILE = ["$(touch /tmp/hpcai-pwned)", "`id`", "a b", "it's", '"q"', "semi;colon", "new\nline", "--x=y", "", "*"]


def _workload(tmp_path: Path, **options: object) -> object:
    script = tmp_path / "train.py"
    if not script.exists():
        script.write_text("print('hi')\n")
    defaults: dict[str, object] = dict(module=None, launcher=None, accelerate_config=None, resume_args=None,
                                       checkpoint_pattern=None, metrics_pattern=None, stop_signal=None,
                                       stop_grace_s=None, hang_timeout_s=None)  # fmt: skip
    args = options.pop("args", [])
    target = options.pop("target", str(script))
    return program_workload(target, args, **{**defaults, **options})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"target": "missing/train.py"}, "does not exist"),
        ({"metrics_pattern": "loss (["}, "not a valid regular expression"),
        ({"metrics_pattern": r"step (?P<step>\d+)"}, "no named group for the loss"),
        ({"resume_args": "--resume {ckpt}"}, "unknown placeholder {ckpt}"),
        ({"resume_args": "--resume {checkpoint}"}, "--checkpoint-pattern"),
        ({"resume_args": "--resume 'unclosed"}, "cannot be split"),
        ({"checkpoint_pattern": "../other/ckpt-*"}, "leaves the run directory"),
        ({"stop_signal": "KILL"}, "is not a signal hpcai sends"),
        ({"launcher": "mpirun"}, "not a launcher hpcai knows"),
        ({"launcher": "python", "accelerate_config": Path("/etc/hostname")}, "does not read accelerate's config"),
        ({"target": None, "module": "not a module"}, "is not a Python module name"),
        ({"target": "llava", "args": ["--lr", "1"]}, "is for your own program"),
    ],
)
def test_bad_program_options_are_refused_with_the_fix(tmp_path: Path, options: dict[str, object], says: str) -> None:
    from hpcai.errors import ValidationError

    with pytest.raises(ValidationError, match=says.replace("{", r"\{").replace("(", r"\(").replace("[", r"\[")):
        _workload(tmp_path, **options)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["submit", "{tmp}/nope.py", "--", "--lr", "1"], "does not exist"),
        (["submit", "{tmp}/train.py", "--metrics-pattern", "step (?P<step>\\d+)"], "named group for the loss"),
        (["render", "{tmp}/train.py", "--resume-args", "--resume {latest}"], "unknown placeholder"),
        (["submit", "llava", "--", "--lr", "1"], "is for your own program"),
    ],
)
def test_cli_exits_2_with_one_paragraph_and_no_traceback(tmp_path: Path, args: list[str], says: str) -> None:
    (tmp_path / "train.py").write_text("print(1)\n")
    result = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.returncode == 2, result.stdout
    assert says in result.stderr and result.stderr.startswith("error:") and "Traceback" not in result.stderr


def test_srun_launcher_needs_a_cluster_that_has_srun(tmp_path: Path) -> None:
    from hpcai.errors import ValidationError

    with pytest.raises(ValidationError, match="--launcher srun"):
        prepare_job(_workload(tmp_path, launcher="srun"), "local", Overrides(run_id="r"))  # type: ignore[arg-type]


def test_accelerate_gets_no_fsdp_or_precision_flags_the_user_did_not_ask_for(tmp_path: Path) -> None:
    script = prepare_job(_workload(tmp_path, launcher="accelerate"), "local", Overrides(run_id="r")).script  # type: ignore[arg-type]
    launch = next(line for line in script.splitlines() if "accelerate.commands.launch" in line)
    assert "--use_fsdp" not in launch and "--mixed_precision" not in launch and "--fsdp_" not in launch
    assert "--multi_gpu" in launch and "--num_processes 2" in launch
    config = tmp_path / "acc.yaml"
    config.write_text("distributed_type: FSDP\n")
    script = prepare_job(_workload(tmp_path, launcher="accelerate", accelerate_config=config), "local",
                         Overrides(run_id="r")).script  # type: ignore[arg-type]  # fmt: skip
    launch = next(line for line in script.splitlines() if "accelerate.commands.launch" in line)
    assert f"--config_file {config}" in launch and "--multi_gpu" not in launch


@pytest.mark.parametrize("cluster", ["local", "local-slurm", "juwels-booster", "polaris"])
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate", "python", "srun"])
def test_rendered_scripts_pass_bash_n_and_shellcheck(tmp_path: Path, cluster: str, launcher: str) -> None:
    if launcher == "srun" and cluster == "local":
        pytest.skip("refused above")
    workload = _workload(tmp_path, launcher=launcher, args=HOSTILE, resume_args="--resume {checkpoint} --n {attempt}",
                         checkpoint_pattern="out/ckpt-*", metrics_pattern=r"L=(?P<loss>\S+)")  # fmt: skip
    script = prepare_job(workload, cluster, Overrides(run_id="r", account="acc")).script  # type: ignore[arg-type]
    path = tmp_path / "job.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    shellcheck = subprocess.run(["shellcheck", "-S", "warning", str(path)], capture_output=True, text=True)
    assert shellcheck.returncode == 0, shellcheck.stdout


@pytest.mark.slow
def test_hostile_arguments_reach_the_program_byte_for_byte(tmp_path: Path) -> None:
    """The launch line of the rendered script, run by bash as the job would: the program's argv equals
    what was typed, and nothing in it ran."""
    workload = _workload(tmp_path, launcher="python", args=HOSTILE)
    script = prepare_job(workload, "local", Overrides(run_id="r")).script  # type: ignore[arg-type]
    launch = next(line for line in script.splitlines() if "hpcai.runtime.node_agent" in line).strip().removesuffix("&")
    (tmp_path / "train.py").write_text("import json, sys\nprint('ARGV' + json.dumps(sys.argv[1:]))\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {"HPCAI_RUN_DIR": str(run_dir), "HPCAI_MACHINE_RANK": "0", "PATH": "/usr/bin:/bin", "HPCAI_ATTEMPT": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}  # fmt: skip
    done = subprocess.run(["bash", "-c", launch], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("ARGV"))
    assert json.loads(line[4:]) == HOSTILE
    assert not Path("/tmp/hpcai-pwned").exists()


def test_dry_run_json_shows_the_program_and_its_launcher(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("print(1)\n")
    result = runner.invoke(app, ["submit", str(tmp_path / "train.py"), "--cluster", "local", "--dry-run", "--json",
                                 "--launcher", "torchrun", "--", "--epochs", "3"])  # fmt: skip
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["job"]["workload"] == "train"
    assert "torch.distributed.run" in plan["script"] and "--epochs 3" in plan["script"]
    assert sys.executable in plan["script"] or "python" in plan["script"]


def test_a_module_the_jobs_python_cannot_import_is_refused_before_queueing(tmp_path: Path) -> None:
    result = run_cli("submit", "-m", "no_such_pkg.train", "--cluster", "local", "--", "--x", "1")
    assert result.returncode == 2, result.stdout
    assert "no_such_pkg cannot be imported" in result.stderr and "Nothing was queued" in result.stderr


@pytest.mark.slow
def test_init_writes_a_workload_file_that_submits_with_typed_parameters(tmp_path: Path) -> None:
    from hpcai.store.db import Store
    from tests.helpers import wait_terminal

    script = tmp_path / "train.py"
    script.write_text("import json, sys\nprint('ARGV' + json.dumps(sys.argv[1:]))\nprint('step 1 loss: 0.5')\n")
    made = run_cli("init", str(script), "--launcher", "python", "--resume-args", "--resume {checkpoint}",
                   "--checkpoint-pattern", "ck/*", "--", "--fixed", "a b")  # fmt: skip
    assert made.returncode == 0, made.stderr
    workload_file = tmp_path / "workload.yaml"
    text = workload_file.read_text()
    assert 'resume_args: ["--resume", "{checkpoint}"]' in text and "# How the program starts" in text
    again = run_cli("init", str(script))
    assert again.returncode == 2 and "exists already" in again.stderr and "--force" in again.stderr
    workload_file.write_text(text.replace("parameters: {}", "parameters: {epochs: 3}"))
    bad = run_cli("submit", str(workload_file), "--set", "epochs=many")
    assert bad.returncode == 2 and "epochs" in bad.stderr
    done = run_cli("submit", str(tmp_path), "--set", "epochs=5", "--json", "--", "--more")
    assert done.returncode == 0, done.stderr
    run_id = json.loads(done.stdout)["run_id"]
    final = wait_terminal(Store(), run_id, timeout=120)
    assert final.state == "COMPLETED" and final.loss == 0.5
    out = "".join(p.read_text() for p in (Path(final.run_dir) / "logs").glob("*.out"))
    argv = json.loads(next(x for x in out.splitlines() if x.startswith("ARGV"))[4:])
    assert argv == ["--fixed", "a b", "--more", "--epochs", "5"]
