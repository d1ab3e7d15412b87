"""The fused network: face CNN and/or notes encoder, projected, concatenated, classified."""

from __future__ import annotations

import torch
from torch import nn

from mint_core.registry import MintError

MODALITIES = ("both", "text", "image")


def branches(modalities: str) -> tuple[bool, bool]:
    """``(use_text, use_image)`` for a ``teacher.modalities`` value."""
    if modalities not in MODALITIES:
        raise MintError(f"teacher.modalities must be one of {', '.join(MODALITIES)}, got {modalities!r}")
    return modalities in ("both", "text"), modalities in ("both", "image")


def create_backbone(name: str, *, pretrained: bool) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0)
    except RuntimeError as exc:  # unknown model name
        raise MintError(f"teacher.image_model={name!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - hub/network errors differ between versions
        if pretrained:
            raise MintError(f"teacher.image_model={name!r}: cannot fetch pretrained weights ({exc}); "
                            "offline, use teacher.pretrained=false") from None
        raise


class GestaltNet(nn.Module):
    """``logits = head([proj_text(t) * m_t, proj_image(cnn(x)) * m_i, m_t, m_i])``.

    The masks ``m`` zero the embedding of a missing modality (a case without a photo) and tell
    the head it is missing; training-time modality dropout uses the same path.
    ``text_encoder`` is only set when the text encoder is fine-tuned; otherwise the network
    takes precomputed sentence embeddings and the checkpoint holds no text weights.

    With ``prior=True`` the notes also give a per-label prior, the diseases' phenotype similarity
    to the notes, added to the logits with a learned scale (``prior_scale``): the head then learns
    what the face and the notes add *beyond* the ontology, instead of relearning it from a few
    hundred cases (an MLP given the same similarities as inputs reached notes-only top-1 0.75 where
    the similarity alone gives 0.93, demo seed 0).
    """

    def __init__(self, *, n_labels: int, modalities: str, text_dim: int, image_model: str, pretrained: bool,
                 embed_dim: int, hidden_dim: int, dropout: float, text_encoder: nn.Module | None = None,
                 prior: bool = False, prior_scale: float = 10.0):
        super().__init__()
        self.use_text, self.use_image = branches(modalities)
        if prior and self.use_text:
            self.prior_scale = nn.Parameter(torch.tensor(float(prior_scale)))
        n_branches = int(self.use_text) + int(self.use_image)
        if self.use_text:
            self.text_encoder = text_encoder
            self.text_proj = nn.Sequential(nn.Linear(text_dim, embed_dim), nn.LayerNorm(embed_dim), nn.GELU())
        if self.use_image:
            self.image_encoder = create_backbone(image_model, pretrained=pretrained)
            # timm: forward() without a classifier returns head_hidden_size features (1024 for
            # mobilenetv3, whose conv head follows the pooled num_features); older models lack it.
            features = getattr(self.image_encoder, "head_hidden_size", None) or self.image_encoder.num_features
            self.image_proj = nn.Sequential(nn.Linear(features, embed_dim),
                                            nn.LayerNorm(embed_dim), nn.GELU())
        self.head = nn.Sequential(nn.Linear(n_branches * (embed_dim + 1), hidden_dim), nn.GELU(),
                                  nn.Dropout(dropout), nn.Linear(hidden_dim, n_labels))

    def forward(self, *, text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
                images: torch.Tensor | None = None, image_mask: torch.Tensor | None = None,
                prior: torch.Tensor | None = None, per_branch: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Fused logits; with ``per_branch`` (and two branches) also the logits of each branch alone
        (the other one masked as missing), from the same embeddings: one CNN pass serves all three."""
        parts, masks = [], []
        if self.use_text:
            mask = text_mask.float().unsqueeze(-1)
            parts.append(self.text_proj(text) * mask)
            masks.append(mask)
        if self.use_image:
            mask = image_mask.float().unsqueeze(-1)
            parts.append(self.image_proj(self.image_encoder(images)) * mask)
            masks.append(mask)
        offset = 0.0
        if prior is not None and hasattr(self, "prior_scale"):
            offset = self.prior_scale * prior * masks[0]  # the text branch comes first
        fused = self.head(torch.cat(parts + masks, dim=-1)) + offset
        if not per_branch:
            return fused
        alone = []
        if len(parts) > 1:
            for keep in range(len(parts)):
                alone.append(self.head(torch.cat([part if i == keep else torch.zeros_like(part) for i, part in enumerate(parts)]
                                                 + [mask if i == keep else torch.zeros_like(mask) for i, mask in enumerate(masks)], dim=-1))
                             + (offset if keep == 0 else 0.0))
        return fused, alone
