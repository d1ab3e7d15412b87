"""The gestalt teacher: a real (tiny) face CNN + MiniLM notes encoder, trained for a few epochs."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from mint_core.context import RunContext
from mint_core.crossfit import FOLDS_FILE
from mint_core.io import read_json
from mint_core.registry import MintError
from mint_core.types import Case, Label, LabelSpace, TaskData
from mint_gestalt import GestaltConfig
from mint_gestalt.teacher import CHECKPOINT, META, GestaltTeacher, topk_accuracy

# Notes tell classes {0,1} from {2,3}; the image (circle vs square, red vs blue) tells {0,2} from
# {1,3}: only both modalities together identify the class.
WORDS = {0: ["seizures", "hypotonia", "microcephaly", "ataxia"],
         1: ["short stature", "cleft palate", "scoliosis", "brachydactyly"]}
FILLER = ["patient", "presented", "with", "noted", "history", "mild", "clinical", "examination"]
COLORS = {0: (200, 40, 40), 1: (40, 60, 200)}


def make_data(run_dir: Path, per_class: int = 6, size: int = 32, seed: int = 0, held_out: int = 1) -> TaskData:
    """4 classes; per class ``held_out`` val and ``held_out`` test cases, the rest train."""
    rng = random.Random(seed)
    labels = LabelSpace([Label(f"L{i}", f"Syndrome {chr(65 + i)}") for i in range(4)])
    (run_dir / "images").mkdir(parents=True, exist_ok=True)
    cases = []
    for c in range(4):
        for j in range(per_class):
            words = rng.sample(WORDS[c // 2], 2) + rng.sample(FILLER, 3)
            rng.shuffle(words)
            image = Image.new("RGB", (size, size), tuple(rng.randint(150, 230) for _ in range(3)))
            draw = ImageDraw.Draw(image)
            r = size // 5
            x, y = rng.randint(r + 1, size - r - 1), rng.randint(r + 1, size - r - 1)
            box = [x - r, y - r, x + r, y + r]
            (draw.ellipse if c % 2 == 0 else draw.rectangle)(box, fill=COLORS[c % 2])
            case_id = f"c{c}_{j}"
            image.save(run_dir / "images" / f"{case_id}.png")
            split = ("train" if j < per_class - 2 * held_out
                     else "val" if j < per_class - held_out else "test")
            cases.append(Case(id=case_id, label_ids=(f"L{c}",), split=split, text=" ".join(words),
                              image=f"images/{case_id}.png"))
    return TaskData(labels=labels, cases=cases)


TINY = GestaltConfig(image_size=32, epochs=3, patience=2, batch_size=8, embed_dim=32,
                     hidden_dim=32, device="cpu", num_threads=1, crossfit=2)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    torch.manual_seed(0)
    run_dir = tmp_path_factory.mktemp("gestalt")
    data = make_data(run_dir)
    ctx = RunContext(run_dir=run_dir, seed=0)
    teacher = GestaltTeacher(TINY)
    teacher.fit(data=data, ctx=ctx)
    rankings = teacher.rank(data=data, cases=data.cases, ctx=ctx)
    return data, ctx, teacher, rankings


def test_rankings_cover_the_label_space(fitted):
    data, _, _, rankings = fitted
    assert [r.case_id for r in rankings] == [c.id for c in data.cases]
    for ranking in rankings:
        assert sorted(ranking.label_ids) == sorted(data.labels.ids)
        assert ranking.scores == sorted(ranking.scores, reverse=True)
        assert sum(ranking.scores) == pytest.approx(1.0, abs=1e-4)


def test_checkpoint_is_safetensors_and_reloads_to_the_same_rankings(fitted):
    data, ctx, teacher, rankings = fitted
    ckpt = ctx.path("teacher", CHECKPOINT)
    state = load_file(str(ckpt))  # raises on anything that is not safetensors
    assert any(key.startswith("image_encoder.") for key in state)
    assert not any(key.startswith("text_encoder.") for key in state)  # frozen MiniLM is not saved
    meta = read_json(ctx.path("teacher", META))
    assert meta["label_ids"] == data.labels.ids
    assert meta["config"]["modalities"] == "both" and meta["n_train"] == 16 and meta["n_val"] == 4
    assert 1 <= len(meta["history"]) <= TINY.epochs
    assert ctx.path("teacher", "text_embeddings.safetensors").exists()

    mtime = ckpt.stat().st_mtime_ns
    again = GestaltTeacher(TINY)
    again.fit(data=data, ctx=ctx)  # same config, labels and cases: reuses the checkpoint
    assert ckpt.stat().st_mtime_ns == mtime
    reloaded = again.rank(data=data, cases=data.cases, ctx=ctx)
    assert [r.label_ids for r in reloaded] == [r.label_ids for r in rankings]
    flat = lambda rs: [score for r in rs for score in r.scores]  # noqa: E731
    assert flat(reloaded) == pytest.approx(flat(rankings), abs=1e-5)


def test_changed_config_invalidates_the_checkpoint(fitted):
    data, ctx, teacher, _ = fitted
    assert teacher._fingerprint(data, *teacher._split(data, 0), 0) == teacher.meta["fingerprint"]
    other = GestaltTeacher(replace(TINY, epochs=1, modalities="text"))
    assert other._fingerprint(data, *other._split(data, 0), 0) != teacher.meta["fingerprint"]
    assert teacher._fingerprint(data, *teacher._split(data, 1), 1) != teacher.meta["fingerprint"]  # seed
    # Options that do not change the weights do not invalidate it.
    assert GestaltTeacher(replace(TINY, device="cuda", num_threads=2))._fingerprint(
        data, *teacher._split(data, 0), 0) == teacher.meta["fingerprint"]


def test_modalities_drop_a_branch(tmp_path, fitted):
    data = make_data(tmp_path)
    ctx = RunContext(run_dir=tmp_path, seed=0)
    text_only = GestaltTeacher(replace(TINY, modalities="text", epochs=2))
    text_only.fit(data=data, ctx=ctx)
    model = text_only.model
    assert not hasattr(model, "image_encoder") and hasattr(model, "text_proj")
    assert not any(key.startswith("image_") for key in load_file(str(ctx.path("teacher", CHECKPOINT))))
    both_params = sum(p.numel() for p in fitted[2].model.parameters())
    assert sum(p.numel() for p in model.parameters()) < both_params
    # A text-only teacher never opens an image: cases without one rank fine.
    cases = [replace(case, image=None) for case in data.split("test")]
    assert len(text_only.rank(data=data, cases=cases, ctx=ctx)) == len(cases)

    image_only = GestaltTeacher(replace(TINY, modalities="image"))
    net = image_only._build(len(data.labels), ctx, pretrained=False)
    assert hasattr(net, "image_encoder") and not hasattr(net, "text_proj")
    # Head input: one projected embedding + its mask flag per branch.
    assert net.head[0].in_features == TINY.embed_dim + 1
    assert fitted[2].model.head[0].in_features == 2 * (TINY.embed_dim + 1)


def test_missing_images_are_masked_and_missing_files_are_errors(fitted):
    data, ctx, teacher, _ = fitted
    no_image = [replace(case, image=None) for case in data.split("test")]
    inputs = teacher._inputs(no_image, ctx)
    assert not inputs.image_mask.any() and int(inputs.images.abs().sum()) == 0
    assert len(teacher.rank(data=data, cases=no_image, ctx=ctx)) == len(no_image)
    broken = [replace(data.cases[0], image="images/nope.png")]
    with pytest.raises(MintError, match="nope.png"):
        teacher.rank(data=data, cases=broken, ctx=ctx)


def test_bad_modalities_value_is_a_clear_error():
    with pytest.raises(MintError, match="teacher.modalities"):
        GestaltTeacher(replace(TINY, modalities="audio"))


def test_topk_accuracy():
    from mint_core.types import Ranking

    cases = [Case(id="a", label_ids=("x",)), Case(id="b", label_ids=("y",))]
    rankings = [Ranking("a", ["x", "y", "z"]), Ranking("b", ["x", "z", "y"])]
    assert topk_accuracy(rankings, cases, ks=(1, 2, 3)) == {"top1": 0.5, "top2": 0.5, "top3": 1.0}


@pytest.mark.slow
def test_the_image_adds_what_the_notes_lack(tmp_path):
    """Notes only separate {A,B} from {C,D}: text-only tops out near 50%, both modalities near 100%."""
    torch.manual_seed(0)
    data = make_data(tmp_path, per_class=14, held_out=3)
    test = data.split("val") + data.split("test")
    scores = {}
    for modalities in ("text", "both"):
        ctx = RunContext(run_dir=tmp_path / modalities, seed=0)
        (tmp_path / modalities).mkdir()
        (tmp_path / modalities / "images").symlink_to(tmp_path / "images")
        teacher = GestaltTeacher(replace(TINY, modalities=modalities, epochs=40, patience=8))
        teacher.fit(data=data, ctx=ctx)
        scores[modalities] = topk_accuracy(teacher.rank(data=data, cases=test, ctx=ctx), test, ks=(1, 2))
    print("held-out accuracy by modalities:", scores)
    assert scores["text"]["top2"] >= 0.9  # the notes do find the right pair
    assert scores["both"]["top1"] >= 0.75
    assert scores["both"]["top1"] >= scores["text"]["top1"] + 0.2, scores


def test_per_branch_logits_share_one_pass_and_mask_the_other_branch(fitted):
    data, ctx, teacher, _ = fitted
    torch.manual_seed(0)
    net = teacher.model.eval()
    text, images = torch.randn(3, net.text_proj[0].in_features), torch.randn(3, 3, 32, 32)
    on = torch.ones(3, dtype=torch.bool)
    with torch.no_grad():
        fused, alone = net(text=text, text_mask=on, images=images, image_mask=on, per_branch=True)
        assert len(alone) == 2 and torch.equal(fused, net(text=text, text_mask=on, images=images, image_mask=on))
        # "text alone" is exactly the fused logits of a case without an image, and vice versa
        assert torch.allclose(alone[0], net(text=text, text_mask=on, images=images, image_mask=~on), atol=1e-6)
        assert torch.allclose(alone[1], net(text=text, text_mask=~on, images=images, image_mask=on), atol=1e-6)
    text_only = GestaltTeacher(replace(TINY, modalities="text"))
    text_only.meta = teacher.meta  # the same phenotype vocabulary, so the same notes-branch width
    single = text_only._build(len(data.labels), ctx, pretrained=False)
    assert single(text=text, text_mask=on, per_branch=True)[1] == []
    # the auxiliary weight changes the trained weights, so it is part of the checkpoint fingerprint
    other = GestaltTeacher(replace(TINY, branch_loss=0.0))
    assert other._fingerprint(data, *other._split(data, 0), 0) != teacher.meta["fingerprint"]


def test_out_of_fold_rankings_come_from_models_that_never_saw_their_case(fitted):
    data, ctx, teacher, rankings = fitted
    record = read_json(ctx.path("teacher", FOLDS_FILE))
    train_ids = {c.id for c in data.split("train")}
    by_id = {r.case_id: r for r in rankings}
    assert {case_id for case_id, r in by_id.items() if r.fold is not None} == train_ids
    for case_id in train_ids:
        fold = by_id[case_id].fold
        assert record["folds"][case_id] == fold
        assert case_id not in record["trained_on"][str(fold)]  # its model never saw it
        # ... and every other fold's model did: the folds partition the training cases.
        assert all(case_id in ids for f, ids in record["trained_on"].items() if f != str(fold))
    for case in data.split("val") + data.split("test"):
        assert by_id[case.id].fold is None  # ranked by the all-train model
    # Out-of-fold rankings differ from what the all-train model says about its own training cases.
    own = teacher._rank_with(teacher.model, data, data.split("train"), ctx, None)
    assert any(r.scores != by_id[r.case_id].scores for r in own)


def test_crossfit_leaves_the_all_train_model_unchanged(tmp_path, fitted):
    data, _, _, rankings = fitted
    run_dir = tmp_path / "plain"
    plain_data = make_data(run_dir)
    ctx = RunContext(run_dir=run_dir, seed=0)
    plain = GestaltTeacher(replace(TINY, crossfit=0))
    plain.fit(data=plain_data, ctx=ctx)
    plain_rankings = {r.case_id: r for r in plain.rank(data=plain_data, cases=plain_data.cases, ctx=ctx)}
    for ranking in rankings:
        if ranking.fold is None:
            assert plain_rankings[ranking.case_id].scores == pytest.approx(ranking.scores, abs=1e-6)
    assert all(r.fold is None for r in plain_rankings.values())


def test_notes_branch_reads_the_phenotype_and_the_ablation_hides_branches(fitted):
    data, ctx, teacher, _ = fitted
    vocab = teacher.meta["phenotype_vocabulary"]
    assert "HP:0001250" in vocab and "HP:0001252" in vocab  # seizures, hypotonia matched in the notes
    inputs = teacher._inputs(data.split("test"), ctx)
    assert inputs.phenotype.shape == (len(data.split("test")), len(vocab) + len(data.labels))
    variants = teacher.variant_rankings(data=data, cases=data.split("test"), ctx=ctx)
    assert set(variants) == {"notes-only", "face-only", "hpo"}
    assert variants["notes-only"][0].scores != variants["face-only"][0].scores


def test_thread_count_never_follows_the_load(monkeypatch):
    """num_threads=0 keeps torch's count on a busy machine: the count sets the summation order, so a
    load-chosen count gave a different teacher (and students) for the same seed."""
    import os

    from mint_gestalt.teacher import _threads

    monkeypatch.setattr(os, "getloadavg", lambda: (99.0, 99.0, 99.0))
    saved = torch.get_num_threads()
    torch.set_num_threads(2)  # other test modules pin 1, which the old auto choice would also give
    try:
        with _threads(0):
            assert torch.get_num_threads() == 2
        with _threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)
