"""One test per validation rule: each error names the option, the limit and the fix."""

from pathlib import Path

import pytest

from hpcai.errors import ValidationError
from hpcai.spec.jobspec import JobSpec, Overrides, resolve_jobspec, sanitize_job_name
from hpcai.spec.profiles import load_profile
from hpcai.spec.userconfig import ClusterSettings
from hpcai.spec.workloads import load_workload


def resolve(cluster: str, workload: str = "llava", settings: ClusterSettings | None = None, **kw: object) -> JobSpec:
    return resolve_jobspec(
        cluster=cluster,
        profile=load_profile(cluster),
        workload=load_workload(workload),
        overrides=Overrides(**kw),  # type: ignore[arg-type]
        settings=settings or ClusterSettings(user="jdoe"),
        state_dir=Path("/tmp/hpcai-state"),
    )


def test_defaults_fill_a_complete_job() -> None:
    job = resolve("leonardo-booster", account="EUHPC_D17_084", run_id="r1")
    assert job.nodes == 1 and job.gpus_per_node == 4 and job.processes_per_node == 4
    assert job.partition == "boost_usr_prod" and job.qos == "normal"
    assert job.run_dir == "/leonardo_work/EUHPC_D17_084/hpcai/runs/r1"
    assert job.stage == "pretrain" and job.parameters["trainable"] == "projector"
    assert job.mixed_precision == "bf16"


def test_cpu_cluster_runs_cpu_processes_in_fp32() -> None:
    job = resolve("local", run_id="r1")
    assert job.gpus_per_node == 0 and job.processes_per_node == 2 and job.mixed_precision == "no"
    assert job.run_dir == "/tmp/hpcai-state/runs/r1"


def test_nodes_over_partition_maximum_names_a_partition_that_allows_them() -> None:
    with pytest.raises(ValidationError) as err:
        resolve("lumi-g", account="project_1", nodes=8, partition="small-g")
    message = str(err.value)
    assert "--nodes" in message and "small-g" in message and "standard-g" in message


def test_walltime_over_partition_maximum_names_one_that_allows_it() -> None:
    with pytest.raises(ValidationError) as err:
        resolve("lumi-g", account="project_1", time="2-12:00:00")
    message = str(err.value)
    assert "--time" in message and "2-00:00:00" in message and "small-g" in message


def test_walltime_over_qos_maximum_names_a_qos_that_allows_it() -> None:
    with pytest.raises(ValidationError) as err:
        resolve("leonardo-booster", account="A1", time="2-00:00:00")
    message = str(err.value)
    assert "normal" in message and "boost_qos_lprod" in message and "--qos" in message


def test_qos_node_minimum_is_enforced() -> None:
    with pytest.raises(ValidationError, match="boost_qos_bprod"):
        resolve("leonardo-booster", account="A1", qos="boost_qos_bprod", nodes=4)


def test_unknown_qos_is_rejected() -> None:
    with pytest.raises(ValidationError, match="'boost_qos_dbg'"):
        resolve("leonardo-booster", account="A1", qos="boost_qos_debug")


def test_more_gpus_than_the_node_has_is_rejected() -> None:
    with pytest.raises(ValidationError) as err:
        resolve("juwels-booster", account="a", gpus_per_node=8)
    assert "--gpus-per-node" in str(err.value) and "has 4" in str(err.value)


def test_gpus_on_a_cpu_cluster_are_rejected() -> None:
    with pytest.raises(ValidationError, match="has 0"):
        resolve("local", gpus_per_node=1)


def test_missing_account_where_the_site_requires_one() -> None:
    with pytest.raises(ValidationError) as err:
        resolve("juwels-booster")
    message = str(err.value)
    assert "--account" in message and "config.toml" in message and "[clusters.juwels-booster]" in message


def test_account_from_user_config_is_used() -> None:
    job = resolve("juwels-booster", settings=ClusterSettings(user="u", account="training2410"))
    assert job.account == "training2410"


def test_malformed_time_is_rejected() -> None:
    with pytest.raises(ValidationError, match="HH:MM:SS"):
        resolve("local", time="2h")


@pytest.mark.parametrize("item", ["NOEQUALS", "=value", "1BAD=x", "A-B=1"])
def test_bad_env_syntax_is_rejected(item: str) -> None:
    with pytest.raises(ValidationError, match="--env"):
        resolve("local", env=(item,))


def test_env_cannot_override_what_hpcai_sets() -> None:
    with pytest.raises(ValidationError, match="MASTER_ADDR"):
        resolve("local", env=("MASTER_ADDR=evil",))


@pytest.mark.parametrize(("item", "fragment"), [("lr", "KEY=VALUE"), ("lrr=1", "'lr'"), ("max_steps=ten", "int")])
def test_bad_set_syntax_or_value_is_rejected(item: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as err:
        resolve("local", set=(item,))
    assert "--set" in str(err.value) and fragment in str(err.value)


def test_set_values_take_the_type_of_their_default() -> None:
    job = resolve("local", set=("max_steps=7", "lr=3e-4", "activation_checkpointing=yes", "stage=finetune"))
    assert job.parameters["max_steps"] == 7 and job.parameters["lr"] == 3e-4
    assert job.parameters["activation_checkpointing"] is True
    assert job.stage == "finetune" and job.parameters["trainable"] == "projector,language_model"


def test_unknown_stage_suggests_the_closest() -> None:
    with pytest.raises(ValidationError, match="'finetune'"):
        resolve("local", stage="finetuning")


def test_hostile_account_cannot_reach_a_directive() -> None:
    with pytest.raises(ValidationError, match="--account"):
        resolve("juwels-booster", account="a\n#SBATCH --wrap=id")


def test_run_dir_must_be_safe_for_directives() -> None:
    with pytest.raises(ValidationError, match="run directory"):
        resolve("local", run_dir="/tmp/x%j y")


def test_container_needs_a_runtime_in_the_profile() -> None:
    with pytest.raises(ValidationError, match="--container"):
        resolve("local", container="/x.sif")


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("my run", "my_run"),
        ("$(rm -rf ~)", "rm_-rf"),
        ("a\n#SBATCH --x", "a_SBATCH_--x"),
        ("9lives", "j9lives"),
    ],
)
def test_job_names_are_sanitised(raw: str, clean: str) -> None:
    assert sanitize_job_name(raw) == clean


def test_checkpoint_lead_never_exceeds_a_quarter_of_the_walltime() -> None:
    assert resolve("local", time="00:02:00").signal_lead_s == 30
    assert resolve("local", time="10:00:00").signal_lead_s == 300


@pytest.mark.parametrize("name", ["WANDB_API_KEY", "HF_TOKEN", "DB_PASSWORD", "my_secret"])
def test_secrets_never_go_into_job_scripts(name: str) -> None:
    with pytest.raises(ValidationError, match="looks like a secret"):
        resolve("local", env=(f"{name}=hunter2",))


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("checkpoint_every=0", "checkpoint_every must be >= 1"),
        ("max_steps=-5", "max_steps must be >= 1"),
        ("lr=nan", "finite"),
        ("lr=inf", "finite"),
        ("rollback_lr_factor=2", "<= 1"),
        ("preset=huge", "one of tiny"),
        ("data=no/such/folder", "must be absolute"),
    ],
)
def test_workload_parameters_are_checked_before_anything_is_queued(setting: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        resolve("local", set=(setting,))


def test_a_relative_data_path_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mydata").mkdir()
    monkeypatch.chdir(tmp_path)
    job = resolve("local", set=("data=mydata",))
    assert job.parameters["data"] == str(tmp_path / "mydata")


def test_clip_loss_choices_are_enforced() -> None:
    with pytest.raises(ValidationError, match="infonce, sigmoid"):
        resolve("local", workload="clip", set=("loss=hinge",))


def test_a_job_that_fits_no_route_of_a_routing_queue_is_refused_with_what_fits() -> None:
    """Polaris' prod routes 10-24 nodes for <= 3 h, 25-99 for <= 6 h, >= 100 for <= 24 h; PBS drops the rest."""
    with pytest.raises(ValidationError) as err:
        resolve("polaris", partition="prod", nodes=10, time="04:00:00", account="A")
    message = str(err.value)
    assert "match no route of queue 'prod'" in message and "--time 03:00:00 or less" in message
    assert "--partition preemptable" in message
    assert resolve("polaris", partition="prod", nodes=30, time="06:00:00", account="A").partition == "prod"
    assert resolve("polaris", partition="prod", nodes=150, time="20:00:00", account="A").nodes == 150
