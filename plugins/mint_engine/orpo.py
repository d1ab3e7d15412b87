"""ORPO on the packed trainer: the loss, :class:`OrpoTrainer` and :class:`OrpoOptimizer` (``optimizer=orpo``).

The loss has TRL's ``ORPOTrainer`` definitions (trl 1.16, ``trl.experimental.orpo``):

- ``chosen_logps`` / ``rejected_logps``: mean per-token log-probability of each answer (the prompt
  excluded), TRL's ``get_batch_logps(average_log_prob=True)``.
- log-odds: ``log p - log(1 - p)`` with ``log(1 - exp(x))`` computed stably (:func:`log1mexp`).
- ``nll``: cross-entropy averaged over every token of the chosen sequences in the batch (prompt
  included by default, as TRL does; see ``nll_on_prompt``).
- ``loss = nll - mean(λ · log σ(log_odds_chosen - log_odds_rejected))``, no reference model.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from mint_core.components import StudentModel
from mint_core.context import RunContext
from mint_core.registry import MintError
from mint_core.types import PreferenceExample
from mint_engine.optimizer import PackedOptimizer
from mint_engine.trainer import PackedTrainer


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, branching at ``-ln 2`` to avoid cancellation (as TRL)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, nll: torch.Tensor,
              beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The ORPO loss of a batch and its (detached) metrics.

    Metric names: ``nll``, ``or_loss`` (the odds-ratio term as added to the loss), ``log_odds_ratio``
    (mean log σ), ``log_odds_chosen`` (mean log-odds difference), ``logps/chosen``, ``logps/rejected``,
    ``rewards/chosen|rejected|margins|accuracies`` (λ · mean log-prob, TRL's rewards).
    """
    chosen_logps, rejected_logps = chosen_logps.float(), rejected_logps.float()
    log_odds = (chosen_logps - rejected_logps) - (log1mexp(chosen_logps) - log1mexp(rejected_logps))
    ratio = F.logsigmoid(log_odds)
    or_loss = -(beta * ratio).mean()
    loss = nll + or_loss
    chosen_rewards, rejected_rewards = beta * chosen_logps.detach(), beta * rejected_logps.detach()
    metrics = {
        "nll": nll.detach(), "or_loss": or_loss.detach(), "log_odds_ratio": ratio.detach().mean(),
        "log_odds_chosen": log_odds.detach().mean(), "logps/chosen": chosen_logps.detach().mean(),
        "logps/rejected": rejected_logps.detach().mean(), "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(), "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
    }
    return loss, metrics


def add_token_weights(sm: StudentModel, features: list[dict[str, Any]], examples: dict[str, PreferenceExample],
                      logp_tokens: str) -> None:
    """Put ``chosen_weights``/``rejected_weights`` (1 = counted in the odds ratio) on pair ``features``."""
    from mint_engine.roles import answer_token_roles, token_weights

    for feature in features:
        example = examples[feature["case_id"]]
        for key, answer in (("chosen", example.chosen), ("rejected", example.rejected)):
            roles = answer_token_roles(sm, answer, feature[f"{key}_ids"])
            weights = token_weights(roles, logp_tokens)
            if not any(weights):
                raise MintError(f"case {example.case_id}: optimizer.logp_tokens={logp_tokens} keeps no token of its "
                                f"{key} answer (is it a numbered list of names?)")
            feature[f"{key}_weights"] = weights


class OrpoTrainer(PackedTrainer):
    """ORPO on pair features (see :mod:`mint_engine.packing`); ``beta`` is ORPO's λ.

    Why the odds-ratio term barely acts on MINT's list answers at the paper's setting (β = 0.1, the
    mean log-prob over the whole answer): a chosen and a rejected list of the same length share
    their scaffolding (header, numbers, newlines, end-of-turn), and once a name's first token is
    written its other tokens are nearly certain for both answers. Those tokens are most of the
    answer, so both mean log-probs rise together under the NLL and their odds ratio moves little;
    the tokens that decide *which* label is listed are the first token of each name
    (``benchmarks/orpo_attribution.py`` measures the split, docs/results.md has the table).
    ``logp_average=False`` takes sums instead of means; ``logp_tokens`` (on the features as
    ``chosen_weights``/``rejected_weights``, :mod:`mint_engine.roles`) restricts the odds ratio to
    name tokens or to the deciding ones. The NLL term is unchanged by both.
    """

    def __init__(self, *args: Any, logp_average: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.logp_average = bool(logp_average)

    def pair_loss(self, stats: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        suffix = "" if self.logp_average else "_sum"
        return orpo_loss(stats["chosen_logps" + suffix], stats["rejected_logps" + suffix], stats["nll"], self.beta)


class OrpoOptimizer(PackedOptimizer):
    """MINT's ORPO (``optimizer=orpo``); ``impl=trl`` trains TRL's ``ORPOTrainer`` on the same token ids.

    Subclass it for other reference-free pair objectives with an NLL term: override
    :meth:`trainer_class` (an :class:`OrpoTrainer` subclass whose ``pair_loss`` is the new objective),
    :meth:`trainer_kwargs` and :attr:`display_name`; or subclass :class:`PackedOptimizer` directly.
    """

    display_name = "ORPO"
    impls = ("mint", "trl")

    def trainer_class(self) -> type:
        return OrpoTrainer

    def trainer_kwargs(self) -> dict[str, Any]:
        return {"logp_average": getattr(self.config, "logp_average", True)}

    def encode_features(self, sm: StudentModel, examples: Sequence[PreferenceExample], *,
                        ctx: RunContext) -> list[dict[str, Any]]:
        features = super().encode_features(sm, examples, ctx=ctx)
        logp_tokens = getattr(self.config, "logp_tokens", "all")
        if logp_tokens != "all":
            by_case = {example.case_id: example for example in examples}
            add_token_weights(sm, features, by_case, logp_tokens)
        return features

    def check_config(self) -> None:
        super().check_config()
        if self.config.impl == "trl" and (getattr(self.config, "logp_tokens", "all") != "all"
                                          or not getattr(self.config, "logp_average", True)):
            raise MintError("optimizer.logp_tokens and optimizer.logp_average=false need optimizer.impl=mint "
                            "(TRL's ORPOTrainer takes the mean over the whole answer)")
        if self.config.impl == "trl" and not getattr(self.config, "nll_on_prompt", True):
            raise MintError("optimizer.nll_on_prompt=false needs optimizer.impl=mint (TRL's NLL always covers the "
                            "prompt)")

    def reference_trainer(self, sm: StudentModel, features: list[dict[str, Any]], *, args_kwargs: dict[str, Any],
                          callbacks: Sequence[Any]) -> Any:
        from mint_engine.trl_orpo import build_trl_trainer

        return build_trl_trainer(self.config, sm, features, args_kwargs=args_kwargs, callbacks=callbacks)
