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
from mint_core.summary import summarize as summarize_examples
from mint_core.types import Case, LabelSpace, PreferenceExample, Prompt, Ranking, TaskData

log = logging.getLogger("mint")

STAGES = ("teach", "prefs", "train", "eval")
BASE_ROLE = "base"
#: What to do about a damaged bookkeeping file. A corrupt stages.json is an error, not "absent":
#: treating it as absent would silently redo hours of finished stages; deleting it is one command.
STAGES_HINT = "It records which stages finished: delete it to re-run every stage."
TEACH_HINT = "Run 'mint teach' again on this run directory to rewrite it (delete stages.json first)."


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
    blob = json.dumps(_canonical(parts), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _canonical(value: Any) -> Any:
    """``1`` and ``1.0`` are one option value: a float option whose default is written as an int
    (``epochs: float = 1``) comes back as ``1.0`` from the saved config.yaml, and the resumed run
    must not take that for a changed option (it would discard the killed run's checkpoints)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    return value


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
        return io.read_json(path, expect=dict, hint=STAGES_HINT) if path.exists() else {}

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
        meta = io.read_json(self.run_dir / "task.json", expect=dict, hint=TEACH_HINT)
        if not isinstance(meta.get("student_modality"), str) or not isinstance(meta.get("info"), dict):
            raise MintError(f"{self.run_dir / 'task.json'}: needs 'student_modality' and 'info'. {TEACH_HINT}")
        labels_path = self.run_dir / "labels.json"
        try:
            labels = LabelSpace.from_list(io.read_json(labels_path, expect=list, hint=TEACH_HINT))
        except (KeyError, TypeError, ValueError) as exc:
            raise MintError(f"{labels_path}: not a list of labels with 'id' and 'name' ({exc}). {TEACH_HINT}") from None
        cases = io.read_jsonl(cases_path, parse=Case.from_dict)
        data = TaskData(labels=labels, cases=cases, student_modality=meta["student_modality"], info=meta["info"])
        self.ctx.extras.update(data=data, task=self.component("task"))
        return data

    def load_rankings(self) -> dict[str, Ranking]:
        path = self.run_dir / "rankings.jsonl"
        if not path.exists():
            raise MintError(f"{path} is missing: run 'mint teach --run-dir {self.run_dir}' first.")
        return {r.case_id: r for r in io.read_jsonl(path, parse=Ranking.from_dict)}

    def n_answers(self) -> int:
        k = self.config["builder"].get("k")
        return int(k) if k else int(getattr(type(self.component("task")), "default_n_answers", 10))

    def ks(self, data: TaskData) -> list[int]:
        from mint_core.evaluation import default_ks

        return list(self.config["eval"].get("ks") or default_ks(len(data.labels), self.n_answers()))

    # -- stages ------------------------------------------------------------------------------
    def teach_fp(self) -> str:
        return self.section_fp("task", "teacher")

    def prefs_fp(self, section: dict[str, Any]) -> str:
        return fingerprint(self.teach_fp(), section)

    def teach(self) -> None:
        fp = self.teach_fp()
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

        metrics = self.teacher_report(teacher, data, rankings)
        io.update_json(self.run_dir / "metrics.json", "teacher", metrics)
        oof = metrics.get("train_oof")
        self.ctx.log(f"teacher: {_format_metrics(metrics)} on {metrics['n']} test cases"
                     + (f"; out-of-fold on {oof['n']} train cases: {_format_metrics(oof)}" if oof else "")
                     + f" ({time.perf_counter() - start:.0f}s)")
        self._mark_done("teach", fp)
        io.write_text(self.run_dir / "report.md", render_report(self, io.read_json(self.run_dir / "metrics.json")))

    def teacher_report(self, teacher: Any, data: TaskData, rankings: Sequence[Ranking]) -> dict[str, Any]:
        """Teacher top-k on test with 95% Wilson intervals; ``train_oof``: the same on the training cases
        ranked out of fold (cross-fitting); ``variants``: the teacher's ablation and baselines on test."""
        from mint_core.evaluation import teacher_metrics

        ks = self.ks(data)
        test = data.split("test")
        by_id = {r.case_id: r for r in rankings}
        metrics = with_intervals(teacher_metrics(rankings=by_id, cases=test, ks=ks))
        oof = [c for c in data.split("train") if by_id[c.id].fold is not None]
        if oof:
            metrics["train_oof"] = with_intervals(teacher_metrics(rankings=by_id, cases=oof, ks=ks))
        variants = teacher.variant_rankings(data=data, cases=test, ctx=self.ctx)
        if variants:
            metrics["variants"] = {"teacher": {k: v for k, v in metrics.items() if k not in ("train_oof",)}}
            for name, ranked in variants.items():
                metrics["variants"][name] = with_intervals(teacher_metrics(rankings=ranked, cases=test, ks=ks))
        return metrics

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
        fp = self.prefs_fp(section)
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
        examples = io.read_jsonl(prefs_path, parse=PreferenceExample.from_dict)
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
        if marker.exists() and io.read_json(marker, expect=dict).get("fingerprint") != fp:
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
        """Evaluate the base student and/or trained students; returns metrics.json's content.

        Per role: ``predictions/<role>.jsonl`` (per-case answers, outcomes and every label's raw
        score) and, in ranking mode, ``predictions/<role>.calibration.json`` (the calibration
        reference). Then ``deltas.json`` pairs every evaluated role with base (and sft).
        """
        import dataclasses

        from mint_core.evaluation import EvalConfig, calibration_reference, evaluate, teacher_metrics

        data, rankings = self.load_data(), self.load_rankings()
        eval_cfg = EvalConfig(**self.config["eval"])
        cases = select_cases(data.split("test"), eval_cfg.max_cases)
        if not cases:
            raise MintError("No test cases to evaluate: raise task.test_fraction or add data.")
        ranking = eval_cfg.mode in ("ranking", "both")
        reference_cases = select_cases(data.split("val") or data.split("train"), eval_cfg.calibration_cases)
        task, student = self.component("task"), self.component("student")
        ks, n_answers = self.ks(data), self.n_answers()
        for role in roles:
            adapter_dir, section = None, None
            if role != BASE_ROLE:
                result_path = self.student_dir(role) / "result.json"
                if not result_path.exists():
                    raise MintError(f"No trained student {role!r} in {self.run_dir}: run 'mint train --optimizer {role}' first.")
                result = io.read_json(result_path, expect=dict)
                adapter_dir = Path(result["adapter_dir"]) if result.get("adapter_dir") else None
                section = result["optimizer"]
            fp = fingerprint(self.section_fp("task", "teacher", "student", "eval"), section,
                             _mtime(self.student_dir(role) / "result.json"), n_answers)
            pred_path, calibration_path = self.prediction_paths(role)
            if self._is_done(f"eval:{role}", fp, pred_path, *([calibration_path] if ranking else [])):
                self.ctx.log(f"[dim]eval: {role} already done[/dim]")
                continue
            seed_everything(self.ctx.seed)
            prompts = reference_prompts = None
            if section is not None:  # an optimizer may rewrite evaluation prompts (retrieval)
                prompts = self._augmented_prompts(role, section, cases, n_answers)
                reference_prompts = self._augmented_prompts(role, section, reference_cases, n_answers)
            self.ctx.log(f"eval: {role} on {len(cases)} test cases"
                         + (f" (adapter {adapter_dir})" if adapter_dir else ""))
            start = time.perf_counter()
            model = student.load(ctx=self.ctx, adapter_dir=adapter_dir, trainable=False)
            reference = None
            if ranking:
                reference = calibration_reference(
                    method=eval_cfg.calibration, student_model=model, task=task, data=data, n_answers=n_answers,
                    batch_size=eval_cfg.batch_size, cases=reference_cases, prompts=reference_prompts, ctx=self.ctx)
                io.write_json(calibration_path, reference)
            metrics, predictions = evaluate(
                config=dataclasses.replace(eval_cfg, max_cases=None), student_model=model, task=task, data=data,
                rankings=rankings, n_answers=n_answers, cases=cases, prompts=prompts, ctx=self.ctx, ks=ks,
                teacher_q=self.config["builder"].get("q") or n_answers, reference=reference)
            if eval_cfg.constrained and eval_cfg.mode in ("generation", "both"):
                from mint_core.predict import constrained_evaluation

                answered = {row["case_id"] for row in predictions if "answer" in row}
                generated = [c for c in cases if c.id in answered]  # the cases generation mode took
                c_metrics, c_predictions = constrained_evaluation(
                    student_model=model, task=task, data=data, cases=generated, rankings=rankings,
                    n_answers=n_answers, ks=ks, eval_cfg=eval_cfg, prompts=None if prompts is None
                    else [p for c, p in zip(cases, prompts) if c.id in answered], ctx=self.ctx,
                    teacher_q=self.config["builder"].get("q") or n_answers)
                metrics.update(c_metrics)
                extra = {row["case_id"]: row for row in c_predictions}
                predictions = [{**row, **extra.get(row["case_id"], {})} for row in predictions]
            metrics["seconds"] = round(time.perf_counter() - start, 1)
            io.write_jsonl(pred_path, predictions)
            io.update_json(self.run_dir / "metrics.json", role, metrics)
            self._mark_done(f"eval:{role}", fp)
            del model
        if not any(k.endswith("_ci") for k in io.read_json(self.run_dir / "metrics.json").get("teacher", {})):
            # A run taught by an older MINT: give the teacher's figures their intervals too (cheap).
            io.update_json(self.run_dir / "metrics.json", "teacher",
                           teacher_metrics(rankings=rankings, cases=data.split("test"), ks=ks))
        all_metrics = io.read_json(self.run_dir / "metrics.json", expect=dict)
        io.write_json(self.run_dir / "deltas.json", self.paired_deltas(all_metrics))
        io.write_text(self.run_dir / "report.md", render_report(self, all_metrics))
        return all_metrics

    def prediction_paths(self, role: str) -> tuple[Path, Path]:
        """``predictions/<role>.jsonl`` and its calibration reference ``predictions/<role>.calibration.json``."""
        folder = self.run_dir / "predictions"
        return folder / f"{role}.jsonl", folder / f"{role}.calibration.json"

    def _augmented_prompts(self, role: str, section: dict[str, Any], cases: Sequence[Case],
                           n_answers: int) -> list[Prompt]:
        task = self.component("task")
        spec = self.registry.get("optimizer", role)
        options = {k: v for k, v in section.items() if k != "name"}
        optimizer_obj = spec.create(build_config(spec.config, options, section="optimizer", component=role))
        return optimizer_obj.augment_prompts(prompts=[task.prompt(case=c, n_answers=n_answers) for c in cases],
                                             cases=cases, output_dir=self.student_dir(role), ctx=self.ctx)

    def load_predictions(self, role: str) -> list[dict[str, Any]]:
        """A role's saved per-case predictions; a clear error for a missing file or one from an older MINT."""
        path = self.prediction_paths(role)[0]
        if not path.exists():
            raise MintError(f"{path} is missing: run 'mint eval --roles {role} --run-dir {self.run_dir}'.")
        rows = list(io.read_jsonl(path))
        if rows and "outcomes" not in rows[0]:
            raise MintError(f"{path} has no per-case outcomes (written by an older MINT): run 'mint eval --roles "
                            f"{role} --run-dir {self.run_dir}' again to re-evaluate it.")
        return rows

    def paired_deltas(self, all_metrics: dict[str, Any], *, focus: str | None = None) -> list[dict[str, Any]]:
        """Paired differences of every evaluated role from base (and sft); roles of older runs are skipped.

        With ``focus`` (a role, e.g. the run's optimizer), also ``focus`` minus every other student
        (ORPO - DPO, ORPO - RAG, ...), the differences the paper's claim is about.
        """
        from mint_core.evaluation import REFERENCE_ROLES, paired_comparisons

        predictions: dict[str, list[dict[str, Any]]] = {}
        for role in roles_in_order(all_metrics):
            if role == "teacher" or not self.prediction_paths(role)[0].exists():
                continue
            try:
                predictions[role] = self.load_predictions(role)
            except MintError as exc:
                self.ctx.log(f"[yellow]eval: no paired comparison for {role}: {exc}[/yellow]")
        rows = paired_comparisons(predictions)
        if focus in predictions:
            for other in [r for r in predictions if r not in (focus, *REFERENCE_ROLES)]:
                rows += paired_comparisons({focus: predictions[focus], other: predictions[other]}, references=[other])
        return rows


def _mtime(path: Path) -> float | None:
    return path.stat().st_mtime if path.exists() else None


def select_cases(cases: Sequence[Case], max_cases: int | None) -> list[Case]:
    """All cases, or ``max_cases`` of them spread evenly (deterministic, keeps the class mix)."""
    from mint_core.evaluation import spread_cases

    return spread_cases(cases, max_cases)


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


def with_intervals(metrics: dict[str, Any], confidence: float = 0.95) -> dict[str, Any]:
    """``top{k}_ci``: the Wilson score interval of each ``top{k}`` accuracy over ``metrics["n"]`` cases."""
    from scipy.stats import binomtest

    n = int(metrics.get("n") or 0)
    out = dict(metrics)
    for key, value in metrics.items():
        if key.startswith("top") and isinstance(value, float) and n:
            interval = binomtest(round(value * n), n).proportion_ci(confidence_level=confidence, method="wilson")
            out[f"{key}_ci"] = [round(float(interval.low), 4), round(float(interval.high), 4)]
    return out


def _format_metrics(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))


METRIC_ORDER = ("top1", "top3", "top5", "top10", "rank_top1", "rank_top3", "rank_top5", "rank_top10", "rank_mrr",
                "rank_raw_top1", "rank_raw_top3", "rank_raw_top5", "rank_raw_top10", "rank_raw_mrr",
                "rank_top1_max_label_share", "rank_raw_top1_max_label_share", "well_formed", "hallucination_rate",
                "teacher_top1_agreement", "teacher_topk_coverage", "teacher_bottomq_avoidance")


def metric_columns(all_metrics: dict[str, dict[str, Any]]) -> list[str]:
    present = {k for m in all_metrics.values() for k, v in m.items() if isinstance(v, (int, float))}
    return [k for k in METRIC_ORDER if k in present]


def roles_in_order(all_metrics: dict[str, Any]) -> list[str]:
    order = ["teacher", BASE_ROLE, "rag", "sft", "dpo", "kto", "orpo"]
    return [r for r in order if r in all_metrics] + sorted(r for r in all_metrics if r not in order)


#: Left out of the terminal (all of them are in report.md and metrics.json).
TABLE_SKIPS = {"top3", "rank_top3", "rank_raw_top3", "rank_raw_top5", "rank_raw_top10", "rank_mrr", "rank_raw_mrr",
               "rank_raw_top1_max_label_share", "teacher_bottomq_avoidance"}
SHORT_NAMES = {"rank_top1": "r-top1", "rank_top3": "r-top3", "rank_top5": "r-top5", "rank_top10": "r-top10",
               "rank_raw_top1": "raw-top1", "rank_raw_top10": "raw-top10", "rank_top1_max_label_share": "1st-lab",
               "well_formed": "formed", "hallucination_rate": "halluc", "teacher_top1_agreement": "T-agree",
               "teacher_topk_coverage": "T-top-k", "teacher_bottomq_avoidance": "T-avoid"}
LEGEND = ("value [95% bootstrap CI]. r-: ranking mode, calibrated (eval.calibration); raw-: uncalibrated; "
          "1st-lab: share of cases whose first label is the most frequent first label; formed: well-formed "
          "answers; halluc: listed names matching no label; T-: teacher agreement (top-1, top-k coverage)")
TABLE_WIDTH = 100


def format_share(values: dict[str, Any], key: str, digits: int = 2) -> str:
    """``.12 [.05,.22]``: a share and its interval, compact enough for a 100-column table."""
    value = values.get(key)
    if not isinstance(value, (int, float)):
        return "—"

    def number(x: float) -> str:  # shares lie in [0, 1]: the leading zero says nothing
        text = f"{x:.{digits}f}"
        return text[1:] if text.startswith("0.") else text

    interval = values.get(f"{key}_ci")
    return f"{number(value)} [{number(interval[0])},{number(interval[1])}]" if interval else number(value)


def _fit_columns(columns: list[str], cells: dict[str, list[str]], first_width: int, width: int) -> list[list[str]]:
    """Columns split into groups whose tables fit ``width`` characters (rich adds 3 per column)."""
    groups: list[list[str]] = [[]]
    used = first_width + 4
    for column in columns:
        need = max(len(SHORT_NAMES.get(column, column)), *(len(c) for c in cells[column])) + 3
        if groups[-1] and used + need > width:
            groups.append([])
            used = first_width + 4
        groups[-1].append(column)
        used += need
    return [g for g in groups if g]


def metrics_tables(all_metrics: dict[str, dict[str, Any]], title: str = "MINT results",
                   width: int = TABLE_WIDTH) -> list[Table]:
    """The closing summary, one row per role, split into as many tables as ``width`` columns need."""
    roles = roles_in_order(all_metrics)
    columns = [c for c in metric_columns(all_metrics) if c not in TABLE_SKIPS]
    cells = {c: [format_share(all_metrics[r], c) for r in roles] for c in columns}
    role_width = max(len("role"), *(len(r) for r in roles)) if roles else 4
    groups = _fit_columns(columns, cells, role_width, width)
    tables = []
    for i, group in enumerate(groups):  # the legend goes under the first, widest table
        table = Table(title=title if i == 0 else None, caption=LEGEND if i == 0 else None)
        table.add_column("role", style="bold", no_wrap=True)
        for column in group:
            table.add_column(SHORT_NAMES.get(column, column), justify="right", no_wrap=True)
        for j, role in enumerate(roles):
            table.add_row(role, *(cells[c][j] for c in group))
        tables.append(table)
    return tables


def metrics_table(all_metrics: dict[str, dict[str, Any]], title: str = "MINT results") -> Table:
    """All summary columns in one table (see :func:`metrics_tables` for the terminal-width split)."""
    return metrics_tables(all_metrics, title=title, width=10**6)[0]


def deltas_table(deltas: Sequence[dict[str, Any]], title: str = "Paired differences") -> Table:
    """One row per (role, reference, metric): delta, its paired-bootstrap 95% CI and McNemar's exact p."""
    table = Table(title=title, caption="delta = role minus reference on the same test cases; p: McNemar exact")
    for column in ("role", "vs", "metric", "delta", "95% CI", "p"):
        table.add_column(column, justify="right" if column in ("delta", "95% CI", "p") else "left", no_wrap=True)
    for row in deltas:
        table.add_row(row["role"], row["reference"], SHORT_NAMES.get(row["metric"], row["metric"]),
                      f"{row['delta']:+.3f}", f"[{row['ci'][0]:+.3f}, {row['ci'][1]:+.3f}]",
                      "—" if row.get("p_mcnemar") is None else f"{row['p_mcnemar']:.3g}")
    return table


def markdown_table(all_metrics: dict[str, dict[str, Any]]) -> str:
    columns = metric_columns(all_metrics)
    lines = ["| role | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for role in roles_in_order(all_metrics):
        values = all_metrics[role]
        cells = [format_share(values, c, digits=3) for c in columns]
        lines.append(f"| {role} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_deltas(deltas: Sequence[dict[str, Any]]) -> str:
    lines = ["| role | vs | metric | delta | 95% CI | McNemar p | n |", "|---|---|---|---|---|---|---|"]
    for row in deltas:
        p = "—" if row.get("p_mcnemar") is None else f"{row['p_mcnemar']:.3g}"
        lines.append(f"| {row['role']} | {row['reference']} | {row['metric']} | {row['delta']:+.3f} | "
                     f"[{row['ci'][0]:+.3f}, {row['ci'][1]:+.3f}] | {p} | {row['n']} |")
    return "\n".join(lines)


def teacher_table(teacher: dict[str, Any]) -> str:
    """The teacher's test figures beside its variants (ablation, baselines) and its out-of-fold train figures."""
    rows = dict(teacher.get("variants") or {"teacher": teacher})
    if teacher.get("train_oof"):
        rows["teacher, train out-of-fold"] = teacher["train_oof"]
    ks = [k for k in ("top1", "top10") if k in teacher] or [k for k in teacher if k.startswith("top") and "_" not in k]

    def cell(values: dict[str, Any], k: str) -> str:
        ci = values.get(f"{k}_ci")
        return f"{values[k]:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else (f"{values[k]:.3f}" if k in values else "—")

    lines = ["| ranker | " + " | ".join(ks) + " | n |", "|---" * (len(ks) + 2) + "|"]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(cell(values, k) for k in ks) + f" | {values.get('n', '—')} |")
    return "\n".join(lines)


def render_report(run: Run, all_metrics: dict[str, dict[str, Any]]) -> str:
    config = run.config
    parts = [f"# MINT run `{config['name']}`", "",
             f"task `{config['task']['name']}`, teacher `{config['teacher']['name']}`, "
             f"builder `{config['builder']['name']}`, student `{config['student']['name']}`, seed {config['seed']}.",
             "", "## Metrics (test split)", "",
             "Each share: value [95% percentile-bootstrap interval over test cases, 2,000 resamples]. `rank_*`: "
             f"ranking mode calibrated by `{config['eval'].get('calibration', 'none')}`; `rank_raw_*`: plain "
             "log-likelihood sums.", "", markdown_table(all_metrics), ""]
    deltas_path = run.run_dir / "deltas.json"
    deltas = io.read_json(deltas_path) if deltas_path.exists() else []
    if deltas:
        parts += ["## Paired differences (same test cases)", "",
                  "delta = role minus reference; 95% paired-bootstrap interval; McNemar's exact test on the hits.",
                  "", markdown_deltas(deltas), ""]
    teacher = all_metrics.get("teacher") or {}
    if teacher.get("variants") or teacher.get("train_oof"):
        parts += ["## Teacher", "", teacher_table(teacher), ""]
    summary_path = run.run_dir / "prefs_summary.json"
    if summary_path.exists():
        parts += ["## Preference data", ""]
        for builder, summary in io.read_json(summary_path, expect=dict).items():
            parts.append(f"- `{builder}`: " + ", ".join(f"{k}={v}" for k, v in summary.items()))
        parts.append("")
    curves = sorted(run.run_dir.glob("students/*/training_curve.png"))
    if curves:
        parts += ["## Training curves", ""] + [f"![{p.parent.name}]({p.relative_to(run.run_dir)})" for p in curves]
    return "\n".join(parts) + "\n"
