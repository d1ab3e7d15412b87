"""Mllama (Llama 3.2 Vision) with TRL's vision collators: the cross-attention mask repair.

The problem. TRL's vision collators (DPO, KTO, SFT) run the processor on the *prompt* (with the
image) and on the *answers* separately, then concatenate the token ids. Mllama's processor returns
``cross_attention_mask`` ``[batch, tokens, images, tiles]`` sized to what it tokenized, so the
collated batch carries a mask as long as the prompt while ``input_ids`` hold prompt + answer
(and, after TRL's ``flush_left``, shifted by a different amount per row). The model then fails on
the length mismatch, or, cut to size, would let answer tokens see no image.

A second defect: ``MllamaProcessor`` prepends ``<|begin_of_text|>`` to every text that lacks it,
so the answers TRL tokenizes through it separately would each start with a BOS token in the middle
of the sequence. :class:`MllamaTextProcessor` hands the collators a processor whose text-only calls
go straight to the tokenizer (the prompt, with its image, still goes through the processor).

The fix. :class:`MllamaCrossAttentionCollator` wraps TRL's collator and rebuilds the mask from the
final ``input_ids`` with the processor's own rule (``get_cross_attention_token_mask``: each
``<|image|>`` token's image is visible from that token on, up to the next image token, so the last
image stays visible over the whole answer), keeping each image's tile count from the prompt's mask.
KTO's mismatched "KL" sequences get their own mask (``KL_cross_attention_mask``), which
:func:`kto_trainer_class` swaps in for the KL forward passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def is_mllama(model: Any) -> bool:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) == "mllama"


def rebuild_cross_attention_mask(input_ids: torch.Tensor, tiles: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """``[batch, len, images, max_tiles]`` mask for ``input_ids`` as Mllama's processor would build it.

    ``tiles`` is ``[batch, images]``: how many tiles each image of each row has (0 for absent images).
    """
    from transformers.models.mllama.processing_mllama import (
        convert_sparse_cross_attention_mask_to_dense, get_cross_attention_token_mask,
    )

    batch, length = input_ids.shape
    n_images = tiles.shape[1]
    spans = [get_cross_attention_token_mask(row.tolist(), image_token_id) for row in input_ids]
    if not any(spans):
        return torch.zeros(batch, length, n_images, 1, dtype=torch.long)
    num_tiles = [[int(t) for t in row[:len(span)]] for row, span in zip(tiles, spans)]
    max_tiles = max(1, int(tiles.max()))
    dense = torch.from_numpy(convert_sparse_cross_attention_mask_to_dense(spans, num_tiles, max_tiles, length))
    if dense.shape[2] < n_images:  # keep the image axis the pixel values have
        dense = torch.nn.functional.pad(dense, (0, 0, 0, n_images - dense.shape[2]))
    return dense[:, :, :n_images]


def tiles_per_image(cross_attention_mask: torch.Tensor) -> torch.Tensor:
    """``[batch, images]`` tile counts read off a processor-built mask (max over tokens of the tiles set)."""
    return cross_attention_mask.amax(dim=1).sum(dim=-1)


class MllamaTextProcessor:
    """A view of an ``MllamaProcessor`` whose image-free calls tokenize the text as is (no BOS added)."""

    def __init__(self, processor: Any):
        self._processor = processor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._processor, name)

    def __call__(self, images: Any = None, text: Any = None, **kwargs: Any) -> Any:
        if images is None and text is not None:
            return self._processor.tokenizer(text, **kwargs)
        return self._processor(images=images, text=text, **kwargs)


@dataclass
class MllamaCrossAttentionCollator:
    """Wraps a TRL vision collator; recomputes ``cross_attention_mask`` over prompt + answer tokens."""

    collator: Any
    image_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(examples)
        prompt_mask = batch.get("cross_attention_mask")
        if prompt_mask is None:
            return batch
        tiles = tiles_per_image(torch.as_tensor(prompt_mask))
        dtype = torch.as_tensor(prompt_mask).dtype
        max_tiles = prompt_mask.shape[-1]
        for prefix in ("", "KL_"):
            ids = batch.get(f"{prefix}input_ids")
            if ids is None:
                continue
            mask = rebuild_cross_attention_mask(torch.as_tensor(ids), tiles, self.image_token_id)
            if mask.shape[-1] < max_tiles:  # same tile axis as the aspect-ratio inputs
                mask = torch.nn.functional.pad(mask, (0, max_tiles - mask.shape[-1]))
            batch[f"{prefix}cross_attention_mask"] = mask.to(dtype)
        return batch


def kto_trainer_class(base: type) -> type:
    """``base`` (a KTOTrainer) whose KL forward passes use ``KL_cross_attention_mask``.

    TRL's KTO builds the KL batch from the main batch's model inputs, so without this the KL
    sequences (different lengths) would get the main sequences' cross-attention mask.
    """

    class MllamaKTOTrainer(base):
        _kl_cross_attention_mask = None

        def _compute_loss(self, model, inputs, return_outputs):
            # Not a model input: take it out before TRL forwards the batch.
            self._kl_cross_attention_mask = inputs.pop("KL_cross_attention_mask", None)
            try:
                return super()._compute_loss(model, inputs, return_outputs)
            finally:
                self._kl_cross_attention_mask = None

        def _compute_kl_logps(self, model, batch):
            if self._kl_cross_attention_mask is not None and "cross_attention_mask" in batch:
                mask = self._kl_cross_attention_mask.to(batch["cross_attention_mask"].device)
                batch = {**batch, "cross_attention_mask": mask}
            return super()._compute_kl_logps(model, batch)

    return MllamaKTOTrainer
