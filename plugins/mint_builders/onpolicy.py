"""The ``onpolicy`` builder: the rejected answer is what the student itself writes, where it disagrees.

Bottom-q negatives list labels the student would never write; a rejected answer the student
actually produces is the mistake preference optimization can correct. For each training case
the student (the base model, or ``builder.adapter``: e.g. an SFT student's adapter) writes its
greedy list once; the pair is ``topk``'s chosen list against that list. Where the student's
list names the same labels in the same order as the chosen one, or lists nothing, the pair falls
back to ``topk``'s rejected answer (``negatives``: bottom or hard), so a rejected answer never
equals the chosen one (``meta.rejected_source`` says which).

The generations are cached in the run directory (``onpolicy/generations.jsonl``, keyed by the
student, the adapter's bytes, the prompt and ``max_new_tokens``): a second ``mint prefs`` (other
k/q, another fallback) reuses them and generates only for prompts it has not seen.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from mint_core import io
from mint_core.answers import parse_answer
from mint_core.components import Student, Task
from mint_core.matching import match_names
from mint_core.registry import MintError
from mint_core.rundir import fingerprint
from mint_core.types import PreferenceExample, TaskData
from mint_builders.builders import TopKBuilder

CACHE = Path("onpolicy") / "generations.jsonl"


class OnPolicyBuilder(TopKBuilder):
    """Pairs: ``topk``'s chosen list against the student's own greedy list (see module docstring)."""

    name = "onpolicy"
    needs_student = True

    def build(self, *, task: Task, data: TaskData, rankings, ctx, student: Student | None = None):
        if student is None:
            raise MintError("builder=onpolicy needs the run's student to generate its answers")
        pairs = super().build(task=task, data=data, rankings=rankings, ctx=ctx)
        answers = self._student_answers(student, [p.prompt for p in pairs], ctx)
        return [self._on_policy(task, data, pair, answer) for pair, answer in zip(pairs, answers)]

    def _student_answers(self, student: Student, prompts: list, ctx) -> list[str]:
        adapter = ctx.resolve(self.config.adapter) if self.config.adapter else None
        if adapter is not None and not (adapter / "adapter_model.safetensors").is_file():
            raise MintError(f"builder.adapter={self.config.adapter!r}: no adapter_model.safetensors in {adapter}")
        who = fingerprint(getattr(student, "config", None), _file_digest(adapter), self.config.max_new_tokens)
        keys = [fingerprint(who, prompt.to_dict()) for prompt in prompts]
        path = ctx.path(*CACHE.parts)
        cached = {row["key"]: row["answer"] for row in io.read_jsonl(path)} if path.is_file() else {}
        todo = [i for i, key in enumerate(keys) if key not in cached]
        if todo:
            ctx.log(f"builder onpolicy: the student writes {len(todo)} answer(s) ({len(keys) - len(todo)} cached)")
            model = student.load(ctx=ctx, adapter_dir=adapter)
            written = model.generate(prompts=[prompts[i] for i in todo], max_new_tokens=self.config.max_new_tokens,
                                     batch_size=self.config.batch_size)
            cached.update({keys[i]: answer for i, answer in zip(todo, written)})
            path.parent.mkdir(parents=True, exist_ok=True)
            io.write_jsonl(path, ({"key": k, "answer": a} for k, a in sorted(cached.items())))
        else:
            ctx.log(f"builder onpolicy: all {len(keys)} answers from {path.name} (none generated)")
        return [cached[key] for key in keys]

    def _on_policy(self, task: Task, data: TaskData, pair: PreferenceExample, answer: str) -> PreferenceExample:
        parsed = parse_answer(answer, noun=task.label_noun)
        ids = match_names(parsed.names, data.labels)
        meta: dict[str, Any] = {**pair.meta, "builder": self.name, "student_answer_ids": ids}
        rejected = pair.rejected
        if not parsed.names or ids == pair.meta["chosen_ids"] or answer.strip() == pair.chosen:
            meta["rejected_source"] = "fallback:" + self.config.negatives
        else:
            rejected = answer.strip()
            meta.update(rejected_source="student", rejected_ids=ids, rejected_ranks=None, q=len(ids))
        return PreferenceExample(case_id=pair.case_id, prompt=pair.prompt, kind="pair", chosen=pair.chosen,
                                 rejected=rejected, meta=meta)


def _file_digest(adapter: Path | None) -> str:
    if adapter is None:
        return ""
    return hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()
