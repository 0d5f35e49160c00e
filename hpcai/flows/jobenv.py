"""`hpcai env build` and `hpcai env check`: the job environment of a cluster, made and tested from the
laptop through the session's one connection to the login node."""

from __future__ import annotations

from typing import Any

from hpcai.backends.schedulers.base import JobState
from hpcai.backends.session import Session
from hpcai.errors import EnvironmentFailure, HpcaiError
from hpcai.flows.progress import reporter
from hpcai.flows.resolve import RenderedJob, prepare_job
from hpcai.render.setup import build_script, login_shell
from hpcai.spec.jobenv import BUILD_MARK, JobEnv
from hpcai.spec.jobspec import Overrides
from hpcai.spec.profiles import ClusterProfile

REFERENCE_WORKLOAD = "llava"  # the environment serves every built-in workload; llava needs the most
BUILD_TIMEOUT_S = 3600  # pip installing torch on a busy login node takes minutes, not hours


def job_environment(cluster: str, *, account: str | None, container: str | None, workload: str) -> RenderedJob:
    """The job a submission would make, resolved: its environment is exactly the one `submit` uses."""
    overrides = Overrides(account=account, container=container, run_id="env-check")
    return prepare_job(workload, cluster, overrides)


def describe(env: JobEnv) -> str:
    if env.kind == "venv":
        return f"hpcai's venv {env.home}"
    if env.kind == "container" and env.built_by_hpcai:
        return f"image {env.image} with hpcai's packed venv {env.home}"
    if env.kind == "container":
        return f"image {env.image} as it is"
    if env.kind == "own":
        return f"your own interpreter {env.python} (config.toml `python`)"
    return f"`{env.python}` after the profile's modules load"


def build_environment(
    cluster: str | None, *, account: str | None, container: str | None, rebuild: bool, show_progress: bool,
    offline: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Build the job environment on the login node. Offline (`offline`, or a profile whose login node has no
    package index or whose platform differs): the wheels the cluster lacks come from this machine."""
    from hpcai.flows.resolve import default_cluster

    rendered = job_environment(cluster or default_cluster(), account=account, container=container,
                               workload=REFERENCE_WORKLOAD)  # fmt: skip
    job, profile, env = rendered.job, rendered.profile, rendered.job.environment
    summary: dict[str, Any] = {"cluster": job.cluster, "kind": env.kind, "python": env.python, "image": env.image,
                               "home": env.home, "requirements": list(env.requirements)}  # fmt: skip
    if not env.built_by_hpcai:
        return {**summary, "state": "nothing to build", "detail": f"jobs on {job.cluster} use {describe(env)}"}
    transport = Session.current().get(job.cluster).transport
    find_links = None
    spec = profile.environment
    offline = offline or spec.internet is False or spec.platform is not None
    if not offline and spec.internet is None and profile.scheduler != "local":
        from hpcai.flows.wheels import index_reachable

        offline = not index_reachable(transport, profile)  # pip there cannot reach its index: go offline
    install = True
    if offline:
        find_links, summary["offline"] = _stage_wheels(job.cluster, profile, env, account, show_progress)
        install = find_links is not None  # None: the cluster's Python has every requirement
    script = build_script(profile, env, rebuild=rebuild, find_links=find_links, install=install)
    argv = login_shell(profile, script)
    what = ", ".join(env.requirements) or "nothing beyond the base"
    with reporter(show_progress).waiting(
        f"building {describe(env)} on {job.cluster} (pip: {what}); this takes minutes"
    ):
        result = transport.run(argv, timeout=BUILD_TIMEOUT_S)
    marks = [line[len(BUILD_MARK) :].strip() for line in result.stdout.splitlines() if line.startswith(BUILD_MARK)]
    if not result.ok or not marks:
        tail = "\n".join((result.stderr.strip() or result.stdout.strip()).splitlines()[-8:])
        raise EnvironmentFailure(
            f"env build on {job.cluster}: building {env.home} failed (exit {result.returncode}); nothing half-built "
            f"will be used, and the next `hpcai env build --cluster {job.cluster}` starts it over. Its last output:"
            f"\n{tail}"
        )
    state = marks[-1]
    if state == "busy":
        raise EnvironmentFailure(
            f"env build on {job.cluster}: another build of {env.home} is running (its lock is {env.home}.lock). "
            "Wait for it to finish, then run `hpcai env check`; a lock left by a killed build expires after 2 hours."
        )
    checked = check_environment(job.cluster, account=account, container=container, workload=REFERENCE_WORKLOAD)
    return {**summary, "state": state, "check": checked}


def _stage_wheels(
    cluster: str, profile: ClusterProfile, env: JobEnv, account: str | None, show_progress: bool
) -> tuple[str | None, dict[str, Any]]:
    """What the cluster lacks, downloaded here as wheels for its platform and staged: (its folder there, or
    None when it lacks nothing; what was done)."""
    from hpcai.flows.stage import stage_paths
    from hpcai.flows.wheels import download_wheels, missing_on_cluster
    from hpcai.paths import state_dir

    transport = Session.current().get(cluster).transport
    missing = missing_on_cluster(transport, profile, env)
    done: dict[str, Any] = {"missing": missing, "wheels": [], "staged": None, "platform": profile.environment.platform}
    if not missing:
        return None, done
    folder = state_dir() / "wheels" / (env.env_id or "env")
    with reporter(show_progress).waiting(f"downloading wheels for {cluster} here: {', '.join(missing)}"):
        done["wheels"] = download_wheels(missing, folder, profile)
    (report,) = stage_paths(cluster, [folder], show_progress=show_progress, account=account)
    done["staged"] = report.remote_path
    return report.remote_path, done


def check_environment(
    cluster: str | None, *, account: str | None, container: str | None, workload: str
) -> dict[str, Any]:
    """The pre-flight probe, uncached: versions, FSDP2, from the login node with the job's set-up."""
    from hpcai.flows.preflight import JobEnvironment, run_preflight
    from hpcai.flows.resolve import default_cluster

    rendered = job_environment(cluster or default_cluster(), account=account, container=container, workload=workload)
    job = rendered.job
    transport = Session.current().get(job.cluster).transport
    result = run_preflight(transport, JobEnvironment.of(job, rendered.profile), rendered.workload, use_cache=False)
    return {
        "cluster": job.cluster, "workload": job.workload, "environment": describe(job.environment),
        "kind": job.environment.kind, "python": job.python, "image": job.environment.image,
        "home": job.environment.home, **result.to_json(), "built": not result.missing_environment,
    }  # fmt: skip


def require_ok(checked: dict[str, Any]) -> None:
    if checked["ok"]:
        return
    cluster = checked["cluster"]
    if not checked["built"]:
        raise HpcaiError(f"env check: {checked['summary']}")
    fix = (
        f"run `hpcai env build --cluster {cluster} --rebuild`"
        if checked["home"]
        else "use a container that has the packages (--container), or set `python` for this cluster in config.toml"
    )
    raise HpcaiError(
        f"env check on {cluster}: jobs cannot train with {checked['environment']}: {checked['summary']}. Fix: {fix}."
    )


def check_in_job(
    cluster: str | None,
    *,
    account: str | None,
    container: str | None,
    partition: str | None,
    qos: str | None,
    time: str | None,
    wait_s: float,
    show_progress: bool,
) -> dict[str, Any]:
    """Submit the `envcheck` workload (one process per node, a few seconds) through the same plan as any
    run, wait for it, and report what each node saw: versions, FSDP2, and the GPUs against those asked."""
    import json
    import time as clock

    from hpcai.flows.plan import execute, plan_submit
    from hpcai.flows.resolve import default_cluster
    from hpcai.flows.runs.views import status
    from hpcai.rundir.layout import RunDir
    from hpcai.rundir.runids import new_run_id
    from hpcai.store.db import Store

    name = cluster or default_cluster()
    overrides = Overrides(account=account, container=container, partition=partition, qos=qos, time=time,
                          run_id=new_run_id("envcheck", None))  # fmt: skip
    plan = plan_submit("envcheck", name, overrides)
    submitted = execute(plan, show_progress=show_progress)
    run_id, job = submitted["run_id"], plan.rendered.job
    store = Store()
    deadline = clock.monotonic() + wait_s
    state = "PENDING"

    def poll() -> str:
        (view,), _ = status(store, run_id)
        return view.state

    with reporter(show_progress).waiting(f"envcheck job {submitted['job_id']} on {job.cluster}: queued") as say:
        while clock.monotonic() < deadline and not JobState(state := poll()).terminal:
            say(f"envcheck job {submitted['job_id']} on {job.cluster}: {state.lower()}")
            clock.sleep(3)
    result: dict[str, Any] = {"cluster": job.cluster, "run_id": run_id, "job_id": submitted["job_id"],
                              "state": state, "gpus_per_node": job.gpus_per_node, "nodes": []}  # fmt: skip
    if not JobState(state).terminal:
        raise EnvironmentFailure(
            f"env check --job: the envcheck job {submitted['job_id']} on {job.cluster} is still {state.lower()} "
            f"after {wait_s:.0f} s (a busy queue). It goes on: see `hpcai logs {run_id}` later, or "
            f"`hpcai cancel {run_id}`; --wait sets how long to wait."
        )
    transport = Session.current().get(job.cluster).transport
    for rank in range(job.nodes):
        text = transport.read_text(RunDir(job.run_dir).path(f"envcheck-{rank}.json"))
        try:
            result["nodes"].append(json.loads(text) if text else {"problems": ["no report: the job did not run"]})
        except ValueError:
            result["nodes"].append({"problems": ["an unreadable report"]})
    problems = []
    for rank, node in enumerate(result["nodes"]):
        found = list(node.get("problems", []))
        if "gpus" in node and node["gpus"] != job.gpus_per_node:
            found.append(f"it sees {node['gpus']} GPU(s), the job asked for {job.gpus_per_node} per node")
        if found:
            problems.append(f"node {rank} ({node.get('host', '?')}): " + "; ".join(found))
    result["ok"] = state == "COMPLETED" and not problems
    result["problems"] = problems
    if not result["ok"]:
        detail = "; ".join(problems) or f"the job ended {state}"
        raise HpcaiError(
            f"env check --job on {job.cluster}: {detail}. Its output: `hpcai logs {run_id}` (and --stderr)."
        )
    return result
