"""MINT's ORPO optimizer: packed == two-sequence == TRL, end-to-end training, resume after a kill."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mint_core.context import RunContext
from mint_core.types import PreferenceExample, Prompt

torch.set_num_threads(1)

NAMES = ["Marfan syndrome", "Noonan syndrome", "Williams syndrome", "Down syndrome", "Kabuki syndrome",
         "Angelman syndrome", "Prader-Willi syndrome", "Loeys-Dietz syndrome"]


def _answer(names: list[str]) -> str:
    return "Most likely diagnoses:\n" + "\n".join(f"{i}. {n}" for i, n in enumerate(names, 1))


def make_examples(n: int = 6) -> list[PreferenceExample]:
    notes = ["The patient is a 7-year-old boy with short stature and seizures.",
             "A 34-year-old woman presents with tall stature, arachnodactyly, lens dislocation and aortic dilatation. "
             "Clinical notes: global developmental delay; microcephaly; cleft palate; hearing loss; scoliosis.",
             "Phenotype: HP:0001250, HP:0001263.",
             "Clinical notes: hypotonia, intellectual disability, hearing loss."]
    out = []
    for i in range(n):
        text = notes[i % len(notes)] + " Question: which diseases best explain these findings? List the 3 most likely."
        chosen = _answer(NAMES[i % 3:i % 3 + 3 + (i % 2)])
        rejected = _answer(NAMES[5:8][: 1 + i % 3])
        out.append(PreferenceExample(case_id=f"c{i}", prompt=Prompt(text=text), chosen=chosen, rejected=rejected))
    return out


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from mint_llama.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


def _student(tiny_dir: Path, **kw):
    from mint_llama import LlamaTextConfig
    from mint_llama.student import LlamaTextStudent

    return LlamaTextStudent(LlamaTextConfig(model=str(tiny_dir), lora_r=4, lora_alpha=8, device="cpu",
                                            dtype="float32", **kw))


def _ctx(tmp_path: Path, seed: int = 0) -> RunContext:
    from rich.console import Console

    return RunContext(run_dir=tmp_path, seed=seed, console=Console(stderr=True, quiet=True))


def _lora_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.fixture(scope="module")
def loaded(tiny_dir, tmp_path_factory):
    """A trainable tiny student (LoRA B perturbed so the adapter matters) and encoded pairs."""
    from mint_engine.encoding import encode_pairs

    torch.manual_seed(0)
    ctx = _ctx(tmp_path_factory.mktemp("run"))
    sm = _student(tiny_dir).load(ctx=ctx, trainable=True)
    from trl.trainer.utils import disable_dropout_in_model

    disable_dropout_in_model(sm.model)
    with torch.no_grad():
        for name, p in sm.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # B starts at zero; a non-zero adapter makes its gradients non-trivial
    features = encode_pairs(sm, make_examples(), max_length=1024, max_prompt_length=768)
    return sm, features


@pytest.mark.parametrize("attn", ["sdpa", "eager", "mint_segments"])
@pytest.mark.parametrize("nll_on_prompt", [True, False])
def test_packed_matches_two_sequence(loaded, attn, nll_on_prompt):
    from mint_core.decoder import mask_kind_for
    from mint_engine import segment_attention
    from mint_engine.orpo import orpo_loss
    from mint_engine.packing import collate_packed, collate_two_sequence, forward_pairs

    sm, features = loaded
    model = sm.model
    segment_attention.register()
    model.base_model.model.config._attn_implementation = attn  # sdpa and eager take different mask forms
    try:
        kind = mask_kind_for(model)
        assert kind == {"sdpa": "bool", "eager": "additive", "mint_segments": "additive"}[attn]
        batch = features[:4]  # unequal prompt and answer lengths: padding in every block
        assert len({len(f["prompt_ids"]) for f in batch}) > 1 and len({len(f["chosen_ids"]) for f in batch}) > 1
        results = {}
        layouts = {"packed": (collate_packed, False), "packed-padding-free": (collate_packed, True),
                   "two": (collate_two_sequence, False), "two-padding-free": (collate_two_sequence, True)}
        for name, (collate, padding_free) in layouts.items():
            model.zero_grad()
            collated = collate(batch, pad_id=sm.pad_token_id, nll_on_prompt=nll_on_prompt, padding_free=padding_free)
            if padding_free:  # one row, not a single pad token
                assert collated["input_ids"].shape[0] == 1
                assert collated["input_ids"].shape[1] == sum(
                    len(f["prompt_ids"]) * (1 if name.startswith("packed") else 2)
                    + len(f["chosen_ids"]) + len(f["rejected_ids"]) for f in batch)
            stats = forward_pairs(model, collated, mask_kind=kind)
            loss, _ = orpo_loss(stats["chosen_logps"], stats["rejected_logps"], stats["nll"], beta=0.1)
            loss.backward()
            results[name] = (stats, loss.detach(), _lora_grads(model))
        st, lt, gt = results["two"]  # the standard computation is the reference
        assert gt and any(g.abs().max() > 1e-6 for g in gt.values())
        for name in ("packed", "packed-padding-free", "two-padding-free"):
            sp, lp, gp = results[name]
            # rtol: the per-pair sums (~200 nats) differ by one float32 ulp (1.5e-5) between layouts.
            for key in ("chosen_logps", "rejected_logps", "nll", "chosen_logps_sum"):
                torch.testing.assert_close(sp[key], st[key], atol=1e-5, rtol=1e-6, msg=lambda m, n=name, k=key: f"{n} {k}: {m}")
            assert abs(lp.item() - lt.item()) < 1e-5, name
            assert gp.keys() == gt.keys(), name
            for param in gp:
                torch.testing.assert_close(gp[param], gt[param], atol=1e-5, rtol=1e-4)
        sp = results["packed"][0]
        # The per-pair sums also match an independent single-pair forward of the plain model.
        f = batch[1]
        ids = torch.tensor([f["prompt_ids"] + f["rejected_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        p = len(f["prompt_ids"])
        ref = logp[torch.arange(p - 1, ids.shape[1] - 1), ids[0, p:]].sum()
        assert abs(sp["rejected_logps_sum"][1].item() - ref.item()) < 1e-4
    finally:
        model.base_model.model.config._attn_implementation = "sdpa"
        model.zero_grad()


def _plain_sequence_logps(model, prompt_ids: list[int], answer_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence alone through the plain model: (log-probs of the answer's tokens, of the prompt's
    tokens after the first), each token predicted from everything before it."""
    ids = torch.tensor([prompt_ids + answer_ids])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    predicted = logp[torch.arange(ids.shape[1] - 1), ids[0, 1:]]  # token t+1 from positions <= t
    n_prompt = len(prompt_ids)
    return predicted[n_prompt - 1:], predicted[:n_prompt - 1]


@pytest.mark.parametrize("nll_on_prompt", [True, False])
def test_packed_statistics_match_an_independent_per_sequence_reference(loaded, nll_on_prompt):
    """ORPO's and DPO's statistics and losses from the packed batch equal a plain per-sequence
    computation written here from the model's logits (float64, no MINT helper), to 1e-5."""
    import torch.nn.functional as F

    from mint_engine.dpo import dpo_loss
    from mint_engine.orpo import orpo_loss
    from mint_core.decoder import mask_kind_for
    from mint_engine.packing import collate_packed, forward_pairs

    sm, features = loaded
    model, batch, beta = sm.model, features[:4], 0.1
    collated = collate_packed(batch, pad_id=sm.pad_token_id, nll_on_prompt=nll_on_prompt, padding_free=False)
    model.zero_grad()
    stats = forward_pairs(model, collated, mask_kind=mask_kind_for(model))
    with torch.no_grad(), model.disable_adapter():
        ref_stats = forward_pairs(model, collated, mask_kind=mask_kind_for(model))
    orpo, _ = orpo_loss(stats["chosen_logps"], stats["rejected_logps"], stats["nll"], beta)
    dpo, dpo_metrics = dpo_loss(stats["chosen_logps_sum"], stats["rejected_logps_sum"], ref_stats["chosen_logps_sum"],
                                ref_stats["rejected_logps_sum"], beta)
    (orpo + dpo).backward()
    packed_grads = _lora_grads(model)

    model.zero_grad()
    chosen, rejected, ref_chosen, ref_rejected, nll_terms = [], [], [], [], []
    for f in batch:
        answer, prompt = _plain_sequence_logps(model, f["prompt_ids"], f["chosen_ids"])
        chosen.append(answer)
        rejected.append(_plain_sequence_logps(model, f["prompt_ids"], f["rejected_ids"])[0])
        nll_terms += [answer, prompt] if nll_on_prompt else [answer]
        with torch.no_grad(), model.disable_adapter():
            ref_chosen.append(_plain_sequence_logps(model, f["prompt_ids"], f["chosen_ids"])[0].sum())
            ref_rejected.append(_plain_sequence_logps(model, f["prompt_ids"], f["rejected_ids"])[0].sum())
    mean_c = torch.stack([c.mean() for c in chosen])
    mean_r = torch.stack([r.mean() for r in rejected])
    nll = -torch.cat(nll_terms).mean()  # token mean over the whole batch (TRL's chosen cross-entropy)
    log_odds = (mean_c - mean_r) - (torch.log1p(-torch.exp(mean_c)) - torch.log1p(-torch.exp(mean_r)))
    ref_orpo = nll - beta * F.logsigmoid(log_odds).mean()
    sum_c, sum_r = torch.stack([c.sum() for c in chosen]), torch.stack([r.sum() for r in rejected])
    margin = (sum_c - torch.stack(ref_chosen)) - (sum_r - torch.stack(ref_rejected))
    ref_dpo = -F.logsigmoid(beta * margin).mean()
    (ref_orpo + ref_dpo).float().backward()
    reference_grads = _lora_grads(model)
    model.zero_grad()

    close = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stats["chosen_logps"].double(), mean_c.detach(), **close)
    torch.testing.assert_close(stats["rejected_logps"].double(), mean_r.detach(), **close)
    torch.testing.assert_close(stats["chosen_logps_sum"].double(), sum_c.detach(), **close)
    torch.testing.assert_close(stats["rejected_logps_sum"].double(), sum_r.detach(), **close)
    torch.testing.assert_close(ref_stats["chosen_logps_sum"].double(), torch.stack(ref_chosen), **close)
    torch.testing.assert_close(stats["nll"].double(), nll.detach(), **close)
    torch.testing.assert_close(orpo.double(), ref_orpo.detach(), **close)
    torch.testing.assert_close(dpo.double(), ref_dpo.detach(), **close)
    torch.testing.assert_close(dpo_metrics["rewards/margins"].double(), beta * margin.detach().mean(), **close)
    assert abs(margin).max() > 1e-2  # the adapter moved the policy off the reference: DPO's terms are not trivial
    assert packed_grads.keys() == reference_grads.keys() and packed_grads
    for name, grad in reference_grads.items():
        error = ((packed_grads[name] - grad).norm() / grad.norm()).item()
        assert error < 1e-5, (name, error)


def test_packed_mask_layout():
    from mint_core.decoder import build_pair_mask
    from mint_engine.packing import collate_packed

    feats = [{"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6]},
             {"prompt_ids": [1, 2], "chosen_ids": [4], "rejected_ids": [6, 7, 8]}]
    b = collate_packed(feats, pad_id=0)
    # Row 1: [pad, p, p | c, pad | r, r, r]; positions restart after the prompt for rejected.
    assert b["input_ids"][1].tolist() == [0, 1, 2, 4, 0, 6, 7, 8]
    assert b["position_ids"][1].tolist()[1:3] == [0, 1] and b["position_ids"][1, 3] == 2
    assert b["position_ids"][1, 5:].tolist() == [2, 3, 4]
    m = build_pair_mask(b["segment_ids"], kind="bool")[1, 0]
    assert m[5, 1] and m[5, 2] and not m[5, 3]  # rejected sees the prompt, never the chosen answer
    assert m[3, 1] and not m[3, 0] and not m[1, 3]  # chosen sees prompt, not pad; prompt doesn't see ahead
    assert m[7, 6] and m[7, 5] and not m[6, 7]
    # Padding-free: both pairs in one row, and no attention across pairs.
    flat = collate_packed(feats, pad_id=0, padding_free=True)
    assert flat["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 1, 2, 4, 6, 7, 8]]
    assert flat["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3, 0, 1, 2, 2, 3, 4]]
    m = build_pair_mask(flat["segment_ids"], kind="bool", pair_ids=flat["pair_ids"])[0, 0]
    assert m[5, 0] and not m[5, 3] and m[9, 6] and not m[9, 8] and not m[9, 2] and not m[6, 5]


def test_loss_matches_trl(loaded, tmp_path):
    """TRL's ORPOTrainer.get_batch_loss_metrics on the same batch and weights gives the same loss."""
    from trl.experimental.utils import DPODataCollatorWithPadding

    from mint_orpo import OrpoConfig
    from mint_engine.options import training_arguments_kwargs
    from mint_engine.orpo import orpo_loss
    from mint_core.decoder import mask_kind_for
    from mint_engine.packing import collate_packed, forward_pairs
    from mint_engine.trl_orpo import build_trl_trainer, to_trl_row

    sm, features = loaded
    cfg = OrpoConfig(beta=0.25, batch_size=3, max_steps=1)
    trainer = build_trl_trainer(cfg, sm, features, args_kwargs=training_arguments_kwargs(cfg, output_dir=tmp_path,
                                                                                        seed=0))
    batch = features[1:4]
    trl_batch = DPODataCollatorWithPadding(pad_token_id=sm.pad_token_id)([to_trl_row(f) for f in batch])
    with torch.no_grad():
        trl_loss, trl_metrics = trainer.get_batch_loss_metrics(sm.model, trl_batch)
        stats = forward_pairs(sm.model, collate_packed(batch, pad_id=sm.pad_token_id), mask_kind=mask_kind_for(sm.model))
        loss, metrics = orpo_loss(stats["chosen_logps"], stats["rejected_logps"], stats["nll"], beta=0.25)
    assert abs(loss.item() - trl_loss.item()) < 1e-5
    assert abs(metrics["nll"].item() - trl_metrics["nll_loss"]) < 1e-5
    assert abs(metrics["logps/chosen"].item() - trl_metrics["logps/chosen"]) < 1e-5
    assert abs(metrics["log_odds_ratio"].item() - trl_metrics["log_odds_ratio"]) < 1e-5


def _optimizer(**kw):
    from mint_orpo import OrpoConfig
    from mint_engine.orpo import OrpoOptimizer

    base = dict(batch_size=2, max_steps=3, save_steps=2, learning_rate=1e-3, seed=0, bf16="false")  # fp32 parity
    base.update(kw)
    return OrpoOptimizer(OrpoConfig(**base))


def test_train_end_to_end(tiny_dir, tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "students" / "orpo"
    result = _optimizer().train(student=_student(tiny_dir), examples=make_examples(), output_dir=out,
                                ctx=_ctx(tmp_path))
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert (result.adapter_dir / "adapter_config.json").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    for key in ("nll", "or_loss", "logps/chosen", "logps/rejected", "rewards/accuracies", "learning_rate"):
        assert key in train_rows[0]
    assert abs(train_rows[0]["loss"] - (train_rows[0]["nll"] + train_rows[0]["or_loss"])) < 1e-4
    png = out / "training_curve.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    assert result.metrics["global_step"] == 3
    # The saved adapter loads and differs from a fresh one (training changed the weights).
    from safetensors.torch import load_file

    weights = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in weights.items())



def test_padding_free_training_matches_padded(tiny_dir, tmp_path):
    """optimizer.padding_free=true trains the same numbers as padded rows over 3 steps (after updates,
    not only the first forward): every logged step and the final adapter agree."""
    from safetensors.torch import load_file

    rows, adapters = {}, {}
    for option in ("false", "true"):
        torch.manual_seed(0)
        out = tmp_path / option / "orpo"
        result = _optimizer(max_steps=3, padding_free=option).train(
            student=_student(tiny_dir), examples=make_examples(), output_dir=out, ctx=_ctx(tmp_path / option))
        rows[option] = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
        adapters[option] = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert [r["step"] for r in rows["true"]] == [r["step"] for r in rows["false"]] == [1, 2, 3]
    assert rows["false"][2]["loss"] != rows["false"][0]["loss"]  # the steps moved the model
    for padded, free in zip(rows["false"], rows["true"]):
        for key in ("loss", "nll", "or_loss", "logps/chosen", "logps/rejected"):
            assert free[key] == pytest.approx(padded[key], abs=1e-5, rel=1e-5), (key, padded["step"])
    assert adapters["true"].keys() == adapters["false"].keys()
    for name, weight in adapters["false"].items():
        torch.testing.assert_close(adapters["true"][name], weight, atol=1e-5, rtol=1e-5)


def test_choose_padding_free():
    from types import SimpleNamespace

    from mint_engine.trainer import choose_padding_free

    text = [{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3]}]
    image = [{**text[0], "extras": {"pixel_values": torch.zeros(1)}}]
    model = lambda impl: SimpleNamespace(config=SimpleNamespace(_attn_implementation=impl))  # noqa: E731
    assert choose_padding_free(model("flash_attention_2"), "auto", text)[0] is True
    assert choose_padding_free(model("sdpa"), "auto", text)[0] is None  # per batch, by estimated cost
    assert choose_padding_free(model("sdpa"), "true", text)[0] is True
    assert choose_padding_free(model("flash_attention_2"), "false", text)[0] is False
    assert choose_padding_free(model("flash_attention_2"), "auto", image)[0] is False
    with pytest.raises(ValueError, match="padding_free=true"):
        choose_padding_free(model("sdpa"), "true", image)
    with pytest.raises(ValueError, match="use auto, true or false"):
        choose_padding_free(model("sdpa"), "maybe", text)


def test_padding_free_per_batch_by_estimated_cost(loaded):
    """auto under a dense mask: batches with much padding go padding-free, equal-length ones stay padded."""
    from mint_engine.packing import attention_weight, layout_costs
    from mint_engine.trainer import PairCollator

    sm, _ = loaded
    weight = attention_weight(sm.model)
    assert 0 < weight < 1
    pair = lambda p: {"prompt_ids": [5] * p, "chosen_ids": [6] * 20, "rejected_ids": [7] * 20}  # noqa: E731
    even, uneven = [pair(300), pair(300)], [pair(40), pair(40), pair(40), pair(600)]
    costs = layout_costs(even, packed=True, attention_weight=weight)
    assert costs["padded"] < costs["padding_free"]  # no padding to save, attention across pairs to pay
    costs = layout_costs(uneven, packed=True, attention_weight=weight)
    assert costs["padding_free"] < costs["padded"]
    collate = PairCollator(pad_id=0, padding_free=None, attention_weight=weight)
    assert collate(even)["input_ids"].shape[0] == 2 and collate(uneven)["input_ids"].shape[0] == 1
    assert PairCollator(pad_id=0, padding_free=False)(uneven)["input_ids"].shape[0] == 4

class _Kill(Exception):
    pass


def test_resume_after_kill(tiny_dir, tmp_path):
    from transformers import TrainerCallback

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise _Kill("simulated kill after checkpoint-2")

    torch.manual_seed(0)
    out = tmp_path / "students" / "orpo"
    with pytest.raises(_Kill):
        _optimizer(max_steps=4).train(student=_student(tiny_dir), examples=make_examples(), output_dir=out,
                                      ctx=_ctx(tmp_path), callbacks=[KillAfterSave()])
    assert (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    assert not (out / "adapter").exists()

    seen_start = []

    class RecordStart(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            seen_start.append(state.global_step)

    result = _optimizer(max_steps=4).train(student=_student(tiny_dir), examples=make_examples(), output_dir=out,
                                           ctx=_ctx(tmp_path), callbacks=[RecordStart()])
    assert result.metrics["global_step"] == 4
    assert seen_start == [2]  # resumed from checkpoint-2, not from scratch
    assert (out / "checkpoints" / "checkpoint-4").is_dir()
    state = json.loads((out / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4]  # steps 1-2 from the killed run, 3-4 resumed, none twice
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()


_TIMINGS = {"train_runtime", "train_samples_per_second", "train_steps_per_second"}


def _curve(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in _TIMINGS}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kill_at", ["step-3", "after-last-checkpoint"])
def test_resumed_training_equals_an_uninterrupted_run(tiny_dir, tmp_path, kill_at):
    """Killed before step 3 (between checkpoint-2 and checkpoint-4), or after the last checkpoint
    (before the adapter is saved), then resumed: the adapter, loss curve and summary equal an
    uninterrupted run's. 5 steps over 3 batches an epoch: the last step is not an epoch's end."""
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if kill_at == "step-3" and state.global_step == 2:
                raise _Kill("killed before step 3")

        def on_train_end(self, args, state, control, **kwargs):
            if kill_at == "after-last-checkpoint":
                raise _Kill("killed after checkpoint-5")

    results = {}
    for name, callbacks in (("uninterrupted", []), ("killed", [Kill()])):
        out = tmp_path / name / "students" / "orpo"
        torch.manual_seed(0)
        train = lambda cbs: _optimizer(max_steps=5).train(  # noqa: E731
            student=_student(tiny_dir), examples=make_examples(), output_dir=out, ctx=_ctx(tmp_path / name),
            callbacks=cbs)
        if callbacks:
            with pytest.raises(_Kill):
                train(callbacks)
            assert not (out / "adapter").exists()
            torch.manual_seed(0)
        results[name] = (train([]), out)
    (want, want_out), (got, got_out) = results["uninterrupted"], results["killed"]
    assert got.metrics["global_step"] == want.metrics["global_step"] == 5
    assert _curve(got_out) == _curve(want_out)  # one row per step, same numbers, no step twice
    assert {k: v for k, v in got.metrics.items() if k not in _TIMINGS} == \
        {k: v for k, v in want.metrics.items() if k not in _TIMINGS}
    assert (got_out / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (want_out / "adapter" / "adapter_model.safetensors").read_bytes()


def test_vision_student_packed(tmp_path):
    """A vision (Mllama) student packs too: images once per pair, the cross-attention mask rebuilt over
    [prompt, chosen, rejected]; log-probs, loss and gradients equal the two-sequence computation."""
    from mint_llama_vision import LlamaVisionConfig
    from mint_llama_vision.student import LlamaVisionStudent, collate
    from mint_llama_vision.testing import tiny_mllama_dir, write_tiny_pngs

    from mint_engine.orpo import orpo_loss
    from mint_engine.encoding import encode_pairs
    from mint_engine.packing import collate_packed, collate_two_sequence, forward_pairs
    from mint_engine.trainer import choose_packing

    torch.manual_seed(0)
    run = tmp_path / "run"
    images = write_tiny_pngs(run, n=3)
    ctx = _ctx(run)
    student = LlamaVisionStudent(LlamaVisionConfig(model=str(tiny_mllama_dir(tmp_path)), lora_r=4, device="cpu",
                                                   dtype="float32"))
    examples = []
    for i, image in enumerate(images):
        tissues = ["adipose tissue", "lymphocytes", "mucus", "smooth muscle", "debris"]
        examples.append(PreferenceExample(
            case_id=f"v{i}", prompt=Prompt(text="Which tissue types are in this tile?" + " Be brief." * i, image=image),
            chosen="Most likely tissue types:\n1. " + tissues[i], rejected="Most likely tissue types:\n1. " +
            "\n2. ".join(tissues[3:3 + 1 + i % 2])))
    sm = student.load(ctx=ctx, trainable=True)
    sm.model.eval()
    features = encode_pairs(sm, examples, max_length=512, max_prompt_length=256)
    packed, kind, reason = choose_packing(sm.model, "auto", features)
    assert packed and kind == "bool", reason
    batch = features[1:3]  # prompts and answers of different lengths: padding in every block
    assert len({len(f["prompt_ids"]) for f in batch}) == 2 and len({len(f["rejected_ids"]) for f in batch}) == 2
    results = {}
    for name, collate_fn in (("packed", collate_packed), ("two", collate_two_sequence)):
        sm.model.zero_grad()
        collated = collate_fn(batch, pad_id=sm.pad_id)
        assert collated["pixel_values"].shape[0] == (2 if name == "packed" else 4)  # images once per pair
        stats = forward_pairs(sm.model, collated, mask_kind=kind)
        loss, _ = orpo_loss(stats["chosen_logps"], stats["rejected_logps"], stats["nll"], beta=0.1)
        loss.backward()
        results[name] = (stats, loss.detach(), _lora_grads(sm.model))
    (sp, lp, gp), (st, lt, gt) = results["packed"], results["two"]
    for key in ("chosen_logps_sum", "rejected_logps_sum", "nll"):
        torch.testing.assert_close(sp[key], st[key], atol=1e-5, rtol=0)
    assert abs(lp.item() - lt.item()) < 1e-5
    assert gt and any(g.abs().max() > 1e-6 for g in gt.values())
    for param in gt:
        torch.testing.assert_close(gp[param], gt[param], atol=1e-5, rtol=1e-4)
    sm.model.zero_grad()
    with torch.no_grad():  # and both equal the student's own encoding of prompt + rejected answer
        enc = sm.encode(prompt=examples[2].prompt, completion=examples[2].rejected)
        logits = sm.model(**collate([enc], pad_id=sm.pad_id)).logits[0, :-1].float()
        p = enc["prompt_length"]
        ids = torch.tensor(enc["input_ids"])
        ref = torch.log_softmax(logits, -1)[torch.arange(p - 1, len(ids) - 1), ids[p:]].sum()
    assert abs(sp["rejected_logps_sum"][1].item() - ref.item()) < 1e-4

    result = _optimizer(max_steps=2, save_steps=5).train(student=student, examples=examples,
                                                         output_dir=run / "students" / "orpo", ctx=ctx)
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert result.metrics["global_step"] == 2 and torch.isfinite(torch.tensor(result.metrics["final_loss"]))


def test_tensorboard_and_passed_through_training_arguments(tiny_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "students" / "orpo"
    optimizer = _optimizer(report_to="tensorboard", training_args="max_grad_norm=0.5; adam_beta2=0.99")
    result = optimizer.train(student=_student(tiny_dir), examples=make_examples(), output_dir=out, ctx=_ctx(tmp_path))
    events = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file under the student folder"
    scalars = EventAccumulator(str(events[0].parent)).Reload().Tags()["scalars"]
    assert "train/loss" in scalars and "train/or_loss" in scalars
    assert result.metrics["global_step"] == 3
    from mint_engine.options import extra_training_arguments

    assert extra_training_arguments("max_grad_norm=0.5; adam_beta2=0.99") == {"max_grad_norm": 0.5, "adam_beta2": 0.99}
    assert extra_training_arguments("adam_epsilon=1e-4") == {"adam_epsilon": 1e-4}  # YAML would keep "1e-4" a string
    with pytest.raises(ValueError, match="adam_epsilon='fast' is not a number"):
        extra_training_arguments("adam_epsilon=fast")
    with pytest.raises(ValueError, match="training_args.*warp_speed"):
        extra_training_arguments("warp_speed=9")
