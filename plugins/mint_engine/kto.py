"""KTO on MINT's shared-prompt packed rows (``optimizer=kto``, ``impl=mint``, the default for ``loss_type=kto``).

The ``kto`` optimizer is registered by ``mint_trl`` (TRL's ``KTOTrainer`` stays the reference,
``impl=trl``, and the path for ``apo_zero_unpaired``); with ``loss_type=kto`` it hands training to
:class:`PackedKtoOptimizer`. KTO trains unpaired answers, each labelled desirable or undesirable,
and estimates its reference point, the KL term, from *mismatched* answers: TRL pairs every prompt
with the answer of its predecessor in the batch (a rotation by one within each batch of the data
read in order). MINT makes that pairing once, up front, and packs it as a pair feature:

- ``prompt_ids`` + ``chosen_ids`` = the row's own answer (desirable or not, ``label``);
- ``rejected_ids`` = its KL answer, the answer of the row before it in its batch.

So the policy and the reference each cost one packed forward per batch instead of TRL's two
padded ones (answer and KL answer), the prompt is encoded once, and the frozen-bottom cache of
:mod:`mint_engine.frozen_cache` applies, the features being fixed. The data is shuffled once
(seeded, as the TRL path does; not with ``shuffle=false``) and read in order, so each batch is
exactly the group whose answers were rotated and the KL estimate covers the same rows as TRL's.
Under several processes the rotation runs over the global batch (decision, issue 30): a row's KL
answer may come from a row another process trains, and the model does not depend on the number of
processes (DDP averages the per-process losses of equal-sized shares; the KL estimate is averaged
across processes, as TRL does).

The loss and metrics are TRL's (trl 1.16, ``KTOTrainer._compute_loss``): summed answer log-probs;
``kl = max(0, mean(KL answer: π - ref))``, detached (TRL computes it without gradients);
desirable ``1 - σ(β (π - ref - kl))``, undesirable ``1 - σ(β (kl - (π - ref)))``, weighted by
``desirable_weight`` / ``undesirable_weight``; the loss is their mean.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch

from mint_core import distributed
from mint_core.registry import MintError
from mint_core.types import PreferenceExample
from mint_engine.dpo import PackedDpoOptimizer, PackedDpoTrainer
from mint_engine.encoding import encode_answers
from mint_engine.options import resolve_seed
from mint_engine.trainer import PairCollator

if TYPE_CHECKING:
    from mint_core.components import StudentModel
    from mint_core.context import RunContext


def kto_rows(examples: Sequence[PreferenceExample]) -> list[tuple[PreferenceExample, str, bool]]:
    """``(example, answer, desirable?)`` per KTO row: unpaired answers as they are, pairs split in two."""
    rows: list[tuple[PreferenceExample, str, bool]] = []
    for ex in examples:
        if ex.kind == "unpaired" and ex.completion is not None and ex.label is not None:
            rows.append((ex, ex.completion, bool(ex.label)))
        elif ex.chosen is not None and ex.rejected is not None:
            rows += [(ex, ex.chosen, True), (ex, ex.rejected, False)]
        else:
            raise MintError(f"optimizer=kto cannot train on preference example {ex.case_id!r} (kind={ex.kind!r}): "
                            "it needs unpaired answers or pairs: use --builder kto (or topk)")
    if not rows:
        raise MintError("optimizer=kto has no training examples (preferences.jsonl is empty?)")
    return rows


def kto_features(sm: StudentModel, examples: Sequence[PreferenceExample], *, batch_size: int, seed: int,
                 max_length: int, max_prompt_length: int, ctx: RunContext | None = None,
                 shuffle: bool = True) -> list[dict[str, Any]]:
    """KTO rows as pair features, shuffled (seeded; ``shuffle=False``: file order) into the order training reads them.

    ``rejected_ids`` is the row's KL answer: within each run of ``batch_size`` consecutive rows,
    the answer of the row before (the first row takes the last one's), cut to fit ``max_length``
    after this row's prompt: TRL's ``KL_completion_ids`` for the same order. Under several
    processes ``batch_size`` is the global batch (every process's rows of one step): the KL
    pairing, and so the model trained, does not depend on how many processes share the batch.
    """
    rows = [(example, answer, {"label": label}) for example, answer, label in kto_rows(examples)]
    encoded = encode_answers(sm, rows, name="kto", max_length=max_length, max_prompt_length=max_prompt_length,
                             ctx=ctx)
    if shuffle:
        random.Random(seed).shuffle(encoded)  # the TRL path's shuffle (mint_trl.data.to_dataset)
    for start in range(0, len(encoded), batch_size):
        group = encoded[start:start + batch_size]
        answers = [row["chosen_ids"] for row in group]
        for row, kl_answer in zip(group, answers[-1:] + answers[:-1]):
            row["rejected_ids"] = kl_answer[:max_length - len(row["prompt_ids"])]  # >= 1: the row has an answer
    return encoded


def kto_loss(logps: torch.Tensor, ref_logps: torch.Tensor, kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor,
             desirable: torch.Tensor, *, beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
             gather: Any = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KTO's loss from summed answer log-probs (answers and KL answers, policy and reference), and TRL's metrics.

    ``desirable``: the rows' labels (bool). ``gather`` averages the KL estimate across processes
    (``accelerator.gather_for_metrics``), as TRL does.
    """
    kl = (kl_logps.float() - ref_kl_logps.float()).mean().detach()
    kl = (gather(kl.reshape(1)) if gather is not None else kl).mean().clamp(min=0)
    logratios = logps.float() - ref_logps.float()
    desirable = desirable.to(torch.bool)
    chosen, rejected = logratios[desirable], logratios[~desirable]
    losses = torch.cat((desirable_weight * (1 - torch.sigmoid(beta * (chosen - kl))),
                        undesirable_weight * (1 - torch.sigmoid(beta * (kl - rejected)))))
    metrics: dict[str, torch.Tensor] = {"kl": kl}
    for name, ratios, rows in (("chosen", chosen, desirable), ("rejected", rejected, ~desirable)):
        if ratios.numel():
            metrics[f"rewards/{name}"] = beta * ratios.detach().mean()
            metrics[f"logps/{name}"] = logps.detach().float()[rows].mean()
    if chosen.numel() and rejected.numel():
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return losses.nanmean(), metrics


@dataclass
class KtoCollator(PairCollator):
    """:class:`PairCollator` plus each row's label (``kto_desirable``)."""

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        out = super().__call__(features)
        out["kto_desirable"] = torch.tensor([bool(f["label"]) for f in features])
        return out


class PackedKtoTrainer(PackedDpoTrainer):
    """MINT's packed trainer with KTO's objective: answer in the chosen slot, KL answer in the rejected one."""

    collator_class = KtoCollator

    def __init__(self, *args: Any, desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.desirable_weight, self.undesirable_weight = float(desirable_weight), float(undesirable_weight)

    def pair_statistics(self, model, inputs):
        inputs = dict(inputs)
        desirable = inputs.pop("kto_desirable")
        return {**super().pair_statistics(model, inputs), "desirable": desirable}

    def pair_loss(self, stats):
        return kto_loss(stats["chosen_logps_sum"], stats["ref_chosen_logps_sum"], stats["rejected_logps_sum"],
                        stats["ref_rejected_logps_sum"], stats["desirable"], beta=self.beta,
                        desirable_weight=self.desirable_weight, undesirable_weight=self.undesirable_weight,
                        gather=self.accelerator.gather_for_metrics)


class PackedKtoOptimizer(PackedDpoOptimizer):
    """KTO through MINT's packed trainer. ``config`` is ``mint_trl.KtoConfig`` (the ``kto`` options)."""

    display_name = "KTO"
    count_name = "rows"

    def trainer_class(self) -> type:
        return PackedKtoTrainer

    def trainer_kwargs(self) -> dict[str, Any]:
        return {**super().trainer_kwargs(), "desirable_weight": self.config.desirable_weight,
                "undesirable_weight": self.config.undesirable_weight}

    def encode_features(self, sm: StudentModel, examples: Sequence[PreferenceExample], *,
                        ctx: RunContext) -> list[dict[str, Any]]:
        cfg = self.config
        if int(cfg.batch_size) < 2:
            raise MintError("optimizer=kto with loss_type=kto estimates its KL reference point from the other "
                            "answers of a batch: set optimizer.batch_size >= 2 (or loss_type=apo_zero_unpaired)")
        return kto_features(sm, examples, batch_size=int(cfg.batch_size) * distributed.world_size(),
                            seed=resolve_seed(cfg, ctx), max_length=int(cfg.max_length),
                            max_prompt_length=int(cfg.max_prompt_length), ctx=ctx, shuffle=bool(cfg.shuffle))

    def training_arguments(self, common: dict[str, Any]) -> dict[str, Any]:
        # Each batch must be the group whose answers were rotated into KL answers: read in order.
        return {**common, "train_sampling_strategy": "sequential"}

