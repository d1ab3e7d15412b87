"""The benchmarks' own argument parsing (their measurements live in benchmarks/README.md, not in tests)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from demo_sweep import parse_grid  # noqa: E402
from face_ceiling import AnnotatedGeometry, disease_log_probs, face_geometry, logistic_log_probs  # noqa: E402
from face_reader import finding_effects  # noqa: E402


def test_demo_sweep_grid_reads_the_rejected_side():
    assert parse_grid("8:4:1e-3, 8:4:1e-3:5:hard,4:2:2e-3:3") == [
        (8, 4.0, 1e-3, None, None), (8, 4.0, 1e-3, 5, "hard"), (4, 2.0, 2e-3, 3, "bottom")]


@pytest.mark.parametrize("item", ["8:4", "8:4:1e-3:5:random", "8:4:1e-3:five", "8:4:1e-3:5:hard:x"])
def test_demo_sweep_grid_rejects_a_malformed_item(item):
    with pytest.raises(SystemExit, match="lora_layers:epochs:lr"):
        parse_grid(item)


def test_face_ceiling_logistic_regression_separates_classes_and_shrinks_with_its_penalty():
    import torch

    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    y = torch.arange(3).repeat(20)
    x = centres[y] + 0.5 * torch.randn(60, 2, generator=generator, dtype=torch.float64)
    x_test = centres + 0.5 * torch.randn(3, 2, generator=generator, dtype=torch.float64)
    log_probs = logistic_log_probs(x, y, x_test, n_labels=3)
    assert log_probs.argmax(-1).tolist() == [0, 1, 2]
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(3, dtype=torch.float64))
    # A near-infinite L2 penalty leaves the weights at zero: every class equally likely.
    flat = logistic_log_probs(x, y, x_test, n_labels=3, c=1e-9)
    assert torch.allclose(flat.exp(), torch.full((3, 3), 1 / 3, dtype=torch.float64), atol=1e-4)


def test_face_ceiling_geometry_is_the_renderers_parameters():
    from mint_rare_disease.faces import PARAM_NAMES, face_params

    terms = ["HP:0000316", "HP:0000347"]  # hypertelorism, micrognathia
    expected = face_params(terms, key="0:0:case-1")
    geometry = face_geometry(terms, key="0:0:case-1")
    assert geometry.tolist() == [getattr(expected, name) for name in PARAM_NAMES]
    assert geometry[PARAM_NAMES.index("eye_spacing")] > 0.5 and geometry[PARAM_NAMES.index("jaw")] < -0.5


def test_face_ceiling_annotated_geometry_scores_a_face_for_the_disease_whose_findings_it_shows():
    import torch

    from mint_rare_disease import hpo

    diseases = ["OMIM:208050", "OMIM:617126"]  # arterial tortuosity syndrome, Alazami-Yuan syndrome
    facial = {d: [t for t in hpo.disease_terms(d) if hpo.is_facial(t)] for d in diseases}
    faces = torch.stack([face_geometry(facial[d][i:i + 4], key=f"0:0:{d}:{i}") for d in diseases for i in range(4)])
    truth = torch.tensor([0] * 4 + [1] * 4)
    model = AnnotatedGeometry(diseases).fit(faces, truth)
    assert model.k in model.ks and model.s in model.ss
    log_probs = model.log_probs(faces)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(8, dtype=torch.float64))
    assert log_probs.argmax(-1).tolist() == truth.tolist()


def test_face_reader_recovers_each_findings_effect_and_scores_the_disease_that_shows_them():
    import torch

    generator = torch.Generator().manual_seed(0)
    true_effects = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    findings = (torch.rand(400, 6, generator=generator) < 0.4).double()
    reads = findings @ true_effects + 0.5 + 0.01 * torch.randn(400, 3, generator=generator, dtype=torch.float64)
    effects, bias, noise = finding_effects(findings, reads, ridge=1e-6)
    assert torch.allclose(effects, true_effects, atol=0.01) and torch.allclose(bias, torch.full((3,), 0.5,
                                                                                               dtype=torch.float64), atol=0.01)
    assert noise.shape == (3, 3) and float(noise.diagonal().max()) < 1e-3
    diseases = [effects[[0, 1]], effects[[2, 3]], effects[[4, 5]]]
    faces = torch.stack([bias + effects[0] + effects[1], bias + effects[2] + effects[3], bias + effects[4] + effects[5]])
    log_probs = disease_log_probs(faces, diseases, bias, noise + 0.01 * torch.eye(3, dtype=torch.float64), k=2)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(3, dtype=torch.float64))
    assert log_probs.argmax(-1).tolist() == [0, 1, 2]


def test_efficiency_counts_the_weights_and_visible_positions_a_real_layer_has():
    """The analytic FLOP count of benchmarks/efficiency.py: a decoder layer's projection weights and
    LoRA weights as transformers and peft build them, causal visible lengths by enumeration."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from efficiency import causal_context, layer_flops, lora_params, shapes, training_step_flops

    config = LlamaConfig(hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
                         num_key_value_heads=2, vocab_size=97)
    model = LlamaForCausalLM(config)
    s = shapes(config)
    layer = model.model.layers[0]
    weights = sum(m.weight.numel() for m in layer.modules() if isinstance(m, torch.nn.Linear))
    assert layer_flops(s, tokens=5, context=0)["linear"] == 2 * weights * 5
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    adapted = sum(p.numel() for n, p in peft_model.named_parameters() if "layers.0." in n and "lora_" in n)
    assert lora_params(s, r=4) == adapted
    for n, offset in ((1, 0), (4, 0), (3, 7)):
        assert causal_context(n, offset) == sum(offset + i + 1 for i in range(n))
    # One pair, every layer adapted: 2x forward for frozen products, 3x for LoRA and attention,
    # the vocabulary forward and input gradient on every token the packed batch scores.
    from mint_engine.packing import collate_packed

    p, c, r = 4, 2, 3
    pair = {"prompt_ids": [5] * p, "chosen_ids": [6] * c, "rejected_ids": [7] * r}
    context = causal_context(p) + causal_context(c, p) + causal_context(r, p)
    for nll_on_prompt in (True, False):
        step = training_step_flops(s, [(p, c, r)], top=2, r=4, nll_on_prompt=nll_on_prompt)
        assert step["linear"] == 2 * 2 * (2 * weights * (p + c + r))
        assert step["attention"] == 2 * 3 * 4 * s["q"] * context
        assert step["lora"] == 2 * 3 * 2 * adapted * (p + c + r)
        scored = len(collate_packed([pair], pad_id=0, nll_on_prompt=nll_on_prompt)["g_tok"])
        assert scored == (p - 1 + c + r if nll_on_prompt else c + r)
        assert step["vocab"] == 2 * 2 * s["h"] * s["vocab"] * scored


def test_efficiency_ranking_count_matches_the_tokens_score_runs(tmp_path):
    """Ranking's FLOP count: the tokens each forward of ``LlamaTextModel.score`` runs and the rows it
    projects to the vocabulary, counted on a real (tiny) student with forward hooks."""
    import torch

    from efficiency import layer_flops, ranking_flops, shapes
    from mint_core.context import RunContext
    from mint_core.types import Prompt
    from mint_llama import LlamaTextConfig
    from mint_llama.student import LlamaTextStudent
    from mint_llama.testing import build_tiny_llama

    directory = build_tiny_llama(tmp_path / "tiny", seed=0)
    student = LlamaTextStudent(LlamaTextConfig(model=str(directory), device="cpu", dtype="float32"))
    sm = student.load(ctx=RunContext(run_dir=tmp_path / "run", seed=0))
    base = sm.model.get_base_model() if hasattr(sm.model, "get_base_model") else sm.model
    prompts = [Prompt("Hypotonia and seizures."), Prompt("Tall stature, arachnodactyly and lens dislocation.")]
    candidates = [f"Most likely diseases:\n1. {name}\n" for name in ("Marfan syndrome", "Angelman syndrome", "X")]
    tokens, projected = [], []
    base.model.register_forward_hook(lambda module, args, out: tokens.append(int(out.last_hidden_state.shape[1])))
    base.lm_head.register_forward_hook(lambda module, args, out: projected.append(out.shape[-2] * out.shape[0]))
    sm.score(prompts=prompts, candidates=candidates, batch_size=8)
    s = shapes(base.config)
    flops = ranking_flops(s, [len(sm.prompt_ids(p)) for p in prompts],
                          [sm.completion_ids(c, end=False) for c in candidates])
    assert flops["vocab"] == 2 * s["h"] * s["vocab"] * sum(projected)  # the rows actually projected
    # Linear work: the real tokens of both forwards (the prompts, left-padded to one width with the
    # shared "Most likely diseases:\n1." appended, then every candidate's remaining tokens on each row).
    assert len(tokens) == 2, tokens
    width, packed = tokens
    lengths = [len(sm.prompt_ids(p)) for p in prompts]
    shared = width - max(lengths)
    per_token = layer_flops(s, 1, 0)["linear"] * s["layers"]
    assert flops["linear"] == per_token * (sum(n + shared for n in lengths) + len(prompts) * packed)


def test_back_to_back_ratio_pools_pairs_and_widens_its_interval_with_their_spread():
    from back_to_back import ratio_summary

    steady = ratio_summary([700.0, 720.0, 710.0], [400.0, 410.0, 405.0])
    assert steady["ratios"] == pytest.approx([1.75, 720 / 410, 710 / 405])
    assert steady["pooled"] == pytest.approx(2130 / 1215)
    low, high = steady["interval"]
    assert low < steady["geometric_mean"] < high and high / low < 1.02
    noisy = ratio_summary([700.0, 800.0, 650.0], [400.0, 410.0, 450.0])
    assert noisy["interval"][1] / noisy["interval"][0] > high / low
    assert ratio_summary([700.0], [400.0])["interval"] is None  # one pair: no interval
    with pytest.raises(ValueError, match="same positive number"):
        ratio_summary([700.0, 710.0], [400.0])


def test_back_to_back_marks_a_figure_outside_the_other_versions_interval():
    from back_to_back import compare_figures

    base = {"teacher": {"top1": 0.983, "top1_ci": [0.911, 0.997]}, "orpo": {"top1": 0.233, "top1_ci": [0.133, 0.35]}}
    same = compare_figures(base, base)
    assert [row["figure"] for row in same] == ["teacher top1", "orpo top1"] and all(r["within"] for r in same)
    moved = compare_figures(base, {**base, "orpo": {"top1": 0.4, "top1_ci": [0.28, 0.52]}})
    assert [r["within"] for r in moved] == [True, False]
    # A figure without an interval compares by equality; one only a version reports is left out.
    flat = compare_figures({"orpo": {"well_formed": 1.0}}, {"orpo": {"well_formed": 0.98}, "base": {"top1": 0.0}})
    assert [(r["figure"], r["within"]) for r in flat] == [("orpo well_formed", False)]


def test_back_to_back_names_a_figure_that_moved_between_one_versions_runs():
    from back_to_back import differing_figures

    run = {"teacher": {"top1": 0.983}, "orpo": {"top1": 0.233, "rank_top1": 0.2}}
    assert differing_figures([run, run, dict(run)]) == []
    moved = {**run, "orpo": {"top1": 0.25, "rank_top1": 0.2}}
    assert differing_figures([run, moved]) == ["orpo top1"]
    # A figure one run lacks has moved too (a run that stopped before evaluating its student).
    assert differing_figures([run, {"teacher": {"top1": 0.983}}]) == ["orpo top1", "orpo rank_top1"]


def test_decode_bound_drafting_saves_steps_only_where_a_row_repeats_what_was_written():
    from decode_bound import simulate_drafting

    distinct = [[1, 2, 3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 13]]
    assert simulate_drafting(distinct, 0) == [2] * 5 + [2] * 3  # finished rows still take a row
    assert simulate_drafting(distinct, 4) == simulate_drafting(distinct, 0)  # nothing to look up
    # The batch takes as many steps as its longest row. The long row writes the short row's phrase
    # after the short one has written it: from its first three tokens on, it drafts the rest and
    # keeps every draft (4 a step here).
    short = [1, 2, 3, 4, 5, 6, 7, 8]
    long = [20, 21, 22, 23, 24, 25, 1, 2, 3, 4, 5, 6, 7, 8]
    plain = simulate_drafting([short, long], 0)
    drafted = simulate_drafting([short, long], 4)
    assert len(plain) == 14
    assert len(drafted) == 10  # 9 steps to write 20 ... 3, then one writes 4 to 8 (4 drafts kept)
    assert drafted == [2] * 9 + [1 + 1 + 4]  # the last: the finished row, the long row, its 4 drafts


def test_decode_bound_drafts_that_do_not_match_cost_rows_and_save_no_step():
    from decode_bound import simulate_drafting

    # Both rows write 1 2 3 and then differ: the follower's lookup of (1, 2, 3) drafts the leader's
    # continuation, which it does not write.
    lead = [1, 2, 3, 4, 5, 6, 7, 8]
    follow = [10, 11, 12, 13, 14, 1, 2, 3, 9, 15, 16]
    plain = simulate_drafting([lead, follow], 0)
    drafted = simulate_drafting([lead, follow], 3)
    assert len(drafted) == len(plain)
    assert sum(drafted) > sum(plain)


def test_decode_bound_interpolates_the_products_and_adds_the_rest_per_step():
    from decode_bound import decoding_seconds

    products = {60: 1.0, 120: 1.5}
    assert decoding_seconds([60, 90, 240], products, 0.5) == pytest.approx(1.5 + 1.75 + 3.5)
