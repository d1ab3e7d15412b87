"""The RAG baseline: knowledge base build, retrieval and prompt augmentation with the bundled MiniLM."""

from __future__ import annotations

import json

import pytest
import torch

from mint_core.context import RunContext
from mint_core.registry import MintError
from mint_core.types import Case, Label, LabelSpace, Prompt, TaskData

from mint_rag import RagConfig
from mint_rag.knowledge import DOCUMENTS, EMBEDDINGS, KnowledgeBase, label_document, truncate
from mint_rag.optimizer import HEADER, RagOptimizer, insert_reference

LABELS = LabelSpace([
    Label("OMIM:154700", "Marfan syndrome", ("MFS",),
          "Tall stature, arachnodactyly, ectopia lentis, aortic root dilatation, pectus excavatum, joint hypermobility"),
    Label("OMIM:163950", "Noonan syndrome", (),
          "Short stature, pulmonary valve stenosis, webbed neck, hypertelorism, cryptorchidism, bleeding tendency"),
    Label("OMIM:190685", "Down syndrome", (),
          "Intellectual disability, upslanted palpebral fissures, atrioventricular septal defect, hypotonia, "
          "single transverse palmar crease"),
    Label("OMIM:105830", "Angelman syndrome", (),
          "Severe speech delay, ataxia, happy demeanor with frequent laughter, seizures, microcephaly"),
    Label("OMIM:176270", "Prader-Willi syndrome", (),
          "Neonatal hypotonia, feeding difficulties in infancy, hyperphagia, obesity, hypogonadism, small hands"),
    Label("OMIM:194050", "Williams syndrome", (),
          "Supravalvular aortic stenosis, hypercalcemia, elfin facies, overfriendliness, intellectual disability"),
])


class _TextStudent:
    modality = "text"


class _VisionStudent:
    modality = "image"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One knowledge base for the module (embedding is the slow part)."""
    torch.manual_seed(0)
    run_dir = tmp_path_factory.mktemp("run")
    ctx = RunContext(run_dir=run_dir, extras={"data": TaskData(labels=LABELS, cases=[])})
    optimizer = RagOptimizer(RagConfig(top_docs=3, max_doc_chars=200, device="cpu"))
    out = run_dir / "students" / "rag"
    result = optimizer.train(student=_TextStudent(), examples=[], output_dir=out, ctx=ctx)
    return optimizer, ctx, out, result


def test_knowledge_base_files(built):
    optimizer, _, out, result = built
    assert result.adapter_dir is None and result.output_dir == out
    assert result.metrics["documents"] == len(LABELS)
    docs = [json.loads(line) for line in (out / DOCUMENTS).read_text().splitlines()]
    assert [d["label_id"] for d in docs] == LABELS.ids
    assert docs[0]["text"].startswith("Marfan syndrome: ") and "arachnodactyly" in docs[0]["text"]
    kb = KnowledgeBase.load(out)
    assert kb.embeddings.shape == (len(LABELS), 384)
    assert kb.encoder == "minilm"
    assert torch.allclose(kb.embeddings.norm(dim=1), torch.ones(len(LABELS)), atol=1e-4)
    # Distinct documents, distinct vectors.
    sims = kb.embeddings @ kb.embeddings.T
    assert (sims - torch.eye(len(LABELS))).max() < 0.99


def test_retrieval_finds_the_disease_from_its_own_profile(built):
    optimizer, _, out, _ = built
    # A query written from each disease's profile (reworded as notes) retrieves that disease first.
    queries = [f"The patient has {label.description.lower()}." for label in LABELS]
    hits = optimizer.retrieve(queries=queries, output_dir=out)
    assert [h[0]["label_id"] for h in hits] == LABELS.ids
    assert all(len(h) == 3 for h in hits)
    assert all(h[0]["score"] >= h[1]["score"] >= h[2]["score"] for h in hits)


def test_augment_prompts_inserts_documents_before_the_question(built):
    optimizer, ctx, out, _ = built
    notes = "Seizures, ataxia, severe speech delay, microcephaly and frequent laughter."
    prompt = Prompt(text=f"Clinical notes: {notes}\n\nQuestion: which diseases best explain these findings?",
                    system="You are a clinical geneticist.")
    case = Case(id="c1", label_ids=("OMIM:105830",), split="test", text=notes)
    [augmented] = optimizer.augment_prompts(prompts=[prompt], cases=[case], output_dir=out, ctx=ctx)
    assert augmented.system == prompt.system and augmented.image is None
    notes_at, ref_at = augmented.text.index("Clinical notes"), augmented.text.index(HEADER)
    question_at = augmented.text.index("Question:")
    assert notes_at < ref_at < question_at
    block = augmented.text[ref_at:question_at].strip().splitlines()
    assert len(block) == 1 + 3 and all(line.startswith("- ") for line in block[1:])
    assert block[1].startswith("- Angelman syndrome: ")
    assert all(len(line) <= 2 + 200 + 4 for line in block[1:])  # max_doc_chars respected


def test_rebuild_is_skipped_when_current(built):
    optimizer, ctx, out, _ = built
    before = (out / EMBEDDINGS).stat().st_mtime_ns
    optimizer.train(student=_TextStudent(), examples=[], output_dir=out, ctx=ctx)
    assert (out / EMBEDDINGS).stat().st_mtime_ns == before


def test_labels_json_fallback_and_missing_base(tmp_path):
    (tmp_path / "labels.json").write_text(json.dumps(LABELS.to_list()))
    ctx = RunContext(run_dir=tmp_path)
    optimizer = RagOptimizer(RagConfig(top_docs=2, device="cpu"))
    with pytest.raises(FileNotFoundError, match="rag"):
        optimizer.retrieve(queries=["x"], output_dir=tmp_path / "nothing")
    from mint_rag.optimizer import _label_space

    assert _label_space(ctx).ids == LABELS.ids


def test_text_only_errors(built, tmp_path):
    optimizer, ctx, out, _ = built
    with pytest.raises(MintError, match="text-only"):
        optimizer.train(student=_VisionStudent(), examples=[], output_dir=tmp_path, ctx=ctx)
    with pytest.raises(MintError, match="llama-vision"):
        optimizer.augment_prompts(prompts=[Prompt(text="q", image="images/a.png")],
                                  cases=[Case(id="c", label_ids=("x",))], output_dir=out, ctx=ctx)


def test_helpers():
    assert insert_reference("Only a question?", ["doc"]) == f"{HEADER}\n- doc\n\nOnly a question?"
    assert insert_reference("q", []) == "q"
    assert truncate("a b c d e f", 5) == "a b ..."
    assert truncate("short", 0) == "short"
    assert label_document(Label("X:1", "Thing"), use_hpo=False) == "Thing"
