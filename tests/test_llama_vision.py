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
    built = Path(LlamaVisionStudent(LlamaVisionConfig(model="tiny")).model_path())  # built into $MINT_CACHE
    assert built.parent == tmp_path / "cache" / "models" and built.name == tiny_dir.name
    assert built.name.startswith("tiny-mllama-")
    assert not [p for p in built.parent.iterdir() if p.name.startswith(".")], "temporary build folder left behind"
    stamp = (built / "model.safetensors").stat().st_mtime_ns
    assert Path(LlamaVisionStudent(LlamaVisionConfig(model="tiny")).model_path()) == built  # second call: no rebuild
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


def test_score_prompts_sharing_a_text_equals_naive_scoring(loaded, prompts):
    """Tiles with one prompt text share the image-free bottom layers; another text gets its own."""
    mixed = [*prompts, Prompt(text="Name the tissue type of this tile.", image=prompts[1].image)]
    shared = loaded.score(prompts=mixed, candidates=ANSWERS, batch_size=1)
    naive = loaded.score(prompts=mixed, candidates=ANSWERS, batch_size=2, cached=False)
    for row_s, row_n in zip(shared, naive):
        for s, n in zip(row_s, row_n):
            assert s < 0 and abs(s - n) <= 1e-5 * max(1.0, abs(n))
    assert shared[1] != shared[2]  # same image, other text


def test_score_a_prompt_without_an_image(loaded, prompts):
    """The content-free calibration prompt has no image: the cross-attention layers stay empty."""
    text_only = [Prompt(text=prompts[0].text)]
    cached = loaded.score(prompts=text_only, candidates=ANSWERS, batch_size=2)
    naive = loaded.score(prompts=text_only, candidates=ANSWERS, batch_size=2, cached=False)
    for c, n in zip(cached[0], naive[0]):
        assert c < 0 and abs(c - n) <= 1e-5 * max(1.0, abs(n))


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


# -- the default student: an Mllama built from a pretrained Llama text model ------------------------
@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> Path:
    from mint_llama.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("text") / "tiny-llama", num_layers=3)


@pytest.fixture(scope="module")
def built_dir(text_dir, tmp_path_factory) -> Path:
    from mint_llama_vision.from_text import ensure_from_text

    return ensure_from_text(text_dir, cache_root=tmp_path_factory.mktemp("cache"), cross_after=(1,), log=lambda _: None)


def test_built_from_text_is_the_text_model_until_trained(text_dir, built_dir, tmp_path):
    """Weights copied layer for layer around the inserted cross-attention layer, whose zero output
    projections leave the text model's logits unchanged; <|image|> gets one of Mllama's extra rows; the build is cached."""
    from transformers import AutoModelForCausalLM, MllamaForConditionalGeneration

    from mint_llama_vision.from_text import ensure_from_text
    from mint_llama_vision.student import is_built_from_text

    text = AutoModelForCausalLM.from_pretrained(text_dir).eval()
    built = MllamaForConditionalGeneration.from_pretrained(built_dir).eval()
    lm = built.model.language_model
    assert built.config.text_config.cross_attention_layers == [2] and len(lm.layers) == 4
    assert torch.equal(lm.layers[3].mlp.down_proj.weight, text.model.layers[2].mlp.down_proj.weight)
    cross_layer = lm.layers[2]  # open gates, zero output projections: identity, gradients flow
    assert cross_layer.cross_attn_attn_gate.item() == 1.0 and cross_layer.cross_attn_mlp_gate.item() == 1.0
    assert not cross_layer.cross_attn.o_proj.weight.any() and not cross_layer.mlp.down_proj.weight.any()
    assert is_built_from_text(built_dir) and not is_built_from_text(text_dir)
    assert built.config.image_token_index == text.config.vocab_size == built.config.text_config.vocab_size - 1
    assert built.generation_config.suppress_tokens == [built.config.image_token_index]
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(built_dir)
    assert processor.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image|>") == text.config.vocab_size
    ids = torch.tensor([[1, 5, 17, 42, 99, 3]])
    with torch.no_grad():
        logits = built(input_ids=ids).logits
        torch.testing.assert_close(logits[..., :-1], text(input_ids=ids).logits, atol=1e-5, rtol=0)
        assert (logits[..., -1] == 0).all()  # the <|image|> output row
    stamp = (built_dir / "model.safetensors").stat().st_mtime_ns
    assert ensure_from_text(text_dir, cache_root=built_dir.parent.parent, cross_after=(1,)) == built_dir
    assert (built_dir / "model.safetensors").stat().st_mtime_ns == stamp  # cached: no rebuild
    assert not [p for p in built_dir.parent.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def built_env(built_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("built-run")
    images = write_tiny_pngs(run, n=4, size=64)
    tissues = ["breast", "colon", "kidney", "liver", "lung"]
    prompts = [Prompt(text="Choose from: breast, colon, kidney, liver, lung. Which tissue?", image=img) for img in images]
    student = LlamaVisionStudent(LlamaVisionConfig(model=str(built_dir), device="cpu", lora_r=4, lora_dropout=0.0))
    return {"student": student, "ctx": RunContext(run_dir=run, seed=0), "prompts": prompts, "tissues": tissues}


def test_built_student_trains_its_vision_side_in_full_and_lora_above_it(built_env):
    sm = built_env["student"].load(ctx=built_env["ctx"], trainable=True)
    names = [name for name, param in sm.model.named_parameters() if param.requires_grad]
    full = [n for n in names if "modules_to_save" in n]
    assert any(".vision_model." in n for n in full) and any("multi_modal_projector" in n for n in full)
    assert any("layers.2.modules_to_save.default.cross_attn_attn_gate" in n for n in full)  # the whole cross-attention layer, gates too
    lora = [n for n in names if "lora_" in n]
    assert lora and all(".layers.3." in n for n in lora), "auto: LoRA only above the cross-attention layer"
    assert sm.lora_config().modules_to_save == sm.model.peft_config["default"].modules_to_save
    # "Adapter off" (DPO's reference) is the untrained model: peft keeps the originals of modules_to_save.
    enc = sm.encode(prompt=built_env["prompts"][0], completion="Most likely tissue types:\n1. colon")
    batch = sm._to_device(sm.collate([enc]))
    with torch.no_grad():
        for name, param in sm.model.named_parameters():
            if param.requires_grad:
                param.add_(0.05)
        with sm.model.disable_adapter():
            off = sm.model(**batch).logits
        plain = built_env["student"].load(ctx=built_env["ctx"]).model(**batch).logits
        on = sm.model(**batch).logits
    torch.testing.assert_close(off, plain)
    assert (on - plain).abs().max() > 1e-3


def test_full_train_and_lora_layers_options_are_checked(built_env):
    from mint_llama_vision.student import full_train_parts, lora_layer_indices

    cfg = LlamaVisionConfig(full_train="cross_attn,retina")
    with pytest.raises(MintError, match="student.full_train"):
        full_train_parts(cfg, built=True)
    assert full_train_parts(LlamaVisionConfig(), built=False) == []  # hub checkpoints: LoRA only
    text_config = built_env["student"].load(ctx=built_env["ctx"]).model.config.text_config
    assert lora_layer_indices(LlamaVisionConfig(), text_config, built=False) is None  # every layer
    assert lora_layer_indices(LlamaVisionConfig(lora_layers="0,1"), text_config, built=True) == [0, 1]
    with pytest.raises(MintError, match="student.lora_layers"):
        lora_layer_indices(LlamaVisionConfig(lora_layers="9"), text_config, built=True)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["orpo", "dpo", "dpo-trl", "kto", "kto-trl", "sft", "sft-trl"])
def test_built_student_trains_two_steps_with_each_optimizer(built_env, method, tmp_path):
    """MINT's packed ORPO and DPO and TRL's DPO, KTO and SFT train the built student; the saved adapter
    holds the fully trained vision side and changes the answers' scores."""
    from mint_core.answers import format_answer
    from mint_core.types import PreferenceExample
    from mint_orpo import OrpoConfig
    from mint_engine.orpo import OrpoOptimizer
    from mint_trl import DpoConfig, KtoConfig, SftConfig
    from mint_trl.optimizer import OPTIMIZERS

    tissues, prompts = built_env["tissues"], built_env["prompts"]
    rows = []
    for i, prompt in enumerate(prompts):
        good, bad = format_answer(tissues[i:i + 2], noun="tissue types"), format_answer([tissues[4 - i]], noun="tissue types")
        if method.startswith("kto"):
            rows += [PreferenceExample(case_id=f"v{i}", prompt=prompt, kind="unpaired", completion=good, label=True),
                     PreferenceExample(case_id=f"v{i}", prompt=prompt, kind="unpaired", completion=bad, label=False)]
        elif method.startswith("sft"):
            rows.append(PreferenceExample(case_id=f"v{i}", prompt=prompt, kind="sft", completion=good))
        else:
            rows.append(PreferenceExample(case_id=f"v{i}", prompt=prompt, chosen=good, rejected=bad))
    options = dict(max_steps=2, batch_size=2, save_steps=1, learning_rate=5e-3, seed=0)
    if method == "orpo":
        optimizer = OrpoOptimizer(OrpoConfig(**options))
    elif method.startswith("dpo"):
        optimizer = OPTIMIZERS["dpo"](DpoConfig(**options, impl="trl" if method == "dpo-trl" else "mint"))
    elif method.startswith("kto"):
        optimizer = OPTIMIZERS["kto"](KtoConfig(**options, impl="trl" if method == "kto-trl" else "mint"))
    else:
        optimizer = OPTIMIZERS["sft"](SftConfig(**options, impl="trl" if method == "sft-trl" else "mint"))
    torch.manual_seed(0)
    result = optimizer.train(student=built_env["student"], examples=rows, output_dir=tmp_path / method,
                             ctx=built_env["ctx"])
    assert result.metrics["global_step"] == 2
    from safetensors import safe_open

    with safe_open(str(result.adapter_dir / "adapter_model.safetensors"), "pt") as saved:
        keys = list(saved.keys())
    assert any("vision_model" in k for k in keys) and any("cross_attn_attn_gate" in k for k in keys)
    candidates = [format_answer([t], noun="tissue types") for t in tissues[:2]]
    base = built_env["student"].load(ctx=built_env["ctx"]).score(prompts=prompts[:2], candidates=candidates, batch_size=2)
    trained = built_env["student"].load(ctx=built_env["ctx"], adapter_dir=result.adapter_dir).score(
        prompts=prompts[:2], candidates=candidates, batch_size=2)
    assert max(abs(a - b) for ra, rb in zip(base, trained) for a, b in zip(ra, rb)) > 1e-4


def test_paper_config_keeps_the_11b_mllama_with_lora_only():
    """examples/configs/paper-tissue.yaml still names Llama-3.2-11B-Vision-Instruct, and on that
    architecture (transformers' MllamaConfig defaults, no weights) LoRA covers every language-model
    layer, cross-attention ones included, and the projector; nothing trains in full."""
    import re

    from transformers import MllamaConfig

    from mint_core.config import load_config_file, resolve
    from mint_core.registry import get_registry
    from mint_llama_vision import PAPER_MODEL
    from mint_llama_vision.student import full_train_parts, lora_config

    root = Path(__file__).resolve().parents[1]
    config = resolve(get_registry(), file=load_config_file(root / "examples" / "configs" / "paper-tissue.yaml"))
    student = config["student"]
    assert student["name"] == "llama-vision" and student["model"] == PAPER_MODEL
    cfg = LlamaVisionConfig(**{k: v for k, v in student.items() if k != "name"})
    text_config = MllamaConfig().text_config  # the 11B layout: 40 layers, cross-attention every 5th
    assert text_config.num_hidden_layers == 40 and 3 in text_config.cross_attention_layers
    assert full_train_parts(cfg, built=False) == []
    lora = lora_config(cfg, text_config, built=False)
    assert not lora.modules_to_save
    assert re.fullmatch(lora.target_modules, "model.language_model.layers.3.cross_attn.q_proj")
    assert re.fullmatch(lora.target_modules, "model.language_model.layers.39.mlp.down_proj")
    assert re.fullmatch(lora.target_modules, "model.multi_modal_projector")
    assert not re.fullmatch(lora.target_modules, "model.vision_model.transformer.layers.0.self_attn.q_proj")
