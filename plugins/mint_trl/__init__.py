"""DPO, KTO and the SFT baseline, each with LoRA (peft): MINT's packed trainers, TRL's as the reference.

Registers the optimizers ``dpo`` (MINT's shared-prompt packed trainer, :mod:`mint_orpo.dpo`, for
the sigmoid loss; TRL's ``DPOTrainer`` for its other losses or with ``impl=trl``: same loss), ``kto``
(MINT's packed trainer, :mod:`mint_orpo.kto`, for ``loss_type=kto``; else TRL's ``KTOTrainer``) and
``sft`` (MINT's packed trainer, :mod:`mint_orpo.sft`; ``impl=trl``: TRL's ``SFTTrainer``). Options
are the common trainer options of :mod:`mint_orpo.common` (``optimizer.epochs``,
``optimizer.max_steps``, ...) plus each method's own. Heavy code lives in
:mod:`mint_trl.optimizer`; the Mllama cross-attention fix in :mod:`mint_trl.vision`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mint_core.hookspecs import hookimpl
from mint_orpo.common import TrainingOptions

_INIT_HELP = ("Start from this adapter: a peft adapter folder, a student folder holding adapter/, or a run folder "
              "(its students/sft/adapter is used first). For dpo/kto the starting adapter is also the reference "
              "policy, as in the DPO-after-SFT recipe.")


@dataclass
class PackedOptions(TrainingOptions):
    """Layout options of MINT's packed trainers (``impl=mint``), shared by ``dpo``, ``kto`` and ``sft``."""

    packing: str = field(default="auto", metadata={
        "help": "impl=mint: auto (shared-prompt rows where the attention takes 4D masks), packed, two-sequence."})
    padding_free: str = field(default="auto", metadata={
        "help": "impl=mint: one row per batch without padding: auto (flash/flex always, sdpa/eager per batch by "
                "estimated cost), true, false."})


@dataclass
class DpoConfig(PackedOptions):
    """DPO options. ``beta`` is DPO's β (strength of the KL constraint to the reference)."""

    impl: str = field(default="auto", metadata={
        "help": "auto: MINT's shared-prompt packed trainer (mint) when loss_type=sigmoid, else TRL's DPOTrainer "
                "(trl); mint; trl. Both compute the same loss."})
    init_adapter: str = field(default="", metadata={"help": _INIT_HELP})
    loss_type: str = field(default="sigmoid", metadata={
        "help": "TRL DPO loss: sigmoid (DPO), hinge, ipo, robust, ...; comma-separate to combine (impl=trl)."})
    label_smoothing: float = field(default=0.0, metadata={"help": "cDPO/robust label smoothing in [0, 0.5)."})


@dataclass
class KtoConfig(PackedOptions):
    """KTO options. ``beta`` is KTO's β."""

    impl: str = field(default="auto", metadata={
        "help": "auto: MINT's shared-prompt packed trainer (mint) when loss_type=kto, else TRL's KTOTrainer (trl); "
                "mint; trl. Both compute the same loss."})
    init_adapter: str = field(default="", metadata={"help": _INIT_HELP})
    loss_type: str = field(default="kto", metadata={
        "help": "kto (with the KL reference point; needs batch_size >= 2) or apo_zero_unpaired (impl=trl)."})
    desirable_weight: float = field(default=1.0, metadata={"help": "Loss weight of desirable answers."})
    undesirable_weight: float = field(default=1.0, metadata={"help": "Loss weight of undesirable answers."})


@dataclass
class SftConfig(PackedOptions):
    """SFT baseline options (``beta`` is unused). The loss is on answer tokens only."""

    impl: str = field(default="auto", metadata={
        "help": "auto or mint: MINT's packed trainer (answer-only NLL, frozen-bottom cache); trl: TRL's "
                "SFTTrainer. Both compute the same loss."})
    init_adapter: str = field(default="", metadata={"help": _INIT_HELP})


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
