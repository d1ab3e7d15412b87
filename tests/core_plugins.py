"""Small but real components for testing the core's mechanics without torch.

The task draws cases whose notes name the label's keywords; the teacher is a keyword-overlap
ranker; the builder makes top-1 vs bottom-1 pairs; the optimizer "trains" a keyword table by
counting chosen answers and writes it atomically. Each does its job for real, quickly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from mint_core import io
from mint_core.answers import format_answer
from mint_core.components import Optimizer, PreferenceBuilder, Task, Teacher, TrainResult
from mint_core.hookspecs import hookimpl
from mint_core.types import Case, Label, LabelSpace, PreferenceExample, Prompt, Ranking, TaskData

WORDS = {"alpha": ["red", "round"], "beta": ["blue", "square"], "gamma": ["green", "long"]}


@dataclass
class KeywordTaskConfig:
    cases_per_label: int = field(default=4, metadata={"help": "cases per label"})
    noise: float = field(default=0.2, metadata={"help": "probability a keyword is replaced by another label's"})


class KeywordTask(Task):
    label_noun = "labels"
    default_n_answers = 2

    def __init__(self, config: KeywordTaskConfig):
        self.config = config

    def load(self, *, ctx):
        rng = random.Random(ctx.seed)
        labels = LabelSpace(Label(id=k, name=k.capitalize()) for k in WORDS)
        cases = []
        for label in WORDS:
            for i in range(self.config.cases_per_label):
                words = [w if rng.random() > self.config.noise else rng.choice(sum(WORDS.values(), []))
                         for w in WORDS[label]]
                split = "test" if i == 0 else "train"
                cases.append(Case(id=f"{label}-{i}", label_ids=(label,), split=split, text=" ".join(words)))
        return TaskData(labels=labels, cases=cases)

    def prompt(self, *, case, n_answers):
        return Prompt(text=f"{case.text}? list {n_answers}")


class KeywordTeacher(Teacher):
    fits = 0

    def fit(self, *, data, ctx):
        type(self).fits += 1

    def rank(self, *, data, cases, ctx):
        out = []
        for case in cases:
            scores = {l.id: sum(w in case.text.split() for w in WORDS[l.id]) for l in data.labels}
            ids = sorted(scores, key=lambda k: (-scores[k], k))
            out.append(Ranking(case_id=case.id, label_ids=ids, scores=[float(scores[i]) for i in ids]))
        return out


class TopBottomBuilder(PreferenceBuilder):
    def build(self, *, task, data, rankings, ctx):
        examples = []
        for case in data.split("train"):
            r = rankings[case.id]
            names = [data.labels[i].name for i in r.label_ids]
            examples.append(PreferenceExample(case_id=case.id, prompt=task.prompt(case=case, n_answers=1),
                                              chosen=format_answer(names[:1], noun="labels"),
                                              rejected=format_answer(names[-1:], noun="labels")))
        return examples


@dataclass
class CountingConfig:
    crash_after: int = field(default=-1, metadata={"help": "raise after this many examples (tests a kill)"})
    learning_rate: float = field(default=1.0, metadata={"help": "unused by counting; compare's per-method rates set it"})


class CountingOptimizer(Optimizer):
    def __init__(self, config: CountingConfig):
        self.config = config

    def train(self, *, student, examples, output_dir, ctx):
        counts: dict[str, int] = {}
        for i, example in enumerate(examples):
            if i == self.config.crash_after:
                raise KeyboardInterrupt("simulated kill")
            counts[example.chosen] = counts.get(example.chosen, 0) + 1
        io.write_json(Path(output_dir) / "table.json", counts)
        return TrainResult(output_dir=Path(output_dir), adapter_dir=Path(output_dir), metrics={"examples": float(len(examples))})


@hookimpl
def mint_register_tasks(register):
    register("keywords", KeywordTask, config=KeywordTaskConfig, description="keyword cases")


@hookimpl
def mint_register_teachers(register):
    register("overlap", lambda config: KeywordTeacher(), description="keyword overlap",
             pairs_with={"task": "keywords", "optimizer": "counting", "builder": "topbottom", "student": "keyword-student"})


@hookimpl
def mint_register_builders(register):
    register("topbottom", lambda config: TopBottomBuilder(), description="top-1 vs bottom-1")


@hookimpl
def mint_register_optimizers(register):
    register("counting", CountingOptimizer, config=CountingConfig, description="counts chosen answers")


class KeywordStudentModel:
    """Answers by keyword overlap, optionally biased by a table the counting optimizer wrote."""

    modality = "text"

    def __init__(self, table: dict[str, int]):
        self.model, self.processor, self.table = None, None, table

    def encode(self, *, prompt, completion=None):
        ids = [ord(ch) for ch in prompt.text]
        return {"input_ids": ids + [ord(ch) for ch in completion or ""], "prompt_length": len(ids)}

    def _ranked(self, prompt):
        words = prompt.text.split("?")[0].split()
        scores = {k: sum(w in words for w in ws) for k, ws in WORDS.items()}
        return sorted(scores, key=lambda k: (-scores[k], k))

    def generate(self, *, prompts, max_new_tokens, batch_size):
        return [format_answer([k.capitalize() for k in self._ranked(p)][:2], noun="labels") for p in prompts]

    def score(self, *, prompts, candidates, batch_size):
        out = []
        for p in prompts:
            ranked = self._ranked(p)
            out.append([-float(ranked.index(c.lower())) if c.lower() in ranked else -99.0 for c in candidates])
        return out


class KeywordStudent:
    modality = "text"

    def load(self, *, ctx, adapter_dir=None, trainable=False):
        table = io.read_json(Path(adapter_dir) / "table.json") if adapter_dir else {}
        return KeywordStudentModel(table)


@hookimpl
def mint_register_students(register):
    register("keyword-student", lambda config: KeywordStudent(), description="keyword overlap student")
