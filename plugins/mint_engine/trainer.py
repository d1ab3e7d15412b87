""":class:`PackedTrainer`: a ``transformers.Trainer`` over shared-prompt packed pairs; objectives subclass it.

A subclass implements :meth:`PackedTrainer.pair_loss` (ORPO in :mod:`mint_engine.orpo`, DPO, KTO,
SFT beside it, SimPO in the example plugin) and may extend :meth:`PackedTrainer.pair_statistics`
(a reference model's statistics). Only ``compute_loss`` and ``log`` are overridden, plus a custom
collator, so the Trainer's
accelerate integration (DDP, DeepSpeed, FSDP, mixed precision, gradient accumulation,
checkpointing and resuming) works unchanged. The forward goes through the wrapped model's own
``forward`` (``logits_to_keep`` restricts the vocabulary projection), never through inner modules.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from transformers import Trainer

from mint_core import prepacked
from mint_core.decoder import mask_kind_for
from mint_engine.packing import (collate_packed, collate_two_sequence, forward_pairs, gather_weights, layout_costs,
                                 varlen_attention)


#: accelerate's ``mixed_precision`` -> the dtype the model's forward runs its matrix products in.
MIXED_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class PairCollator:
    """Collates pair features into the packed layout, or the two-sequence one (``packed=False``).

    ``padding_free``: True puts the whole batch in one row, False keeps one row per sequence, None
    decides per batch by :func:`mint_engine.packing.layout_costs` with ``attention_weight``.
    """

    pad_id: int
    packed: bool = True
    nll_on_prompt: bool = True
    padding_free: bool | None = False
    attention_weight: float = 0.0
    segments: bool = False  # padded rows run mint_engine.segment_attention (cheaper attention than dense)

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        collate = collate_packed if self.packed else collate_two_sequence
        padding_free = self.padding_free
        if padding_free is None:
            costs = layout_costs(features, packed=self.packed, attention_weight=self.attention_weight,
                                 segments=self.segments)
            padding_free = costs["padding_free"] < costs["padded"]
        out = collate(features, pad_id=self.pad_id, nll_on_prompt=self.nll_on_prompt, padding_free=padding_free)
        if any("chosen_weights" in f for f in features):  # optimizer.logp_tokens (see mint_engine.roles)
            out["g_weight"] = gather_weights(out, features)
        if all("feature_index" in f for f in features):  # which features these are (the trainers' caches)
            out["feature_index"] = torch.tensor([int(f["feature_index"]) for f in features], dtype=torch.long)
        return out


def choose_packing(model: Any, packing: str, features: Sequence[dict[str, Any]]) -> tuple[bool, str | None, str]:
    """(packed?, mask kind, reason) for the ``packing`` option: auto, packed, two-sequence."""
    if packing not in {"auto", "packed", "two-sequence"}:
        raise ValueError(f"optimizer.packing={packing!r}: use auto, packed or two-sequence")
    kind = mask_kind_for(model)
    has_images = any(f.get("extras") for f in features)
    if packing == "two-sequence":
        return False, kind, "requested"
    # Image inputs pack where MINT knows how the model sees them: Mllama's images enter through
    # cross-attention with a per-token mask, which the packed layout rebuilds (tests compare).
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    problem = (f"the student passes image inputs to a '{model_type}' model (packed only for mllama)"
               if has_images and model_type != "mllama" else None if kind else
               f"attention '{getattr(model.config, '_attn_implementation', '?')}' takes no custom 4D mask")
    if problem:
        if packing == "packed":
            raise ValueError(f"optimizer.packing=packed is not possible: {problem}; use packing=auto")
        return False, kind, problem
    return True, kind, f"shared prompt, 4D {kind} mask"


def choose_padding_free(model: Any, option: str, features: Sequence[dict[str, Any]]) -> tuple[bool | None, str]:
    """(padding-free: True, False or None = per batch; reason) for the ``padding_free`` option: auto, true, false.

    ``auto``: always where the attention kernel skips the work between packed sequences
    (flash-attention's varlen kernels, flex attention). Under sdpa or eager the single row gets a
    dense mask, so attention runs over every pair of the batch's tokens: per batch, whichever of
    padding and that attention is estimated cheaper (:func:`mint_engine.packing.layout_costs`).
    Image inputs always keep one row per pair.
    """
    text = str(option).strip().lower()
    if text not in {"auto", "true", "false"}:
        raise ValueError(f"optimizer.padding_free={option!r}: use auto, true or false")
    if any(f.get("extras") for f in features):
        if text == "true":
            raise ValueError("optimizer.padding_free=true is not possible with image inputs; use auto or false")
        return False, "image inputs"
    if text == "auto":
        if varlen_attention(model):
            return True, "varlen attention"
        return None, "per batch: padding vs dense-mask attention, estimated"
    return text == "true", "requested"


class PackedTrainer(Trainer):
    """A packed-pair objective (see :mod:`mint_engine.packing`): subclasses implement :meth:`pair_loss`.

    ``beta`` is the objective's strength (ORPO's λ, DPO's and KTO's β); ``mask_kind`` the 4D mask
    form of the student's attention; ``frozen_cache`` a :class:`mint_engine.frozen_cache.FrozenBottomCache`.
    """

    # compute_loss returns the per-micro-batch mean; the Trainer divides by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, beta: float = 0.1, mask_kind: str | None = None, frozen_cache: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.beta = float(beta)
        self.mask_kind = mask_kind
        #: :class:`mint_engine.frozen_cache.FrozenBottomCache` or None; used for batches carrying ``feature_index``.
        self.frozen_cache = frozen_cache
        self._stored: dict[str, list[float]] = defaultdict(list)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().train(*args, **kwargs)
        finally:
            # The reordered frozen weights installed with the trainer (mint_core.prepacked) go with the run:
            # afterwards the weights may change (a merge) in ways the reordered copies would not see.
            prepacked.remove(self.model)

    def _get_train_sampler(self, train_dataset=None):
        """The training order of :mod:`mint_engine.sharding`: each process keeps its own features."""
        from mint_engine.sharding import FeatureOrder

        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return FeatureOrder(len(dataset), batch_size=self.args.per_device_train_batch_size,
                            world_size=self.args.world_size, shuffle=self.args.train_sampling_strategy != "sequential",
                            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.args.world_size > 1:
            # The NLL is a mean over the batch's tokens. Each process sees its share of the batch and
            # DDP averages their gradients: normalising by all processes' tokens / N makes that
            # average the one-process token mean (same loss, same gradients, whatever N).
            total = self.accelerator.reduce(inputs["n_nll"].to(self.accelerator.device), reduction="sum")
            inputs = {**inputs, "n_nll": total.to(inputs["n_nll"].device) / self.args.world_size}
        stats = self.pair_statistics(model, inputs)
        loss, metrics = self.pair_loss(stats)
        for key, value in metrics.items():
            self._stored[key].append(float(self.accelerator.gather_for_metrics(value.reshape(1)).mean()))
        if return_outputs:
            return loss, {**stats, **metrics}
        return loss

    def pair_statistics(self, model: Any, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The batch's pair statistics (:func:`mint_engine.packing.pair_statistics`) that :meth:`pair_loss` reads.

        Objectives with a reference model (DPO) extend them with the reference's statistics.
        """
        cache = self.frozen_cache if "feature_index" in inputs else None
        return forward_pairs(model, inputs, mask_kind=self.mask_kind, frozen_cache=cache,
                             projection_dtype=MIXED_PRECISION.get(str(self.accelerator.mixed_precision)))

    def pair_loss(self, stats: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of a batch from its pair statistics (``chosen_logps`` and ``rejected_logps``: mean
        per-token log-probabilities of each answer; ``nll``), and its metrics to log.

        Subclasses swap the objective and keep everything else (packing, logging, checkpoints):
        the example plugin ``mint-simpo`` overrides only this method.
        """
        raise NotImplementedError(f"{type(self).__name__} defines no pair_loss")

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Mean of the metrics of every micro-batch since the last log (as TRL does).
        if "loss" in logs:
            for key, values in self._stored.items():
                logs[key] = sum(values) / len(values)
            self._stored.clear()
        super().log(logs, start_time)
