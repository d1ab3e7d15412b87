"""The topk, kto and sft preference builders, on a hand-made task and hand-made rankings."""

from __future__ import annotations

import pytest

from mint_builders import KTOConfig, SFTConfig, TopKConfig
from mint_builders.builders import KTOBuilder, SFTBuilder, TopKBuilder
from mint_core.summary import summarize
from mint_core.answers import format_answer, parse_answer
from mint_core.components import Task
from mint_core.context import RunContext
from mint_core.registry import MintError
from mint_core.types import Case, Label, LabelSpace, Prompt, Ranking, TaskData

LABELS = LabelSpace([Label(f"D{i}", f"Disease {chr(65 + i)}") for i in range(8)])


class NotesTask(Task):
    label_noun = "diseases"
    default_n_answers = 3

    def load(self, *, ctx):  # pragma: no cover - the tests build TaskData by hand
        raise NotImplementedError

    def prompt(self, *, case, n_answers):
        return Prompt(text=f"Notes: {case.text}\nList the {n_answers} most likely diseases.")


class ImageTask(NotesTask):
    student_modality = "image"

    def prompt(self, *, case, n_answers):
        return Prompt(text=f"List the {n_answers} most likely diseases.", image=case.image)


def _data() -> TaskData:
    cases = [
        Case("a", ("D0",), "train", text="tall, lens dislocation", image="images/a.png"),  # teacher right
        Case("b", ("D6",), "train", text="short, seizures", image="images/b.png"),  # teacher ranks it 7th
        Case("c", ("D7",), "train", text="deaf", image="images/c.png"),  # teacher ranks it last
        Case("t", ("D1",), "test", text="test case"),
    ]
    return TaskData(labels=LABELS, cases=cases)


RANKINGS = {
    "a": Ranking("a", ["D0", "D1", "D2", "D3", "D4", "D5", "D6", "D7"]),
    "b": Ranking("b", ["D1", "D2", "D3", "D4", "D5", "D0", "D6", "D7"]),
    "c": Ranking("c", ["D2", "D1", "D0", "D3", "D4", "D5", "D6", "D7"]),
    "t": Ranking("t", ["D1", "D0", "D2", "D3", "D4", "D5", "D6", "D7"]),
}


def names(ids):
    return [LABELS[i].name for i in ids]


@pytest.fixture
def ctx(tmp_path):
    return RunContext(run_dir=tmp_path)


def test_topk_pairs_list_teacher_top_k_and_bottom_q(ctx):
    examples = TopKBuilder(TopKConfig(truth_first=False)).build(task=NotesTask(), data=_data(), rankings=RANKINGS, ctx=ctx)
    assert [ex.case_id for ex in examples] == ["a", "b", "c"]  # training cases only
    assert all(ex.kind == "pair" and ex.completion is None for ex in examples)
    a, b, c = examples
    chosen, rejected = parse_answer(a.chosen, noun="diseases"), parse_answer(a.rejected, noun="diseases")
    assert chosen.well_formed and rejected.well_formed
    assert chosen.names == names(["D0", "D1", "D2"])  # k = task.default_n_answers = 3
    assert rejected.names == names(["D5", "D6", "D7"])  # the teacher's bottom 3, teacher order
    assert a.prompt.text.endswith("List the 3 most likely diseases.") and "lens dislocation" in a.prompt.text
    assert a.meta["chosen_ranks"] == [0, 1, 2] and a.meta["rejected_ranks"] == [5, 6, 7]
    assert a.meta["true_label_rank"] == 0 and not a.meta["true_label_forced"]

    # b: the true D6 is ranked 7th (rank 6): it replaces the teacher's 3rd entry and leaves the rejected list.
    assert parse_answer(b.chosen).names == names(["D1", "D2", "D6"])
    assert b.meta["chosen_ranks"] == [0, 1, 6] and b.meta["true_label_forced"]
    assert b.meta["true_label_position"] == 2
    assert parse_answer(b.rejected).names == names(["D5", "D0", "D7"])
    assert b.meta["rejected_ranks"] == [4, 5, 7]
    # c: the true label was last: the bottom-q skips it.
    assert "Disease H" in parse_answer(c.chosen).names and "Disease H" not in parse_answer(c.rejected).names


def test_topk_hard_negatives_and_no_forcing(ctx):
    config = TopKConfig(k=2, q=2, negatives="hard", force_true_label=False, truth_first=False)
    examples = TopKBuilder(config).build(task=NotesTask(), data=_data(), rankings=RANKINGS, ctx=ctx)
    b = examples[1]
    assert parse_answer(b.chosen).names == names(["D1", "D2"])  # pure teacher top-2
    assert parse_answer(b.rejected).names == names(["D3", "D4"])  # ranks just below k
    assert b.meta["rejected_ranks"] == [2, 3] and not b.meta["true_label_in_chosen"]
    assert b.prompt.text.endswith("List the 2 most likely diseases.")


def test_topk_image_task_prompt_carries_the_image(ctx):
    examples = TopKBuilder(TopKConfig(k=2)).build(task=ImageTask(), data=_data(), rankings=RANKINGS, ctx=ctx)
    assert examples[0].prompt.image == "images/a.png"


def test_kto_unpaired_examples(ctx):
    examples = KTOBuilder(KTOConfig(k=2, q=3)).build(task=NotesTask(), data=_data(), rankings=RANKINGS, ctx=ctx)
    assert len(examples) == 6 and all(ex.kind == "unpaired" for ex in examples)
    good, bad = examples[0], examples[1]
    assert (good.label, bad.label) == (True, False) and good.prompt == bad.prompt
    assert parse_answer(good.completion, noun="diseases").names == names(["D0", "D1"])
    assert parse_answer(bad.completion, noun="diseases").names == names(["D5", "D6", "D7"])
    assert good.chosen is None and good.rejected is None


def test_truth_first_is_the_default_and_shared_by_every_builder(ctx):
    kwargs = dict(task=NotesTask(), data=_data(), rankings=RANKINGS, ctx=ctx)
    pairs = TopKBuilder(TopKConfig(k=4)).build(**kwargs)
    kto = KTOBuilder(KTOConfig(k=4)).build(**kwargs)
    sft = SFTBuilder(SFTConfig(k=4)).build(**kwargs)
    assert [p.chosen for p in pairs] == [e.completion for e in kto if e.label] == [e.completion for e in sft]
    assert parse_answer(pairs[1].chosen).names == names(["D6", "D1", "D2", "D3"])  # truth first, then the teacher
    assert pairs[1].meta["true_label_position"] == 0 and "Disease G" not in parse_answer(pairs[1].rejected).names
    # truth_first=false: the teacher's order (truth forced k-th) for all three alike.
    pairs = TopKBuilder(TopKConfig(k=4, truth_first=False)).build(**kwargs)
    sft = SFTBuilder(SFTConfig(k=4, truth_first=False)).build(**kwargs)
    assert [p.chosen for p in pairs] == [e.completion for e in sft]
    assert parse_answer(sft[1].completion).names == names(["D1", "D2", "D3", "D6"])


def test_sft_leads_with_the_true_label(ctx):
    examples = SFTBuilder(SFTConfig(k=4)).build(task=NotesTask(), data=_data(), rankings=RANKINGS, ctx=ctx)
    assert all(ex.kind == "sft" for ex in examples)
    parsed = parse_answer(examples[1].completion, noun="diseases")
    assert parsed.well_formed and parsed.names == names(["D6", "D1", "D2", "D3"])
    assert examples[1].meta["completion_ranks"] == [6, 0, 1, 2] and examples[1].meta["true_label_rank"] == 6
    assert parse_answer(examples[0].completion).names == names(["D0", "D1", "D2", "D3"])


def test_k_is_clipped_to_the_label_space_and_rankings_are_completed(ctx):
    partial = dict(RANKINGS, a=Ranking("a", ["D3", "D0"]))  # missing labels are appended in label order
    examples = TopKBuilder(TopKConfig(k=50, truth_first=False)).build(task=NotesTask(), data=_data(), rankings=partial, ctx=ctx)
    a = examples[0]
    assert a.meta["k"] == 7 and len(parse_answer(a.chosen).names) == 7
    assert parse_answer(a.chosen).names[:3] == names(["D3", "D0", "D1"])
    assert parse_answer(a.rejected).names == names(["D7"])


def test_errors(ctx):
    missing = {key: value for key, value in RANKINGS.items() if key != "b"}
    with pytest.raises(MintError, match="No teacher ranking.*'b'"):
        TopKBuilder(TopKConfig()).build(task=NotesTask(), data=_data(), rankings=missing, ctx=ctx)
    with pytest.raises(MintError, match="builder.negatives"):
        TopKBuilder(TopKConfig(negatives="random")).build(task=NotesTask(), data=_data(), rankings=RANKINGS, ctx=ctx)
    bad = dict(RANKINGS, a=Ranking("a", ["D0", "X9"]))
    with pytest.raises(MintError, match="X9"):
        SFTBuilder(SFTConfig()).build(task=NotesTask(), data=_data(), rankings=bad, ctx=ctx)


def test_summarize(ctx):
    pairs = TopKBuilder(TopKConfig(truth_first=False)).build(task=NotesTask(), data=_data(), rankings=RANKINGS, ctx=ctx)
    summary = summarize(pairs)
    assert summary["n_examples"] == 3 and summary["by_kind"] == {"pair": 3}
    assert summary["true_label_forced"] == 2 and summary["true_label_in_chosen"] == 1.0
    assert summary["mean_true_label_rank"] == pytest.approx((1 + 7 + 8) / 3, abs=1e-3)
    assert summary["mean_true_label_position"] == pytest.approx((1 + 3 + 3) / 3, abs=1e-3)
    kto = summarize(KTOBuilder(KTOConfig()).build(task=NotesTask(), data=_data(), rankings=RANKINGS, ctx=ctx))
    assert kto["n_cases"] == 3 and kto["by_label"] == {"true": 3, "false": 3}
    assert summarize([])["n_examples"] == 0


def test_registered_through_the_entry_point():
    from mint_core.registry import Registry
    import mint_builders

    registry = Registry()
    registry.register_plugin(mint_builders, name="builders")
    assert registry.names("builder") == ["kto", "onpolicy", "sft", "topk"]
    assert isinstance(registry.create("builder", "topk"), TopKBuilder)
    assert registry.get("builder", "kto").default_config().negatives == "bottom"


def test_onpolicy_rejects_the_students_own_list_never_the_chosen_one_and_caches_it(ctx, tmp_path, monkeypatch):
    from mint_builders.config import OnPolicyConfig
    from mint_builders.onpolicy import CACHE, OnPolicyBuilder
    from mint_llama import LlamaTextConfig
    from mint_llama.student import LlamaTextModel, LlamaTextStudent
    from mint_llama.testing import build_tiny_llama

    student = LlamaTextStudent(LlamaTextConfig(model=str(build_tiny_llama(tmp_path / "tiny"))))
    kwargs = dict(task=NotesTask(), data=_data(), rankings=RANKINGS, ctx=ctx, student=student)
    chosen_b = format_answer(names(["D6", "D1"]), noun="diseases")
    own = {"a": format_answer(names(["D3", "D0"]), noun="diseases"),  # a real disagreement
           "b": chosen_b,  # the student already writes the chosen list: fall back
           "c": "I am not sure."}  # no list at all: fall back
    calls: list[int] = []
    examples = OnPolicyBuilder(OnPolicyConfig(k=2)).build(**kwargs)  # the tiny model writes its own answers
    assert len(examples) == 3 and all(e.kind == "pair" and e.rejected != e.chosen for e in examples)
    assert (ctx.run_dir / CACHE).is_file()
    # A second build (other options for the fallback) reuses every cached generation.
    monkeypatch.setattr(LlamaTextModel, "generate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("regen")))
    again = OnPolicyBuilder(OnPolicyConfig(k=2, q=1, negatives="hard")).build(**kwargs)
    assert [e.meta["student_answer_ids"] for e in again] == [e.meta["student_answer_ids"] for e in examples]

    # Scripted answers on a fresh run directory: disagreement kept, agreement and non-lists fall back.
    fresh = RunContext(run_dir=tmp_path / "fresh")
    order = iter(["a", "b", "c"])
    monkeypatch.setattr(LlamaTextModel, "generate", lambda self, *, prompts, max_new_tokens, batch_size:
                        calls.append(len(prompts)) or [own[next(order)] for _ in prompts])
    pairs = OnPolicyBuilder(OnPolicyConfig(k=2)).build(**dict(kwargs, ctx=fresh))
    assert calls == [3]
    a, b, c = pairs
    assert a.rejected == own["a"] and a.meta["rejected_source"] == "student"
    assert b.chosen == chosen_b and b.rejected != b.chosen and b.meta["rejected_source"] == "fallback:bottom"
    assert c.meta["rejected_source"] == "fallback:bottom" and "Disease G" not in parse_answer(b.rejected).names
