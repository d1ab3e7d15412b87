"""The RAG knowledge base: one document per label, embedded, saved as safetensors + JSON lines.

Files in the optimizer's output folder:

- ``documents.jsonl``: ``{"label_id", "name", "text"}`` per document, in label-space order.
- ``knowledge_base.safetensors``: tensor ``embeddings`` ``[n_documents, dim]`` (unit rows), with
  the encoder name and document count in the safetensors metadata so a stale base is detected.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from mint_core.io import atomic_path, read_jsonl, write_jsonl
from mint_core.types import Label, LabelSpace

log = logging.getLogger("mint.rag")

DOCUMENTS = "documents.jsonl"
EMBEDDINGS = "knowledge_base.safetensors"


def _hpo_profile(label_id: str) -> str:
    """The HPO phenotype profile of an OMIM disease when the rare-disease plugin is installed, else ``""``."""
    if not label_id.upper().startswith("OMIM:"):
        return ""
    try:
        from mint_rare_disease.hpo import disease_profile
    except ImportError:
        return ""
    try:
        return disease_profile(label_id)
    except Exception as exc:  # noqa: BLE001 - an unannotated id or ontology problem must not stop the baseline
        log.debug("No HPO profile for %s: %s", label_id, exc)
        return ""


def label_document(label: Label, *, use_hpo: bool = True) -> str:
    """The text retrieved for ``label``: its name, synonyms and what is known of its phenotype."""
    parts = []
    if label.synonyms:
        parts.append("Also known as " + "; ".join(label.synonyms[:5]) + ".")
    description = " ".join(label.description.split())
    profile = _hpo_profile(label.id) if use_hpo else ""
    # The rare-disease task's description is a shorter cut of the same HPO profile: keep the
    # fuller one instead of repeating terms; a description that says something else stays.
    if profile and description.lower().rstrip(".") in profile.lower():
        description = ""
    if description:
        parts.append(description)
    if profile and profile.lower() not in description.lower():
        parts.append("Phenotype profile: " + profile + ".")
    return f"{label.name}: " + " ".join(parts) if parts else label.name


def build_documents(labels: LabelSpace, *, use_hpo: bool = True) -> list[dict[str, str]]:
    return [{"label_id": label.id, "name": label.name, "text": label_document(label, use_hpo=use_hpo)}
            for label in labels]


def _fingerprint(documents: Sequence[dict[str, str]], encoder: str) -> str:
    digest = hashlib.sha256(encoder.encode())
    for doc in documents:
        digest.update(json.dumps(doc, sort_keys=True).encode())
    return digest.hexdigest()


@dataclass
class KnowledgeBase:
    documents: list[dict[str, str]]
    embeddings: torch.Tensor  # [n, dim], unit rows
    encoder: str

    def search(self, queries: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
        """Top-``k`` ``(document index, cosine similarity)`` per query row, best first."""
        if len(self.documents) == 0 or k <= 0:
            return [[] for _ in range(queries.shape[0])]
        scores = queries.float() @ self.embeddings.float().T
        values, indices = scores.topk(min(k, len(self.documents)), dim=1)
        return [list(zip(row_i.tolist(), row_v.tolist())) for row_i, row_v in zip(indices, values)]

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        write_jsonl(directory / DOCUMENTS, self.documents)
        metadata = {"encoder": self.encoder, "n_documents": str(len(self.documents)),
                    "fingerprint": _fingerprint(self.documents, self.encoder)}
        with atomic_path(directory / EMBEDDINGS) as tmp:
            save_file({"embeddings": self.embeddings.contiguous().float()}, str(tmp), metadata=metadata)

    @classmethod
    def load(cls, directory: Path) -> KnowledgeBase:
        from safetensors import safe_open

        docs_path, emb_path = directory / DOCUMENTS, directory / EMBEDDINGS
        for path in (docs_path, emb_path):
            if not path.exists():
                raise FileNotFoundError(
                    f"RAG knowledge base file {path} is missing: run the optimizer's train step "
                    f"(mint train --optimizer rag) before evaluating with it")
        documents = read_jsonl(docs_path)
        with safe_open(str(emb_path), framework="pt") as handle:
            metadata: dict[str, Any] = handle.metadata() or {}
            embeddings = handle.get_tensor("embeddings")
        if embeddings.shape[0] != len(documents):
            raise ValueError(f"{emb_path} holds {embeddings.shape[0]} embeddings but {docs_path} has "
                             f"{len(documents)} documents: delete both and rerun the rag train step")
        return cls(documents=documents, embeddings=embeddings, encoder=metadata.get("encoder", ""))

    @staticmethod
    def is_current(directory: Path, documents: Sequence[dict[str, str]], encoder: str) -> bool:
        """Whether the saved base was built from exactly these documents with this encoder."""
        from safetensors import safe_open

        emb_path = directory / EMBEDDINGS
        if not emb_path.exists() or not (directory / DOCUMENTS).exists():
            return False
        try:
            with safe_open(str(emb_path), framework="pt") as handle:
                metadata = handle.metadata() or {}
        except Exception:  # noqa: BLE001 - a damaged file is simply rebuilt
            return False
        return metadata.get("fingerprint") == _fingerprint(documents, encoder)


def truncate(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` at a word boundary, with an ellipsis; unchanged when short or limit is 0."""
    text = " ".join(text.split())
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    cut = text[:max_chars].rsplit(" ", 1)[0].rstrip(",;:")
    return cut + " ..."
