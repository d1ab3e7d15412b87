"""MINT's retrieval-augmented baseline: no weights change, the prompt gets reference documents.

Registers the optimizer ``rag``. ``train`` embeds one document per label (its name and
description; for OMIM diseases the HPO phenotype profile) into a knowledge base saved in the
optimizer's output folder; ``augment_prompts`` retrieves the closest documents for each case's
notes and inserts them into the prompt. Heavy imports live in :mod:`mint_rag.optimizer`.
"""

from __future__ import annotations

from mint_core.hookspecs import hookimpl
from mint_rag.config import RagConfig


@hookimpl
def mint_register_optimizers(register):
    register("rag", _make_rag, config=RagConfig,
             description="Retrieval-augmented baseline: label documents (MiniLM) inserted into prompts, no training")


def _make_rag(config: RagConfig | None):
    from mint_rag.optimizer import RagOptimizer

    return RagOptimizer(config or RagConfig())


__all__ = ["RagConfig"]
