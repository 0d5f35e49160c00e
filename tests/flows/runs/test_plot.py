"""The terminal chart keeps the trend readable by leaving the highest 2 % off the scale, and says so."""

from __future__ import annotations

from hpcai.flows.runs.plot import PlotData, Segment, terminal_chart


def test_points_above_the_scale_are_marked_and_counted() -> None:
    losses = [2.0 - i * 0.01 for i in range(100)]
    losses[50] = 40.0  # a spike
    chart = terminal_chart(PlotData("r", [Segment(list(range(1, 101)), losses, [None] * 100)], [], []))
    assert "1 point(s) above" in chart and "highest 40" in chart
    top_row = chart.splitlines()[1]
    assert "!" in top_row and "^" not in top_row  # `^` is an event's onset, on the marks row only


def test_a_curve_without_outliers_has_no_note() -> None:
    losses = [2.0 - i * 0.01 for i in range(10)]
    chart = terminal_chart(PlotData("r", [Segment(list(range(1, 11)), losses, [None] * 10)], [], []))
    assert "above" not in chart
