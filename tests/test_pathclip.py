"""The pathclip teacher: contrastive fit, zero-shot and linear-probe ranking, safetensors checkpoints."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

import mint_pathclip
from mint_core.context import RunContext
from mint_core.registry import Registry
from mint_pathclip import PathClipConfig
from mint_pathclip.teacher import CHECKPOINT, META, PathClipTeacher, topk_accuracy
from mint_pathclip.training import multi_positive_infonce
from mint_tissue import TissueConfig
from mint_tissue.task import TissueTask

TINY = PathClipConfig(epochs=2, patience=2, batch_size=8, image_size=32, vision_width=8, embed_dim=32,
                      text_width=64, text_layers=1, context_length=24, probe_steps=30)


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("pathclip") / "run"
    ctx = RunContext(run_dir=run_dir, seed=0, console=Console(quiet=True))
    data = TissueTask(TissueConfig(classes="colon,lung,ovarian", tiles_per_class=6, image_size=32)).load(ctx=ctx)
    return ctx, data


def fresh_ctx(ctx: RunContext, run_dir: Path) -> RunContext:
    return RunContext(run_dir=run_dir, seed=ctx.seed, console=Console(quiet=True))


def check_rankings(rankings, cases, label_ids):
    assert [r.case_id for r in rankings] == [c.id for c in cases]
    for ranking in rankings:
        assert sorted(ranking.label_ids) == sorted(label_ids)  # every label exactly once
        assert ranking.scores == sorted(ranking.scores, reverse=True)
        assert sum(ranking.scores) == pytest.approx(1.0, abs=1e-3)


def test_fit_rank_and_reload_from_safetensors(tiny_task, tmp_path):
    torch.manual_seed(0)
    ctx, data = tiny_task
    ctx = fresh_ctx(ctx, tmp_path / "run")
    for case in data.cases:  # images stay where the task wrote them
        case.image = str(tiny_task[0].resolve(case.image))
    teacher = PathClipTeacher(TINY)
    teacher.fit(data=data, ctx=ctx)
    test = data.split("test")
    rankings = teacher.rank(data=data, cases=test, ctx=ctx)
    check_rankings(rankings, test, data.labels.ids)
    assert topk_accuracy(rankings, test, 1) <= topk_accuracy(rankings, test, 2) <= topk_accuracy(rankings, test, 3) == 1

    weights = tmp_path / "run" / "teacher" / CHECKPOINT
    meta = json.loads((tmp_path / "run" / "teacher" / META).read_text())
    tensors = load_file(str(weights))
    assert any(k.startswith("model.visual.") for k in tensors) and "model.vocab" in tensors
    assert meta["labels"] == data.labels.ids and 1 <= meta["best_epoch"] <= 2 and len(meta["history"]) == 2

    reloaded = PathClipTeacher(TINY)  # a new process: loads the checkpoint instead of training
    again = reloaded.rank(data=data, cases=test, ctx=ctx)
    assert [r.label_ids for r in again] == [r.label_ids for r in rankings]
    assert [r.scores for r in again] == [r.scores for r in rankings]
    assert weights.stat().st_mtime_ns == (tmp_path / "run" / "teacher" / CHECKPOINT).stat().st_mtime_ns

    # A change that affects training invalidates the checkpoint.
    changed = PathClipTeacher(replace(TINY, epochs=1))
    changed.fit(data=data, ctx=ctx)
    assert json.loads((tmp_path / "run" / "teacher" / META).read_text())["fingerprint"] != meta["fingerprint"]


def test_pathclip_beats_chance_on_an_easy_synthetic_set(tmp_path):
    """Trained from scratch on 30 synthetic tiles per class (3 classes), the teacher's top-1 on the
    test split is far above chance (1/3): one-sided binomial test, p < 0.01. Measured: 13/18 (seed 0)."""
    from scipy.stats import binomtest

    torch.manual_seed(0)
    ctx = RunContext(run_dir=tmp_path / "run", seed=0, console=Console(quiet=True))
    data = TissueTask(TissueConfig(classes="colon,lung,ovarian", tiles_per_class=30, image_size=32)).load(ctx=ctx)
    for case in data.cases:
        case.image = str(ctx.resolve(case.image))
    teacher = PathClipTeacher(replace(TINY, epochs=15, patience=15))
    teacher.fit(data=data, ctx=ctx)
    test = data.split("test")
    hits = round(topk_accuracy(teacher.rank(data=data, cases=test, ctx=ctx), test, 1) * len(test))
    assert binomtest(hits, len(test), 1 / len(data.labels), alternative="greater").pvalue < 0.01, (hits, len(test))


def test_linear_probe_ranks_with_its_head_and_reloads(tiny_task, tmp_path):
    torch.manual_seed(0)
    ctx, data = tiny_task
    ctx = fresh_ctx(ctx, tmp_path / "run")
    for case in data.cases:
        case.image = str(tiny_task[0].resolve(case.image))
    config = replace(TINY, epochs=1, linear_probe=True)
    teacher = PathClipTeacher(config)
    teacher.fit(data=data, ctx=ctx)
    assert teacher.probe is not None
    train = data.split("train")
    rankings = teacher.rank(data=data, cases=train, ctx=ctx)
    check_rankings(rankings, train, data.labels.ids)
    tensors = load_file(str(tmp_path / "run" / "teacher" / CHECKPOINT))
    assert tensors["probe.weight"].shape == (3, TINY.embed_dim)
    again = PathClipTeacher(config).rank(data=data, cases=train, ctx=ctx)
    assert [r.scores for r in again] == [r.scores for r in rankings]


def test_multi_positive_infonce_rewards_aligned_pairs():
    torch.manual_seed(0)
    img = torch.randn(6, 16)
    classes = torch.tensor([0, 0, 1, 1, 2, 2])
    scale = torch.tensor(10.0)
    aligned = multi_positive_infonce(img, img + 0.01 * torch.randn(6, 16), scale, classes)
    shuffled = multi_positive_infonce(img, img[torch.tensor([2, 4, 0, 5, 1, 3])], scale, classes)
    assert aligned < shuffled
    # Two tiles of one class with swapped captions cost nothing extra: they are both positives.
    swapped = multi_positive_infonce(img, img[torch.tensor([1, 0, 3, 2, 5, 4])], scale, classes)
    assert swapped == pytest.approx(float(multi_positive_infonce(img, img, scale, classes)), rel=1e-5)


def test_bad_template_and_missing_hub_model_are_clear_errors(tiny_task, tmp_path):
    from mint_core.registry import MintError

    ctx, data = tiny_task
    with pytest.raises(MintError, match="placeholder"):
        PathClipTeacher(replace(TINY, templates="a tile of tissue")).templates()
    with pytest.raises(MintError, match="safetensors"):
        PathClipTeacher(replace(TINY, model=str(tmp_path / "no-such-model"))).fit(
            data=data, ctx=fresh_ctx(ctx, tmp_path / "run"))


def test_plugin_registers_pathclip_paired_with_tissue_and_vision_student():
    registry = Registry()
    info = registry.register_plugin(mint_pathclip, name="pathclip")
    assert info.status == "ok", info.error
    spec = registry.get("teacher", "pathclip")
    assert spec.pairs_with == {"task": "tissue", "student": "llama-vision"}
    assert spec.config is PathClipConfig and isinstance(spec.create(), PathClipTeacher)


def write_tiny_hf_clip(folder: Path) -> Path:
    """A randomly initialised Hugging Face CLIP (model.safetensors + processor), as PLIP is laid out."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, eos_token_id=vocab["<|endoftext|>"],
                         bos_token_id=vocab["<|startoftext|>"], pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def test_hugging_face_clip_checkpoint_zero_shot_and_finetuned(tiny_task, tmp_path):
    ctx, data = tiny_task
    for case in data.cases:
        case.image = str(tiny_task[0].resolve(case.image))
    model_dir = write_tiny_hf_clip(tmp_path / "tiny-clip")
    assert (model_dir / "model.safetensors").exists()
    test = data.split("test")

    zero_shot = PathClipTeacher(replace(TINY, model=str(model_dir)))
    zs_ctx = fresh_ctx(ctx, tmp_path / "zs")
    rankings = zero_shot.rank(data=data, cases=test, ctx=zs_ctx)
    check_rankings(rankings, test, data.labels.ids)
    assert not (tmp_path / "zs" / "teacher" / CHECKPOINT).exists()  # nothing trained, nothing to save

    config = replace(TINY, model=str(model_dir), finetune=True, epochs=1, lr=1e-3)
    ft_ctx = fresh_ctx(ctx, tmp_path / "ft")
    tuned = PathClipTeacher(config)
    tuned.fit(data=data, ctx=ft_ctx)
    tuned_rankings = tuned.rank(data=data, cases=test, ctx=ft_ctx)
    assert [r.scores for r in tuned_rankings] != [r.scores for r in rankings]
    assert any(k.startswith("model.text_model.") for k in load_file(str(tmp_path / "ft" / "teacher" / CHECKPOINT)))
    reloaded = PathClipTeacher(config).rank(data=data, cases=test, ctx=ft_ctx)
    assert [r.scores for r in reloaded] == [r.scores for r in tuned_rankings]
