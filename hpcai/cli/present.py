"""Human-readable views of profiles and workloads (rich)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.table import Column, Table
from rich.text import Text

from hpcai.backends.schedulers.base import TERMINAL, JobState
from hpcai.cli.output import console

if TYPE_CHECKING:  # the models load only where a profile or workload is shown: `status` stays fast
    from hpcai.flows.runs.views import RunView
    from hpcai.spec.profiles import ClusterProfile
    from hpcai.spec.workloads import ParameterRule, Workload


def show_profile(name: str, profile: ClusterProfile, files: list[Path]) -> None:
    node = profile.node
    console.print(Text.assemble((name, "bold"), f": {profile.description}"))
    console.print(f"scheduler: {profile.scheduler}   accelerator: {profile.accelerator}")
    console.print(f"profile files: {', '.join(str(f) for f in files)}")
    access = profile.access
    console.print(f"login: {', '.join(access.login_hosts) or '(this machine)'} via {access.method}")
    if access.datamover_hosts:
        console.print(f"data movers: {', '.join(access.datamover_hosts)}")
    if access.notes:
        console.print(f"access notes: {access.notes}")
    gpu = f"{node.gpus}x {node.gpu_model or 'GPU'}" + (f" {node.gpu_memory_gb:g} GB" if node.gpu_memory_gb else "")
    console.print(
        f"node: {gpu if node.gpus else 'no GPU'}, {node.cpus} usable CPUs, {node.memory_gb:g} GB"
        + (f", {node.interconnect}" if node.interconnect else "")
        + (f"; {node.count} nodes" if node.count else "")
    )
    parts = Table("partition/queue", "nodes", "max walltime", "QOS", title="partitions")
    for p in profile.partitions:
        qos = ", ".join(p.qos) + (f" (default {p.default_qos})" if p.default_qos else "")
        parts.add_row(p.name + (" *" if p.default else ""), f"{p.min_nodes}-{p.max_nodes}", p.max_walltime, qos)
    console.print(parts)
    for p in profile.partitions:
        if p.routes:
            routes = "; ".join(
                f"{r.name or '?'} {r.min_nodes}-{r.max_nodes} nodes <= {r.max_walltime}" for r in p.routes
            )
            console.print(f"{p.name} is a routing queue (a job must fit one route): {routes}")
    if profile.qos:
        qos_table = Table("QOS", "nodes", "max walltime", "description", title="QOS")
        for q in profile.qos:
            qos_table.add_row(q.name, f"{q.min_nodes}-{q.max_nodes or '-'}", q.max_walltime or "-", q.description)
        console.print(qos_table)
    fs_table = Table("filesystem", "path", "env", "quota", "purge", title="filesystems")
    for key, fs in profile.filesystems.items():
        quota = ", ".join(x for x in (fs.quota, fs.files_quota) if x)
        mark = " (runs)" if key == profile.runs_on else ""
        purge = f"{fs.purge_days} days" if fs.purge_days else "-"
        fs_table.add_row(key + mark, fs.path, fs.env_var or "-", quota or "-", purge)
    console.print(fs_table)
    mods = profile.modules
    if mods.use or mods.load or mods.software:
        software = f"; without a container {' '.join(mods.software)}" if mods.software else ""
        console.print(f"modules: use {', '.join(mods.use) or '-'}; load {' '.join(mods.load) or '-'}{software}")
    console.print(f"job environment: {_job_environment(profile)}")
    if profile.container:
        c = profile.container
        console.print(f"container: {c.runtime} exec {' '.join(c.flags)} --bind {','.join(c.binds) or '-'}")
    if profile.env:
        console.print("job variables: " + ", ".join(f"{k}={v}" for k, v in profile.env.items()))
    console.print(f"compute nodes have internet: {'yes' if profile.compute_internet else 'no'}")
    console.print(f"account required: {'yes' if profile.account_required else 'no'}")
    if profile.budget.commands:
        console.print(f"budget: {'; '.join(profile.budget.commands)}")
    if profile.budget.billing:
        console.print(f"billing: {profile.budget.billing}")
    if profile.budget.query:
        console.print(
            f"hpcai budget runs: {profile.budget.query} ({profile.budget.format}); a node-hour costs "
            f"{profile.budget.per_node_hour:g} {profile.budget.unit}"
        )
    if profile.access.steps:
        console.print("access, step by step (hpcai onboard explains them too):")
        for number, step in enumerate(profile.access.steps, 1):
            console.print(f"  {number}. {step}")
    if profile.sources:
        console.print("sources:")
        for url in profile.sources:
            console.print(f"  {url}")
    marked = _unconfirmed(files)
    if marked:
        console.print("not confirmed by official documentation ([users]: seen in users' scripts; [?]: unknown):")
        for line in marked:
            console.print(f"  {line}")


def _job_environment(profile: ClusterProfile) -> str:
    env = profile.environment
    where = f"on {env.filesystem or profile.runs_on}/{env.subdir}"
    text = {
        "venv": f"a venv that `hpcai env build` makes {where} on the modules' Python",
        "container": f"image {env.image}"
        + (f", with a SquashFS-packed venv (`hpcai env build`) {where}" if env.pack == "squashfs" else ""),
        "modules": "the modules' Python as it is (nothing built)",
    }[env.default]
    torch = "; torch from the base is kept" if env.torch == "base" and env.default != "modules" else ""
    notes = f" ({env.notes})" if env.notes else ""
    return text + torch + notes


def _unconfirmed(files: list[Path]) -> list[str]:
    """Profile lines whose value carries a [users] or [?] mark (YAML comments, so read from the files)."""
    lines = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for line in text.splitlines():
            code = line.split("#", 1)[0].strip()
            if code and ("[users" in line or "[?]" in line):
                lines.append(" ".join(line.split()))
    return lines


def _accepts(rule: ParameterRule | None, default: object) -> str:
    parts = [type(default).__name__]
    if rule is not None:
        if rule.choices is not None:
            parts = ["one of " + ", ".join(map(str, rule.choices))]
        if rule.min is not None:
            parts.append(f">= {rule.min:g}")
        if rule.max is not None:
            parts.append(f"<= {rule.max:g}")
        if rule.path:
            parts = ["path (local: staged; cluster: absolute)"]
    return " ".join(parts)


def show_workload(workload: Workload) -> None:
    from hpcai.spec.workloads import TEST_HOOK_PREFIX

    spec = workload.spec
    console.print(Text.assemble((workload.name, "bold"), f": {spec.description}"))
    console.print(f"entrypoint: {workload.entrypoint_path}")
    res = spec.resources
    console.print(f"default resources: {res.nodes} node(s), {res.gpus_per_node or 'all'} GPUs/node, {res.time}")
    if spec.stages:
        stages = Table("stage", "description", "parameters", title="stages")
        for name, stage in spec.stages.items():
            params = ", ".join(f"{k}={v}" for k, v in stage.parameters.items())
            stages.add_row(name + (" *" if name == spec.default_stage else ""), stage.description, params)
        console.print(stages)
    helps = workload.parameter_help()
    hooks = [k for k in spec.parameters if k.startswith(TEST_HOOK_PREFIX)]
    hooks_title = "test hooks: inject faults for tests and drills; leave them at 0 for training"
    for title, keys in (("parameters", [k for k in spec.parameters if k not in hooks]), (hooks_title, hooks)):
        if not keys:
            continue
        table = Table("parameter (--set)", "default", "accepts", Column("what it does", overflow="fold"), title=title)
        for key in keys:
            value = spec.parameters[key]
            table.add_row(key, repr(value), _accepts(spec.parameter_rules.get(key), value), helps.get(key, ""))
        console.print(table)
    console.print("accelerate: " + " ".join(f"--{k} {v}" for k, v in spec.accelerate.items()))
    console.print(f"mixed precision: GPU {spec.mixed_precision.gpu}, CPU {spec.mixed_precision.cpu}")
    console.print(f"outputs: metrics {spec.outputs.metrics}, checkpoints {spec.outputs.checkpoints}/")


_STATE_STYLE = {
    "COMPLETED": "green",
    "RUNNING": "cyan",
    "PENDING": "yellow",
    "SUBMITTING": "yellow",
    "WAITING": "yellow",
}


# Attempts whose "why it ended" and exit code mean something: the terminal ones, and a walltime requeue's
# earlier launch (the job itself goes on under the same id).
_ENDED = {state.value for state in TERMINAL} | {JobState.REQUEUED.value}


def _elapsed(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def runs_table(views: list[RunView], steps: dict[str, str] | None = None) -> Table:
    """The runs, one row each; `steps` replaces the step column (watch: "40/60, ETA 0:01:10")."""
    # A run id is what every command takes: never folded. Narrow terminals lose what `status RUN` shows
    # anyway (workload below 110 columns; cluster and job below 100) and the table's borders.
    width = console.width
    every = ["run", "workload", "cluster", "state", "attempt", "job", "elapsed", "step", "loss"]
    dropped = ({"workload"} if width < 110 else set()) | ({"cluster", "job"} if width < 100 else set())
    columns = [c for c in every if c not in dropped]
    table = Table(
        *[Column(c, no_wrap=True) if c == "run" else Column(c, overflow="fold") for c in columns],
        box=None if width < 100 else box.SQUARE,
        header_style="bold",
    )
    for v in views:
        style = _STATE_STYLE.get(v.state, "red")
        state = Text.assemble((v.state, style), f" ({v.exit_code})" if v.exit_code not in (None, 0) else "")
        cells: dict[str, str | Text] = {
            "run": v.run_id,
            "workload": v.workload,
            "cluster": v.cluster,
            "state": state,
            "attempt": str(v.attempt),
            "job": v.job_id or "-",
            "elapsed": _elapsed(v.elapsed_s),
            "step": (steps or {}).get(v.run_id) or (str(v.step) if v.step is not None else "-"),
            "loss": f"{v.loss:.4g}" if v.loss is not None else "-",
        }
        table.add_row(*[cells[c] for c in columns])
    return table


class StepRate:
    """Steps per second of each run between `status --watch` polls, for "step N/max, ETA"."""

    def __init__(self) -> None:
        self.first: dict[str, tuple[float, int]] = {}

    def describe(self, view: RunView, max_steps: int | None, now: float) -> str | None:
        if view.step is None:
            return None
        text = f"{view.step}/{max_steps}" if max_steps else str(view.step)
        seen = self.first.setdefault(view.run_id, (now, view.step))
        if view.state != "RUNNING" or not max_steps or view.step >= max_steps:
            return text
        elapsed, done = now - seen[0], view.step - seen[1]
        if done <= 0 or elapsed <= 0:
            return text
        return f"{text}, ETA {_elapsed((max_steps - view.step) * elapsed / done)}"


def watch_summary(views: list[RunView]) -> str:
    """The closing line of `status --watch`: how every run ended, and why for those that failed."""
    counts: dict[str, int] = {}
    for v in views:
        counts[v.state] = counts.get(v.state, 0) + 1
    lines = [f"{len(views)} run(s) ended: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))]
    for v in views:
        if v.state != "COMPLETED":
            lines.append(f"  {v.run_id}: {v.state}" + (f" -- {v.reason}" if v.reason else ""))
    return "\n".join(lines)


def show_run_detail(detail: dict[str, Any]) -> None:
    console.print(
        Text.assemble((detail["run_id"], "bold"), f": {detail['workload']} on {detail['cluster']}, {detail['state']}")
        + (
            f", step {detail['step']}, loss {detail['loss']:.4g}"
            if detail["step"] is not None and detail["loss"]
            else ""
        )
    )
    console.print(f"run directory: {detail['run_dir']}")
    if detail.get("expected_start"):
        console.print(
            f"expected to start: {detail['expected_start']} (the scheduler's estimate; it moves with the queue)"
        )
    if detail.get("left_out"):
        console.print(f"[yellow]samples left out in the latest attempt: {detail['left_out']}[/] (missing or unreadable "
                      "images, malformed samples; the job's output names the first ones)")  # fmt: skip
    if detail["policy"]:
        console.print("rollback policy: " + ", ".join(f"{k}={v}" for k, v in detail["policy"].items()))
    # Why each attempt ended goes under the table, a line each: as a column it folded into a word per line
    # on an 80-column terminal. LR scale and skipped batches only where some attempt has them.
    rows = detail["attempts"]
    extra = any(a["lr_scale"] != 1 or a["skipped_batches"] for a in rows)
    moved = len({a.get("cluster") for a in rows}) > 1  # the run moved between clusters: say where each ran
    headers = ["attempt", *(("cluster",) if moved else ()), "job", "state", "exit", "resumed from",
               *(("LR scale", "skipped") if extra else ())]  # fmt: skip
    attempts = Table(*headers, title="attempts", box=None if console.width < 100 else box.SQUARE, header_style="bold")
    whys = []
    for a in rows:
        ended = a["state"] in _ENDED
        why = a["reason"] if ended else (f"waiting: {a['waiting']}" if a.get("waiting") else None)
        if not ended and a.get("waiting_means"):
            why = f"{why} -- {a['waiting_means']}"
        attempts.add_row(
            str(a["number"]), *((str(a.get("cluster")),) if moved else ()), a["job_id"] or "-", a["state"],
            "-" if a["exit_code"] is None or not ended else str(a["exit_code"]), a["resumed_from"] or "-",
            *((f"{a['lr_scale']:g}", a["skipped_batches"] or "-") if extra else ()),
        )  # fmt: skip
        if why:
            whys.append(Text.assemble((f"  {a['number']}: ", "bold"), why))
    console.print(attempts)
    if whys:
        console.print("why each attempt ended (or waits):")
        for line in whys:
            console.print(line)
    if detail["events"]:
        events = Table("kind", "onset", "detected", "loss before", "peak", "after", "status", "decision",
                       title="loss events")  # fmt: skip
        for e in detail["events"]:
            events.add_row(
                e["kind"], str(e["onset_step"]), str(e["detected_step"]), _num(e.get("loss_before")),
                _num(e.get("loss_peak")), _num(e.get("loss_after")), e["status"], e.get("decision", "-"),
            )  # fmt: skip
        console.print(events)

    if detail.get("goodput"):
        show_goodput(detail["goodput"])


def _dur(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}" if whole >= 60 else f"{seconds:.1f}s"


def show_goodput(goodput: dict[str, Any]) -> None:
    """Where the allocated time went, per attempt and in all (flows/runs/goodput.py); narrow enough for 80 columns."""
    if not goodput["attempts"]:
        return
    keys = ("allocated_s", "startup_s", "productive_s", "lost_s", "checkpoint_s", "hang_s", "other_s")
    table = Table("#", "alloc", "start", "useful", "lost", "ckpt", "hang", "other", "queue", "kept",
                  title="goodput: where the allocated time went", box=None)  # fmt: skip
    for a in goodput["attempts"]:
        queue = "in job" if a.get("relaunched") else _dur(a["queue_wait_s"])  # relaunched inside the allocation
        table.add_row(f"{a['attempt']}{'*' if a['running'] else ''}", *(_dur(a[k]) for k in keys), queue,
                      f"{a['steps_kept']}/{a['steps_run']}")  # fmt: skip
    if len(goodput["attempts"]) > 1:
        steps = f"{goodput['steps_kept']}/{goodput['steps_kept'] + goodput['steps_lost']}"
        table.add_row("all", *(_dur(goodput[k]) for k in keys), _dur(goodput["queue_wait_s"]), steps)
    console.print(table)
    ettr = goodput["ettr"]
    running = " (* running: counted until now)" if any(a["running"] for a in goodput["attempts"]) else ""
    console.print(
        (f"ETTR (productive / allocated): {ettr:.1%}" if ettr is not None else "ETTR: -")
        + f" of {goodput['node_hours_allocated']:.3g} node-hours; queue wait is not allocated time{running}"
    )


def _num(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else "-"
