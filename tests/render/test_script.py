"""Golden scripts for every profile, plus `bash -n` and shellcheck on each rendered script.

Regenerate after a reviewed change with `HPCAI_UPDATE_GOLDEN=1 pytest tests/render/test_script.py`, then read
the diff like code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcai.render.script import render_script
from hpcai.spec.jobspec import Overrides, resolve_jobspec
from hpcai.spec.profiles import load_profile
from hpcai.spec.userconfig import ClusterSettings
from hpcai.spec.workloads import load_workload
from tests.conftest import run_cli

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
REPO = Path(__file__).resolve().parents[2]
STATE = "/tmp/hpcai-golden-state"

CASES = {
    "juwels-booster-1n": ("juwels-booster", "llava", {"nodes": 1, "account": "training2410"}),
    "juwels-booster-4n-container": (
        "juwels-booster",
        "llava",
        {
            "nodes": 4,
            "account": "training2410",
            "container": "/p/project/training2410/llava.sif",
            "stage": "finetune",
        },
    ),
    "leonardo-booster-1n": (
        "leonardo-booster",
        "llava",
        {"nodes": 1, "account": "EUHPC_D17_084", "qos": "boost_qos_dbg", "time": "00:30:00"},
    ),
    "leonardo-booster-4n": (
        "leonardo-booster",
        "clip",
        {"nodes": 4, "account": "EUHPC_D17_084", "time": "12:00:00"},
    ),
    "lumi-g-1n": (
        "lumi-g",
        "clip",
        {"nodes": 1, "account": "project_465000123", "partition": "dev-g", "time": "02:00:00"},
    ),
    "lumi-g-4n-container": (
        "lumi-g",
        "llava",
        {"nodes": 4, "account": "project_465000123", "container": "/scratch/project_465000123/llava.sif"},
    ),
    "polaris-1n": ("polaris", "llava", {"nodes": 1, "account": "MyProject"}),
    "polaris-4n-container": (
        "polaris",
        "clip",
        {
            "nodes": 4,
            "account": "MyProject",
            "partition": "debug-scaling",
            "container": "/eagle/MyProject/clip.sif",
        },
    ),
    # The rest of the matrix: every site at 1 and 4 nodes, with and without a container of the user's.
    "juwels-booster-4n": ("juwels-booster", "clip", {"nodes": 4, "account": "training2410", "time": "12:00:00"}),
    "juwels-booster-1n-container": (
        "juwels-booster",
        "clip",
        {"nodes": 1, "account": "training2410", "container": "/p/project/training2410/clip.sif"},
    ),
    "leonardo-booster-1n-container": (
        "leonardo-booster",
        "llava",
        {"nodes": 1, "account": "EUHPC_D17_084", "container": "/leonardo_work/EUHPC_D17_084/llava.sif"},
    ),
    "leonardo-booster-4n-container": (
        "leonardo-booster",
        "clip",
        {"nodes": 4, "account": "EUHPC_D17_084", "container": "/leonardo_work/EUHPC_D17_084/clip.sif"},
    ),
    "lumi-g-4n": ("lumi-g", "llava", {"nodes": 4, "account": "project_465000123", "stage": "finetune"}),
    "lumi-g-1n-container": (
        "lumi-g",
        "clip",
        {"nodes": 1, "account": "project_465000123", "container": "/project/project_465000123/clip.sif"},
    ),
    "polaris-4n": ("polaris", "llava", {"nodes": 4, "account": "MyProject", "partition": "debug-scaling"}),
    "polaris-1n-container": (
        "polaris",
        "llava",
        {"nodes": 1, "account": "MyProject", "container": "/eagle/MyProject/llava.sif"},
    ),
    # The 2026 systems (issue 31): JUPITER Booster (aarch64 GH200) and MareNostrum 5 ACC (QOS, no internet).
    "jupiter-booster-1n": ("jupiter-booster", "llava", {"nodes": 1, "account": "jureap59"}),
    "jupiter-booster-4n-container": (
        "jupiter-booster",
        "llava",
        {"nodes": 4, "account": "jureap59", "container": "/e/project1/jureap59/llava.sif", "stage": "finetune"},
    ),
    "jupiter-booster-4n": ("jupiter-booster", "clip", {"nodes": 4, "account": "jureap59", "time": "12:00:00"}),
    "jupiter-booster-1n-container": (
        "jupiter-booster",
        "clip",
        {"nodes": 1, "account": "jureap59", "container": "/e/project1/jureap59/clip.sif"},
    ),
    "marenostrum5-acc-1n": (
        "marenostrum5-acc",
        "llava",
        {"nodes": 1, "account": "ehpc123", "qos": "acc_debug", "time": "00:30:00"},
    ),
    "marenostrum5-acc-4n": ("marenostrum5-acc", "clip", {"nodes": 4, "account": "ehpc123", "time": "48:00:00"}),
    "marenostrum5-acc-1n-container": (
        "marenostrum5-acc",
        "clip",
        {"nodes": 1, "account": "ehpc123", "container": "/gpfs/projects/ehpc123/clip.sif"},
    ),
    "marenostrum5-acc-4n-container": (
        "marenostrum5-acc",
        "llava",
        {"nodes": 4, "account": "ehpc123", "container": "/gpfs/projects/ehpc123/llava.sif", "stage": "finetune"},
    ),
    # Alps Clariden: CSCS's PyTorch uenv through its own #SBATCH options; no container runtime hpcai drives.
    "alps-clariden-1n": (
        "alps-clariden",
        "llava",
        {"nodes": 1, "account": "a-g34", "partition": "debug", "time": "00:30:00"},
    ),
    "alps-clariden-4n": ("alps-clariden", "clip", {"nodes": 4, "account": "a-g34", "time": "12:00:00"}),
    "local-1n": ("local", "llava", {}),
    "local-slurm-1n": ("local-slurm", "llava", {"nodes": 1}),
    "local-slurm-2n": ("local-slurm", "clip", {"nodes": 2, "env": ("NCCL_DEBUG=INFO",)}),
}


def render_case(name: str) -> str:
    cluster, workload, overrides = CASES[name]
    profile = load_profile(cluster)
    job = resolve_jobspec(
        cluster=cluster,
        profile=profile,
        workload=load_workload(workload),
        overrides=Overrides(run_id=f"golden-{name}", **overrides),  # type: ignore[arg-type]
        settings=ClusterSettings(user="jdoe"),
        state_dir=Path(STATE),
    )
    script = render_script(job, profile, load_workload(workload))
    # Machine-specific paths (this interpreter, this checkout) are normalised for the golden copy.
    return script.replace(sys.executable, "<python>").replace(str(REPO), "<repo>")


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_script_matches_golden(name: str) -> None:
    script = render_case(name)
    golden = GOLDEN / f"{name}.sh"
    if os.environ.get("HPCAI_UPDATE_GOLDEN"):
        golden.write_text(script)
    assert golden.exists(), f"no golden file {golden}; run with HPCAI_UPDATE_GOLDEN=1 and review it"
    assert script == golden.read_text()


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_script_passes_bash_n_and_shellcheck(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.sh"
    path.write_text(render_case(name))
    subprocess.run(["bash", "-n", str(path)], check=True)
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is required (Debian package shellcheck); .ci/run installs it"
    result = subprocess.run([shellcheck, "--shell=bash", "--severity=style", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_slurm_header_carries_signal_requeue_and_run_dir_logs() -> None:
    script = render_case("leonardo-booster-4n")
    assert "#SBATCH --signal=B:USR1@300" in script
    assert "#SBATCH --requeue" in script
    assert (
        "#SBATCH --output=/leonardo_work/EUHPC_D17_084/hpcai/runs/golden-leonardo-booster-4n/logs/slurm-%j.out"
        in script
    )
    assert "#SBATCH --gres=gpu:4" in script and "#SBATCH --nodes=4" in script
    assert "set -euo pipefail" in script
    assert "export HF_HUB_OFFLINE=1" in script
    assert '--num_machines 4 --machine_rank "$SLURM_NODEID" --num_processes 16' in script


def test_juwels_rendezvous_uses_the_infiniband_host_name() -> None:
    script = render_case("juwels-booster-1n")
    assert 'hpcai_master_host="${hpcai_nodelist%%,*}"i' in script
    assert "--cpu_bind=none" in script


def test_lumi_uses_rocm_container_rccl_settings_and_job_id_port() -> None:
    script = render_case("lumi-g-4n-container")
    assert "#SBATCH --gpus-per-node=8" in script and "#SBATCH --cpus-per-task=56" in script
    assert "export NCCL_SOCKET_IFNAME=hsn0,hsn1,hsn2,hsn3" in script
    assert 'export MIOPEN_USER_DB_PATH=/tmp/miopen-"${SLURM_JOB_ID}"/config' in script  # per job, not per user
    assert 'export HF_HOME=/scratch/"${SLURM_JOB_ACCOUNT}"/"${USER}"/hf_home' in script  # not the 20 GB home
    assert "export CXI_FORK_SAFE=1" in script and "export FI_CXI_DISABLE_CQ_HUGETLB=1" in script
    assert "export HPCAI_CPU_BIND=49-55:57-63:17-23:25-31:1-7:9-15:33-39:41-47" in script
    assert "MASTER_PORT=$(( 20000 + (hpcai_job_number + hpcai_launch) % 12000 ))" in script
    # The user's own image runs as it is: no --rocm (the AI images ship their own ROCm), binds by the module.
    assert (
        "bash -c 'exec singularity exec /scratch/project_465000123/llava.sif python -m hpcai.runtime.node_agent"
        in script
        and "--floor 180 --expect-heartbeats -- python -m accelerate" in script
    )
    assert "module purge\nmodule use /appl/local/laifs/modules\nmodule load lumi-aif-singularity-bindings" in script
    assert "--num_processes 32" in script
    assert "HF_HUB_OFFLINE" not in script  # LUMI compute nodes reach the internet


def test_lumi_jobs_default_to_the_ai_factory_image_with_a_packed_venv() -> None:
    script = render_case("lumi-g-1n")
    image = "/appl/local/laifs/containers/lumi-multitorch-u24r70f21m50t210-20260415_130625/"
    assert "singularity exec --bind /project/project_465000123/hpcai/envs/py3-" in script
    assert f".sqsh:/user-software:image-src=/ {image}" in script
    assert "-- /user-software/bin/python -m accelerate" in script
    assert "if [ ! -e /project/project_465000123/hpcai/envs/py3-" in script  # stops at once on a missing env
    assert "LUMI/25.03" not in script  # the stack's modules only without a container


def test_juwels_launcher_gets_all_threads_visible_gpus_and_ib_sockets() -> None:
    script = render_case("juwels-booster-1n")
    assert "#SBATCH --cpus-per-task=96" in script
    assert "export CUDA_VISIBLE_DEVICES=0,1,2,3" in script
    assert "export NCCL_SOCKET_IFNAME=ib0" in script and "export GLOO_SOCKET_IFNAME=ib0" in script
    assert "module load Stages/2025 GCC Python" in script and "PyTorch" not in script
    assert "bash -c 'exec /p/project/training2410/hpcai/envs/py3-" in script


def test_leonardo_asks_for_memory_and_avoids_the_old_cineca_ai() -> None:
    script = render_case("leonardo-booster-4n")
    assert "#SBATCH --mem=494000M" in script
    assert "module load python/3.11.7" in script and "cineca-ai" not in script


def test_polaris_loads_the_nccl_plugin_conda_base_and_binds_cpus() -> None:
    plain = render_case("polaris-1n")
    assert "module load conda\nset +u; conda activate base; set -u" in plain
    assert 'export LD_LIBRARY_PATH=/soft/libraries/aws-ofi-nccl/v1.9.1-aws/lib:/soft/libraries/hwloc/lib"' in plain
    assert "export TMPDIR=/tmp" in plain
    assert "export HPCAI_CPU_BIND=24-31,56-63:16-23,48-55:8-15,40-47:0-7,32-39" in plain
    assert "singularity_fakeroot" not in plain
    container = render_case("polaris-4n-container")
    assert "#PBS -l singularity_fakeroot=true" in container and "apptainer exec --nv --fakeroot" in container
    assert "conda activate" not in container


def test_pbs_script_selects_gpus_and_launches_one_process_per_node() -> None:
    script = render_case("polaris-4n-container")
    assert "#PBS -l select=4:ncpus=32:ngpus=4:system=polaris" in script
    assert "#PBS -l filesystems=home:eagle" in script and "#PBS -A MyProject" in script
    assert "#PBS -q debug-scaling" in script and "#PBS -l walltime=1:00:00" in script
    assert 'MASTER_ADDR="$(head -n 1 "${PBS_NODEFILE:-/dev/null}")"' in script
    assert "mpiexec -n 4 --ppn 1" in script and '--machine_rank "$PMI_RANK"' in script


def test_emulated_nodes_run_as_tasks_on_one_node() -> None:
    script = render_case("local-slurm-2n")
    assert "#SBATCH --nodes=1\n#SBATCH --ntasks=2\n" in script
    assert "srun --nodes=1 --ntasks=2 --ntasks-per-node=2" in script
    assert '--machine_rank "$SLURM_PROCID"' in script
    assert "export NCCL_DEBUG=INFO" in script


def test_cpu_runs_use_accelerate_multi_cpu_mode_without_module_sync() -> None:
    script = render_case("local-1n")
    assert "export ACCELERATE_USE_CPU=true" in script
    assert "--fsdp_sync_module_states false" in script and "--mixed_precision no" in script


def test_render_is_a_pure_function(tmp_path: Path) -> None:
    """The same inputs give the same script byte for byte in separate processes that differ in everything
    that is not an input: hash seed, time zone, locale, working folder, the clock."""
    args = ["render", "llava", "-c", "lumi-g", "-A", "project_465000123", "-N", "2", "-t", "02:00:00",
            "--run-id", "pure", "--run-dir", "/scratch/project_465000123/runs/pure"]  # fmt: skip
    (tmp_path / "elsewhere").mkdir()
    first = run_cli(*args, env={"PYTHONHASHSEED": "1", "TZ": "UTC", "LC_ALL": "C"})
    time.sleep(1.1)  # a time stamp in the script would now differ
    second = run_cli(*args, env={"PYTHONHASHSEED": "4242", "TZ": "Asia/Tokyo", "LC_ALL": "C.UTF-8"},
                     cwd=tmp_path / "elsewhere")  # fmt: skip
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "#SBATCH" in first.stdout and first.stdout == second.stdout


def test_a_hang_excludes_the_recorded_nodes_from_the_next_submission(tmp_path: Path) -> None:
    script = render_case("juwels-booster-4n")
    start = script.index("hpcai_excluded() {")
    function = script[start : script.index("\n}\n", start) + 3]
    nodes = tmp_path / "exclude_nodes"
    nodes.write_text("jwb0001\njwb0107\njwb0001\nbad name;touch pwned\n")
    out = subprocess.run(["bash", "-c", function + 'hpcai_excluded "$1"', "x", str(nodes)],
                         capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert out.stdout == "--exclude=jwb0001,jwb0107" and not (tmp_path / "pwned").exists()
    empty = subprocess.run(["bash", "-c", function + 'hpcai_excluded "$1"', "x", str(tmp_path / "none")],
                           capture_output=True, text=True)  # fmt: skip
    assert empty.stdout == ""
    assert 'sbatch --parsable ${hpcai_exclude:+"$hpcai_exclude"}' in script
    # The per-node command runs the launcher under the node agent (its hang watchdog), with the floor.
    assert "-m hpcai.runtime.node_agent --run-dir" in script and "--floor 180 --expect-heartbeats --" in script
    # Each launch names its nodes: the allocation's, less the excluded ones (what a spare is for).
    assert '--nodelist="$hpcai_nodelist"' in script and "grep -vxF -f" in script
