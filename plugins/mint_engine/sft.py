"""The SFT baseline on MINT's packed trainer (``optimizer=sft``, ``impl=mint``, the default).

The ``sft`` optimizer is registered by ``mint_trl`` (TRL's ``SFTTrainer`` stays the reference,
``impl=trl``); by default it hands training to :class:`PackedSftOptimizer`. Each answer to imitate
is a pair feature with an empty rejected block (``[prompt, answer]``), so SFT gets what ORPO and DPO
get: the vocabulary projection at answer positions only, padding chosen per batch, and the
frozen-bottom cache (:mod:`mint_engine.frozen_cache`) when LoRA sits on the top layers only.

The loss is TRL's with ``completion_only_loss=True``: the mean negative log-likelihood over the
batch's answer tokens (the packed statistics' ``nll`` with ``nll_on_prompt=False``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from mint_core.registry import MintError
from mint_core.types import PreferenceExample
from mint_engine.checkpoints import find_init_adapter
from mint_engine.encoding import encode_answers
from mint_engine.optimizer import PackedOptimizer
from mint_engine.trainer import PackedTrainer

if TYPE_CHECKING:
    from pathlib import Path

    from mint_core.components import StudentModel
    from mint_core.context import RunContext


def sft_answers(examples: Sequence[PreferenceExample]) -> list[tuple[PreferenceExample, str]]:
    """``(example, answer)`` to imitate: SFT answers, the chosen side of pairs, desirable unpaired answers."""
    out: list[tuple[PreferenceExample, str]] = []
    for ex in examples:
        if ex.kind == "sft" and ex.completion is not None:
            out.append((ex, ex.completion))
        elif ex.chosen is not None:
            out.append((ex, ex.chosen))
        elif ex.kind == "unpaired":  # an undesirable answer has nothing to imitate: skipped
            if ex.label and ex.completion is not None:
                out.append((ex, ex.completion))
        else:
            raise MintError(f"optimizer=sft cannot train on preference example {ex.case_id!r} (kind={ex.kind!r}): "
                            "it needs answers to imitate: use --builder sft (or topk)")
    if not out:
        raise MintError("optimizer=sft has no training examples (preferences.jsonl is empty?)")
    return out


class PackedSftTrainer(PackedTrainer):
    """MINT's packed trainer with the SFT objective: answer-token NLL (the rejected block is empty)."""

    def pair_loss(self, stats):
        return stats["nll"], {"logps/chosen": stats["chosen_logps"].detach().mean()}


class PackedSftOptimizer(PackedOptimizer):
    """SFT through MINT's packed trainer. ``config`` is ``mint_trl.SftConfig`` (the ``sft`` options)."""

    display_name = "SFT"
    count_name = "rows"

    def trainer_class(self) -> type:
        return PackedSftTrainer

    def find_init_adapter(self, output_dir: Path) -> Path | None:
        return find_init_adapter(self.config.init_adapter, output_dir=output_dir)

    def encode_features(self, sm: StudentModel, examples: Sequence[PreferenceExample], *,
                        ctx: RunContext) -> list[dict[str, Any]]:
        cfg = self.config
        rows = [(example, answer, {"rejected_ids": []}) for example, answer in sft_answers(examples)]
        return encode_answers(sm, rows, name="sft", max_length=int(cfg.max_length),
                              max_prompt_length=int(cfg.max_prompt_length), ctx=ctx)
