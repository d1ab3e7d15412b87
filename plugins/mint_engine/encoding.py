"""Encoding preference examples into the engine's features, truncated the same way for every trainer.

A *pair feature* is ``{"case_id", "prompt_ids", "chosen_ids", "rejected_ids", "extras"}``
(see :mod:`mint_engine.packing`); single-answer objectives (KTO, SFT) put their answer in
``chosen_ids`` and fill ``rejected_ids`` themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from mint_core.components import StudentModel
from mint_core.registry import MintError
from mint_core.types import PreferenceExample, Prompt

if TYPE_CHECKING:
    from mint_core.context import RunContext


def encode_answer(sm: StudentModel, prompt: Prompt, answer: str, *, max_length: int,
                  max_prompt_length: int) -> tuple[list[int], list[int], dict[str, Any]]:
    """``(prompt_ids, answer_ids, extras)`` of one prompt and answer, truncated as every MINT trainer does.

    Prompts longer than ``max_prompt_length`` lose their beginning (text students; an image prompt
    keeps its image tokens); the answer is cut so that prompt + answer fits ``max_length`` (it may
    come back empty). ``extras`` are the student's other inputs (pixel values, a cross-attention
    mask cut to the prompt rows).
    """
    enc = sm.encode(prompt=prompt, completion=answer)
    split = int(enc["prompt_length"])
    prompt_ids, answer_ids = list(enc["input_ids"][:split]), list(enc["input_ids"][split:])
    extras = {k: v for k, v in enc.items() if k not in {"input_ids", "prompt_length", "attention_mask"}}
    if len(prompt_ids) > max_prompt_length and not extras:
        prompt_ids = prompt_ids[-max_prompt_length:]
    if "cross_attention_mask" in extras:  # keep the prompt rows; answers extend it (see packing._stack_extras)
        import torch

        extras["cross_attention_mask"] = torch.as_tensor(extras["cross_attention_mask"])[:split]
    return prompt_ids, answer_ids[:max(max_length - len(prompt_ids), 0)], extras


def encode_pair(sm: StudentModel, example: PreferenceExample, *, max_length: int,
                max_prompt_length: int) -> dict[str, Any] | None:
    """One pair feature (see :mod:`mint_engine.packing`), truncated by :func:`encode_answer`; ``None``
    when no answer token fits."""
    if example.chosen is None or example.rejected is None:
        raise MintError(f"preference example {example.case_id!r} is not a pair (kind={example.kind!r}); "
                        "ORPO needs chosen and rejected answers (builder=topk)")
    limits = dict(max_length=max_length, max_prompt_length=max_prompt_length)
    prompt, chosen, extras = encode_answer(sm, example.prompt, example.chosen, **limits)
    prompt_r, rejected, _ = encode_answer(sm, example.prompt, example.rejected, **limits)
    if prompt != prompt_r:
        raise MintError(f"case {example.case_id}: the student encodes the prompt differently before the chosen and "
                        "the rejected answer; ORPO needs one shared prompt encoding")
    if not chosen or not rejected:
        return None
    return {"case_id": example.case_id, "prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected,
            "extras": extras}


def encode_answers(sm: StudentModel, rows: Sequence[tuple[PreferenceExample, str, dict[str, Any]]], *, name: str,
                   max_length: int, max_prompt_length: int, ctx: RunContext | None = None) -> list[dict[str, Any]]:
    """Single-answer features (KTO, SFT): per ``(example, answer, fields)`` row, ``case_id``,
    ``prompt_ids``, ``chosen_ids`` (the answer, by :func:`encode_answer`), ``extras`` and ``fields``.

    Rows whose answer does not fit ``max_length`` are dropped (logged); none left is an error.
    """
    features = []
    for example, answer, fields in rows:
        prompt, answer_ids, extras = encode_answer(sm, example.prompt, answer, max_length=max_length,
                                                   max_prompt_length=max_prompt_length)
        if answer_ids:
            features.append({"case_id": example.case_id, "prompt_ids": prompt, "chosen_ids": answer_ids,
                             "extras": extras, **fields})
    return check_dropped(features, total=len(rows), name=name, max_length=max_length, ctx=ctx)


def check_dropped(features: list[dict[str, Any]], *, total: int, name: str, max_length: int,
                  ctx: RunContext | None = None) -> list[dict[str, Any]]:
    """``features`` back, after logging how many of ``total`` rows did not fit ``max_length``; none left is an error."""
    dropped = total - len(features)
    if dropped and ctx is not None:
        ctx.log(f"{name.upper()}: {dropped} example(s) dropped: the prompt fills max_length "
                "(raise optimizer.max_length)")
    if not features:
        raise MintError(f"optimizer={name}: every prompt fills optimizer.max_length={max_length}; raise it")
    return features


def encode_pairs(sm: StudentModel, examples: Sequence[PreferenceExample], *, max_length: int,
                 max_prompt_length: int, ctx: RunContext | None = None) -> list[dict[str, Any]]:
    features = []
    for example in examples:
        feature = encode_pair(sm, example, max_length=max_length, max_prompt_length=max_prompt_length)
        if feature is not None:
            features.append(feature)
    dropped = len(examples) - len(features)
    if dropped and ctx is not None:
        ctx.log(f"ORPO: {dropped} pair(s) dropped: the prompt fills max_length (raise optimizer.max_length)")
    if not features:
        raise MintError("ORPO has no training pairs (empty preferences, or every prompt exceeds max_length)")
    return features
