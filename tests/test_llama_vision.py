"""The llama-vision student on the tiny offline Mllama: build, encode, generate, score, LoRA, adapters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mint_core.context import RunContext
from mint_core.registry import MintError, Registry
from mint_core.types import Prompt
from mint_llama_vision import LlamaVisionConfig
from mint_llama_vision.student import LlamaVisionStudent, lora_target_regex
from mint_llama_vision.testing import tiny_mllama_dir, write_tiny_pngs

QUESTION = "Which tissue types best describe this tile? List the 2 most likely, best first."
ANSWERS = ["Most likely tissue types:\n1. debris\n2. mucus", "Most likely tissue types:\n1. adipose tissue\n2. stroma"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return tiny_mllama_dir(tmp_path_factory.mktemp("mint-cache"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    write_tiny_pngs(run, n=2)
    return run


@pytest.fixture(scope="module")
def prompts(run_dir) -> list[Prompt]:
    return [Prompt(text=QUESTION, image=f"images/tile_{i}.png") for i in range(2)]


@pytest.fixture(scope="module")
def student(tiny_dir) -> LlamaVisionStudent:
    return LlamaVisionStudent(LlamaVisionConfig(model=str(tiny_dir), device="cpu", lora_dropout=0.0))


@pytest.fixture(scope="module")
def loaded(student, run_dir):
    torch.manual_seed(0)
    return student.load(ctx=RunContext(run_dir=run_dir))


def test_plugin_registers_student_without_heavy_imports():
    registry = Registry()
    registry.load_entry_points()
    spec = registry.get("student", "llama-vision")
    assert spec.config is LlamaVisionConfig
    names = {name for name, *_ in spec.config_fields()}
    assert {"model", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "load_in_4bit", "dtype",
            "device"} <= names
    code = "import sys, mint_llama_vision; print('torch' in sys.modules or 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_tiny_build_is_cached_deterministic_and_loads_like_a_checkpoint(tiny_dir, monkeypatch, tmp_path):
    from safetensors.torch import load_file

    monkeypatch.setenv("MINT_CACHE", str(tmp_path / "cache"))
    built = Path(LlamaVisionStudent(LlamaVisionConfig()).model_path())  # model="tiny" -> built into $MINT_CACHE
    assert built.parent == tmp_path / "cache" / "models" and built.name == tiny_dir.name
    assert built.name.startswith("tiny-mllama-")
    assert not [p for p in built.parent.iterdir() if p.name.startswith(".")], "temporary build folder left behind"
    stamp = (built / "model.safetensors").stat().st_mtime_ns
    assert Path(LlamaVisionStudent(LlamaVisionConfig()).model_path()) == built  # second call: no rebuild
    assert (built / "model.safetensors").stat().st_mtime_ns == stamp

    ours, theirs = load_file(built / "model.safetensors"), load_file(tiny_dir / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert (built / "tokenizer.json").read_text() == (tiny_dir / "tokenizer.json").read_text()
    config = json.loads((built / "config.json").read_text())
    assert config["model_type"] == "mllama" and config["architectures"] == ["MllamaForConditionalGeneration"]
    assert not list(built.glob("*.bin")), "weights must be safetensors only"


def test_encode_cross_attention_mask_covers_the_completion(loaded, prompts):
    encoded = loaded.encode(prompt=prompts[0], completion=ANSWERS[0])
    ids, start = encoded["input_ids"], encoded["prompt_length"]
    mask = encoded["cross_attention_mask"]
    assert mask.shape == (len(ids), 1, 1)
    assert ids[-1] == loaded.end_token_id and loaded.tokenizer.convert_ids_to_tokens(ids[-1]) == "<|eot_id|>"
    image_pos = ids.index(loaded.image_token_id)
    assert image_pos < start
    assert mask[:image_pos].sum() == 0  # tokens before <|image|> do not attend to it
    assert bool(mask[image_pos:, 0, 0].all())  # from <|image|> to the last completion token they do
    assert loaded.tokenizer.decode(ids[start:-1]) == ANSWERS[0]
    prompt_only = loaded.encode(prompt=prompts[0])
    assert prompt_only["input_ids"] == ids[:start] and prompt_only["prompt_length"] == start
    assert encoded["pixel_values"].shape == (1, 1, 3, 56, 56)
    assert encoded["aspect_ratio_ids"].tolist() == [1] and encoded["aspect_ratio_mask"].tolist() == [[1]]


def test_system_text_is_folded_into_the_user_turn_with_an_image(loaded, prompts):
    text = loaded.prompt_text(Prompt(text=QUESTION, image=prompts[0].image, system="You are a pathologist."))
    assert "system" not in text and text.index("<|image|>") < text.index("You are a pathologist.") < text.index(QUESTION)


def test_missing_image_is_a_clear_error(loaded):
    with pytest.raises(MintError, match="images/nope.png"):
        loaded.encode(prompt=Prompt(text=QUESTION, image="images/nope.png"))


def test_generate_batch_of_two_images_matches_one_by_one(loaded, prompts):
    batched = loaded.generate(prompts=prompts, max_new_tokens=6, batch_size=2)
    assert len(batched) == 2 and all(isinstance(answer, str) for answer in batched)
    single = [loaded.generate(prompts=[p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single  # left padding changes nothing


@pytest.mark.parametrize("end", [False, True])
def test_score_with_cached_prompt_equals_naive_scoring(loaded, prompts, end):
    candidates = ANSWERS + ["debris"]
    cached = loaded.score(prompts=prompts, candidates=candidates, batch_size=2, end=end)
    naive = loaded.score(prompts=prompts, candidates=candidates, batch_size=3, end=end, cached=False)
    assert len(cached) == 2 and all(len(row) == 3 for row in cached)
    for row_c, row_n in zip(cached, naive):
        for c, n in zip(row_c, row_n):
            assert c < 0 and abs(c - n) <= 1e-5 * max(1.0, abs(n))
    assert cached[0] != cached[1]  # the image changes the scores
    if end:  # the end-of-turn token adds its own (negative) log-probability
        plain = loaded.score(prompts=prompts, candidates=candidates, batch_size=3)
        assert all(e < p for row_e, row_p in zip(cached, plain) for e, p in zip(row_e, row_p))


def test_lora_targets_language_model_and_projector_only():
    pattern = lora_target_regex("all-linear", projector=True)
    import re

    assert re.fullmatch(pattern, "model.language_model.layers.1.cross_attn.q_proj")
    assert re.fullmatch(pattern, "model.multi_modal_projector")
    assert not re.fullmatch(pattern, "model.vision_model.transformer.layers.0.self_attn.q_proj")
    assert not re.fullmatch(pattern, "lm_head")
    narrow = lora_target_regex("q_proj,v_proj", projector=False)
    assert re.fullmatch(narrow, "model.language_model.layers.0.self_attn.v_proj")
    assert not re.fullmatch(narrow, "model.language_model.layers.0.self_attn.k_proj")
    assert not re.fullmatch(narrow, "model.multi_modal_projector")
    with pytest.raises(MintError, match="lora_target_modules"):
        lora_target_regex("q_proj;drop table", projector=True)


@pytest.mark.slow
def test_lora_learns_image_to_answer_and_adapter_round_trips(student, run_dir, prompts, tmp_path):
    torch.manual_seed(0)
    ctx = RunContext(run_dir=run_dir)
    trainable = student.load(ctx=ctx, trainable=True)
    names = [name for name, param in trainable.model.named_parameters() if param.requires_grad]
    assert names and all("lora_" in name for name in names)
    assert trainable.lora_config().target_modules == trainable.model.peft_config["default"].target_modules
    assert any("multi_modal_projector" in name for name in names)
    assert any("cross_attn" in name for name in names)
    assert not any("vision_model" in name for name in names)
    vision_before = {k: v.clone() for k, v in trainable.model.named_parameters() if "vision_model" in k}

    # A few supervised steps, image i -> answer i: the two images must end up with different answers.
    features = [trainable.encode(prompt=p, completion=a) for p, a in zip(prompts, ANSWERS)]
    batch = trainable.collate(features)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    for row, feature in enumerate(features):
        labels[row, :feature["prompt_length"]] = -100
    optimizer = torch.optim.AdamW([p for p in trainable.model.parameters() if p.requires_grad], lr=1e-2)
    trainable.model.train()
    losses = []
    for _ in range(30):
        loss = trainable.model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    trainable.model.eval()
    assert losses[-1] < losses[0] / 3
    assert all(torch.equal(v, dict(trainable.model.named_parameters())[k]) for k, v in vision_before.items())

    scores = trainable.score(prompts=prompts, candidates=ANSWERS, batch_size=2, end=True)
    assert scores[0][0] > scores[0][1] and scores[1][1] > scores[1][0]
    assert trainable.generate(prompts=prompts, max_new_tokens=20, batch_size=2) == ANSWERS

    adapter = tmp_path / "adapter"
    trainable.model.save_pretrained(adapter)
    assert (adapter / "adapter_model.safetensors").exists()
    reloaded = student.load(ctx=ctx, adapter_dir=adapter)
    again = reloaded.score(prompts=prompts, candidates=ANSWERS, batch_size=2, end=True)
    assert all(abs(a - b) <= 1e-4 for row_a, row_b in zip(scores, again) for a, b in zip(row_a, row_b))
    base = student.load(ctx=ctx).score(prompts=prompts, candidates=ANSWERS, batch_size=2, end=True)
    assert abs(base[0][0] - scores[0][0]) > 1.0  # the adapter, not the base model, gave those scores

    with pytest.raises(MintError, match="adapter_model.safetensors"):
        student.load(ctx=ctx, adapter_dir=tmp_path)
