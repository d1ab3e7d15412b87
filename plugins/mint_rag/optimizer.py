"""The ``rag`` optimizer: build a label knowledge base, then add retrieved documents to prompts.

Decisions:

- The query for a case is its notes (``Case.text``), falling back to the prompt text: the prompt
  adds a fixed question that would pull every query towards the same documents.
- Text only. A vision student's prompt is an image plus a fixed question, so there is nothing
  case-specific to retrieve with; ``train`` refuses image students up front (before any work)
  with an error naming the flag, and ``augment_prompts`` refuses image prompts.
- The documents go before the question: before the prompt's last paragraph when it has several
  (tasks write the notes first and the question last), else before the whole prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from mint_core.components import Optimizer, Student, TrainResult
from mint_core.io import read_json
from mint_core.registry import MintError
from mint_core.types import Case, LabelSpace, PreferenceExample, Prompt, TaskData

from mint_rag.config import RagConfig
from mint_rag.knowledge import KnowledgeBase, build_documents, truncate

if TYPE_CHECKING:
    from mint_core.context import RunContext

HEADER = "Reference information:"


def _label_space(ctx: RunContext) -> LabelSpace:
    """The task's labels: ``ctx.extras["data"]`` from the pipeline, else the run's ``labels.json``."""
    data = ctx.extras.get("data")
    if isinstance(data, TaskData):
        return data.labels
    labels_file = ctx.path("labels.json")
    if labels_file.exists():
        return LabelSpace.from_list(read_json(labels_file))
    raise MintError(f"optimizer=rag needs the task's label space: neither ctx.extras['data'] nor {labels_file} "
                    f"is available (run the task step first)")


def insert_reference(text: str, documents: Sequence[str]) -> str:
    """``text`` with a "Reference information:" list of ``documents`` placed before the question."""
    if not documents:
        return text
    block = HEADER + "\n" + "\n".join(f"- {doc}" for doc in documents)
    paragraphs = text.split("\n\n")
    if len(paragraphs) > 1:
        # Everything but the last paragraph (the notes), then the references, then the question.
        return "\n\n".join([*paragraphs[:-1], block, paragraphs[-1]])
    return block + "\n\n" + text


class RagOptimizer(Optimizer):
    """Retrieval-augmented baseline: no weights change, prompts gain the closest label documents."""

    default_builder = "sft"  # unused: RAG learns nothing from the examples
    modalities = ("text",)  # retrieval reads the case notes

    def __init__(self, config: RagConfig):
        if config.top_docs < 1:
            raise MintError(f"rag.top_docs must be at least 1, got {config.top_docs}")
        self.config = config
        self._encoder = None

    def _get_encoder(self):
        if self._encoder is None:
            from mint_rag.encoder import SentenceEncoder

            self._encoder = SentenceEncoder(self.config.encoder, device=self.config.device,
                                            max_tokens=self.config.max_tokens)
        return self._encoder

    def train(self, *, student: Student, examples: Sequence[PreferenceExample], output_dir: Path,
              ctx: RunContext) -> TrainResult:
        if getattr(student, "modality", "text") != "text":
            raise MintError(
                "optimizer=rag is a text-only baseline: it retrieves with the case notes, and this student "
                f"sees {student.modality}s. Pick another optimizer (--optimizer orpo|dpo|kto|sft) or a text student.")
        output_dir = Path(output_dir)
        labels = _label_space(ctx)
        documents = build_documents(labels)
        if KnowledgeBase.is_current(output_dir, documents, self.config.encoder):
            ctx.log(f"RAG knowledge base in {output_dir} is up to date ({len(documents)} documents)")
        else:
            ctx.log(f"Embedding {len(documents)} label documents with {self.config.encoder}")
            encoder = self._get_encoder()
            embeddings = encoder.encode([doc["text"] for doc in documents], batch_size=self.config.batch_size)
            KnowledgeBase(documents=documents, embeddings=embeddings, encoder=self.config.encoder).save(output_dir)
        with_profile = sum(1 for doc in documents if doc["text"] != doc["name"])
        return TrainResult(output_dir=output_dir, adapter_dir=None,
                           metrics={"documents": float(len(documents)), "documents_with_text": float(with_profile)})

    def retrieve(self, *, queries: Sequence[str], output_dir: Path) -> list[list[dict[str, object]]]:
        """Top ``rag.top_docs`` documents per query: the document dict plus its ``score`` (cosine)."""
        kb = KnowledgeBase.load(Path(output_dir))
        if kb.encoder and kb.encoder != self.config.encoder:
            raise MintError(f"The knowledge base in {output_dir} was embedded with {kb.encoder!r} but "
                            f"rag.encoder={self.config.encoder!r}: rerun the rag train step")
        vectors = self._get_encoder().encode(list(queries), batch_size=self.config.batch_size)
        return [[{**kb.documents[i], "score": score} for i, score in hits]
                for hits in kb.search(vectors, self.config.top_docs)]

    def augment_prompts(self, *, prompts: Sequence[Prompt], cases: Sequence[Case], output_dir: Path,
                        ctx: RunContext) -> list[Prompt]:
        if len(prompts) != len(cases):
            raise ValueError(f"augment_prompts got {len(prompts)} prompts for {len(cases)} cases")
        if any(prompt.image is not None for prompt in prompts):
            raise MintError("optimizer=rag augments text prompts only, and these prompts carry images "
                            "(a vision student): use another optimizer with --student llama-vision")
        if not prompts:
            return []
        queries = [case.text.strip() if case.text and case.text.strip() else prompt.text
                   for prompt, case in zip(prompts, cases)]
        hits = self.retrieve(queries=queries, output_dir=output_dir)
        ctx.log(f"RAG: inserted {self.config.top_docs} reference documents into {len(prompts)} prompts")
        return [Prompt(text=insert_reference(prompt.text, [truncate(str(doc["text"]), self.config.max_doc_chars)
                                                           for doc in docs]),
                       image=prompt.image, system=prompt.system)
                for prompt, docs in zip(prompts, hits)]
