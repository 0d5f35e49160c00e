"""The FLOP count behind the MFU figure, against a count written out by hand, and the figure itself in
the metrics of a real run when the device's peak is known."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcai.runtime.flops import Shape, mfu, peak_flops, transformer_flops


def test_transformer_flops_by_hand() -> None:
    shape = Shape(params=1000, layers=2, hidden=8)
    # trained: 6 x weights x tokens + 6 x (n^2 summed) x layers x hidden (causal: half of PaLM's 12)
    assert transformer_flops(shape, [3, 5], 6.0) == 6 * (1000 * 8 + (9 + 25) * 2 * 8)
    assert transformer_flops(shape, [4], 2.0, causal=False) == 2 * (1000 * 4 + 16 * 2 * 8 * 2)
    assert mfu(1e12, 2.0, 4, 1e12) == pytest.approx(0.125)
    assert mfu(1e12, 2.0, 4, None) is None


def test_peak_from_the_environment_or_unknown_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch", reason="the training stack is the `train` extra")
    monkeypatch.delenv("HPCAI_PEAK_TFLOPS", raising=False)
    assert peak_flops() is None  # CPU: no peak, no MFU
    monkeypatch.setenv("HPCAI_PEAK_TFLOPS", "989")
    assert peak_flops() == 989e12


def test_llava_step_counts_what_runs(tmp_path: Path) -> None:
    """Stage 1 (LM frozen) counts 4 N per LM token and 2 N per tower patch; stage 2 counts 6 N per LM
    token: the difference between the two is exactly 2 N_lm per token plus the LM head's share."""
    pytest.importorskip("accelerate")
    from hpcai.train.compose import compose
    from hpcai.train.llava import LlavaTask, set_trainable
    from hpcai.train.parts import tiny_llava_parts

    vision, lm = tiny_llava_parts(tmp_path, "clip", "llama")
    frozen = compose(vision, lm)
    set_trainable(frozen.model, ["projector"])
    trained = compose(vision, lm)
    set_trainable(trained.model, ["projector", "language_model"])
    one = LlavaTask(frozen, [], [], 0.0)
    two = LlavaTask(trained, [], [], 0.0)
    assert one.tower_tokens == 17 and not one.trains_lm and two.trains_lm
    lengths, images, logits = [40, 30], 2, 20
    difference = two.flops(lengths, images, logits) - one.flops(lengths, images, logits)
    lm_shape = one.lm_shape
    attention = (40 * 40 + 30 * 30) * lm_shape.layers * lm_shape.hidden
    expected = 2 * (lm_shape.params * 70 + attention) + 2 * lm_shape.hidden * one.vocab * logits
    assert difference == pytest.approx(expected)


def test_a_run_reports_mfu_when_the_peak_is_known(tmp_path: Path) -> None:
    pytest.importorskip("accelerate")
    from tests.train.launch import launch, metrics

    run = tmp_path / "run"
    result = launch("clip", run, params={"max_steps": 3, "samples": 32}, env={"HPCAI_PEAK_TFLOPS": "0.01"})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = metrics(run)
    assert all(r["mfu"] is not None and r["mfu"] > 0 for r in rows), rows


def test_attention_counts_heads_times_head_dim_not_the_residual_width() -> None:
    """Qwen3-0.6B: 16 heads x 128 = 2048 wide attention on a 1024 residual; counted with the residual width,
    the attention term was half of what runs."""
    pytest.importorskip("torch", reason="the training stack is the `train` extra")
    from types import SimpleNamespace

    import torch

    qwen3 = SimpleNamespace(hidden_size=1024, num_attention_heads=16, head_dim=128, num_hidden_layers=28)
    shape = Shape.of(torch.nn.Linear(2, 2), qwen3)
    assert (shape.hidden, shape.attention_width) == (1024, 2048)
    weights = 6 * shape.params * 100
    assert transformer_flops(shape, [100], 6.0) - weights == 6 * 100 * 100 * 28 * 2048
    llama = SimpleNamespace(hidden_size=64, num_attention_heads=4, num_hidden_layers=2)  # no head_dim: width/heads
    assert Shape.of(torch.nn.Linear(2, 2), llama).attention_width == 64


def test_clip_tokens_per_second_counts_the_image_patches(tmp_path: Path) -> None:
    pytest.importorskip("accelerate")
    import torch

    from hpcai.train.clip import ClipTask

    task = ClipTask.__new__(ClipTask)  # the counting alone: no model is needed for work()'s token number
    task.image_tokens, task.context = 50, 16
    task.vision_shape = task.text_shape = Shape(params=10, layers=1, hidden=4)
    task.model = type("M", (), {"siglip": False})()  # type: ignore[assignment]
    batch = {"attention_mask": torch.tensor([[1] * 5 + [0] * 11, [1] * 7 + [0] * 9])}
    tokens, _ = task.work(batch)
    assert tokens == 5 + 7 + 2 * 50
