import pytest

from hpcai.errors import ValidationError
from hpcai.spec.walltime import parse_walltime, pbs_walltime, slurm_walltime


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("00:30:00", 1800),
        ("02:00:00", 7200),
        ("1-12:00:00", 129600),
        ("100:00:00", 360000),
        ("0-00:00:05", 5),
    ],
)
def test_parses_slurm_forms(text: str, seconds: int) -> None:
    assert parse_walltime(text) == seconds


@pytest.mark.parametrize("text", ["90", "1:2:3", "00:90:00", "00:00:60", "1-25:00:00", "abc", "00:00:00", "-1:00:00"])
def test_rejects_malformed_walltimes_with_examples(text: str) -> None:
    with pytest.raises(ValidationError, match="--time"):
        parse_walltime(text)


def test_formats_for_each_scheduler() -> None:
    assert slurm_walltime(129600) == "1-12:00:00"
    assert slurm_walltime(1800) == "00:30:00"
    assert pbs_walltime(129600) == "36:00:00"
