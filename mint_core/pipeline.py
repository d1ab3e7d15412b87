"""The four stages of a MINT run, each reading the previous stage's artifacts from the run directory.

    teach   task.load -> cases.jsonl, labels.json;  teacher.fit/rank -> rankings.jsonl
    prefs   builder.build -> preferences.jsonl (preferences.<builder>.jsonl for extra builders)
    train   optimizer.train -> students/<optimizer>/ (adapter/, checkpoints/, metrics.jsonl, curve PNG)
    eval    base and aligned students -> predictions/<role>.jsonl, metrics.json, report.md

A finished stage is recorded in ``stages.json`` with a fingerprint of the configuration it depends
on. Running a stage again with the same fingerprint is a no-op, so a killed run resumes from its
last finished stage; a changed option re-runs that stage and the ones after it. Training itself
resumes from its last checkpoint (the optimizer's job).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import random
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Sequence

from rich.console import Console
from rich.table import Table

from mint_core import io
from mint_core.config import build_config, instantiate
from mint_core.context import RunContext
from mint_core.registry import MintError, Registry
from mint_core.types import Case, LabelSpace, PreferenceExample, Ranking, TaskData

log = logging.getLogger("mint")

STAGES = ("teach", "prefs", "train", "eval")
BASE_ROLE = "base"


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (when importable) so a config + seed reproduces a run."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass


def fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Run:
    """One run directory and the components its configuration names."""

    registry: Registry
    config: dict[str, Any]
    run_dir: Path
    console: Console = field(default_factory=lambda: Console(stderr=True))

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ctx = RunContext(run_dir=self.run_dir, seed=int(self.config["seed"]), console=self.console,
                              config=self.config)
        self._components: dict[str, Any] = {}
        self._attach_log_file()

    # -- bookkeeping -------------------------------------------------------------------------
    def _attach_log_file(self) -> None:
        path = self.ctx.path("logs", "mint.log")
        if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path for h in log.handlers):
            handler = logging.FileHandler(path, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(handler)
            log.setLevel(logging.INFO)

    def save_config(self) -> None:
        io.write_yaml(self.run_dir / "config.yaml", self.config)
        io.write_json(self.run_dir / "env.json", environment(self.registry))

    def _state(self) -> dict[str, str]:
        path = self.run_dir / "stages.json"
        return io.read_json(path) if path.exists() else {}

    def _is_done(self, key: str, fp: str, *artifacts: Path) -> bool:
        return self._state().get(key) == fp and all(p.exists() for p in artifacts)

    def _mark_done(self, key: str, fp: str) -> None:
        io.update_json(self.run_dir / "stages.json", key, fp)

    def component(self, kind: str) -> Any:
        if kind not in self._components:
            self._components[kind] = instantiate(self.registry, self.config, kind)
        return self._components[kind]

    def section_fp(self, *kinds: str) -> str:
        return fingerprint(self.config["seed"], *(self.config[k] for k in kinds))

    # -- artifacts ---------------------------------------------------------------------------
    def load_data(self) -> TaskData:
        """The task data saved by ``teach`` (cases with their split, label space)."""
        cases_path = self.run_dir / "cases.jsonl"
        if not cases_path.exists():
            raise MintError(f"{cases_path} is missing: run 'mint teach --run-dir {self.run_dir}' first.")
        meta = io.read_json(self.run_dir / "task.json")
        labels = LabelSpace.from_list(io.read_json(self.run_dir / "labels.json"))
        cases = [Case.from_dict(row) for row in io.read_jsonl(cases_path)]
        data = TaskData(labels=labels, cases=cases, student_modality=meta["student_modality"], info=meta["info"])
        self.ctx.extras.update(data=data, task=self.component("task"))
        return data

    def load_rankings(self) -> dict[str, Ranking]:
        path = self.run_dir / "rankings.jsonl"
        if not path.exists():
            raise MintError(f"{path} is missing: run 'mint teach --run-dir {self.run_dir}' first.")
        return {r.case_id: r for r in (Ranking.from_dict(row) for row in io.read_jsonl(path))}

    def n_answers(self) -> int:
        k = self.config["builder"].get("k")
        return int(k) if k else int(getattr(type(self.component("task")), "default_n_answers", 10))

    def ks(self, data: TaskData) -> list[int]:
        from mint_core.evaluation import default_ks

        return list(self.config["eval"].get("ks") or default_ks(len(data.labels), self.n_answers()))

    # -- stages ------------------------------------------------------------------------------
    def teach(self) -> None:
        fp = self.section_fp("task", "teacher")
        if self._is_done("teach", fp, self.run_dir / "rankings.jsonl"):
            self.ctx.log("[dim]teach: already done, reusing rankings.jsonl[/dim]")
            return
        seed_everything(self.ctx.seed)
        start = time.perf_counter()
        task, teacher = self.component("task"), self.component("teacher")
        data = task.load(ctx=self.ctx)
        if not data.cases:
            raise MintError(f"task {self.config['task']['name']!r} produced no cases: check task.path / task.source.")
        io.write_json(self.run_dir / "labels.json", data.labels.to_list())
        io.write_json(self.run_dir / "task.json", {"student_modality": data.student_modality, "info": data.info})
        io.write_jsonl(self.run_dir / "cases.jsonl", (c.to_dict() for c in data.cases))
        io.write_json(self.run_dir / "split.json", {s: [c.id for c in data.split(s)] for s in ("train", "val", "test")})
        counts = {s: len(data.split(s)) for s in ("train", "val", "test")}
        self.ctx.log(f"task: {len(data.cases)} cases, {len(data.labels)} labels "
                     f"(train {counts['train']}, val {counts['val']}, test {counts['test']})")
        self.ctx.extras.update(data=data, task=task)

        teacher.fit(data=data, ctx=self.ctx)
        rankings = teacher.rank(data=data, cases=data.cases, ctx=self.ctx)
        check_rankings(rankings, data)
        io.write_jsonl(self.run_dir / "rankings.jsonl", (r.to_dict() for r in rankings))

        from mint_core.evaluation import teacher_metrics

        test = data.split("test")
        metrics = teacher_metrics(rankings={r.case_id: r for r in rankings}, cases=test, ks=self.ks(data))
        io.update_json(self.run_dir / "metrics.json", "teacher", metrics)
        self.ctx.log(f"teacher: {_format_metrics(metrics)} on {len(test)} test cases "
                     f"({time.perf_counter() - start:.0f}s)")
        self._mark_done("teach", fp)

    def builder_section(self, name: str | None = None) -> dict[str, Any]:
        """The builder config for ``name``: the run's own section, or defaults sharing its k/q."""
        main = self.config["builder"]
        if name is None or name == main["name"]:
            return main
        spec = self.registry.get("builder", name)
        shared = {k: v for k, v in main.items() if k in {"k", "q"}}
        valid = {f for f, *_ in spec.config_fields()}
        return {"name": name, **{k: v for k, v in shared.items() if k in valid}}

    def preferences_path(self, builder: str) -> Path:
        main = self.config["builder"]["name"]
        return self.run_dir / ("preferences.jsonl" if builder == main else f"preferences.{builder}.jsonl")

    def prefs(self, builder: str | None = None, *, quiet: bool = False) -> Path:
        section = self.builder_section(builder)
        name = section["name"]
        path = self.preferences_path(name)
        fp = fingerprint(self.section_fp("task", "teacher"), section)
        if self._is_done(f"prefs:{name}", fp, path):
            if not quiet:
                self.ctx.log(f"[dim]prefs: already done, reusing {path.name}[/dim]")
            return path
        seed_everything(self.ctx.seed)
        data, rankings = self.load_data(), self.load_rankings()
        spec = self.registry.get("builder", name)
        options = {k: v for k, v in section.items() if k != "name"}
        builder_obj = spec.create(build_config(spec.config, options, section="builder", component=name))
        examples = builder_obj.build(task=self.component("task"), data=data, rankings=rankings, ctx=self.ctx)
        if not examples:
            raise MintError(f"builder {name!r} built no examples: does the task have training cases?")
        io.write_jsonl(path, (e.to_dict() for e in examples))
        summary = summarize_examples(examples)
        io.update_json(self.run_dir / "prefs_summary.json", name, summary)
        self.ctx.log(f"prefs: {name} -> {path.name}: {summary}")
        self._mark_done(f"prefs:{name}", fp)
        return path

    def optimizer_section(self, name: str | None = None, shared: dict[str, Any] | None = None) -> dict[str, Any]:
        """The optimizer config for ``name``: the run's own section, or defaults plus ``shared`` options it has."""
        main = self.config["optimizer"]
        if name is None or name == main["name"]:
            return main
        spec = self.registry.get("optimizer", name)
        valid = {f for f, *_ in spec.config_fields()}
        return {"name": name, **{k: v for k, v in (shared or {}).items() if k in valid}}

    def builder_for(self, optimizer: str) -> str:
        if optimizer == self.config["optimizer"]["name"]:
            return self.config["builder"]["name"]
        return self.registry.get("optimizer", optimizer).pairs_with.get("builder", "topk")

    def student_dir(self, role: str) -> Path:
        return self.run_dir / "students" / role

    def train(self, optimizer: str | None = None, section: dict[str, Any] | None = None) -> Path:
        section = section or self.optimizer_section(optimizer)
        name = section["name"]
        builder = self.builder_for(name)
        prefs_path = self.prefs(builder, quiet=True)
        out = self.student_dir(name)
        fp = fingerprint(self.section_fp("task", "teacher", "student"), self.builder_section(builder), section)
        if self._is_done(f"train:{name}", fp, out / "result.json"):
            self.ctx.log(f"[dim]train: {name} already done, reusing {out}[/dim]")
            return out
        seed_everything(self.ctx.seed)
        self._discard_stale_training(out, fp)
        self.load_data()
        examples = [PreferenceExample.from_dict(row) for row in io.read_jsonl(prefs_path)]
        spec = self.registry.get("optimizer", name)
        options = {k: v for k, v in section.items() if k != "name"}
        optimizer_obj = spec.create(build_config(spec.config, options, section="optimizer", component=name))
        self.ctx.log(f"train: {name} on {len(examples)} examples from {prefs_path.name}")
        start = time.perf_counter()
        result = optimizer_obj.train(student=self.component("student"), examples=examples, output_dir=out,
                                     ctx=self.ctx)
        io.write_json(out / "result.json", {
            "optimizer": section, "adapter_dir": str(result.adapter_dir) if result.adapter_dir else None,
            "metrics": result.metrics, "seconds": round(time.perf_counter() - start, 1)})
        self._mark_done(f"train:{name}", fp)
        return out

    def _discard_stale_training(self, out: Path, fp: str) -> None:
        """Checkpoints resume a killed run only if they came from the same configuration: a changed
        option (more steps, another learning rate) starts training afresh instead of resuming."""
        marker = out / "fingerprint.json"
        if marker.exists() and io.read_json(marker).get("fingerprint") != fp:
            import shutil

            self.ctx.log(f"train: the configuration changed since {out.name}'s checkpoints; training afresh")
            for stale in ("checkpoints", "adapter", "metrics.jsonl", "result.json"):
                target = out / stale
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        io.write_json(marker, {"fingerprint": fp})

    def evaluate(self, roles: Iterable[str], optimizer_sections: dict[str, dict[str, Any]] | None = None) -> dict:
        """Evaluate the base student and/or trained students; returns metrics.json's content."""
        from mint_core.evaluation import evaluate_generation, evaluate_ranking

        data, rankings = self.load_data(), self.load_rankings()
        cases = select_cases(data.split("test"), self.config["eval"].get("max_cases"))
        if not cases:
            raise MintError("No test cases to evaluate: raise task.test_fraction or add data.")
        eval_cfg = self.config["eval"]
        task, student = self.component("task"), self.component("student")
        ks, n_answers = self.ks(data), self.n_answers()
        for role in roles:
            adapter_dir, prompts, optimizer_obj = None, None, None
            section = None
            if role != BASE_ROLE:
                result_path = self.student_dir(role) / "result.json"
                if not result_path.exists():
                    raise MintError(f"No trained student {role!r} in {self.run_dir}: run 'mint train --optimizer {role}' first.")
                result = io.read_json(result_path)
                adapter_dir = Path(result["adapter_dir"]) if result.get("adapter_dir") else None
                section = result["optimizer"]
            fp = fingerprint(self.section_fp("task", "teacher", "student", "eval"), section,
                             _mtime(self.student_dir(role) / "result.json"), n_answers)
            pred_path = self.run_dir / "predictions" / f"{role}.jsonl"
            if self._is_done(f"eval:{role}", fp, pred_path):
                self.ctx.log(f"[dim]eval: {role} already done[/dim]")
                continue
            seed_everything(self.ctx.seed)
            if section is not None:
                spec = self.registry.get("optimizer", role)
                options = {k: v for k, v in section.items() if k != "name"}
                optimizer_obj = spec.create(build_config(spec.config, options, section="optimizer", component=role))
                base_prompts = [task.prompt(case=c, n_answers=n_answers) for c in cases]
                prompts = optimizer_obj.augment_prompts(prompts=base_prompts, cases=cases,
                                                        output_dir=self.student_dir(role), ctx=self.ctx)
            self.ctx.log(f"eval: {role} on {len(cases)} test cases"
                         + (f" (adapter {adapter_dir})" if adapter_dir else ""))
            start = time.perf_counter()
            model = student.load(ctx=self.ctx, adapter_dir=adapter_dir, trainable=False)
            metrics: dict[str, Any] = {}
            predictions: list[dict[str, Any]] = []
            if eval_cfg["mode"] in ("generation", "both"):
                metrics, predictions = evaluate_generation(
                    student_model=model, task=task, data=data, cases=cases, rankings=rankings, n_answers=n_answers,
                    ks=ks, batch_size=eval_cfg["batch_size"], max_new_tokens=eval_cfg["max_new_tokens"],
                    prompts=prompts, threshold=eval_cfg["fuzzy_threshold"], ctx=self.ctx,
                    teacher_k=n_answers, teacher_q=self.config["builder"].get("q") or n_answers)
            if eval_cfg.get("constrained") and eval_cfg["mode"] in ("generation", "both"):
                from mint_core.predict import constrained_evaluation

                c_metrics, c_predictions = constrained_evaluation(
                    student_model=model, task=task, data=data, cases=cases, rankings=rankings, n_answers=n_answers,
                    ks=ks, eval_cfg=eval_cfg, prompts=prompts, ctx=self.ctx,
                    teacher_q=self.config["builder"].get("q") or n_answers)
                metrics.update(c_metrics)
                predictions = [{**row, **extra} for row, extra in zip(predictions, c_predictions)]
            if eval_cfg["mode"] in ("ranking", "both"):
                rank_metrics, rank_predictions = evaluate_ranking(
                    student_model=model, task=task, data=data, cases=cases, n_answers=n_answers, ks=ks,
                    batch_size=eval_cfg["batch_size"], prompts=prompts, ctx=self.ctx)
                metrics.update(rank_metrics)
                predictions = _merge_predictions(predictions, rank_predictions)
            metrics["seconds"] = round(time.perf_counter() - start, 1)
            io.write_jsonl(pred_path, predictions)
            io.update_json(self.run_dir / "metrics.json", role, metrics)
            self._mark_done(f"eval:{role}", fp)
            del model
        all_metrics = io.read_json(self.run_dir / "metrics.json")
        io.write_text(self.run_dir / "report.md", render_report(self, all_metrics))
        return all_metrics


def _mtime(path: Path) -> float | None:
    return path.stat().st_mtime if path.exists() else None


def _merge_predictions(first: list[dict], second: list[dict]) -> list[dict]:
    if not first:
        return second
    by_case = {row["case_id"]: row for row in second}
    return [{**row, **{f"rank_{k}" if k in row and k != "case_id" else k: v
                       for k, v in by_case.get(row["case_id"], {}).items()}} for row in first]


def select_cases(cases: Sequence[Case], max_cases: int | None) -> list[Case]:
    """All cases, or ``max_cases`` of them spread evenly (deterministic, keeps the class mix)."""
    cases = sorted(cases, key=lambda c: (c.label_id, c.id))
    if not max_cases or max_cases >= len(cases):
        return list(cases)
    step = len(cases) / max_cases
    return [cases[int(i * step)] for i in range(max_cases)]


def check_rankings(rankings: Sequence[Ranking], data: TaskData) -> None:
    """A teacher must rank every label for every case: fail early, naming the first offender."""
    ids = set(data.labels.ids)
    seen = {r.case_id for r in rankings}
    missing = [c.id for c in data.cases if c.id not in seen]
    if missing:
        raise MintError(f"The teacher returned no ranking for {len(missing)} case(s), e.g. {missing[:3]}.")
    for ranking in rankings:
        if set(ranking.label_ids) != ids or len(ranking.label_ids) != len(ids):
            raise MintError(f"The teacher's ranking for case {ranking.case_id!r} does not cover the label space "
                            f"exactly once ({len(ranking.label_ids)} entries for {len(ids)} labels).")


def summarize_examples(examples: Sequence[PreferenceExample]) -> dict[str, Any]:
    """Counts for the log and report.md: the built-in builders' summary when installed, else kinds."""
    try:
        from mint_builders.summary import summarize

        return summarize(examples)
    except ImportError:  # a third-party builder set without the built-ins: plain counts
        kinds: dict[str, int] = {}
        for example in examples:
            kinds[example.kind] = kinds.get(example.kind, 0) + 1
        return {"n_examples": len(examples), "n_cases": len({e.case_id for e in examples}), "by_kind": kinds}


def environment(registry: Registry) -> dict[str, Any]:
    """Versions of the stack and of every plugin, for env.json."""
    versions = {}
    for dist in ("torch", "transformers", "trl", "peft", "accelerate", "timm", "mint-toolkit"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": versions,
            "plugins": [p.to_dict() for p in registry.plugins.values()]}


def _format_metrics(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))


METRIC_ORDER = ("top1", "top3", "top5", "top10", "rank_top1", "rank_top3", "rank_top5", "rank_top10", "well_formed",
                "hallucination_rate", "teacher_top1_agreement", "teacher_topk_coverage", "teacher_bottomq_avoidance")


def metric_columns(all_metrics: dict[str, dict[str, Any]]) -> list[str]:
    present = {k for m in all_metrics.values() for k, v in m.items() if isinstance(v, (int, float))}
    return [k for k in METRIC_ORDER if k in present]


def roles_in_order(all_metrics: dict[str, Any]) -> list[str]:
    order = ["teacher", BASE_ROLE, "rag", "sft", "dpo", "kto", "orpo"]
    return [r for r in order if r in all_metrics] + sorted(r for r in all_metrics if r not in order)


TABLE_SKIPS = {"rank_top3", "teacher_top1_agreement", "teacher_bottomq_avoidance"}
SHORT_NAMES = {"rank_top1": "r-top1", "rank_top3": "r-top3", "rank_top5": "r-top5", "rank_top10": "r-top10",
               "well_formed": "formed", "hallucination_rate": "halluc.", "teacher_top1_agreement": "T-agree",
               "teacher_topk_coverage": "T-top-k", "teacher_bottomq_avoidance": "T-avoid"}


def metrics_table(all_metrics: dict[str, dict[str, Any]], title: str = "MINT results") -> Table:
    """The closing summary: one row per role (teacher, base, each aligned student)."""
    # The terminal table keeps the headline columns (all of them are in report.md and metrics.json).
    columns = [c for c in metric_columns(all_metrics) if c not in TABLE_SKIPS]
    table = Table(title=title, caption="r-: ranking mode (labels scored by log-likelihood); formed: well-formed "
                                       "answers; halluc.: listed names matching no label; T-: agreement with the "
                                       "teacher (top-1, top-k coverage, bottom-q avoidance)")
    table.add_column("role", style="bold", no_wrap=True)
    for column in columns:
        table.add_column(SHORT_NAMES.get(column, column), justify="right", no_wrap=True)
    for role in roles_in_order(all_metrics):
        values = all_metrics[role]
        table.add_row(role, *(f"{values[c]:.3f}" if isinstance(values.get(c), (int, float)) else "—" for c in columns))
    return table


def markdown_table(all_metrics: dict[str, dict[str, Any]]) -> str:
    columns = metric_columns(all_metrics)
    lines = ["| role | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for role in roles_in_order(all_metrics):
        values = all_metrics[role]
        cells = [f"{values[c]:.3f}" if isinstance(values.get(c), (int, float)) else "—" for c in columns]
        lines.append(f"| {role} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_report(run: Run, all_metrics: dict[str, dict[str, Any]]) -> str:
    config = run.config
    parts = [f"# MINT run `{config['name']}`", "",
             f"task `{config['task']['name']}`, teacher `{config['teacher']['name']}`, "
             f"builder `{config['builder']['name']}`, student `{config['student']['name']}`, seed {config['seed']}.",
             "", "## Metrics (test split)", "", markdown_table(all_metrics), ""]
    summary_path = run.run_dir / "prefs_summary.json"
    if summary_path.exists():
        parts += ["## Preference data", ""]
        for builder, summary in io.read_json(summary_path).items():
            parts.append(f"- `{builder}`: " + ", ".join(f"{k}={v}" for k, v in summary.items()))
        parts.append("")
    curves = sorted(run.run_dir.glob("students/*/training_curve.png"))
    if curves:
        parts += ["## Training curves", ""] + [f"![{p.parent.name}]({p.relative_to(run.run_dir)})" for p in curves]
    return "\n".join(parts) + "\n"
