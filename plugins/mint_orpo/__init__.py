"""MINT's ORPO optimizer: odds-ratio preference optimization on MINT's training engine.

Registers the optimizer ``orpo``: its options here, its training in :mod:`mint_engine.orpo`. The
loss is TRL's ``ORPOTrainer`` loss (same definitions), but each pair's prompt is run once
(``[prompt, chosen, rejected]`` in one sequence whose attention mask keeps the two answers apart),
the vocabulary projection runs only where a log-probability is needed, and with LoRA on the top
layers only (``student.lora_layers``) the frozen bottom's hidden states are computed once per pair
(``optimizer.cache_frozen``, :mod:`mint_engine.frozen_cache`). ``optimizer.impl=trl`` runs TRL's
own trainer on the same token ids instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mint_core.hookspecs import hookimpl
from mint_engine.options import PackedOptions


@dataclass
class OrpoConfig(PackedOptions):
    """ORPO options: the common trainer options plus ORPO's own. ``beta`` is ORPO's λ."""

    nll_on_prompt: bool = field(default=True, metadata={
        "help": "Include the prompt tokens in the NLL term, as TRL's ORPOTrainer does (true, loss-identical to "
                "TRL); false = answer tokens only (the ORPO paper's code; skips the vocabulary projection on "
                "prompt tokens, faster)."})
    disable_dropout: bool = field(default=True, metadata={
        "help": "Turn dropout off in the model (LoRA dropout included), as TRL's ORPOTrainer does."})
    logp_tokens: str = field(default="all", metadata={
        "help": "Answer tokens the odds ratio is taken over: all (the ORPO paper, TRL), names (the label names' "
                "tokens), decision (the first token of each listed name: the one that picks the label; "
                "see mint_engine.roles). The NLL term always covers the whole answer."})
    logp_average: bool = field(default=True, metadata={
        "help": "Odds ratio of the answers' mean token log-probs (true: the paper, TRL) or of their sums (false)."})


@hookimpl
def mint_register_optimizers(register):
    register("orpo", _make_orpo, config=OrpoConfig,
             description="ORPO (odds-ratio preference optimization), shared-prompt packed trainer; impl=trl for TRL's",
             pairs_with={"builder": "topk"})


def _make_orpo(config: OrpoConfig | None):
    from mint_engine.orpo import OrpoOptimizer

    return OrpoOptimizer(config or OrpoConfig())
