"""mint-simpo: registration, the loss against TRL's CPO (loss_type=simpo), a real training run."""

from __future__ import annotations

import types
from pathlib import Path

import torch

import mint_simpo
from mint_core.context import RunContext
from mint_core.testing import invoke, isolated_registry
from mint_core.types import PreferenceExample, Prompt

torch.set_num_threads(1)


def test_plugin_registers_with_its_options():
    with isolated_registry(mint_simpo, name="simpo") as registry:
        assert registry.plugins["simpo"].status == "ok"
        assert registry.plugins["simpo"].provides == ["optimizer:simpo"]
        fields = {name: default for name, _, default, _ in registry.get("optimizer", "simpo").config_fields()}
        assert fields["gamma"] == 0.5 and fields["beta"] == 2.0 and fields["sft_weight"] == 0.0
        result = invoke(["plugins", "info", "simpo"])
        assert result.exit_code == 0 and "optimizer.gamma" in result.output


def test_loss_matches_trl_cpo_simpo():
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    from mint_simpo.trainer import simpo_loss

    torch.manual_seed(0)
    chosen, rejected = -torch.rand(6) * 3, -torch.rand(6) * 3
    trl_self = types.SimpleNamespace(beta=2.0, simpo_gamma=0.5, label_smoothing=0.0, loss_type="simpo", alpha=0.0,
                                     accelerator=types.SimpleNamespace(device=torch.device("cpu")))
    trl_losses, trl_chosen_rewards, _ = CPOTrainer.cpo_loss(trl_self, chosen, rejected)
    ours, metrics = simpo_loss(chosen, rejected, beta=2.0, gamma=0.5)
    assert torch.allclose(ours, trl_losses.mean(), atol=1e-6)
    assert torch.allclose(metrics["rewards/chosen"], trl_chosen_rewards.mean(), atol=1e-6)


def _examples(n: int = 6) -> list[PreferenceExample]:
    answer = lambda names: "Most likely diseases:\n" + "\n".join(f"{i}. {x}" for i, x in enumerate(names, 1))
    return [PreferenceExample(case_id=f"c{i}", prompt=Prompt(text=f"Patient {i}: seizures and short stature. List 2."),
                              chosen=answer(["Marfan syndrome", "Noonan syndrome"]),
                              rejected=answer(["Down syndrome", "Kabuki syndrome"])) for i in range(n)]


def test_simpo_trains_and_prefers_the_chosen_answer(tmp_path: Path):
    from rich.console import Console

    from mint_llama import LlamaTextConfig
    from mint_llama.student import LlamaTextStudent
    from mint_llama.testing import build_tiny_llama
    from mint_simpo import SimpoConfig
    from mint_simpo.trainer import SimpoOptimizer

    model_dir = build_tiny_llama(tmp_path / "tiny")
    student = LlamaTextStudent(LlamaTextConfig(model=str(model_dir), lora_r=4, lora_alpha=8, device="cpu",
                                               dtype="float32"))
    ctx = RunContext(run_dir=tmp_path / "run", seed=0, console=Console(stderr=True, quiet=True))
    examples = _examples()
    config = SimpoConfig(max_steps=8, batch_size=2, learning_rate=5e-3, save_steps=4)
    result = SimpoOptimizer(config).train(student=student, examples=examples, output_dir=tmp_path / "out", ctx=ctx)
    assert (result.adapter_dir / "adapter_model.safetensors").exists()
    assert (tmp_path / "out" / "training_curve.png").stat().st_size > 1000

    prompts = [examples[0].prompt]
    base = student.load(ctx=ctx).score(prompts=prompts, candidates=[examples[0].chosen, examples[0].rejected],
                                       batch_size=2)[0]
    tuned = student.load(ctx=ctx, adapter_dir=result.adapter_dir).score(
        prompts=prompts, candidates=[examples[0].chosen, examples[0].rejected], batch_size=2)[0]
    assert tuned[0] - tuned[1] > base[0] - base[1]  # the chosen answer gained on the rejected one
