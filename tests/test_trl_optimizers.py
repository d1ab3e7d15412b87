"""DPO, KTO and SFT through TRL on the tiny Llama (and the tiny Mllama): train, save, load, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mint_core.answers import format_answer
from mint_core.context import RunContext
from mint_core.registry import MintError
from mint_core.types import PreferenceExample, Prompt

from mint_trl import DpoConfig, KtoConfig, SftConfig
from mint_trl.optimizer import OPTIMIZERS

pytestmark = pytest.mark.slow

NAMES = ["Marfan syndrome", "Noonan syndrome", "Down syndrome", "Williams syndrome", "Angelman syndrome"]
NOTES = ["tall stature, arachnodactyly", "short stature, webbed neck", "hypotonia, intellectual disability",
         "supravalvular aortic stenosis", "seizures, ataxia"]
CONFIGS = {"dpo": DpoConfig, "kto": KtoConfig, "sft": SftConfig}


def _prompt(i: int) -> Prompt:
    return Prompt(text=f"Clinical notes: {NOTES[i]}.\n\nQuestion: which diseases best explain these findings?",
                  system="You are a careful clinical geneticist.")


def _examples(method: str) -> list[PreferenceExample]:
    """What each method's default builder makes: pairs (dpo), unpaired answers (kto), answers (sft)."""
    out = []
    for i in range(4):
        good = format_answer([NAMES[i], NAMES[i + 1]], noun="diagnoses")
        bad = format_answer([NAMES[(i + 3) % 5], NAMES[(i + 2) % 5]], noun="diagnoses")
        if method == "dpo":
            out.append(PreferenceExample(case_id=f"c{i}", prompt=_prompt(i), chosen=good, rejected=bad))
        elif method == "kto":
            out += [PreferenceExample(case_id=f"c{i}", prompt=_prompt(i), kind="unpaired", completion=good, label=True),
                    PreferenceExample(case_id=f"c{i}", prompt=_prompt(i), kind="unpaired", completion=bad, label=False)]
        else:
            out.append(PreferenceExample(case_id=f"c{i}", prompt=_prompt(i), kind="sft", completion=good))
    return out


def _config(method: str, **overrides):
    # fp32 on every machine: bf16=auto turns bf16 autocast on where the CPU has AVX512-BF16/AMX, and these
    # are fp32 parity tests (an AVX512-BF16 EPYC failed seven of them at 1e-5 under autocast).
    options = dict(max_steps=2, batch_size=2, save_steps=1, learning_rate=5e-3, seed=0, bf16="false")
    options.update(overrides)
    return CONFIGS[method](**options)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@torch.no_grad()
def _logits(sm, prompt: Prompt, completion: str) -> torch.Tensor:
    enc = sm.encode(prompt=prompt, completion=completion)
    if sm.modality == "image":
        return sm.model(**sm._to_device(sm.collate([enc]))).logits.float()
    return sm.model(input_ids=torch.tensor([enc["input_ids"]])).logits.float()


# -- text student ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_env(tmp_path_factory):
    from mint_llama import LlamaTextConfig
    from mint_llama.student import LlamaTextStudent
    from mint_llama.testing import build_tiny_llama

    torch.manual_seed(0)
    run_dir = tmp_path_factory.mktemp("run")
    model_dir = build_tiny_llama(run_dir.parent / f"{run_dir.name}-tiny")
    student = LlamaTextStudent(LlamaTextConfig(model=str(model_dir), lora_r=4, lora_alpha=8, lora_dropout=0.0,
                                               device="cpu"))
    ctx = RunContext(run_dir=run_dir, seed=0)
    base = student.load(ctx=ctx)
    probe = (_prompt(0), format_answer(NAMES[:2], noun="diagnoses"))
    return {"student": student, "ctx": ctx, "run_dir": run_dir, "probe": probe, "base_logits": _logits(base, *probe)}


@pytest.fixture(scope="module")
def trained(text_env):
    """Each method trained once for 2 steps (SFT first: the DPO-from-SFT test starts from it)."""
    results = {}
    for method in ("sft", "dpo", "kto"):
        torch.manual_seed(0)
        results[method] = OPTIMIZERS[method](_config(method)).train(
            student=text_env["student"], examples=_examples(method),
            output_dir=text_env["run_dir"] / "students" / method, ctx=text_env["ctx"])
    return results


@pytest.mark.parametrize("method", ["dpo", "kto", "sft"])
def test_train_saves_an_adapter_that_changes_the_model(text_env, trained, method):
    result = trained[method]
    out = result.output_dir
    assert result.adapter_dir == out / "adapter"
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert not (out / "adapter" / "ref").exists()  # DPO/KTO's frozen reference copy is not saved
    assert result.metrics["global_step"] == 2 and math.isfinite(result.metrics["train_loss"])
    steps = [row["step"] for row in _rows(out / "metrics.jsonl") if "loss" in row]
    assert steps == [1, 2]
    assert (out / "training_curve.png").stat().st_size > 1000
    assert (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()

    sm = text_env["student"].load(ctx=text_env["ctx"], adapter_dir=result.adapter_dir)
    assert sm.model.__class__.__name__.startswith("PeftModel")
    diff = (_logits(sm, *text_env["probe"]) - text_env["base_logits"]).abs().max().item()
    assert diff > 1e-3, f"{method} adapter leaves the logits unchanged (max diff {diff})"


def test_dpo_and_kto_start_at_their_reference(trained):
    # A fresh LoRA adapter is the identity, so the policy equals the (adapter-disabled) reference
    # at step 1: DPO's loss is exactly log 2 and every reward is 0.
    first = _rows(trained["dpo"].output_dir / "metrics.jsonl")[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert trained["kto"].metrics["rows"] == 8  # 4 desirable + 4 undesirable answers


def test_kto_first_step_is_at_its_reference(text_env, trained):
    """KTO at step 1: rewards and KL are 0 (policy == reference) and the logged answer log-probs are
    the base model's own, computed here for each answer; the batch (2 rows) holds some of them."""
    from itertools import combinations

    from mint_engine.encoding import encode_answer

    first = next(r for r in _rows(trained["kto"].output_dir / "metrics.jsonl") if "loss" in r)
    for key in ("rewards/chosen", "rewards/rejected", "kl"):
        assert first.get(key, 0.0) == pytest.approx(0.0, abs=1e-6), key
    sm = text_env["student"].load(ctx=text_env["ctx"])
    logps = {True: [], False: []}
    for example in _examples("kto"):
        prompt_ids, answer_ids, _ = encode_answer(sm, example.prompt, example.completion, max_length=1024,
                                                  max_prompt_length=768)
        ids = torch.tensor([prompt_ids + answer_ids])
        with torch.no_grad():
            logp = torch.log_softmax(sm.model(input_ids=ids).logits[0, :-1].float(), -1)
        n = len(prompt_ids)
        logps[example.label].append(logp[torch.arange(n - 1, ids.shape[1] - 1), ids[0, n:]].sum().item())
    for label, key in ((True, "logps/chosen"), (False, "logps/rejected")):
        if key not in first:
            continue  # the first batch held no answer of this kind
        means = [sum(c) / len(c) for size in (1, 2) for c in combinations(logps[label], size)]
        assert min(abs(first[key] - m) for m in means) < 1e-4, (key, first[key], means)
    assert "logps/chosen" in first or "logps/rejected" in first


@pytest.mark.parametrize("init", ["fresh", "sft"])
def test_packed_dpo_matches_trl(text_env, trained, init, monkeypatch):
    """impl=mint (shared-prompt packed policy and reference forwards) trains the numbers TRL's DPOTrainer does:
    step 1 from the same start, later steps after AdamW updates computed from each side's own gradients;
    steps 3-4 are the second epoch, where MINT reuses the reference log-probs of the first."""
    import mint_engine.dpo

    reference_forwards = []
    real_reference = mint_engine.dpo.reference_weights
    monkeypatch.setattr(mint_engine.dpo, "reference_weights",
                        lambda model: reference_forwards.append(1) or real_reference(model))
    rows = {}
    for impl in ("trl", "mint"):
        torch.manual_seed(0)
        out = text_env["run_dir"] / "students" / f"dpo-{impl}-{init}"
        extra = {"init_adapter": str(trained["sft"].adapter_dir)} if init == "sft" else {}
        OPTIMIZERS["dpo"](_config("dpo", impl=impl, max_steps=4, **extra)).train(
            student=text_env["student"], examples=_examples("dpo"), output_dir=out, ctx=text_env["ctx"])
        rows[impl] = [r for r in _rows(out / "metrics.jsonl") if "loss" in r]
    assert len(rows["mint"]) == len(rows["trl"]) == 4
    assert len(reference_forwards) == 2  # MINT's reference ran in the first epoch's two batches only
    assert abs(rows["mint"][1]["rewards/margins"]) > 1e-3  # the update moved the policy away from the reference
    for mint_row, trl_row in zip(rows["mint"], rows["trl"]):
        for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
            assert mint_row[key] == pytest.approx(trl_row[key], abs=1e-4), (key, mint_row["step"])

def _perturbed_first_step(monkeypatch, student, examples, ctx, out: Path, impl: str, method: str = "dpo",
                          values: dict[str, torch.Tensor] | None = None) -> dict:
    """Train one ``method`` step with ``impl`` from a LoRA adapter set to fixed random values, or to
    ``values`` (saved adapter tensors), so the policy differs from its reference, the adapter-disabled
    base; capture the loss and every LoRA gradient right after backward (before clipping, which
    would hide a gradient wrong in size)."""
    import zlib

    import transformers

    captured: dict = {}
    real_step = transformers.Trainer.training_step

    def training_step(self, model, inputs, *args, **kwargs):
        peft_model = self.accelerator.unwrap_model(model)
        lora = {n: p for n, p in peft_model.named_parameters() if "lora_" in n and ".default." in n}
        if not captured:
            with torch.no_grad():
                for name, parameter in lora.items():
                    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
                    parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator) if values is None
                                    else values[name.replace(".default.", ".")])
        loss = real_step(self, model, inputs, *args, **kwargs)
        if not captured:
            captured["loss"] = float(loss)
            captured["grads"] = {n: p.grad.detach().clone() for n, p in lora.items()}
        return loss

    monkeypatch.setattr(transformers.Trainer, "training_step", training_step)
    torch.manual_seed(0)
    OPTIMIZERS[method](_config(method, impl=impl, max_steps=1, batch_size=len(examples))).train(
        student=student, examples=examples, output_dir=out, ctx=ctx)
    monkeypatch.setattr(transformers.Trainer, "training_step", real_step)
    captured["row"] = next(r for r in _rows(out / "metrics.jsonl") if "loss" in r)
    return captured


def _assert_same_dpo_step(mint: dict, trl: dict, keys: tuple[str, ...] = ()) -> None:
    assert abs(trl["row"]["rewards/margins"]) > 1e-2  # the policy is not its reference
    assert mint["loss"] == pytest.approx(trl["loss"], abs=1e-5, rel=1e-5)
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
                *keys):
        assert mint["row"][key] == pytest.approx(trl["row"][key], abs=1e-5, rel=1e-5), key
    _assert_same_gradients(mint, trl)


def _assert_same_gradients(mint: dict, trl: dict) -> None:
    assert mint["loss"] == pytest.approx(trl["loss"], abs=1e-5, rel=1e-5)
    assert mint["grads"].keys() == trl["grads"].keys() and len(trl["grads"]) > 0
    # Per tensor, the difference relative to the gradient's size (a 1% error in size is 1e-2 here);
    # element-wise 1e-5 would fail on fp32 rounding alone (packed and padded rows sum in other orders).
    # 5e-5: Mllama's cross-attention gradients reach 1.51e-5 on an AVX2 host (AVX2 and AVX-512 GEMM
    # kernels sum in other orders); a wrong mask or a token counted twice moves a gradient by far more.
    errors = {name: ((mint["grads"][name] - grad).norm() / grad.norm()).item() for name, grad in trl["grads"].items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] < 5e-5, (worst, errors[worst])


def test_packed_dpo_loss_and_gradients_match_trl_off_the_reference(text_env, monkeypatch):
    """The loss and every LoRA gradient of MINT's packed DPO equal TRL's DPOTrainer's (fp32, 1e-5), on a
    policy that differs from its reference: a gradient wrong only in size would show here."""
    steps = {impl: _perturbed_first_step(monkeypatch, text_env["student"], _examples("dpo"), text_env["ctx"],
                                         text_env["run_dir"] / "students" / f"dpo-grad-{impl}", impl)
             for impl in ("trl", "mint")}
    _assert_same_dpo_step(steps["mint"], steps["trl"])


def _kto_rows_by_impl(env, tag: str, **options) -> dict[str, list[dict]]:
    rows = {}
    for impl in ("trl", "mint"):
        torch.manual_seed(0)
        out = env["run_dir"] / "students" / f"kto-{impl}-{tag}"
        OPTIMIZERS["kto"](_config("kto", impl=impl, **options)).train(
            student=env["student"], examples=env["examples"]["kto"] if "examples" in env else _examples("kto"),
            output_dir=out, ctx=env["ctx"])
        rows[impl] = [r for r in _rows(out / "metrics.jsonl") if "loss" in r]
    return rows


@pytest.mark.parametrize("init", ["fresh", "sft"])
def test_packed_kto_matches_trl(text_env, trained, init):
    """impl=mint (the answer and its KL answer packed behind one prompt, policy and reference) trains the
    numbers TRL's KTOTrainer does over two epochs, the same rows in the same batches with the same KL answers
    (the second epoch reuses the first's reference log-probs)."""
    extra = {"init_adapter": str(trained["sft"].adapter_dir)} if init == "sft" else {}
    rows = _kto_rows_by_impl(text_env, init, max_steps=6, batch_size=3, **extra)
    assert len(rows["mint"]) == len(rows["trl"]) == 6
    assert max(abs(r.get("kl", 0.0)) + abs(r.get("rewards/chosen", 0.0)) for r in rows["trl"][1:]) > 1e-4
    for mint_row, trl_row in zip(rows["mint"], rows["trl"]):
        assert mint_row.keys() >= {k for k in trl_row if k.startswith(("rewards/", "logps/"))}
        for key in ("loss", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
                    "logps/rejected"):
            if key in trl_row:
                assert mint_row[key] == pytest.approx(trl_row[key], abs=1e-4), (key, mint_row["step"])


def test_packed_kto_loss_and_gradients_match_trl_off_the_reference(text_env, trained, monkeypatch):
    """The loss, the KL estimate and every LoRA gradient of MINT's packed KTO equal TRL's KTOTrainer's
    (fp32, 1e-5) on a policy away from its reference, all eight rows in one batch. The policy is the
    SFT student (a random one rates mismatched answers below the base, and the KL clamps to 0)."""
    from safetensors.torch import load_file

    sft = load_file(str(trained["sft"].adapter_dir / "adapter_model.safetensors"))
    steps = {impl: _perturbed_first_step(monkeypatch, text_env["student"], _examples("kto"), text_env["ctx"],
                                         text_env["run_dir"] / "students" / f"kto-grad-{impl}", impl, method="kto",
                                         values=sft)
             for impl in ("trl", "mint")}
    assert steps["trl"]["row"]["kl"] > 1e-3  # the KL estimate is live (clamped at 0 otherwise)
    _assert_same_dpo_step(steps["mint"], steps["trl"], keys=("kl",))


def test_packed_sft_matches_trl(text_env):
    """impl=mint (answer-only NLL on packed rows) trains the numbers TRL's SFTTrainer does over two epochs."""
    rows = {}
    for impl in ("trl", "mint"):
        torch.manual_seed(0)
        out = text_env["run_dir"] / "students" / f"sft-{impl}"
        OPTIMIZERS["sft"](_config("sft", impl=impl, max_steps=4)).train(
            student=text_env["student"], examples=_examples("sft"), output_dir=out, ctx=text_env["ctx"])
        rows[impl] = [r for r in _rows(out / "metrics.jsonl") if "loss" in r]
    assert len(rows["mint"]) == len(rows["trl"]) == 4
    assert rows["trl"][-1]["loss"] < rows["trl"][0]["loss"] - 1e-2  # it learns
    for mint_row, trl_row in zip(rows["mint"], rows["trl"]):
        assert mint_row["loss"] == pytest.approx(trl_row["loss"], abs=1e-4), mint_row["step"]


def test_packed_sft_loss_and_gradients_match_trl_off_the_reference(text_env, monkeypatch):
    """The loss and every LoRA gradient of MINT's packed SFT equal TRL's SFTTrainer's (fp32, 1e-5)."""
    steps = {impl: _perturbed_first_step(monkeypatch, text_env["student"], _examples("sft"), text_env["ctx"],
                                         text_env["run_dir"] / "students" / f"sft-grad-{impl}", impl, method="sft")
             for impl in ("trl", "mint")}
    _assert_same_gradients(steps["mint"], steps["trl"])


def test_kto_features_pair_each_answer_with_its_batch_predecessors(text_env):
    """The KL answer of each row is the answer of the row before it in its batch (TRL's rotation)."""
    from mint_engine.kto import kto_features

    sm = text_env["student"].load(ctx=text_env["ctx"])
    examples = _examples("kto")
    features = kto_features(sm, examples, batch_size=3, seed=0, max_length=1024, max_prompt_length=768)
    assert len(features) == 8 and sorted(f["label"] for f in features) == [False] * 4 + [True] * 4
    for start in (0, 3, 6):
        group = features[start:start + 3]
        for i, row in enumerate(group):
            assert row["rejected_ids"] == group[i - 1]["chosen_ids"]
    assert kto_features(sm, examples, batch_size=3, seed=0, max_length=1024, max_prompt_length=768) == features
    assert kto_features(sm, examples, batch_size=3, seed=1, max_length=1024, max_prompt_length=768) != features


def test_dpo_from_sft_adapter(text_env, trained):
    """DPO with init_adapter=<run dir> starts from students/sft/adapter, which is also its reference."""
    run_dir, ctx, student = text_env["run_dir"], text_env["ctx"], text_env["student"]
    sft_adapter = trained["sft"].adapter_dir
    out = run_dir / "students" / "dpo-after-sft"
    torch.manual_seed(0)
    result = OPTIMIZERS["dpo"](_config("dpo", init_adapter=str(run_dir))).train(
        student=student, examples=_examples("dpo"), output_dir=out, ctx=ctx)
    summary = json.loads((out / "train_summary.json").read_text())
    assert Path(summary["init_adapter"]) == sft_adapter

    first = _rows(out / "metrics.jsonl")[0]
    fresh_first = _rows(trained["dpo"].output_dir / "metrics.jsonl")[0]
    # Policy == reference at step 1 (so the reference is the SFT model, not the base) ...
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    # ... and the policy is the SFT model, not the base (same first batch, other log-probabilities).
    assert abs(first["logps/chosen"] - fresh_first["logps/chosen"]) > 1e-2

    sft_sm = student.load(ctx=ctx, adapter_dir=sft_adapter)
    dpo_sm = student.load(ctx=ctx, adapter_dir=result.adapter_dir)  # one LoRA, loads on the plain base
    assert not (result.adapter_dir / "ref").exists()
    diff = (_logits(dpo_sm, *text_env["probe"]) - _logits(sft_sm, *text_env["probe"])).abs().max().item()
    assert diff > 1e-4


def test_resume_from_last_checkpoint(text_env):
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise KeyboardInterrupt("simulated kill after checkpoint-2")

    class CountSteps(TrainerCallback):
        steps = 0

        def on_step_end(self, args, state, control, **kwargs):
            CountSteps.steps += 1

    ctx, student = text_env["ctx"], text_env["student"]
    out = text_env["run_dir"] / "students" / "dpo-resume"
    optimizer = OPTIMIZERS["dpo"](_config("dpo", max_steps=3))
    with pytest.raises(KeyboardInterrupt):
        optimizer.train(student=student, examples=_examples("dpo"), output_dir=out, ctx=ctx, callbacks=[Kill()])
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / "adapter").exists()

    result = optimizer.train(student=student, examples=_examples("dpo"), output_dir=out, ctx=ctx,
                             callbacks=[CountSteps()])
    assert CountSteps.steps == 1  # only step 3 was left to run
    assert result.metrics["global_step"] == 3
    assert [row["step"] for row in _rows(out / "metrics.jsonl") if "loss" in row] == [1, 2, 3]
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()


def test_clear_errors(text_env, tmp_path):
    ctx, student = text_env["ctx"], text_env["student"]
    with pytest.raises(MintError, match="builder topk"):
        OPTIMIZERS["dpo"](_config("dpo")).train(student=student, examples=_examples("sft"), output_dir=tmp_path,
                                                ctx=ctx)
    with pytest.raises(MintError, match="batch_size >= 2"):
        OPTIMIZERS["kto"](_config("kto", batch_size=1)).train(student=student, examples=_examples("kto"),
                                                               output_dir=tmp_path, ctx=ctx)
    with pytest.raises(MintError, match="optimizer=sft takes impl=auto or mint or trl"):
        OPTIMIZERS["sft"](_config("sft", impl="fast"))
    with pytest.raises(MintError, match="impl=mint is not possible here: loss_type='apo_zero_unpaired'"):
        OPTIMIZERS["kto"](_config("kto", impl="mint", loss_type="apo_zero_unpaired")).train(
            student=student, examples=_examples("kto"), output_dir=tmp_path, ctx=ctx)
    with pytest.raises(MintError, match="impl=mint is not possible here: loss_type='ipo'"):
        OPTIMIZERS["dpo"](_config("dpo", impl="mint", loss_type="ipo")).train(
            student=student, examples=_examples("dpo"), output_dir=tmp_path, ctx=ctx)
    with pytest.raises(FileNotFoundError, match="init_adapter"):
        OPTIMIZERS["dpo"](_config("dpo", init_adapter=str(tmp_path / "nowhere"))).train(
            student=student, examples=_examples("dpo"), output_dir=tmp_path, ctx=ctx)


def test_registered_through_the_plugin():
    from mint_core.registry import Registry

    registry = Registry()
    registry.load_entry_points()
    specs = registry.components["optimizer"]
    assert {"dpo", "kto", "sft"} <= set(specs)
    assert OPTIMIZERS["kto"].default_builder == "kto" and OPTIMIZERS["sft"].default_builder == "sft"
    assert OPTIMIZERS["dpo"].default_builder == "topk"
    assert specs["dpo"].default_config().beta == 0.1 and specs["dpo"].default_config().loss_type == "sigmoid"


# -- vision student (tiny Mllama) ------------------------------------------------------------------
@pytest.fixture(scope="module")
def vision_env(tmp_path_factory):
    from mint_llama_vision import LlamaVisionConfig
    from mint_llama_vision.student import LlamaVisionStudent
    from mint_llama_vision.testing import tiny_mllama_dir, write_tiny_pngs

    torch.manual_seed(0)
    run_dir = tmp_path_factory.mktemp("vrun")
    model_dir = tiny_mllama_dir(run_dir.parent / f"{run_dir.name}-model")
    images = write_tiny_pngs(run_dir, n=4)
    student = LlamaVisionStudent(LlamaVisionConfig(model=str(model_dir), lora_r=4, lora_alpha=8, lora_dropout=0.0,
                                                   device="cpu"))
    ctx = RunContext(run_dir=run_dir, seed=0)
    tissues = ["adipose tissue", "debris", "mucus", "lymphocytes", "smooth muscle"]
    prompts = [Prompt(text="Which tissue types best describe this image? List the 2 most likely, best first.",
                      image=images[i], system="You are an expert pathologist.") for i in range(4)]
    examples = {}
    for method in ("dpo", "kto", "sft"):
        rows = []
        for i, prompt in enumerate(prompts):
            good = format_answer(tissues[i:i + 2], noun="tissue types")
            bad = format_answer([tissues[(i + 3) % 5]], noun="tissue types")
            if method == "dpo":
                rows.append(PreferenceExample(case_id=f"v{i}", prompt=prompt, chosen=good, rejected=bad))
            elif method == "kto":
                rows += [PreferenceExample(case_id=f"v{i}", prompt=prompt, kind="unpaired", completion=good, label=True),
                         PreferenceExample(case_id=f"v{i}", prompt=prompt, kind="unpaired", completion=bad, label=False)]
            else:
                rows.append(PreferenceExample(case_id=f"v{i}", prompt=prompt, kind="sft", completion=good))
        examples[method] = rows
    base = student.load(ctx=ctx)
    probe = (prompts[0], format_answer(tissues[:2], noun="tissue types"))
    return {"student": student, "ctx": ctx, "run_dir": run_dir, "examples": examples, "base": base,
            "probe": probe, "base_logits": _logits(base, *probe)}


def _collate(vision_env, method: str, examples):
    """A batch from the collator the optimizer builds for the vision student."""
    from types import SimpleNamespace

    from mint_trl.data import as_rows

    sm = vision_env["base"]
    dataset, collator = OPTIMIZERS[method](_config(method))._dataset(
        sm, as_rows(examples, method), args=SimpleNamespace(max_length=None), vision=True, seed=0,
        ctx=vision_env["ctx"])
    return collator([dict(dataset[i]) for i in range(len(dataset))]), dataset


def _assert_rows_match_encode(sm, ids, attention, xmask, expected):
    """Each padded row holds the student's encode() ids, and the same image visibility (cross mask)."""
    for row, (prompt, answer) in enumerate(expected):
        enc = sm.encode(prompt=prompt, completion=answer)
        keep = attention[row].bool()
        assert ids[row][keep].tolist() == enc["input_ids"], f"row {row}: tokens differ from encode()"
        assert torch.equal(xmask[row][keep], enc["cross_attention_mask"].to(xmask.dtype)), f"row {row}: mask"


def test_trl_vision_collator_defects_on_mllama(vision_env):
    """What the repair is for: TRL's DPO collator alone gives Mllama a prompt-length cross-attention
    mask and a <|begin_of_text|> at the start of every answer."""
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    from mint_trl.data import as_rows, to_dataset, vision_rows

    sm, ctx = vision_env["base"], vision_env["ctx"]
    dataset = to_dataset(vision_rows(sm, as_rows(vision_env["examples"]["dpo"][:2], "dpo"), "dpo", ctx))
    raw = DataCollatorForVisionPreference(processor=sm.processor)([dict(dataset[i]) for i in range(2)])
    assert raw["cross_attention_mask"].shape[1] < raw["input_ids"].shape[1]
    bos = sm.tokenizer.bos_token_id
    assert all(row.tolist().count(bos) == 2 for row in raw["input_ids"])


def test_mllama_collators_match_the_student_encoding(vision_env):
    """DPO, KTO (with its KL rows) and SFT batches equal the student's own encode(), mask included."""
    sm = vision_env["base"]
    pairs = vision_env["examples"]["dpo"][:2]
    batch, _ = _collate(vision_env, "dpo", pairs)
    assert batch["cross_attention_mask"].shape[:2] == batch["input_ids"].shape
    expected = [(e.prompt, e.chosen) for e in pairs] + [(e.prompt, e.rejected) for e in pairs]
    _assert_rows_match_encode(sm, batch["input_ids"], batch["attention_mask"], batch["cross_attention_mask"],
                              expected)

    unpaired = vision_env["examples"]["kto"][:3]
    batch, dataset = _collate(vision_env, "kto", unpaired)
    by_answer = {e.completion: e for e in unpaired}
    rows = [(by_answer[d["completion"][0]["content"]].prompt, d["completion"][0]["content"]) for d in dataset]
    _assert_rows_match_encode(sm, batch["input_ids"], batch["attention_mask"], batch["cross_attention_mask"], rows)
    kl_rows = [(rows[i][0], rows[i - 1][1]) for i in range(len(rows))]  # each prompt with its neighbour's answer
    _assert_rows_match_encode(sm, batch["KL_input_ids"], batch["KL_attention_mask"],
                              batch["KL_cross_attention_mask"], kl_rows)

    answers = vision_env["examples"]["sft"][:2]
    batch, _ = _collate(vision_env, "sft", answers)
    _assert_rows_match_encode(sm, batch["input_ids"], batch["attention_mask"], batch["cross_attention_mask"],
                              [(e.prompt, e.completion) for e in answers])
    for row, example in enumerate(answers):  # loss on the answer (and its <|eot_id|>) only
        n_prompt = sm.encode(prompt=example.prompt)["prompt_length"]
        labels = batch["labels"][row][batch["attention_mask"][row].bool()]
        assert (labels[:n_prompt] == -100).all() and (labels[n_prompt:] != -100).all()


def test_packed_dpo_matches_trl_on_mllama(vision_env):
    """Vision DPO: MINT's packed trainer (image once per pair) and TRL's DPOTrainer (with MINT's Mllama
    collator repair) log the same numbers over two steps."""
    rows = {}
    for impl in ("trl", "mint"):
        torch.manual_seed(0)
        out = vision_env["run_dir"] / "students" / f"dpo-{impl}"
        OPTIMIZERS["dpo"](_config("dpo", impl=impl)).train(
            student=vision_env["student"], examples=vision_env["examples"]["dpo"], output_dir=out,
            ctx=vision_env["ctx"])
        rows[impl] = [r for r in _rows(out / "metrics.jsonl") if "loss" in r]
    assert len(rows["mint"]) == len(rows["trl"]) == 2 and abs(rows["mint"][1]["rewards/margins"]) > 1e-4
    for mint_row, trl_row in zip(rows["mint"], rows["trl"]):
        for key in ("loss", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
            assert mint_row[key] == pytest.approx(trl_row[key], abs=1e-4), (key, mint_row["step"])

def test_packed_dpo_loss_and_gradients_match_trl_on_mllama_off_the_reference(vision_env, monkeypatch):
    """Vision DPO: MINT's packed loss and LoRA gradients equal TRL's (with the Mllama collator repair)."""
    steps = {impl: _perturbed_first_step(monkeypatch, vision_env["student"], vision_env["examples"]["dpo"],
                                         vision_env["ctx"], vision_env["run_dir"] / "students" / f"dpo-grad-{impl}",
                                         impl)
             for impl in ("trl", "mint")}
    _assert_same_dpo_step(steps["mint"], steps["trl"])


def test_packed_kto_matches_trl_on_mllama(vision_env):
    """Vision KTO: MINT's packed trainer (image once per answer and KL answer) and TRL's KTOTrainer (with
    MINT's Mllama collator repair) log the same numbers over three steps."""
    rows = _kto_rows_by_impl(vision_env, "vision", max_steps=3, batch_size=2)
    assert len(rows["mint"]) == len(rows["trl"]) == 3
    for mint_row, trl_row in zip(rows["mint"], rows["trl"]):
        for key in ("loss", "kl", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
            if key in trl_row:
                assert mint_row[key] == pytest.approx(trl_row[key], abs=1e-4), (key, mint_row["step"])


@pytest.mark.parametrize("method,impl", [("dpo", "auto"), ("kto", "auto"), ("sft", "auto"), ("sft", "trl")])
def test_vision_methods_train_two_steps(vision_env, method, impl):
    torch.manual_seed(0)
    out = vision_env["run_dir"] / "students" / f"{method}-{impl}"
    result = OPTIMIZERS[method](_config(method, impl=impl)).train(
        student=vision_env["student"], examples=vision_env["examples"][method], output_dir=out,
        ctx=vision_env["ctx"])
    assert result.metrics["global_step"] == 2
    rows = [row for row in _rows(out / "metrics.jsonl") if "loss" in row]
    assert [row["step"] for row in rows] == [1, 2] and all(math.isfinite(row["loss"]) for row in rows)
    if method == "dpo":
        assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    sm = vision_env["student"].load(ctx=vision_env["ctx"], adapter_dir=result.adapter_dir)
    diff = (_logits(sm, *vision_env["probe"]) - vision_env["base_logits"]).abs().max().item()
    assert diff > 1e-4, f"vision {method} adapter leaves the logits unchanged"
