"""`hpcai spikes scan`: the spike detector over any loss curve."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hpcai.cli.options import (
    JsonOpt,
)
from hpcai.cli.output import console, print_json
from hpcai.cli.root import app
from hpcai.errors import HpcaiError

spikes_app = typer.Typer(help="Loss spikes and divergence.", no_args_is_help=True)


app.add_typer(spikes_app, name="spikes")


_SCAN_TARGET_HELP = "A run (id, unique prefix, `last`), or a CSV (step,loss[,grad_norm]), metrics .jsonl or log."


@spikes_app.command("scan")
def spikes_scan(
    target: Annotated[str, typer.Argument(help=_SCAN_TARGET_HELP)],
    regex: Annotated[
        str | None, typer.Option("--regex", help="For logs: a regex with named groups step and loss (grad_norm).")
    ] = None,
    floor: Annotated[
        float, typer.Option("--floor", help="Report spikes from this excess over the trend up (0.2 = +20%).", min=0)
    ] = 0.2,
    json_out: JsonOpt = False,
) -> None:
    """Run the spike detector over a run's (or anyone's) loss curve and list what it would have flagged.

    Steps run again after a resume count once (their last run). Excursions that pass the statistics but
    stay below --floor are outliers: counted, not listed."""
    from rich.table import Table

    from hpcai.monitor.history import kept_points, read_history
    from hpcai.monitor.policy import RollbackPolicy, needs_rollback
    from hpcai.monitor.spikes import DetectorConfig, SpikeDetector

    path: Path | str = Path(target)
    if Path(target).exists() or regex is not None or "/" in target or Path(target).suffix:
        points = read_history(Path(target), regex)
    else:  # not a file: a run of the store
        from hpcai.flows.runs.views import run_history
        from hpcai.store.db import Store

        run, points = run_history(Store(), target)
        path = f"run {run.id}"
    points = kept_points(points)
    if not points:
        raise HpcaiError(f"{path}: no points found" + (" with that --regex." if regex else "."))
    detector = SpikeDetector(DetectorConfig(report_floor=floor))
    for point in points:
        detector.update(point.step, point.loss, point.grad_norm)
    policy = RollbackPolicy()
    events = [{**e.to_json(), "rollback": needs_rollback(e, policy)} for e in detector.events]
    last = detector.outlier_steps[-10:]
    outliers = {"count": detector.outliers, "floor": floor, "last_steps": last}
    if json_out:
        print_json({"file": str(path), "points": len(points), "events": events, "outliers": outliers})
        return
    console.print(f"{path}: {len(points)} points, steps {points[0].step}-{points[-1].step}, {len(events)} events")
    if detector.outliers:
        console.print(
            f"{detector.outliers} smaller outlier(s) below +{floor:.0%}, not listed (last at steps "
            f"{', '.join(map(str, last))})"
        )
    table = Table("kind", "onset", "detected", "loss before", "peak", "after", "status", "rollback?")
    for e in events:
        table.add_row(
            str(e["kind"]), str(e["onset_step"]), str(e["detected_step"]), _fmt(e["loss_before"]),
            _fmt(e["loss_peak"]), _fmt(e["loss_after"]), str(e["status"]), "yes" if e["rollback"] else "no",
        )  # fmt: skip
    console.print(table)


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else "-"
