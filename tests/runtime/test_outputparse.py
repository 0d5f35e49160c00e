"""Reading a user's program from its output: progress and loss, and the failing rank's exception."""

from __future__ import annotations

import math
import re

from hpcai.runtime.outputparse import ProgressParser, find_exception

# Lines as TRL 1.16 / HF Trainer print them (numbers quoted), tqdm redraws on the same line.
TRL = [
    "  0%|          | 0/12 [00:00<?, ?it/s]  8%|8         | 1/12 [00:00<00:02,  4.70it/s]    "
    "{'loss': '5.838', 'grad_norm': '7.177', 'learning_rate': '2e-05', 'epoch': '0.01'}",
    "  8%|8         | 1/12 [00:00<00:02,  4.70it/s]    {'loss': '5.874', 'grad_norm': '5.364', "
    "'learning_rate': '1.833e-05', 'epoch': '0.02'}",
    " 17%|#6        | 2/12 [00:00<00:02,  4.70it/s] 25%|##5       | 3/12 [00:00<00:00, 10.13it/s]   "
    "{'loss': '5.846', 'grad_norm': '5.886', 'learning_rate': '1.667e-05', 'epoch': '0.03'}",
    "{'train_runtime': '0.812', 'train_loss': '5.802', 'epoch': '0.12'}",
    "{'eval_loss': 5.1, 'epoch': 1.0}",
]


def test_trainer_dicts_give_step_loss_grad_norm_and_lr() -> None:
    parser = ProgressParser()
    seen = [o for o in map(parser.feed, TRL) if o is not None]
    assert [o.step for o in seen] == [1, 2, 3]  # tqdm lags the second dict: never behind last + 1
    assert [o.loss for o in seen] == [5.838, 5.874, 5.846]
    assert seen[0].grad_norm == 7.177 and seen[0].lr == 2e-05


def test_unquoted_dicts_rank_prefixes_and_plain_prints() -> None:
    parser = ProgressParser()
    assert parser.feed("[rank0]: {'loss': 2.5, 'grad_norm': 1.0, 'learning_rate': 0.001, 'epoch': 0.1}") is not None
    plain = parser.feed("epoch 0 | step 40 | loss: 1.25e-1 | lr 3e-4")
    assert plain is not None and (plain.step, plain.loss) == (40, 0.125)
    lightning = parser.feed("Epoch 0:  40%|####      | 4/10 [00:01<00:02, 2.6it/s, v_num=0, train_loss=2.31]")
    assert lightning is not None and lightning.loss == 2.31 and lightning.step == 41
    nan = parser.feed("step 42 loss=nan")
    assert nan is not None and math.isnan(nan.loss)
    assert parser.feed("the loss function is cross entropy") is None
    assert parser.feed("step 99999999999999999999 loss: 1.0").step < 10**12  # type: ignore[union-attr]


def test_a_users_pattern_is_all_that_is_read() -> None:
    parser = ProgressParser(re.compile(r"it=(?P<step>\d+) L=(?P<loss>[0-9.]+) g=(?P<grad_norm>[0-9.]+)"))
    assert parser.feed("step 3 loss: 1.0") is None
    seen = parser.feed("it=7 L=0.5 g=2.0")
    assert seen is not None and (seen.step, seen.loss, seen.grad_norm) == (7, 0.5, 2.0)


def test_the_ranks_exception_not_the_launchers_wrapper() -> None:
    output = """\
[rank1]: Traceback (most recent call last):
[rank1]:   File "/home/u/train.py", line 12, in <module>
[rank1]:     main()
[rank1]:   File "/home/u/train.py", line 9, in main
[rank1]:     raise ValueError("batch 17 has no labels")
[rank1]: ValueError: batch 17 has no labels
W1207 07:10:00.000000 123 torch/distributed/elastic/multiprocessing/api.py:900] Sending process 5 closing signal SIGTERM
Traceback (most recent call last):
  File "/usr/lib/python3.11/runpy.py", line 198, in _run_module_as_main
  File "/venv/lib/python3.11/site-packages/torch/distributed/run.py", line 900, in main
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
train.py FAILED
""".splitlines()
    found = find_exception(output)
    assert found is not None
    assert (found.rank, found.type, found.message, found.where) == (
        1,
        "ValueError",
        "batch 17 has no labels",
        "train.py:9",
    )


def test_only_a_wrapper_or_no_traceback_gives_nothing() -> None:
    assert (
        find_exception(
            ["Traceback (most recent call last):", '  File "x.py", line 1', "subprocess.CalledProcessError: x"]
        )
        is None
    )
    assert find_exception(["error: everything is fine"]) is None


def test_hpcais_own_lines_are_exact_and_silence_the_guesses() -> None:
    from hpcai.runtime.outputparse import exact_line

    parser = ProgressParser()
    assert parser.feed("  5%|5         | 9/80 [00:00<00:02]{'loss': 2.0}") is not None  # a guess
    seen = parser.feed("  2%|2    | 2/80 [00:00<00:02, 37.63it/s]" + exact_line(7, 1.5, 2.0, 1e-4))
    assert seen is not None and (seen.step, seen.loss, seen.grad_norm, seen.lr) == (7, 1.5, 2.0, 1e-4)
    assert parser.feed("{'loss': 3.0, 'grad_norm': 1.0}") is None
    assert parser.feed('hpcai-metrics {"step": -1, "loss": 1}') is None
    assert parser.feed('hpcai-metrics {"step": true, "loss": 1}') is None
    assert parser.feed("hpcai-metrics not json") is None


def test_a_rank_killed_without_a_traceback_is_named_from_torchruns_root_cause() -> None:
    from hpcai.runtime.outputparse import find_root_cause

    report = """\
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
train.py FAILED
------------------------------------------------------------
Root Cause (first observed failure):
[1]:
  time      : 2026-12-07_07:33:54
  host      : node0042
  rank      : 1 (local_rank: 1)
  exitcode  : -6 (pid: 2482)
  error_file: <N/A>
  traceback : Signal 6 (SIGABRT) received by PID 2482
============================================================""".splitlines()
    assert find_exception(report) is None
    found = find_root_cause(report)
    assert found is not None and (found.rank, found.type) == (1, "killed by SIGABRT")
    assert "Signal 6" in found.message
    assert find_root_cause(["nothing here"]) is None


def test_data_set_and_evaluation_bars_give_no_step() -> None:
    parser = ProgressParser()
    parser.feed("Truncating train dataset: 100%|##########| 400/400 [00:00<00:00, 16959.02 examples/s]")
    parser.feed("Map: 100%|##########| 400/400 [00:00<00:00]")
    seen = parser.feed("  0%|          | 0/120 [00:00<?, ?it/s]{'loss': '5.8', 'grad_norm': '7.1'}")
    assert seen is not None and seen.step == 1
    parser.feed("  2%|2         | 3/120 [00:00<00:02]")
    parser.feed("100%|##########| 50/50 [00:01<00:00]")  # an evaluation bar
    seen = parser.feed("{'loss': '5.1'}")
    assert seen is not None and seen.step == 3
