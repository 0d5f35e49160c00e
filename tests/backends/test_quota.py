"""Quota parsing: the LUMI tool's `used/max` lines, and real `df` output on this machine."""

from __future__ import annotations

from pathlib import Path

from hpcai.backends.quota import df_usage, parse_lumi_quota, usage_for
from hpcai.backends.transport.local import LocalTransport
from tests.conftest import FIXTURES


def test_lumi_quota_lines_give_space_and_files_per_path() -> None:
    text = (FIXTURES / "site-commands" / "lumi-quota.txt").read_text()
    rows = parse_lumi_quota(text.format(root="/r", user="u", account="project_1", work_used="1.0T", work_files="2.6k"))
    assert [r.path for r in rows] == ["/r/home/u", "/r/work/project_1", "/r/scratch/u"]
    work = usage_for(rows, "/r/work/project_1/hpcai/store")
    assert work is not None and work.space_percent == 100 and work.files_percent == 100
    home = usage_for(rows, "/r/home/u")
    assert home is not None and round(home.space_percent or 0, 1) == round(100 * 4.3 / 22, 1)
    assert home.files_percent == 25
    assert usage_for(rows, "/r/homeless") is None


def test_df_on_a_real_directory(tmp_path: Path) -> None:
    usage = df_usage(LocalTransport(), str(tmp_path))
    assert usage is not None and usage.bytes_max and usage.bytes_used is not None
    assert 0 <= (usage.space_percent or 0) <= 100
    assert df_usage(LocalTransport(), str(tmp_path / "missing")) is None
