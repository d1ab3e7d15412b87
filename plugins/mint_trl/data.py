"""MINT examples -> the ``datasets.Dataset`` rows TRL's trainers read.

Text students: rows are **pre-tokenized by the student** (``StudentModel.encode``), so training
sees exactly the ids evaluation scores and generates from: the student's chat template, its system
message handling, and the answer closed by the end-of-turn token it stops on. (TRL's own
conversational tokenization would also train the template's trailing newline after that token.)
Prompts longer than ``max_prompt_length`` lose their beginning; answers are cut to ``max_length``.

Vision students: rows are TRL's conversational vision format (``prompt``/``chosen``/``rejected``
or ``completion`` messages plus an ``images`` column), processed on the fly by TRL's vision
collators, whose cross-attention masks :mod:`mint_trl.vision` repairs.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Literal, Sequence

from mint_core.components import StudentModel
from mint_core.registry import MintError
from mint_core.types import PreferenceExample, Prompt
from mint_engine.encoding import check_dropped, encode_answer, encode_pair
from mint_engine.kto import kto_rows
from mint_engine.sft import sft_answers

if TYPE_CHECKING:
    from mint_core.context import RunContext

Method = Literal["dpo", "kto", "sft"]


def as_rows(examples: Sequence[PreferenceExample], method: Method) -> list[dict[str, Any]]:
    """``{"prompt": Prompt, ...answer fields}`` per training row for ``method``.

    DPO takes pairs. KTO takes unpaired examples, or pairs split into a desirable (chosen) and an
    undesirable (rejected) row. SFT takes SFT examples, the chosen answer of pairs, or the
    desirable answers of unpaired examples.
    """
    if method == "kto":
        return [{"prompt": ex.prompt, "completion": answer, "label": label} for ex, answer, label in kto_rows(examples)]
    if method == "sft":
        return [{"prompt": ex.prompt, "completion": answer} for ex, answer in sft_answers(examples)]
    rows: list[dict[str, Any]] = []
    for ex in examples:
        if ex.chosen is None or ex.rejected is None:
            raise MintError(f"optimizer={method} cannot train on preference example {ex.case_id!r} "
                            f"(kind={ex.kind!r}): it needs pairs (chosen/rejected): use --builder topk")
        rows.append({"prompt": ex.prompt, "chosen": ex.chosen, "rejected": ex.rejected})
    if not rows:
        raise MintError(f"optimizer={method} has no training examples (preferences.jsonl is empty?)")
    return rows


# -- text: pre-tokenized -------------------------------------------------------------------------
def tokenized_rows(sm: StudentModel, rows: Sequence[dict[str, Any]], method: Method, *, max_length: int,
                   max_prompt_length: int, ctx: RunContext | None = None) -> list[dict[str, Any]]:
    """TRL's tokenized columns: dpo ``prompt_ids/chosen_ids/rejected_ids``; kto ``prompt_ids/completion_ids/label``;
    sft ``input_ids/completion_mask``. Rows where no answer token fits ``max_length`` are dropped."""
    out: list[dict[str, Any]] = []
    for row in rows:
        prompt: Prompt = row["prompt"]
        if method == "dpo":
            pair = PreferenceExample(case_id="", prompt=prompt, chosen=row["chosen"], rejected=row["rejected"])
            feature = encode_pair(sm, pair, max_length=max_length, max_prompt_length=max_prompt_length)
            if feature is not None:
                out.append({k: feature[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")})
            continue
        prompt_ids, answer_ids, _ = encode_answer(sm, prompt, row["completion"], max_length=max_length,
                                                  max_prompt_length=max_prompt_length)
        if not answer_ids:
            continue
        if method == "kto":
            out.append({"prompt_ids": prompt_ids, "completion_ids": answer_ids, "label": row["label"]})
        else:
            out.append({"input_ids": prompt_ids + answer_ids,
                        "completion_mask": [0] * len(prompt_ids) + [1] * len(answer_ids)})
    return check_dropped(out, total=len(rows), name=method, max_length=max_length, ctx=ctx)


# -- vision: TRL's conversational format -----------------------------------------------------------
def vision_messages(sm: StudentModel, prompt: Prompt) -> list[dict[str, Any]]:
    """The prompt's chat messages without the image (TRL inserts the image placeholder itself).

    Uses the student's own ``messages()`` when it has one, so the system text is placed as at
    inference (Llama 3.2 Vision cannot combine an image with a system message: it is folded into
    the user turn).
    """
    text_only = Prompt(text=prompt.text, image=None, system=prompt.system)
    builder = getattr(sm, "messages", None)
    if callable(builder):
        messages = builder(text_only)
        if all(isinstance(m.get("content"), str) for m in messages):
            return [dict(m) for m in messages]
    user = f"{prompt.system.strip()}\n\n{prompt.text}" if prompt.system else prompt.text
    return [{"role": "user", "content": user}]


def vision_rows(sm: StudentModel, rows: Sequence[dict[str, Any]], method: Method,
                ctx: RunContext) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        prompt: Prompt = row["prompt"]
        if not prompt.image:
            raise MintError("A vision student got a prompt without an image; check the task's student modality")
        image = ctx.resolve(prompt.image)
        if not image.is_file():
            raise MintError(f"Image {image} (from a preference prompt) does not exist")
        item: dict[str, Any] = {"prompt": vision_messages(sm, prompt), "images": [str(image)]}
        for key in ("chosen", "rejected", "completion"):
            if key in row:
                item[key] = [{"role": "assistant", "content": row[key]}]
        if "label" in row:
            item["label"] = row["label"]
        out.append(item)
    return out


def to_dataset(rows: list[dict[str, Any]], *, shuffle_seed: int | None = None):
    """A ``datasets.Dataset``; an ``images`` column of paths becomes lazily decoded PIL images."""
    from datasets import Dataset, Image

    try:
        from datasets import List as SequenceFeature
    except ImportError:  # datasets < 4
        from datasets import Sequence as SequenceFeature

    if shuffle_seed is not None:
        rows = list(rows)
        random.Random(shuffle_seed).shuffle(rows)
    dataset = Dataset.from_list(rows)
    if "images" in dataset.column_names:
        dataset = dataset.cast_column("images", SequenceFeature(Image()))
    return dataset
