"""mint export: adapter, merged model loadable by plain transformers, model card, TRL preference data."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from mint_core import io
from mint_core.testing import invoke
from tiny_run import tiny_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory)


def _front_matter(readme) -> tuple[dict, str]:
    text = readme.read_text()
    assert text.startswith("---\n")
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def test_adapter_export_and_model_card(run_dir, tmp_path):
    out = tmp_path / "adapter"
    result = invoke(["export", "--run-dir", str(run_dir), "--role", "orpo", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "README.md"):
        assert (out / name).is_file(), name
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == config["student"]["model"]
    front, body = _front_matter(out / "README.md")
    assert front["library_name"] == "peft" and {"mint", "orpo", "lora", "rare-disease"} <= set(front["tags"])
    from huggingface_hub import ModelCard  # the Hub's own parser reads the card's metadata

    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft" and "orpo" in card.data.tags
    assert "base_model" not in front  # a local test model is no hub id
    for heading in ("## Intended use and limits", "## How to use", "## Evaluation", "## Training data",
                    "## Run configuration"):
        assert heading in body
    assert "not a medical device" in body and "Research use only" in body
    metrics = io.read_json(run_dir / "metrics.json")["orpo"]
    header = next(line for line in body.splitlines() if line.startswith("| metric |"))
    top1 = next(line for line in body.splitlines() if line.startswith("| top1 |"))
    assert header.rstrip(" |").endswith("**orpo** (this model)")  # the run's own figures, last column
    assert top1.strip(" |").split("|")[-1].strip().startswith(f"{metrics['top1']:.3f}")


def test_model_card_shows_intervals_base_model_and_license(run_dir, tmp_path):
    from mint_core.export import model_card
    from mint_core.predict import open_run

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    metrics = io.read_json(copy / "metrics.json")
    metrics["orpo"].update(top1=0.25, top1_ci=[0.05, 0.6])
    io.write_json(copy / "metrics.json", metrics)
    card = model_card(open_run(copy), role="orpo", merged=True,
                      facts={"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "apache-2.0"})
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and front["license"] == "apache-2.0"
    assert front["library_name"] == "transformers" and "lora" not in front["tags"]
    assert "0.250 [0.050, 0.600]" in card and "95% bootstrap intervals" in card


def test_license_from_the_base_model_folder_or_known_models(tmp_path):
    from mint_llama.export import base_model_license

    (tmp_path / "README.md").write_text("---\nlicense: mit\ntags: [x]\n---\n# model\n")
    assert base_model_license("some/model", tmp_path) == "mit"
    assert base_model_license("HuggingFaceTB/SmolLM2-360M-Instruct", None) == "apache-2.0"
    assert base_model_license("unknown/model", tmp_path / "missing") is None


_PLAIN_TRANSFORMERS = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, prompt = sys.argv[1], json.loads(sys.argv[2])
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder)
ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
ids = tokenizer(ids, add_special_tokens=False, return_tensors="pt")
with torch.no_grad():
    out = model.generate(**ids, max_new_tokens=24)  # the folder's generation config: greedy, stops at <|im_end|>
assert not any(name.startswith("mint") for name in sys.modules), "MINT was imported"
print(json.dumps(out[0, ids["input_ids"].shape[1]:].tolist()))
"""


@pytest.mark.slow
def test_merged_export_loads_with_plain_transformers_and_generates_the_same_tokens(run_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "merged"
    result = invoke(["export", "--run-dir", str(run_dir), "--role", "orpo", "--out", str(out), "--merged"])
    assert result.exit_code == 0, result.output
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md"):
        assert (out / name).is_file(), name
    assert (out / "chat_template.jinja").is_file() or "chat_template" in json.loads((out / "tokenizer_config.json").read_text())
    assert _front_matter(out / "README.md")[0]["library_name"] == "transformers"

    from mint_core.predict import Predictor

    predictor = Predictor(run_dir, role="orpo")
    sm = predictor.model
    case = predictor.data.split("test")[0]
    prompt = predictor.prompts([case])[0]
    # The run's student with its adapter, greedy, as MINT generates.
    ids = torch.tensor([sm.prompt_ids(prompt)])
    with torch.inference_mode():
        expected = sm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24,
                                     do_sample=False, eos_token_id=sm.stop_token_ids, pad_token_id=sm.pad_token_id)
    expected = expected[0, ids.shape[1]:].tolist()
    # The merge really moved the weights away from the base model's.
    base = load_file(str(next(p for p in (run_dir.parent / "model").glob("*.safetensors"))))
    merged = load_file(str(out / "model.safetensors"))
    assert max((merged[k] - base[k]).abs().max().item() for k in base if "proj" in k) > 1e-4

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    messages = sm.messages(prompt)
    done = subprocess.run([sys.executable, "-c", _PLAIN_TRANSFORMERS, str(out), json.dumps(messages)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    tokens = json.loads(done.stdout.strip().splitlines()[-1])
    assert tokens == expected and len(tokens) > 1


@pytest.mark.slow
def test_exported_preferences_train_one_dpo_step(run_dir, tmp_path):
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    result = invoke(["export", "--run-dir", str(run_dir), "--out", str(tmp_path / "prefs"), "--preferences"])
    assert result.exit_code == 0, result.output
    path = tmp_path / "prefs" / "preferences.jsonl"
    dataset = load_dataset("json", data_files=str(path), split="train")
    n_examples = len(io.read_jsonl(run_dir / "preferences.jsonl"))
    assert len(dataset) == n_examples and set(dataset.column_names) == {"prompt", "chosen", "rejected"}
    row = dataset[0]
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert row["chosen"][0]["role"] == "assistant" and row["chosen"][0]["content"].startswith("Most likely diseases:")

    folder = run_dir.parent / "model"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=2, report_to=[],
                     learning_rate=1e-3, logging_steps=1, save_strategy="no", use_cpu=True, max_length=256)
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    before = {k: v.clone() for k, v in model.named_parameters() if v.requires_grad}
    output = trainer.train()
    assert trainer.state.global_step == 1 and math.isfinite(output.training_loss)
    assert any(not torch.equal(before[k], v) for k, v in model.named_parameters() if k in before)


def test_kto_preferences_have_completion_and_label(run_dir, tmp_path):
    from datasets import load_dataset

    from mint_core.predict import open_run

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    open_run(copy).prefs("kto")
    out = tmp_path / "kto"
    result = invoke(["export", "--run-dir", str(copy), "--out", str(out), "--preferences", "--builder", "kto"])
    assert result.exit_code == 0, result.output
    dataset = load_dataset("json", data_files=str(out / "preferences.jsonl"), split="train")
    assert set(dataset.column_names) == {"prompt", "completion", "label"}
    assert set(dataset["label"]) == {True, False}
    assert dataset[0]["completion"][0]["role"] == "assistant"


def test_export_errors_are_clear(run_dir, tmp_path):
    base = invoke(["export", "--run-dir", str(run_dir), "--role", "base", "--out", str(tmp_path / "x")])
    assert base.exit_code == 2 and "--merged" in base.output
    both = invoke(["export", "--run-dir", str(run_dir), "--out", str(tmp_path / "x"), "--preferences", "--merged"])
    assert both.exit_code == 2 and "do not go together" in both.output
    missing = invoke(["export", "--run-dir", str(run_dir), "--out", str(tmp_path / "x"), "--preferences",
                      "--builder", "sft"])
    assert missing.exit_code == 2 and "mint prefs" in missing.output
