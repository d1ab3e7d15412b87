"""Options of the ``dpo``, ``kto`` and ``sft`` optimizers: the engine's common options plus each method's own.
Light: dataclasses only."""

from __future__ import annotations

from dataclasses import dataclass, field

from mint_engine.options import PackedOptions

_INIT_HELP = ("Start from this adapter: a peft adapter folder, a student folder holding adapter/, or a run folder "
              "(its students/sft/adapter is used first). For dpo/kto the starting adapter is also the reference "
              "policy, as in the DPO-after-SFT recipe.")


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
