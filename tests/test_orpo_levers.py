"""The ORPO levers of issue 29: token roles (decision masking), weighted log-probs, β, sums, truth-first lists."""

from __future__ import annotations

import math

import pytest
import torch

from mint_core.answers import format_answer
from mint_core.registry import MintError
from mint_engine.orpo import orpo_loss
from mint_engine.packing import KIND_CHOSEN, KIND_PROMPT, KIND_REJECTED, gather_weights, pair_statistics
from mint_engine.roles import NAME_FIRST, NAME_REST, SCAFFOLD, name_spans, roles_from_offsets, token_weights

S, F, R = SCAFFOLD, NAME_FIRST, NAME_REST

# A hand-tokenized answer: each token's text and the role a reader gives it.
TOKEN_TABLE = [
    ("Most", S), (" likely", S), (" diseases", S), (":", S), ("\n", S),
    ("1", S), (".", S), (" Mar", F), ("fan", R), (" syndrome", R), ("\n", S),
    ("2", S), (".", S), (" No", F), ("onan", R), (" syndrome", R), (" 1", R), ("\n", S),
    ("3", S), (".", S), (" CHARGE", F), (" syndrome", R),
]


def test_decision_tokens_are_the_first_token_of_each_name():
    text = "".join(token for token, _ in TOKEN_TABLE)
    assert text == format_answer(["Marfan syndrome", "Noonan syndrome 1", "CHARGE syndrome"], noun="diseases")
    offsets, start = [], 0
    for token, _ in TOKEN_TABLE:
        offsets.append((start, start + len(token)))
        start += len(token)
    roles = roles_from_offsets(offsets, name_spans(text))
    assert roles == [role for _, role in TOKEN_TABLE]
    decision = token_weights(roles, "decision")
    assert [t for (t, _), w in zip(TOKEN_TABLE, decision) if w] == [" Mar", " No", " CHARGE"]
    names = token_weights(roles, "names")
    assert "".join(t for (t, _), w in zip(TOKEN_TABLE, names) if w) == " Marfan syndrome Noonan syndrome 1 CHARGE syndrome"
    assert token_weights(roles, "all") == [1.0] * len(roles)
    with pytest.raises(MintError, match="logp_tokens"):
        token_weights(roles, "verbs")


def test_roles_on_a_real_tokenizer_place_every_name(tmp_path):
    from mint_core.context import RunContext
    from mint_engine.roles import answer_token_roles
    from mint_llama import LlamaTextConfig
    from mint_llama.student import LlamaTextStudent
    from mint_llama.testing import build_tiny_llama

    model_dir = build_tiny_llama(tmp_path / "tiny")
    sm = LlamaTextStudent(LlamaTextConfig(model=str(model_dir))).load(ctx=RunContext(run_dir=tmp_path / "run"))
    names = ["Marfan syndrome", "Loeys-Dietz syndrome", "Noonan syndrome 1"]
    answer = format_answer(names, noun="diseases")
    ids = sm.completion_ids(answer)  # ends with the end-of-turn token
    roles = answer_token_roles(sm, answer, ids)
    assert len(roles) == len(ids) and roles[-1] == SCAFFOLD and roles.count(NAME_FIRST) == len(names)
    # Each name is its first token and the rest tokens that follow it, decoded back.
    pieces, current = [], None
    for token_id, role in zip(ids, roles):
        if role == NAME_FIRST:
            current = [token_id]
            pieces.append(current)
        elif role == NAME_REST:
            current.append(token_id)
    assert [sm.tokenizer.decode(p).strip() for p in pieces] == names
    # Truncated answers keep the roles of the tokens they kept.
    assert answer_token_roles(sm, answer, ids[:7]) == roles[:7]


def _two_pair_batch(weights: bool) -> dict:
    # pair 0: chosen tokens [-0.1, -2.0], rejected [-0.3, -3.0]; pair 1: chosen [-0.2, -1.0, -0.5], rejected [-0.4, -2.5]
    kinds = [KIND_PROMPT, KIND_CHOSEN, KIND_CHOSEN, KIND_REJECTED, KIND_REJECTED,
             KIND_CHOSEN, KIND_CHOSEN, KIND_CHOSEN, KIND_REJECTED, KIND_REJECTED]
    pairs = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    logps = torch.tensor([-1.5, -0.1, -2.0, -0.3, -3.0, -0.2, -1.0, -0.5, -0.4, -2.5], dtype=torch.float64)
    batch = {"g_pair": torch.tensor(pairs), "g_kind": torch.tensor(kinds),
             "n_chosen": torch.tensor([2.0, 3.0]), "n_rejected": torch.tensor([2.0, 2.0]), "n_nll": torch.tensor(6.0)}
    if weights:  # decision tokens: the second token of each answer
        features = [{"chosen_weights": [0, 1], "rejected_weights": [0, 1]},
                    {"chosen_weights": [0, 1, 0], "rejected_weights": [0, 1]}]
        batch["g_weight"] = gather_weights(batch, features)
        assert batch["g_weight"].tolist() == [1, 0, 1, 0, 1, 0, 1, 0, 0, 1]
    return logps, batch


def _hand_orpo(chosen: list[float], rejected: list[float], nll: float, beta: float) -> float:
    terms = []
    for c, r in zip(chosen, rejected):
        log_odds = (c - math.log(1 - math.exp(c))) - (r - math.log(1 - math.exp(r)))
        terms.append(math.log(1 / (1 + math.exp(-log_odds))))
    return nll - beta * sum(terms) / len(terms)


@pytest.mark.parametrize("beta", [0.1, 1.0])
@pytest.mark.parametrize("mode", ["all", "decision", "sum"])
def test_beta_mask_and_sum_change_the_loss_as_computed_by_hand(beta, mode):
    logps, batch = _two_pair_batch(weights=mode == "decision")
    stats = pair_statistics(logps, batch, n_pairs=2)
    nll = (1.5 + 0.1 + 2.0 + 0.2 + 1.0 + 0.5) / 6  # prompt + chosen tokens, never masked
    if mode == "all":
        chosen, rejected = [(-0.1 - 2.0) / 2, (-0.2 - 1.0 - 0.5) / 3], [(-0.3 - 3.0) / 2, (-0.4 - 2.5) / 2]
        loss, _ = orpo_loss(stats["chosen_logps"], stats["rejected_logps"], stats["nll"], beta)
    elif mode == "decision":
        chosen, rejected = [-2.0, -1.0], [-3.0, -2.5]
        loss, _ = orpo_loss(stats["chosen_logps"], stats["rejected_logps"], stats["nll"], beta)
    else:
        chosen, rejected = [-2.1, -1.7], [-3.3, -2.9]
        loss, _ = orpo_loss(stats["chosen_logps_sum"], stats["rejected_logps_sum"], stats["nll"], beta)
    assert float(stats["nll"]) == pytest.approx(nll, abs=1e-12)
    assert float(loss) == pytest.approx(_hand_orpo(chosen, rejected, nll, beta), abs=1e-6)


def test_truth_first_gives_every_builder_the_same_target_list():
    from mint_builders.builders import select

    order = ["a", "b", "c", "d", "e", "f"]
    # Truth ranked 3rd by the teacher: truth first moves it to the front, the teacher's order keeps it 3rd.
    first = select(order, "c", k=3, q=2, negatives="bottom", force_true_label=True, truth_first=True)
    kept = select(order, "c", k=3, q=2, negatives="bottom", force_true_label=True, truth_first=False)
    assert [order[r] for r in first.chosen_ranks] == ["c", "a", "b"]
    assert [order[r] for r in kept.chosen_ranks] == ["a", "b", "c"]
    # Truth below k: the teacher's order puts it k-th; truth first puts it first. Never rejected.
    low_first = select(order, "e", k=3, q=2, negatives="bottom", force_true_label=True, truth_first=True)
    low_kept = select(order, "e", k=3, q=2, negatives="bottom", force_true_label=True, truth_first=False)
    assert [order[r] for r in low_first.chosen_ranks] == ["e", "a", "b"] and low_first.forced
    assert [order[r] for r in low_kept.chosen_ranks] == ["a", "b", "e"]
    for sel in (first, kept, low_first, low_kept):
        assert order.index("c" if sel in (first, kept) else "e") not in sel.rejected_ranks
