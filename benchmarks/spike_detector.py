"""The spike detector on the real loss curves in ../shared/data/loss-curves (labels from its README).

Per curve: labelled events caught, delay in logged points from onset to detection, whether each was
called transient (recovered) or persistent, and false alarms per 10,000 steps (events that match no
label). Targets: every labelled spike of +25 % or more caught within 5 logged points; at most 1 false
alarm per 10,000 steps on megatron_gpt3_15b_h100_clean.csv.

Run: python benchmarks/spike_detector.py [--data DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from hpcai.monitor.history import read_csv
from hpcai.monitor.policy import RollbackPolicy, needs_rollback
from hpcai.monitor.spikes import SpikeDetector

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "loss-curves"


@dataclass(frozen=True)
class Label:
    onset: int  # step of the first point of the event
    size: float  # relative excess over the pre-event median (0.58 = +58 %)
    note: str


# From the curves' README (onset steps as listed there; sizes as stated or computed with its rule).
LABELS: dict[str, list[Label]] = {
    "megatron_mixtral8x7b_a100.csv": [
        Label(4050, 0.58, "big transient spike"),
        Label(1490, 0.11, "transient bump, peak at 1500"),
        Label(2425, 0.24, "single-sample spike"),
        Label(3735, 0.10, "small spike"), Label(4575, 0.10, "small spike"),
        Label(5305, 0.10, "small spike"), Label(5875, 0.10, "small spike"),
    ],
    "megatron_mixtral8x7b_h100.csv": [
        Label(3850, 0.39, "spike"), Label(4260, 0.26, "spike"), Label(3800, 0.14, "smaller spike"),
        Label(2360, 0.115, "smaller spike"), Label(2830, 0.12, "smaller spike"),
        Label(1750, 0.10, "small bump, peak at 1760"),
    ],
    "megatron_gpt3_15b_h100_v013.csv": [Label(13375, 0.18, "single-sample spike")],
    "megatron_gpt3_15b_h100_clean.csv": [],
    "cpm_ant_daily.csv": [
        Label(121, 0.48, "jump from new data, recovers to a new level"),
        Label(23, 0.14, "slow rise from a dataloader bug"),
        Label(9, 0.07, "jump after a resume"),
        Label(39, 0.08, "loss went up"),
    ],
    "cpm_bee_daily.csv": [Label(117, 0.17, "level shift from a model upgrade")],
}  # fmt: skip


def nanogpt_labels(points: list[tuple[int, float]]) -> list[Label]:
    """The README's rule for file 5: more than 50 % above the median of the previous 50 steps."""
    labels = []
    for i in range(50, len(points)):
        base = statistics.median(loss for _, loss in points[i - 50 : i])
        if points[i][1] > 1.5 * base:
            labels.append(Label(points[i][0], points[i][1] / base - 1, "single-step outlier"))
    return labels


def evaluate(path: Path) -> dict[str, object]:
    rows = list(read_csv(path))
    detector = SpikeDetector()
    index_of = {}
    for i, point in enumerate(rows):
        index_of[point.step] = i
        detector.update(point.step, point.loss, point.grad_norm)
    labels = LABELS.get(path.name)
    if labels is None:
        labels = nanogpt_labels([(p.step, p.loss) for p in rows])
    events = [e for e in detector.events if e.kind in {"spike", "divergence", "nonfinite"}]
    matched: set[int] = set()
    results = []
    for label in labels:
        onset_index = index_of.get(label.onset, 0)
        hit = None
        for n, event in enumerate(events):
            event_index = index_of.get(event.onset_step, -10)
            if -2 <= event_index - onset_index <= 5:
                hit = hit if hit is not None else n
                matched.add(n)
        if hit is None:
            results.append({"onset": label.onset, "size": label.size, "caught": False, "note": label.note})
            continue
        event = events[hit]
        delay = index_of[event.detected_step] - onset_index
        results.append({"onset": label.onset, "size": label.size, "caught": True, "delay_points": delay,
                        "call": event.status, "kind": event.kind, "note": label.note})  # fmt: skip
    false_alarms = [e for n, e in enumerate(events) if n not in matched]
    policy = RollbackPolicy()
    rollbacks = [e for e in events if needs_rollback(e, policy)]
    span = rows[-1].step - rows[0].step + 1
    big = [r for r in results if float(r["size"]) >= 0.25]  # type: ignore[arg-type]
    return {
        "file": path.name,
        "points": len(rows),
        "steps": span,
        "labels": len(labels),
        "caught": sum(1 for r in results if r["caught"]),
        "big_caught_in_5": sum(1 for r in big if r["caught"] and int(r["delay_points"]) <= 5),  # type: ignore[call-overload]
        "big": len(big),
        "false_alarms": len(false_alarms),
        "false_alarms_per_10k_steps": round(len(false_alarms) / span * 10_000, 2),
        "false_alarm_steps": [e.onset_step for e in false_alarms][:20],
        "false_alarms_transient": sum(1 for e in false_alarms if e.status == "transient"),
        "outliers": detector.outliers,
        "rollbacks": len(rollbacks),
        "rollback_steps": [e.onset_step for e in rollbacks],
        "events": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--verbose", "-v", action="store_true", help="list every labelled event")
    args = parser.parse_args()
    files = sorted(args.data.glob("*.csv"))
    if not files:
        sys.exit(f"no curves in {args.data}")
    report = [evaluate(f) for f in files]
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print("FA: events matching no label (how many of them the detector called transient); rollbacks: events")
    print("the default policy would roll back for (persistent spikes, divergence, non-finite).")
    print(
        f"{'curve':<36}{'points':>7}{'labels':>8}{'caught':>8}{'>=25% in 5':>12}{'FA (transient)':>16}"
        f"{'FA/10k':>8}{'rollbacks':>10}{'outliers':>9}"
    )
    for r in report:
        print(f"{r['file']:<36}{r['points']:>7}{r['labels']:>8}{r['caught']:>8}"
              f"{str(r['big_caught_in_5']) + '/' + str(r['big']):>12}"
              f"{str(r['false_alarms']) + ' (' + str(r['false_alarms_transient']) + ')':>16}"
              f"{r['false_alarms_per_10k_steps']:>8}{r['rollbacks']:>10}{r['outliers']:>9}")  # fmt: skip
        if args.verbose:
            for e in r["events"]:  # type: ignore[attr-defined]
                shown = f"delay {e['delay_points']} pts, {e['kind']} {e['call']}" if e["caught"] else "MISSED"
                print(f"    step {e['onset']:>6} +{e['size']:.0%} {e['note']}: {shown}")
            if r["rollback_steps"]:
                print(f"    would roll back at steps {r['rollback_steps']}")
            if r["false_alarm_steps"]:
                print(f"    false alarms at steps {r['false_alarm_steps']}")


if __name__ == "__main__":
    main()
