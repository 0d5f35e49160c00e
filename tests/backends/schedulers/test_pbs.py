"""PBS client side: parsing PBS Pro's `qstat -f`, and the wrappers' real commands (see
tests/flows/runs/test_lifecycle.py)."""

from hpcai.backends.schedulers import JobState
from hpcai.backends.schedulers.pbs import _status, parse_qstat_full

PBS_PRO_OUTPUT = """Job Id: 1234.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov
    Job_Name = hpcai-llava-pretrain
    job_state = F
    Exit_status = 3
    Resource_List.select = 2:ncpus=32:ngpus=4:system=polaris
    Variable_List = PBS_O_HOME=/home/jdoe,PBS_O_LANG=en_US.UTF-8,PBS_O_LOGNAME=jdoe,PBS_O_PATH=/usr/bin:/bi
\tn,PBS_O_SHELL=/bin/bash

Job Id: 1235.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov
    Job_Name = other
    job_state = R
    stime = Mon Nov 23 10:00:00 2026
"""


def test_parses_pbs_pro_qstat_full_with_continuation_lines() -> None:
    jobs = parse_qstat_full(PBS_PRO_OUTPUT)
    first = jobs["1234.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"]
    assert first["Exit_status"] == "3"
    assert first["Variable_List"].endswith("PBS_O_PATH=/usr/bin:/bin,PBS_O_SHELL=/bin/bash")
    status = _status("1234", first)
    assert status.state is JobState.FAILED and status.exit_code == 3
    assert _status("1235", jobs["1235.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"]).state is JobState.RUNNING


def test_walltime_kill_is_timeout_and_zero_is_completed() -> None:
    assert _status("1", {"job_state": "F", "Exit_status": "-11"}).state is JobState.TIMEOUT
    assert _status("1", {"job_state": "F", "Exit_status": "0"}).state is JobState.COMPLETED
    assert _status("1", {"job_state": "Q"}).state is JobState.PENDING
