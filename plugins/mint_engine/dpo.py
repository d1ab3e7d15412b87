"""DPO on MINT's shared-prompt packed pairs (``optimizer=dpo``, ``impl=mint``, the default for text students).

The ``dpo`` optimizer is registered by ``mint_trl`` (TRL's ``DPOTrainer`` stays the reference,
``impl=trl``, and the path for TRL-only loss types); with the ``sigmoid`` loss it hands training
to :class:`PackedDpoOptimizer`, text and Mllama vision students alike. What carries over from ORPO:

- the policy forward is one ``[prompt, chosen, rejected]`` row per pair (see
  :mod:`mint_engine.packing`), with the vocabulary projection on answer tokens only (DPO has no NLL
  term, so no prompt position is projected at all);
- the reference forward is the same packed row, without gradients, through the same weights with
  the adapter switched: disabled for a fresh LoRA (the reference is the base model), or the frozen
  ``ref`` copy of the starting adapter (DPO after SFT: the reference is the SFT model), as TRL does.

The loss and metrics are TRL's (trl 1.16, ``loss_type="sigmoid"``): summed answer log-probs,
``loss = mean(-log σ(β · ((π_c - ref_c) - (π_r - ref_r))))``, rewards ``β · (π - ref)``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch
import torch.nn.functional as F

from mint_engine.checkpoints import find_init_adapter
from mint_engine.optimizer import PackedOptimizer
from mint_engine.trainer import PackedTrainer

if TYPE_CHECKING:
    from mint_core.components import StudentModel
    from mint_core.context import RunContext

REFERENCE_ADAPTER = "ref"


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO's sigmoid loss from summed answer log-probs of policy and reference, and TRL's metrics."""
    chosen_logratios = chosen_logps.float() - ref_chosen_logps.float()
    rejected_logratios = rejected_logps.float() - ref_rejected_logps.float()
    loss = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios)).mean()
    chosen_rewards, rejected_rewards = beta * chosen_logratios.detach(), beta * rejected_logratios.detach()
    metrics = {
        "rewards/chosen": chosen_rewards.mean(), "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "logps/chosen": chosen_logps.detach().float().mean(), "logps/rejected": rejected_logps.detach().float().mean(),
    }
    return loss, metrics


@contextlib.contextmanager
def reference_weights(model: Any) -> Iterator[None]:
    """The DPO reference inside a peft model: the frozen ``ref`` adapter if loaded, else no adapter."""
    if REFERENCE_ADAPTER in getattr(model, "peft_config", {}):
        active = model.active_adapter
        model.set_adapter(REFERENCE_ADAPTER, inference_mode=True)  # activated frozen
        try:
            yield
        finally:
            model.set_adapter(active)  # peft makes `active` trainable again and freezes the others
    else:
        with model.disable_adapter():
            yield


class PackedDpoTrainer(PackedTrainer):
    """MINT's packed trainer with DPO's objective: a policy and a reference packed forward per batch.

    ``cache_reference``: keep each feature's reference log-probs from its first batch and reuse
    them in later epochs (the reference never changes; exact only without dropout, which the
    optimizers turn off by default). The first epoch computes them, as TRL does every step.
    """

    def __init__(self, *args: Any, cache_reference: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cache_reference = bool(cache_reference)
        self._reference: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def pair_statistics(self, model, inputs):
        stats = super().pair_statistics(model, inputs)
        ref_chosen, ref_rejected = self.reference_statistics(model, inputs)
        return {**stats, "ref_chosen_logps_sum": ref_chosen, "ref_rejected_logps_sum": ref_rejected}

    def reference_statistics(self, model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed chosen and rejected log-probs of the batch's pairs under the reference policy."""
        index = inputs.get("feature_index")
        keys = [int(i) for i in index.tolist()] if index is not None and self.cache_reference else []
        if keys and all(k in self._reference for k in keys):
            chosen, rejected = zip(*(self._reference[k] for k in keys))
            return torch.stack(chosen), torch.stack(rejected)
        with torch.no_grad(), reference_weights(self.accelerator.unwrap_model(model)):
            ref = super().pair_statistics(model, inputs)
        for row, key in enumerate(keys):
            self._reference[key] = (ref["chosen_logps_sum"][row], ref["rejected_logps_sum"][row])
        return ref["chosen_logps_sum"], ref["rejected_logps_sum"]

    def pair_loss(self, stats):
        return dpo_loss(stats["chosen_logps_sum"], stats["rejected_logps_sum"], stats["ref_chosen_logps_sum"],
                        stats["ref_rejected_logps_sum"], self.beta)


class PackedDpoOptimizer(PackedOptimizer):
    """DPO through MINT's packed trainer. ``config`` is ``mint_trl.DpoConfig`` (the ``dpo`` options)."""

    display_name = "DPO"

    def trainer_class(self) -> type:
        return PackedDpoTrainer

    def trainer_kwargs(self) -> dict[str, Any]:
        return {"cache_reference": bool(getattr(self.config, "disable_dropout", True))}

    def find_init_adapter(self, output_dir: Path) -> Path | None:
        return find_init_adapter(self.config.init_adapter, output_dir=output_dir)

    def prepare_model(self, sm: StudentModel, *, init_adapter: Path | None, ctx: RunContext) -> None:
        # Training starts from the init adapter and the reference IS that adapter: keep a frozen copy.
        if init_adapter is not None:
            sm.model.load_adapter(str(init_adapter), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
            ctx.log(f"DPO: starting from adapter {init_adapter} (also the reference policy)")

    def finish_model(self, model: Any) -> None:
        if REFERENCE_ADAPTER in getattr(model, "peft_config", {}):
            model.delete_adapter(REFERENCE_ADAPTER)  # the frozen reference copy is not part of the result
