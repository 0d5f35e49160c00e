"""LLaVA on real-format parts: a pretrained tower and LM composed, their tokenizer and chat template,
LLaVA-1.5's two stages, export to a folder transformers loads, and the bugs of the byte-tokenizer demo."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="the training stack is the `train` extra")

from hpcai.train.chat import IGNORE, encode  # noqa: E402
from hpcai.train.synth import synth_llava  # noqa: E402
from tests.conftest import REPO  # noqa: E402
from tests.train.launch import OFFLINE_ENV, launch, losses, metrics  # noqa: E402

pytest.importorskip("accelerate", reason="the training stack is the `train` extra")


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from hpcai.train.parts import tiny_llava_parts

    root = tmp_path_factory.mktemp("parts")
    vision, llama = tiny_llava_parts(root, "clip", "llama")
    siglip, qwen = tiny_llava_parts(root, "siglip", "qwen2")
    return {"clip": vision, "llama": llama, "siglip": siglip, "qwen2": qwen}


def composed(parts: dict[str, Path], vision: str = "clip", lm: str = "llama") -> Any:
    from hpcai.train.compose import compose

    return compose(parts[vision], parts[lm])


RECORD = {"id": "x", "image": "a.png", "conversations": [
    {"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "Red."},
    {"from": "human", "value": "Shape?"}, {"from": "gpt", "value": "Square."}]}  # fmt: skip


@pytest.mark.parametrize(("lm", "learned"), [("llama", " Red.</s> Square.</s>"),
                                             ("qwen2", "Red.<|im_end|>\nSquare.<|im_end|>\n")])  # fmt: skip
def test_labels_cover_the_assistant_turns_in_the_lms_own_template(
    parts: dict[str, Path], lm: str, learned: str
) -> None:
    p = composed(parts, "clip", lm)
    enc = encode(RECORD, p.tokenizer, p.image_token_id, p.image_tokens, max_length=512)
    assert enc is not None and enc.images == 1
    assert enc.input_ids.count(p.image_token_id) == p.image_tokens  # expanded: one id per image feature
    supervised = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE]
    assert p.tokenizer.decode(supervised) == learned
    # the real tokenizer's ids, not bytes: the text round-trips through it
    assert "What color?" in p.tokenizer.decode(enc.input_ids)


# The rule of Qwen3's official template that broke multi-turn samples: answers after the last user turn get
# an (empty) think block, earlier answers none (its `last_query_index`; tools and reasoning_content left out).
QWEN3_LIKE = (
    "{%- set ns = namespace(last_query_index=-1) -%}"
    "{%- for m in messages -%}{%- if m.role == 'user' -%}{%- set ns.last_query_index = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'assistant' -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if loop.index0 > ns.last_query_index -%}{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}"
    "{{- m.content | trim -}}{{- '<|im_end|>\\n' -}}"
    "{%- else -%}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def test_a_template_that_marks_only_the_last_answer_trains_every_answer(parts: dict[str, Path]) -> None:
    """Qwen3's templates render an answer differently when it is the last one (the empty think block): a
    multi-turn sample was refused (TemplateError). Every answer and its end-of-turn are learnt, nothing else."""
    from hpcai.train.chat import messages_of, render

    p = composed(parts, "clip", "qwen2")
    p.tokenizer.chat_template = QWEN3_LIKE
    messages = messages_of(RECORD)
    assert not render(p.tokenizer, messages).startswith(render(p.tokenizer, messages[:2]))  # what broke
    enc = encode(RECORD, p.tokenizer, p.image_token_id, p.image_tokens, max_length=512)
    assert enc is not None
    learnt = p.tokenizer.decode([t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE])
    assert learnt == "Red.<|im_end|>\n<think>\n\n</think>\n\nSquare.<|im_end|>\n", learnt
    assert "What color" in p.tokenizer.decode(enc.input_ids) and "What color" not in learnt


@pytest.mark.parametrize("lm", ["llama", "qwen2"])
def test_stage_one_uses_the_plain_format_image_then_caption(parts: dict[str, Path], lm: str) -> None:
    """LLaVA-1.5's stage 1 ("plain"): the image, the caption and a newline -- no system prompt, no question,
    no template -- with only the caption and the newline learnt; the pretrain stage selects it."""
    p = composed(parts, "clip", lm)
    enc = encode(RECORD, p.tokenizer, p.image_token_id, p.image_tokens, max_length=512, prompt_format="plain")
    assert enc is not None and enc.images == 1
    text = p.tokenizer.decode([t for t in enc.input_ids if t != p.image_token_id], skip_special_tokens=True)
    assert text.strip() == "Red." and "What color" not in p.tokenizer.decode(enc.input_ids)
    supervised = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE]
    assert p.tokenizer.decode(supervised).strip() == "Red." and p.tokenizer.decode(supervised).endswith("\n")
    first = enc.input_ids.index(p.image_token_id)
    assert enc.input_ids[first : first + p.image_tokens] == [p.image_token_id] * p.image_tokens
    assert all(lab == IGNORE for lab in enc.labels[: first + p.image_tokens])


def test_the_pretrain_stage_renders_the_plain_format() -> None:
    from tests.conftest import run_cli

    pretrain = run_cli("render", "llava", "--stage", "pretrain").stdout
    finetune = run_cli("render", "llava", "--stage", "finetune").stdout
    assert "--prompt_format plain" in pretrain and "--prompt_format chat" in finetune


def test_image_tokens_are_spliced_in_before_truncation(parts: dict[str, Path]) -> None:
    """Truncating the text to max_length before splicing the image in cut samples inside the image
    ("Image features and image tokens do not match"); LLaVA truncates after splicing."""
    p = composed(parts)
    full = encode(RECORD, p.tokenizer, p.image_token_id, p.image_tokens, max_length=4096)
    assert full is not None
    cut = encode(RECORD, p.tokenizer, p.image_token_id, p.image_tokens, max_length=len(full.input_ids) - 3)
    assert cut is not None and len(cut.input_ids) == len(full.input_ids) - 3
    assert cut.input_ids.count(p.image_token_id) == p.image_tokens
    # a limit inside the image: the sample is left out, never half an image
    assert encode(RECORD, p.tokenizer, p.image_token_id, p.image_tokens, max_length=p.image_tokens) is None


def test_a_max_length_shorter_than_an_image_is_refused(parts: dict[str, Path], tmp_path: Path) -> None:
    from hpcai.train.llava import load_examples

    synth_llava(tmp_path, samples=2)
    p = composed(parts)
    with pytest.raises(SystemExit, match=r"max_length 8: an image alone takes 16 tokens.*2048"):
        load_examples(tmp_path, p, max_length=8)


def test_composition_uses_the_lms_tokenizer_and_adds_the_image_token(parts: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    original = AutoTokenizer.from_pretrained(parts["llama"])
    assert "<image>" not in original.get_vocab()
    p = composed(parts)
    assert p.tokenizer.convert_tokens_to_ids("<image>") == p.image_token_id == len(original)
    assert p.model.config.image_token_index == p.image_token_id
    assert p.model.get_input_embeddings().weight.shape[0] == len(p.tokenizer)
    lm = AutoModelForCausalLM.from_pretrained(parts["llama"])
    old = lm.get_input_embeddings().weight
    assert torch.equal(p.model.get_input_embeddings().weight[: old.shape[0]], old)  # pretrained rows kept
    assert torch.equal(p.model.lm_head.weight[: old.shape[0]], lm.lm_head.weight)
    assert p.image_tokens == 16 and p.vision_kind == "clip"  # (32/8)^2 patches, CLS dropped


def test_a_folder_with_missing_weights_or_the_wrong_kind_is_refused(parts: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from hpcai.train.compose import PartError, compose

    broken = tmp_path / "lm"
    shutil.copytree(parts["llama"], broken)
    config = json.loads((broken / "config.json").read_text())
    config["num_hidden_layers"] = 3  # the weights hold 2 layers: the third would silently stay random
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(PartError, match=r"language_model .*lm: the weights do not cover"):
        compose(parts["clip"], broken)
    with pytest.raises(PartError, match="is not a CLIP or SigLIP vision model"):
        compose(parts["llama"], parts["llama"])


def test_the_stage_decides_what_trains_without_the_renderer(tmp_path: Path) -> None:
    """`train.py --stage finetune` alone (as benchmarks/train_throughput.py runs it) trained only the
    projector: the stage -> trainable mapping lived in the renderer only."""
    from hpcai.train.llava import trainable_parts
    from tests.train.test_workloads import changed_parts

    assert trainable_parts("finetune", "") == ["projector", "language_model"]
    assert trainable_parts("pretrain", "") == ["projector"] and trainable_parts(None, "") == ["projector"]
    assert trainable_parts("finetune", "projector") == ["projector"]
    result = subprocess.run(
        [sys.executable, str(REPO / "workloads" / "llava" / "train.py"), "--run-dir", str(tmp_path), "--stage",
         "finetune", "--max_steps", "2", "--samples", "8", "--checkpoint_every", "1", "--lr", "1e-2"],
        env=OFFLINE_ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert changed_parts(tmp_path, "step-00000001", "step-00000002") == {
        "multi_modal_projector", "language_model", "lm_head"}  # fmt: skip


def test_a_batch_without_supervised_tokens_gives_zero_not_nan(parts: dict[str, Path]) -> None:
    from hpcai.train.llava import Example, LlavaTask

    p = composed(parts)
    record = {
        "id": "q",
        "conversations": [{"from": "human", "value": "A long question?"}, {"from": "gpt", "value": "Yes."}],
    }
    # max_length cuts the sample before the answer: nothing is left to supervise
    task = LlavaTask(parts=p, layer_classes=[], examples=[Example(record, None, 8)], z_loss_weight=1e-4, max_length=4)
    batch = task.collate([0])
    out = task.step(p.model, batch, SimpleNamespace(autocast=nullcontext))
    assert float(out.loss.detach()) == 0.0 and task.work(batch)[0] == 4 and bool((batch["labels"] == IGNORE).all())
    out.loss.backward()  # still part of the graph: every rank runs the same collectives


def test_images_are_padded_to_square_with_the_mean_colour(tmp_path: Path) -> None:
    from PIL import Image

    from hpcai.train.images import ImageTransform

    path = tmp_path / "wide.png"
    Image.new("RGB", (64, 32), (255, 0, 0)).save(path)
    pixels = ImageTransform(32)(path)
    assert pixels.shape == (3, 32, 32)
    # top and bottom quarter are padding: the mean colour normalises to ~0
    assert float(pixels[:, :6].abs().max()) < 0.03 and float(pixels[:, 10:22].abs().min()) > 0.5


def test_two_stages_export_a_model_transformers_loads_and_generates_with(tmp_path: Path) -> None:
    """LLaVA-1.5's recipe on tiny real-format parts, 2 processes with FSDP2: stage 1 trains the projector
    (its loss falls), stage 2 starts from stage 1's export with mixed data (two JSON files, text-only
    samples) and trains projector + LM (its loss falls further); the export loads with
    LlavaForConditionalGeneration + AutoProcessor and generates."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    common = {"max_steps": 30, "checkpoint_every": 30, "warmup_steps": 3, "samples": 96}
    first = tmp_path / "pretrain"
    result = launch("llava", first, params={**common, "stage": "pretrain", "lr": 3e-3})
    assert result.returncode == 0, result.stderr[-3000:]
    one = losses(first)
    assert statistics.mean(one[-5:]) < 0.8 * statistics.mean(one[:5]), one
    assert (first / "model" / "config.json").is_file() and not (first / ".model.partial").exists()
    # every processed token on every rank: 2 ranks x 4 samples x (16 image tokens + the text; in stage 1's plain
    # format the caption alone, a few tokens) per step
    for row in metrics(first)[5:]:
        assert row["tokens_per_s"] * row["step_s"] >= 2 * 4 * (16 + 3), row

    data = tmp_path / "mixed"
    synth_llava(data, samples=96, seed=3)
    text_only = [{"id": f"t{i}", "conversations": [{"from": "human", "value": "Name a color."},
                                                   {"from": "gpt", "value": "Red."}]} for i in range(16)]  # fmt: skip
    (data / "text_only.json").write_text(json.dumps(text_only))
    second = tmp_path / "finetune"
    result = launch("llava", second, params={**common, "stage": "finetune", "lr": 1e-3, "data": data,
                                             "model_path": first / "model"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    two = losses(second)
    # (that its first step has stage 1's projector, against a stage 2 from an untrained one: stage 1 learns
    # in the plain format, stage 2 in the chat template, so their losses are not comparable --
    # tests/train/test_stages_cli.py::test_finetune_from_the_pretrain_run)
    assert statistics.mean(two[-5:]) < 0.8 * statistics.mean(two[:5]), two

    model = LlavaForConditionalGeneration.from_pretrained(second / "model")
    processor = AutoProcessor.from_pretrained(second / "model")
    from PIL import Image

    prompt = processor.apply_chat_template([{"role": "user", "content": "<image>\nWhat color is the shape?"}],
                                           add_generation_prompt=True)  # fmt: skip
    inputs = processor(images=Image.open(data / "images" / "000000.png"), text=prompt, return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_index).sum()) == 16  # expansion as in training
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 6 or int(out[0, -1]) == processor.tokenizer.eos_token_id
    # the export holds the trained weights: its loss on training samples is the end-of-training loss
    from hpcai.train.compose import load_llava
    from hpcai.train.llava import LlavaTask, load_examples

    exported = load_llava(second / "model")
    task = LlavaTask(exported, [], load_examples(data, exported, 2048), z_loss_weight=0.0)
    with torch.no_grad():
        loss = float(task.step(exported.model, task.collate(list(range(16))),
                               SimpleNamespace(autocast=nullcontext)).loss)  # fmt: skip
    assert loss < statistics.mean(two[:5]) and abs(loss - statistics.mean(two[-5:])) < 0.5, (loss, two[-5:])


def test_a_bad_sample_is_left_out_and_named_and_missing_images_are_caught_at_start(
    parts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hpcai.train.llava import LlavaTask, load_examples

    synth_llava(tmp_path, samples=12)
    records = json.loads((tmp_path / "conversations.json").read_text())
    records[9]["conversations"][1] = {"from": "gpt", "value": None}  # malformed, past the checked first 8
    records[10]["image"] = "gone.png"  # its file is missing
    (tmp_path / "conversations.json").write_text(json.dumps(records))
    p = composed(parts)
    task = LlavaTask(p, [], load_examples(tmp_path, p, 2048), 0.0)
    batch = task.collate(list(range(12)))
    assert batch["pixel_values"].shape[0] == 10 and task.unusable == 2  # the other 10 samples are intact
    assert int(batch.pop("hpcai_left_out").sum()) == 2  # counted for the run (the trainer takes it out)
    assert bool((batch["labels"][9:11] == IGNORE).all())
    out = capsys.readouterr().out
    assert "sample synth-000009 left out" in out and "sample synth-000010 left out" in out

    wrong = tmp_path / "elsewhere"
    wrong.mkdir()
    (wrong / "data.json").write_text(json.dumps(records))
    with pytest.raises(SystemExit, match="none of the first samples' images is there"):
        load_examples(wrong, p, 2048)


def test_the_masked_loss_equals_the_mean_over_supervised_positions(parts: dict[str, Path]) -> None:
    """The loss is computed by masking (no host sync for a data-dependent shape): the same number as
    cross-entropy over the supervised positions picked out, z-loss included."""
    import torch
    import torch.nn.functional as F

    from hpcai.train.llava import Example, LlavaTask

    p = composed(parts)
    records = [
        {"id": str(n), "conversations": [{"from": "human", "value": "Say something " * n},
                                         {"from": "gpt", "value": "Sure, here it is " * (n + 1)}]}
        for n in (1, 3)
    ]  # fmt: skip
    task = LlavaTask(parts=p, layer_classes=[], examples=[Example(r, None, 40) for r in records],
                     z_loss_weight=1e-3, max_length=64)  # fmt: skip
    batch = task.collate([0, 1])
    out = task.step(p.model, batch, SimpleNamespace(autocast=nullcontext))
    with torch.no_grad():
        logits = p.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    picked = logits[targets != IGNORE]
    reference = F.cross_entropy(picked, targets[targets != IGNORE])
    reference = reference + 1e-3 * torch.logsumexp(picked, dim=-1).pow(2).mean()
    assert float(out.loss.detach()) == pytest.approx(float(reference), rel=1e-5)


@pytest.mark.parametrize("vision", ["clip", "siglip"])
def test_the_export_sees_a_non_square_image_and_a_structured_prompt_as_training_did(
    parts: dict[str, Path], tmp_path: Path, vision: str
) -> None:
    """Through its own AutoProcessor -- a 64x32 image, `apply_chat_template` with [{"type": "image"},
    {"type": "text"}] content -- the exported model computes the logits training computed for that sample.
    (The tower's resize-and-crop processor gave another image, logits 6.95 apart; the LM's text-only template
    printed the list and found no image token.)"""
    import torch
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from hpcai.train.compose import export_llava
    from hpcai.train.llava import Example, LlavaTask

    p = composed(parts, vision, "qwen2")
    image = tmp_path / "wide.png"
    img = Image.new("RGB", (64, 32), (200, 30, 30))
    for x in range(0, 64, 3):
        img.putpixel((x, 5), (0, 0, 255))
    img.save(image)
    record = {"id": "w", "image": "wide.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "Red."}]}  # fmt: skip
    task = LlavaTask(p, [], [Example(record, image, 40)], 0.0, max_length=512)
    batch = task.collate([0])
    batch.pop("hpcai_left_out")
    p.model.eval()
    with torch.no_grad():
        trained = p.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          pixel_values=p.transform.normalize(batch["pixel_values"])).logits  # fmt: skip
    export_llava(p, p.model.state_dict(), tmp_path / "model")

    model = LlavaForConditionalGeneration.from_pretrained(tmp_path / "model").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "model")
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "Red."}]}]  # fmt: skip
    text = processor.apply_chat_template(conversation)
    inputs = processor(images=Image.open(image), text=text, return_tensors="pt")
    assert inputs["input_ids"].tolist() == batch["input_ids"].tolist(), (text, processor.tokenizer.decode(
        batch["input_ids"][0]))  # fmt: skip
    with torch.no_grad():
        served = model(**inputs).logits
    assert (served - trained).abs().max() < 1e-3, (served - trained).abs().max()
