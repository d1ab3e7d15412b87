"""The two CLIP backends behind one small interface.

- :class:`ScratchClip`: a timm image tower (random weights) and open_clip's text transformer over
  open_clip's bundled BPE tokenizer, with a learnable temperature, sized for CPU training.
- :class:`HfClip`: a Hugging Face ``CLIPModel`` + ``CLIPProcessor`` (PLIP is one), weights from
  safetensors only.

Both expose ``pixels(images, augment)``, ``encode_image(pixels)``, ``encode_text(texts)``,
``logit_scale`` and ``module`` (the trainable ``nn.Module`` whose state is checkpointed).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from mint_core.registry import MintError
from mint_pathclip.config import PathClipConfig

# OpenAI CLIP's normalisation, which PLIP also uses; fine for H&E from scratch too.
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def is_scratch(model: str) -> bool:
    return model.strip().lower() in ("", "scratch")


def augment_square(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 90-degree rotations and flips per image: tissue has no preferred orientation."""
    out = pixels.clone()
    turns = torch.randint(0, 4, (len(pixels),), generator=generator)
    flips = torch.randint(0, 2, (len(pixels),), generator=generator)
    for i in range(len(pixels)):
        img = torch.rot90(pixels[i], int(turns[i]), dims=(1, 2))
        out[i] = img.flip(2) if flips[i] else img
    return out


BPE_SIZE = 49408  # open_clip's SimpleTokenizer vocabulary
UNK = 1


def compact_vocab(texts: Sequence[str], context_length: int) -> torch.Tensor:
    """BPE ids in compact order: padding, an unknown-token slot, every id used in ``texts``, then the
    start and end tokens, so the end token keeps the highest index (the text tower pools at argmax)."""
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer(context_length=context_length)
    sot, eot = tokenizer.sot_token_id, tokenizer.eot_token_id
    used = set(tokenizer(list(texts)).unique().tolist()) - {0, sot, eot}
    return torch.tensor([0, UNK] + sorted(used - {UNK}) + [sot, eot], dtype=torch.long)


class ScratchClip(nn.Module):
    """A small CLIP trained from scratch: ResNet image tower, causal text transformer, temperature."""

    def __init__(self, config: PathClipConfig, vocab: torch.Tensor):
        super().__init__()
        import timm
        from open_clip.tokenizer import SimpleTokenizer
        from open_clip.transformer import TextTransformer

        kwargs = {}
        if config.vision_width > 0 and config.vision_tower.startswith("resnet"):
            w = config.vision_width
            kwargs.update(channels=(w, 2 * w, 4 * w, 8 * w), stem_width=w)
        try:
            self.visual = timm.create_model(config.vision_tower, pretrained=False, num_classes=config.embed_dim,
                                            **kwargs)
        except Exception as exc:  # noqa: BLE001 - timm raises RuntimeError/TypeError for bad names/kwargs
            raise MintError(f"teacher.vision_tower={config.vision_tower!r}: timm cannot build it ({exc}); "
                            "try resnet18 or resnet10t") from exc
        heads = max(1, config.text_width // 64)
        # A compact vocabulary: only the BPE tokens of the captions and prompts get an embedding row
        # (a few hundred instead of 49,408), which keeps the text tower's optimiser step cheap on CPU.
        self.register_buffer("vocab", vocab.long(), persistent=True)
        lookup = torch.full((BPE_SIZE,), UNK, dtype=torch.long)
        lookup[vocab] = torch.arange(len(vocab))
        self.register_buffer("lookup", lookup, persistent=False)
        self.text = TextTransformer(context_length=config.context_length, vocab_size=len(vocab),
                                    width=config.text_width, heads=heads, layers=config.text_layers,
                                    output_dim=config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.tokenizer = SimpleTokenizer(context_length=config.context_length)  # bundled vocab: offline
        self.image_size = config.image_size

    @property
    def module(self) -> nn.Module:
        return self

    def pixels(self, images: Sequence[Image.Image], *, augment: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        size = (self.image_size, self.image_size)
        arrays = [np.asarray(img.convert("RGB").resize(size, Image.BICUBIC), np.float32) for img in images]
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
        if augment:
            generator = generator or torch.Generator().manual_seed(0)
            # Stain variation between slides: small per-image, per-channel gain.
            gain = 1 + 0.05 * torch.randn(len(batch), 3, 1, 1, generator=generator)
            batch = augment_square((batch * gain).clamp(0, 1), generator)
        return (batch - MEAN) / STD

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.logit_scale.device)
        return self.text(self.lookup[tokens])


class HfClip:
    """A Hugging Face CLIP checkpoint (PLIP: ``vinid/plip``)."""

    def __init__(self, config: PathClipConfig, device: torch.device):
        from transformers import CLIPModel, CLIPProcessor

        try:
            # A concrete model class never runs remote code; safetensors only (no pickle).
            self.model = CLIPModel.from_pretrained(config.model, use_safetensors=True)
            self.processor = CLIPProcessor.from_pretrained(config.model)
        except (OSError, EnvironmentError, ValueError) as exc:
            raise MintError(
                f"teacher.model={config.model!r}: could not load a CLIP checkpoint with safetensors weights ({exc}). "
                "Give a Hugging Face CLIP id (e.g. vinid/plip) with network access or a local folder holding "
                "config.json, model.safetensors and the processor files; for a .bin-only checkpoint convert it "
                "to safetensors first, or use teacher.model=scratch offline.") from exc
        self.model.to(device)
        self.logit_scale = self.model.logit_scale

    @property
    def module(self) -> nn.Module:
        return self.model

    def pixels(self, images: Sequence[Image.Image], *, augment: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        batch = self.processor(images=[img.convert("RGB") for img in images], return_tensors="pt")["pixel_values"]
        if augment:
            batch = augment_square(batch, generator or torch.Generator().manual_seed(0))
        return batch

    @staticmethod
    def _features(output) -> torch.Tensor:
        # transformers v5 returns a model output with the projected pooler_output; v4 a tensor.
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._features(self.model.get_image_features(pixel_values=pixels))

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        # Truncate to the text tower's positions: a tokenizer's model_max_length is not always set.
        limit = self.model.config.text_config.max_position_embeddings
        tok = self.processor.tokenizer(list(texts), padding=True, truncation=True, max_length=limit,
                                       return_tensors="pt")
        tok = {k: v.to(self.logit_scale.device) for k, v in tok.items()}
        return self._features(self.model.get_text_features(input_ids=tok["input_ids"],
                                                           attention_mask=tok["attention_mask"]))

    def train(self, mode: bool = True):
        self.model.train(mode)
        return self

    def eval(self):
        return self.train(False)


def build_backend(config: PathClipConfig, device: torch.device, vocab: torch.Tensor | None = None) -> ScratchClip | HfClip:
    """The backend for ``config.model``; a scratch model needs its compact ``vocab`` (see :func:`compact_vocab`)."""
    if is_scratch(config.model):
        if vocab is None:
            raise ValueError("a scratch CLIP needs its vocabulary")
        return ScratchClip(config, vocab).to(device)
    return HfClip(config, device)
