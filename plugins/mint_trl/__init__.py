"""DPO, KTO and the SFT baseline, each with LoRA (peft): MINT's packed trainers, TRL's as the reference.

Registers the optimizers ``dpo`` (MINT's shared-prompt packed trainer, :mod:`mint_engine.dpo`, for
the sigmoid loss; TRL's ``DPOTrainer`` for its other losses or with ``impl=trl``: same loss), ``kto``
(MINT's packed trainer, :mod:`mint_engine.kto`, for ``loss_type=kto``; else TRL's ``KTOTrainer``) and
``sft`` (MINT's packed trainer, :mod:`mint_engine.sft`; ``impl=trl``: TRL's ``SFTTrainer``). Options
are the common trainer options of :mod:`mint_engine.options` (``optimizer.epochs``,
``optimizer.max_steps``, ...) plus each method's own. Heavy code lives in
:mod:`mint_trl.optimizer`; the Mllama cross-attention fix in :mod:`mint_trl.vision`.
"""

from __future__ import annotations

from mint_core.hookspecs import hookimpl
from mint_trl.config import DpoConfig, KtoConfig, SftConfig


@hookimpl
def mint_register_optimizers(register):
    register("dpo", _make("dpo"), config=DpoConfig,
             description="DPO (LoRA; packed shared-prompt trainer, TRL DPOTrainer for other loss types); "
                         "reference = adapter-free base or the init_adapter (e.g. SFT)",
             pairs_with={"builder": "topk"})
    register("kto", _make("kto"), config=KtoConfig,
             description="KTO (LoRA; packed shared-prompt trainer, TRL KTOTrainer for apo_zero_unpaired) on unpaired "
                         "desirable/undesirable answers",
             pairs_with={"builder": "kto"})
    register("sft", _make("sft"), config=SftConfig,
             description="SFT baseline (LoRA; packed trainer, TRL SFTTrainer with impl=trl) on answers led by the "
                         "true label",
             pairs_with={"builder": "sft"})


def _make(method: str):
    def factory(config):
        from mint_trl.optimizer import OPTIMIZERS

        cls = OPTIMIZERS[method]
        return cls(config or cls.config_class())

    factory.__name__ = f"make_{method}"
    return factory


__all__ = ["DpoConfig", "KtoConfig", "SftConfig"]
