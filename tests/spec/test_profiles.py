from pathlib import Path

import pytest

from hpcai.errors import ConfigError, NotFoundError
from hpcai.spec.profiles import load_all_profiles, load_profile, profile_names, resolve_alias

SITES = [
    "juwels-booster",
    "leonardo-booster",
    "lumi-g",
    "polaris",
    "jupiter-booster",
    "marenostrum5-acc",
    "alps-clariden",
]


def test_every_shipped_profile_validates() -> None:
    profiles = load_all_profiles()
    assert set(profiles) >= {*SITES, "local", "local-slurm"}
    assert profiles["polaris"].scheduler == "pbs"
    assert profiles["lumi-g"].accelerator == "rocm"
    assert profiles["local"].scheduler == "local"


@pytest.mark.parametrize("name", SITES)
def test_site_profiles_cite_their_sources_and_carry_site_facts(name: str) -> None:
    profile = load_profile(name)
    assert profile.sources and all(s.startswith("https://") for s in profile.sources)
    assert profile.node.gpus > 0 and profile.node.gpu_memory_gb
    assert profile.budget.billing  # how the site charges; the command that shows it, where there is one
    assert profile.budget.commands or name == "alps-clariden"  # CSCS documents none for Clariden
    assert profile.account_required
    assert profile.access.login_hosts


def test_site_facts_match_the_cluster_notes() -> None:
    lumi = load_profile("lumi-g")
    assert lumi.node.gpus == 8 and lumi.node.cpus == 56
    assert lumi.env["NCCL_SOCKET_IFNAME"] == "hsn0,hsn1,hsn2,hsn3"
    juwels = load_profile("juwels-booster")
    assert juwels.launch.master_addr_suffix == "i"
    leonardo = load_profile("leonardo-booster")
    assert leonardo.access.method == "ssh-certificate" and not leonardo.compute_internet
    assert leonardo.filesystems["scratch"].purge_days == 40


def test_the_2026_systems_carry_their_site_facts() -> None:
    jupiter = load_profile("jupiter")
    assert (jupiter.node.gpus, jupiter.node.cpus, jupiter.node.gpu_memory_gb) == (4, 288, 96)
    assert jupiter.environment.platform == "manylinux_2_28_aarch64"  # aarch64, login nodes included
    mn5 = load_profile("mn5")
    assert mn5.environment.internet is False and {q.name for q in mn5.qos} == {"acc_ehpc", "acc_debug"}
    alps = load_profile("clariden")
    assert alps.access.jump_host == "ela.cscs.ch" and alps.container is None
    assert alps.launch.directives == ["--uenv=pytorch/v2.8.0:/user-environment", "--view=default"]
    assert alps.environment.enter[:2] == ["uenv", "run"] and alps.env["NCCL_NET"] == "AWS Libfabric"


def test_aliases_resolve_to_profiles() -> None:
    assert resolve_alias("leonardo") == "leonardo-booster"
    assert load_profile("lumi").node.gpus == 8


def _user_clusters(root: Path) -> Path:
    directory = root / "config" / "clusters"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def test_user_file_overrides_single_values_of_a_shipped_profile(isolated_hpcai: Path) -> None:
    (_user_clusters(isolated_hpcai) / "leonardo-booster.yaml").write_text(
        "node:\n  memory_gb: 480\nmodules:\n  load: [cineca-ai/4.3.0]\n"
    )
    profile = load_profile("leonardo-booster")
    assert profile.node.memory_gb == 480
    assert profile.modules.load == ["cineca-ai/4.3.0"]
    assert profile.node.gpus == 4  # untouched values stay


def test_user_can_add_a_new_cluster(isolated_hpcai: Path) -> None:
    shipped = Path(__file__).resolve().parents[2] / "clusters" / "local-slurm.yaml"
    (_user_clusters(isolated_hpcai) / "my-lab.yaml").write_text(shipped.read_text())
    assert "my-lab" in profile_names()
    assert load_profile("my-lab").scheduler == "slurm"


def test_malformed_yaml_names_file_and_line(isolated_hpcai: Path) -> None:
    (_user_clusters(isolated_hpcai) / "broken.yaml").write_text("scheduler: slurm\nnode: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        load_profile("broken")
    message = str(err.value)
    assert "broken.yaml" in message and "malformed YAML" in message and "line" in message


def test_unknown_field_is_named_with_the_closest_allowed_one(isolated_hpcai: Path) -> None:
    (_user_clusters(isolated_hpcai) / "lumi-g.yaml").write_text("node:\n  gpu: 8\n")
    with pytest.raises(ConfigError) as err:
        load_profile("lumi-g")
    message = str(err.value)
    assert "lumi-g.yaml" in message and "node.gpu" in message and "'gpus'" in message


def test_wrong_type_names_the_field(isolated_hpcai: Path) -> None:
    (_user_clusters(isolated_hpcai) / "juwels-booster.yaml").write_text(
        "partitions:\n  - name: booster\n    max_nodes: many\n    max_walltime: '24:00:00'\n"
    )
    with pytest.raises(ConfigError, match=r"partitions\.0\.max_nodes"):
        load_profile("juwels-booster")


def test_unknown_cluster_suggests_the_closest_name() -> None:
    with pytest.raises(NotFoundError) as err:
        load_profile("juwels-boster")
    assert "'juwels-booster'" in str(err.value)


@pytest.mark.parametrize(
    ("cluster", "override", "field"),
    [
        ("leonardo-booster", 'qos:\n  - name: "normal\\n#SBATCH --wrap=touch /tmp/x"\n', "qos.0.name"),
        ("leonardo-booster", 'launch:\n  mem: "480G\\n#SBATCH --wrap=id"\n', "launch.mem"),
        ("polaris", 'pbs:\n  place: "scatter\\n#PBS -l select=99"\n', "pbs.place"),
        ("polaris", 'pbs:\n  filesystems: "home fs"\n', "pbs.filesystems"),
        ("polaris", 'pbs:\n  select_extra: ["system=polaris\\n#PBS -q x"]\n', "pbs.select_extra"),
        ("alps-clariden", 'launch:\n  directives: ["--uenv=x\\n#SBATCH --wrap=id"]\n', "launch.directives"),
        ("alps-clariden", 'launch:\n  directives: ["--view default"]\n', "launch.directives"),
        ("alps-clariden", 'environment:\n  enter: ["uenv;id"]\n', "environment.enter"),
        (
            "juwels-booster",
            "partitions:\n  - name: \"booster\\n\"\n    max_nodes: 2\n    max_walltime: '1:00:00'\n",
            "partitions.0.name",
        ),
    ],
)
def test_profile_fields_written_into_directives_are_plain_values(
    isolated_hpcai: Path, cluster: str, override: str, field: str
) -> None:
    (_user_clusters(isolated_hpcai) / f"{cluster}.yaml").write_text(override)
    with pytest.raises(ConfigError) as err:
        load_profile(cluster)
    message = str(err.value)
    assert field in message and ("directive" in message or "#PBS" in message)


def test_profile_env_refuses_secret_looking_names(isolated_hpcai: Path) -> None:
    (_user_clusters(isolated_hpcai) / "leonardo-booster.yaml").write_text("env:\n  HF_TOKEN: hf_abc\n")
    with pytest.raises(ConfigError, match=r"HF_TOKEN.*secret"):
        load_profile("leonardo-booster")


@pytest.mark.parametrize("pattern", ["/scratch/{0}", "/scratch/{", "/scratch/{user.name}"])
def test_broken_path_pattern_is_a_config_error(pattern: str) -> None:
    from hpcai.spec.profiles import expand_path

    with pytest.raises(ConfigError, match=r"filesystems\.scratch\.path"):
        expand_path(pattern, {"user": "jdoe"}, field="filesystems.scratch.path")


def test_pack_data_takes_true_or_squashfs_and_squashfs_needs_a_container(isolated_hpcai: Path) -> None:
    (_user_clusters(isolated_hpcai) / "lumi-g.yaml").write_text("pack_data: squashfs\n")
    assert load_profile("lumi-g").pack_data == "squashfs"  # LUMI's profile has a container runtime
    shipped = Path(__file__).resolve().parents[2] / "clusters" / "local-slurm.yaml"
    (_user_clusters(isolated_hpcai) / "bare.yaml").write_text(shipped.read_text() + "\npack_data: squashfs\n")
    with pytest.raises(ConfigError, match=r"bare\.yaml.*pack_data: squashfs needs a `container:` section"):
        load_profile("bare")
    (_user_clusters(isolated_hpcai) / "bare.yaml").write_text(shipped.read_text() + "\npack_data: zip\n")
    with pytest.raises(ConfigError, match="pack_data"):
        load_profile("bare")
