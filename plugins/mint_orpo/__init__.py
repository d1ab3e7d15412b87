"""MINT's ORPO optimizer: odds-ratio preference optimization with a shared-prompt packed forward.

Registers the optimizer ``orpo``. The loss is TRL's ``ORPOTrainer`` loss (same definitions), but
each pair's prompt is run once: ``[prompt, chosen, rejected]`` in one sequence whose attention mask
keeps the two answers apart, and the vocabulary projection runs only where a log-probability is
needed. With LoRA on the top layers only (``student.lora_layers``) the frozen bottom's hidden states
are computed once per pair and reused every epoch (``optimizer.cache_frozen``, see
:mod:`mint_orpo.frozen_cache`). ``optimizer.impl=trl`` runs TRL's own trainer instead. Heavy code lives in
:mod:`mint_orpo.trainer`; shared trainer pieces (options, callbacks, curves) in :mod:`mint_orpo.common`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mint_core.hookspecs import hookimpl
from mint_orpo.common import TrainingOptions


@dataclass
class OrpoConfig(TrainingOptions):
    """ORPO options: the common trainer options plus ORPO's own. ``beta`` is ORPO's λ."""

    nll_on_prompt: bool = field(default=True, metadata={
        "help": "Include the prompt tokens in the NLL term, as TRL's ORPOTrainer does (true, loss-identical to "
                "TRL); false = answer tokens only (the ORPO paper's code; skips the vocabulary projection on "
                "prompt tokens, faster)."})
    disable_dropout: bool = field(default=True, metadata={
        "help": "Turn dropout off in the model (LoRA dropout included), as TRL's ORPOTrainer does."})
    packing: str = field(default="auto", metadata={
        "help": "auto: one [prompt, chosen, rejected] sequence per pair (shared prompt; images once per pair for "
                "Mllama) when the model's attention accepts custom 4D masks (sdpa, eager), else two sequences; "
                "packed; two-sequence."})
    padding_free: str = field(default="auto", metadata={
        "help": "Put a batch's pairs back to back in one row, no padding. auto: always with flash/flex attention "
                "(they skip the work between sequences); with sdpa/eager (dense mask) per batch, when the padding "
                "saved outweighs the attention added (estimated); true; false."})


@hookimpl
def mint_register_optimizers(register):
    register("orpo", _make_orpo, config=OrpoConfig,
             description="ORPO (odds-ratio preference optimization), shared-prompt packed trainer; impl=trl for TRL's",
             pairs_with={"builder": "topk"})


def _make_orpo(config: OrpoConfig | None):
    from mint_orpo.optimizer import OrpoOptimizer

    return OrpoOptimizer(config or OrpoConfig())
