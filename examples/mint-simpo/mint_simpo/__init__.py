"""SimPO for MINT: a third-party optimizer plugin.

Registers the optimizer ``simpo``. This module stays light (no torch) because every ``mint``
command imports every plugin to list it; the trainer lives in :mod:`mint_simpo.trainer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mint_core.hookspecs import hookimpl
from mint_engine import PackedOptions

__version__ = "0.2.0"


@dataclass
class SimpoConfig(PackedOptions):
    """SimPO's options: the training engine's common options with SimPO's defaults, plus γ and the SFT weight."""

    beta: float = field(default=2.0, metadata={"help": "Reward scale β (SimPO paper: 2.0-2.5)."})
    gamma: float = field(default=0.5, metadata={"help": "Target reward margin γ between chosen and rejected."})
    sft_weight: float = field(default=0.0, metadata={
        "help": "Weight of the NLL on the chosen answer (0: pure SimPO; >0: CPO-SimPO)."})
    nll_on_prompt: bool = field(default=False, metadata={
        "help": "With sft_weight > 0: include prompt tokens in the NLL (CPO uses answer tokens only)."})


@hookimpl
def mint_register_optimizers(register):
    register("simpo", make_simpo, config=SimpoConfig,
             description="SimPO: reference-free, length-normalized preference optimization with a margin",
             pairs_with={"builder": "topk"})


def make_simpo(config: SimpoConfig | None):
    from mint_simpo.trainer import SimpoOptimizer  # heavy imports only when a run uses SimPO

    return SimpoOptimizer(config or SimpoConfig())
