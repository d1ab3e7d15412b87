"""``optimizer.impl=trl``: TRL's ``trl.experimental.orpo.ORPOTrainer`` as the reference implementation.

TRL's trainer is used unchanged except for tokenization: it gets the very token ids MINT's
student produced (chat template, truncation), in TRL's own row format, so both implementations
train on identical inputs and any difference is the trainer's. Text students only.
"""

from __future__ import annotations

from typing import Any, Sequence

from mint_core.components import StudentModel
from mint_core.registry import MintError

TRL_KEYS = ("prompt_input_ids", "prompt_attention_mask", "chosen_input_ids", "chosen_attention_mask", "chosen_labels",
            "rejected_input_ids", "rejected_attention_mask", "rejected_labels")


def to_trl_row(feature: dict[str, Any]) -> dict[str, list[int]]:
    """A pair feature in the row format TRL's ``ORPOTrainer.tokenize_row`` produces (labels -100 on the prompt)."""
    prompt, chosen, rejected = feature["prompt_ids"], feature["chosen_ids"], feature["rejected_ids"]
    row = {"prompt_input_ids": list(prompt), "prompt_attention_mask": [1] * len(prompt)}
    for name, answer in (("chosen", chosen), ("rejected", rejected)):
        ids = list(prompt) + list(answer)
        row[f"{name}_input_ids"] = ids
        row[f"{name}_attention_mask"] = [1] * len(ids)
        row[f"{name}_labels"] = [-100] * len(prompt) + list(answer)
    return row


def _pretokenized_trainer_class():
    from trl.experimental.orpo import ORPOTrainer

    class PretokenizedORPOTrainer(ORPOTrainer):
        """TRL's ORPOTrainer reading rows already tokenized by the MINT student (see :func:`to_trl_row`)."""

        def tokenize_row(self, feature, model=None):
            return {key: feature[key] for key in TRL_KEYS}

    return PretokenizedORPOTrainer


def build_trl_trainer(cfg: Any, sm: StudentModel, features: Sequence[dict[str, Any]], *, args_kwargs: dict[str, Any],
                      callbacks: Sequence[Any] = ()) -> Any:
    """TRL's ORPO trainer on ``features`` with the common options (``args_kwargs``)."""
    if any(f.get("extras") for f in features) or getattr(sm, "modality", "text") != "text":
        raise MintError("optimizer.impl=trl supports text students only; use optimizer.impl=mint for vision students")
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig

    tokenizer = getattr(sm, "tokenizer", sm.processor)
    decode = tokenizer.decode
    rows = []
    for f in features:
        row = to_trl_row(f)
        # TRL's dataset pipeline expects the texts too; they are only carried along.
        row.update(prompt=decode(f["prompt_ids"]), chosen=decode(f["chosen_ids"]), rejected=decode(f["rejected_ids"]))
        rows.append(row)
    args = ORPOConfig(**args_kwargs, beta=float(cfg.beta), max_length=int(cfg.max_length),
                      disable_dropout=bool(getattr(cfg, "disable_dropout", True)))
    trainer_cls = _pretokenized_trainer_class()
    return trainer_cls(model=sm.model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                       callbacks=list(callbacks))
