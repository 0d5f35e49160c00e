"""The memory estimate per GPU of a LLaVA job (issue 28): its terms against what they model -- parameter
counts against the models transformers builds (on the meta device: no memory), activations against the
measured 206.6 KiB per token of a Llama-7B block -- and how the terms move with sharding and checkpointing."""

from __future__ import annotations

import pytest

from hpcai.presets import PRESETS, preset_shape
from hpcai.spec.memory import _counts, estimate_job, fixes, llava_estimate

SEVEN_B = PRESETS["clip-l336-vicuna-7b"]


def test_a_llama_7b_block_keeps_what_was_measured_per_token() -> None:
    one = llava_estimate(SEVEN_B, trainable={"projector"}, batch=1, max_length=1, checkpointing=False, every=1,
                         world=1, gpu=True)  # fmt: skip
    per_token_layer = one.parts["activations"] * (1 << 30) / SEVEN_B["layers"]
    assert abs(per_token_layer / (206.6 * 1024) - 1) < 0.03


def test_sharding_divides_the_states_and_not_the_activations() -> None:
    common = dict(trainable={"projector", "language_model"}, batch=4, max_length=2048, checkpointing=False, every=1,
                  gpu=True)  # fmt: skip
    eight, sixty_four = llava_estimate(SEVEN_B, world=8, **common), llava_estimate(SEVEN_B, world=64, **common)  # type: ignore[arg-type]
    for term in ("parameters", "gradients", "optimizer"):
        assert eight.parts[term] == pytest.approx(8 * sixty_four.parts[term])
    assert eight.parts["activations"] == sixty_four.parts["activations"]
    # AdamW: 8 bytes per trained parameter, sharded: 7B over 64 ranks is about 0.8 GiB.
    assert 0.7 < sixty_four.parts["optimizer"] < 0.9


def test_checkpointing_keeps_a_layers_input_and_stage_1_trains_no_lm_states() -> None:
    off = estimate_job("llava", {"preset": "clip-l336-vicuna-7b", "per_device_batch_size": 4, "max_length": 2048,
                                 "trainable": "projector"}, 64, True)  # fmt: skip
    on = estimate_job("llava", {"preset": "clip-l336-vicuna-7b", "per_device_batch_size": 4, "max_length": 2048,
                                "trainable": "projector", "activation_checkpointing": "true"}, 64, True)  # fmt: skip
    assert off is not None and on is not None
    assert 45 < off.parts["activations"] < 56  # issue 28: about 52 GiB at 4 x 2048 tokens
    assert on.parts["activations"] < off.parts["activations"] / 10
    assert off.parts["gradients"] < 0.01 and off.parts["optimizer"] < 0.01  # only the projector trains


def test_models_not_known_here_are_not_estimated() -> None:
    assert estimate_job("clip", {"preset": "tiny"}, 2, True) is None
    assert estimate_job("llava", {"preset": "tiny", "model_path": "/leonardo_work/x/model"}, 2, True) is None
    assert estimate_job("llava", {"preset": "no-such"}, 2, True) is None


def test_the_fixes_offered_each_fit() -> None:
    params = {"preset": "clip-l336-vicuna-7b", "per_device_batch_size": 4, "max_length": 2048,
              "trainable": "projector,language_model"}  # fmt: skip
    ways = fixes("llava", params, 64, 16, 58.0)
    assert ways[0].startswith("--set activation_checkpointing=true") and "per_device_batch_size=2" in ways[1]


@pytest.mark.parametrize("preset", ["tiny", "tiny-qwen3", "clip-l336-qwen2-0.5b", "clip-l336-vicuna-7b"])
def test_parameter_counts_match_the_models_transformers_builds(preset: str) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaForConditionalGeneration, Qwen2Config, Qwen3Config

    from hpcai.train.compose import llava_config

    s = preset_shape(preset)
    assert s is not None
    vision = CLIPVisionConfig(hidden_size=s["v_hidden"], intermediate_size=s["v_inter"], image_size=s["image"],
                              num_hidden_layers=s["v_layers"], num_attention_heads=s["v_heads"],
                              patch_size=s["patch"])  # fmt: skip
    text_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[s["lm"]]
    text = text_cls(vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["inter"],
                    num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
                    tie_word_embeddings=False)  # fmt: skip
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(llava_config(vision, text, "clip", 1))
    real = sum(p.numel() for p in model.parameters())
    n = _counts(s)
    assert abs((n["vision"] + n["projector"] + n["lm"]) / real - 1) < 0.01, (preset, real)
