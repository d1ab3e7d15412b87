"""SimPO on MINT's training engine: only the objective is new.

:meth:`mint_engine.PackedTrainer.pair_loss` receives each batch's pair statistics (mean per-token
log-probabilities of the chosen and rejected answers, computed with the shared prompt once, and the
NLL) and returns the loss; :class:`mint_engine.PackedOptimizer` does everything else (encoding,
packing, the frozen-bottom cache, checkpoints, resuming, several processes).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mint_engine import PackedOptimizer, PackedTrainer


def simpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, *, beta: float, gamma: float,
               nll: torch.Tensor | None = None, sft_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``−log σ(β·(c − r) − γ)`` averaged over pairs, plus ``sft_weight · nll``; and metrics to log.

    ``chosen_logps`` / ``rejected_logps`` are length-normalized (mean per answer token): SimPO's
    reward, which needs no reference model.
    """
    chosen_logps, rejected_logps = chosen_logps.float(), rejected_logps.float()
    margin = beta * (chosen_logps - rejected_logps) - gamma
    preference = -F.logsigmoid(margin).mean()
    loss = preference + sft_weight * nll if (sft_weight and nll is not None) else preference
    chosen_rewards, rejected_rewards = beta * chosen_logps.detach(), beta * rejected_logps.detach()
    metrics = {
        "simpo_loss": preference.detach(), "margin": margin.detach().mean(),
        "logps/chosen": chosen_logps.detach().mean(), "logps/rejected": rejected_logps.detach().mean(),
        "rewards/chosen": chosen_rewards.mean(), "rewards/rejected": rejected_rewards.mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
    }
    if nll is not None:
        metrics["nll"] = nll.detach()
    return loss, metrics


class SimpoTrainer(PackedTrainer):
    def __init__(self, *args: Any, gamma: float = 0.5, sft_weight: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gamma, self.sft_weight = float(gamma), float(sft_weight)

    def pair_loss(self, stats: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return simpo_loss(stats["chosen_logps"], stats["rejected_logps"], beta=self.beta, gamma=self.gamma,
                          nll=stats.get("nll"), sft_weight=self.sft_weight)


class SimpoOptimizer(PackedOptimizer):
    display_name = "SimPO"

    def trainer_class(self) -> type:
        return SimpoTrainer

    def trainer_kwargs(self) -> dict[str, Any]:
        return {"gamma": self.config.gamma, "sft_weight": self.config.sft_weight}
