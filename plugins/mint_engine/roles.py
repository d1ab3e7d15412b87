"""What each answer token does in a listed answer: scaffolding, the first token of a name, the rest of a name.

A MINT answer is a header and a numbered list, one label name per line (:func:`mint_core.answers.
format_answer`). In a chosen and a rejected answer of the same length the header, the numbers,
the newlines and the end-of-turn token are the same tokens, and once a name's first token is
written its remaining tokens are nearly certain: the token that *decides* which label comes next
is the first token of each name. :func:`answer_token_roles` labels every answer token so that the
ORPO odds ratio can be taken over the deciding tokens only (``optimizer.logp_tokens=decision``) or
over name tokens (``names``), and so that the per-token attribution of the loss can be measured
(``benchmarks/orpo_attribution.py``).

Roles: :data:`SCAFFOLD` (0), :data:`NAME_FIRST` (1), :data:`NAME_REST` (2). A token that spans the
space before a name and the name's first characters (" Marf") is that name's first token.
A name whose first token is shared with another label's ("Noonan syndrome 1" / "... 2") is decided
at a later token; the first-token rule does not see that (it is the ORPO option as documented, not
an oracle of the label space).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from mint_core.registry import MintError

SCAFFOLD, NAME_FIRST, NAME_REST = 0, 1, 2
ROLE_NAMES = {SCAFFOLD: "scaffolding", NAME_FIRST: "first token of a name", NAME_REST: "rest of a name"}
LOGP_TOKENS = {"all": None, "names": (NAME_FIRST, NAME_REST), "decision": (NAME_FIRST,)}

_ITEM = re.compile(r"^[ \t]*\d+[.)][ \t]+(?P<name>.*?)[ \t]*$", re.MULTILINE)


def name_spans(answer: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the listed names in ``answer`` (lines like ``3. Name``)."""
    return [match.span("name") for match in _ITEM.finditer(answer) if match.group("name")]


def roles_from_offsets(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """The role of each token given its character ``offsets`` and the names' ``spans``."""
    roles = []
    for start, end in offsets:
        role = SCAFFOLD
        for span_start, span_end in spans:
            if start < span_end and end > span_start:  # the token overlaps this name
                role = NAME_FIRST if start <= span_start else NAME_REST
                break
        roles.append(role)
    return roles


def answer_token_roles(sm: Any, answer: str, answer_ids: Sequence[int]) -> list[int]:
    """Roles of ``answer_ids`` (the encoded answer, possibly truncated, maybe ending with end-of-turn).

    Needs the student's fast tokenizer (character offsets); the offsets' tokens must be the ones
    the student encoded, else the roles would be misplaced: both are checked.
    """
    tokenizer = getattr(sm, "tokenizer", None)
    if tokenizer is None or not getattr(tokenizer, "is_fast", False):
        raise MintError("optimizer.logp_tokens other than 'all' needs a student with a fast (Rust) tokenizer "
                        "to place the answer's tokens; use optimizer.logp_tokens=all")
    encoded = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(encoded["input_ids"]), list(encoded["offset_mapping"])
    n = min(len(ids), len(answer_ids))
    if ids[:n] != list(answer_ids[:n]):
        raise MintError("optimizer.logp_tokens: the student encodes the answer differently from its tokenizer "
                        "alone (a template that rewrites answers?); use optimizer.logp_tokens=all")
    roles = roles_from_offsets(offsets[:n], name_spans(answer))
    return roles + [SCAFFOLD] * (len(answer_ids) - n)  # the end-of-turn token


def token_weights(roles: Sequence[int], logp_tokens: str) -> list[float]:
    """1.0 for the tokens ``logp_tokens`` counts in an answer's log-probability, 0.0 for the others."""
    if logp_tokens not in LOGP_TOKENS:
        raise MintError(f"optimizer.logp_tokens={logp_tokens!r}: use all, names or decision")
    kept = LOGP_TOKENS[logp_tokens]
    return [1.0 if kept is None or role in kept else 0.0 for role in roles]
