"""The four stages of a MINT run, each reading the previous stage's artifacts from the run directory.

    teach   task.load -> cases.jsonl, labels.json;  teacher.fit/rank -> rankings.jsonl
    prefs   builder.build -> preferences.jsonl (preferences.<builder>.jsonl for extra builders)
    train   optimizer.train -> students/<optimizer>/ (adapter/, checkpoints/, metrics.jsonl, curve PNG)
    eval    base and aligned students -> predictions/<role>.jsonl, metrics.json, report.md

A finished stage is recorded in ``stages.json`` with a fingerprint of the configuration it depends
on. Running a stage again with the same fingerprint is a no-op, so a killed run resumes from its
last finished stage; a changed option re-runs that stage and the ones after it. Training itself
resumes from its last checkpoint (the optimizer's job).

Under a launcher (``torchrun``, ``accelerate launch``) every process runs the same stages, but only
process 0 writes the run directory and decides what is done (:mod:`mint_core.distributed`): teach
and prefs run on it alone, training runs on all, evaluation splits the test cases between them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from rich.console import Console

from mint_core import distributed, io
from mint_core.config import build_config, instantiate, load_config_file
from mint_core.context import RunContext
from mint_core.evaluation import EvalConfig, calibration_reference, constrained_evaluation, evaluate, spread_cases
from mint_core.metrics import REFERENCE_ROLES, default_ks, paired_comparisons, teacher_metrics, teacher_report
from mint_core.registry import MintError, Registry
from mint_core.report import BASE_ROLE, format_metrics, render_report, roles_in_order
from mint_core.rundir import (STAGES_HINT, check_rankings, discard_stale_training, environment, fingerprint,
                              read_rankings, read_task_data, seed_everything)
from mint_core.summary import summarize as summarize_examples
from mint_core.types import Case, PreferenceExample, Prompt, Ranking, TaskData

log = logging.getLogger("mint")


@dataclass
class Run:
    """One run directory and the components its configuration names."""

    registry: Registry
    config: dict[str, Any]
    run_dir: Path
    console: Console = field(default_factory=lambda: Console(stderr=True))

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        distributed.setup()
        if not distributed.is_main():
            self.console.quiet = True  # one process speaks (and writes): process 0
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ctx = RunContext(run_dir=self.run_dir, seed=int(self.config["seed"]), console=self.console,
                              config=self.config)
        self._components: dict[str, Any] = {}
        self._attach_log_file()

    # -- bookkeeping -------------------------------------------------------------------------
    def _attach_log_file(self) -> None:
        if not distributed.is_main():
            return
        path = self.ctx.path("logs", "mint.log")
        if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path for h in log.handlers):
            handler = logging.FileHandler(path, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(handler)
            log.setLevel(logging.INFO)

    def save_config(self) -> None:
        if not distributed.is_main():
            return
        self._say_if_task_changed()
        io.write_yaml(self.run_dir / "config.yaml", self.config)
        io.write_json(self.run_dir / "env.json", environment(self.registry))

    def _say_if_task_changed(self) -> None:
        """Name the task options that differ from the run this directory held (the default directory
        is named without them: own data would otherwise replace the demo's results silently)."""
        saved = self.run_dir / "config.yaml"
        if not saved.exists():
            return
        before, now = load_config_file(saved).get("task") or {}, self.config["task"]
        changed = [f"task.{k}" for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
        if changed:
            self.ctx.log(f"{self.run_dir} held a run of another task ({', '.join(changed)} changed): its "
                         "stages are redone here and its results replaced; pass --run-dir DIR to keep both")

    def _state(self) -> dict[str, str]:
        path = self.run_dir / "stages.json"
        return io.read_json(path, expect=dict, hint=STAGES_HINT) if path.exists() else {}

    def _is_done(self, key: str, fp: str, *artifacts: Path) -> bool:
        # Process 0's answer for every process: none may skip a stage the others run.
        return distributed.broadcast(self._state().get(key) == fp and all(p.exists() for p in artifacts))

    def _mark_done(self, key: str, fp: str) -> None:
        if distributed.is_main():
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
        data = read_task_data(self.run_dir)
        self.ctx.extras.update(data=data, task=self.component("task"))
        return data

    def load_rankings(self) -> dict[str, Ranking]:
        return read_rankings(self.run_dir)

    def n_answers(self) -> int:
        k = self.config["builder"].get("k")
        return int(k) if k else int(getattr(type(self.component("task")), "default_n_answers", 10))

    def ks(self, data: TaskData) -> list[int]:
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
        distributed.on_main(lambda: self._teach(fp))

    def _teach(self, fp: str) -> None:
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

        metrics = teacher_report(teacher=teacher, data=data, rankings=rankings, ks=self.ks(data), ctx=self.ctx)
        io.update_json(self.run_dir / "metrics.json", "teacher", metrics)
        oof = metrics.get("train_oof")
        self.ctx.log(f"teacher: {format_metrics(metrics)} on {metrics['n']} test cases"
                     + (f"; out-of-fold on {oof['n']} train cases: {format_metrics(oof)}" if oof else "")
                     + f" ({time.perf_counter() - start:.0f}s)")
        self._mark_done("teach", fp)
        io.write_text(self.run_dir / "report.md", render_report(self.config, self.run_dir, io.read_json(self.run_dir / "metrics.json")))

    def builder_section(self, name: str | None = None) -> dict[str, Any]:
        """The builder config for ``name``: the run's own section, or defaults sharing its list options
        (k, q, truth_first, force_true_label: every method of a grid gets the same target lists)."""
        main = self.config["builder"]
        if name is None or name == main["name"]:
            return main
        spec = self.registry.get("builder", name)
        shared = {k: v for k, v in main.items() if k in {"k", "q", "truth_first", "force_true_label"}}
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
        distributed.on_main(lambda: self._prefs(section, path, fp))
        return path

    def _prefs(self, section: dict[str, Any], path: Path, fp: str) -> None:
        name = section["name"]
        seed_everything(self.ctx.seed)
        data, rankings = self.load_data(), self.load_rankings()
        spec = self.registry.get("builder", name)
        options = {k: v for k, v in section.items() if k != "name"}
        builder_obj = spec.create(build_config(spec.config, options, section="builder", component=name))
        extra = {"student": self.component("student")} if getattr(builder_obj, "needs_student", False) else {}
        examples = builder_obj.build(task=self.component("task"), data=data, rankings=rankings, ctx=self.ctx, **extra)
        if not examples:
            raise MintError(f"builder {name!r} built no examples: does the task have training cases?")
        io.write_jsonl(path, (e.to_dict() for e in examples))
        summary = summarize_examples(examples)
        io.update_json(self.run_dir / "prefs_summary.json", name, summary)
        self.ctx.log(f"prefs: {name} -> {path.name}: {summary}")
        self._mark_done(f"prefs:{name}", fp)

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
        distributed.on_main(lambda: discard_stale_training(out, fp, log=self.ctx.log))
        self.load_data()
        examples = io.read_jsonl(prefs_path, parse=PreferenceExample.from_dict)
        spec = self.registry.get("optimizer", name)
        options = {k: v for k, v in section.items() if k != "name"}
        optimizer_obj = spec.create(build_config(spec.config, options, section="optimizer", component=name))
        self.ctx.log(f"train: {name} on {len(examples)} examples from {prefs_path.name}")
        start = time.perf_counter()
        result = optimizer_obj.train(student=self.component("student"), examples=examples, output_dir=out,
                                     ctx=self.ctx)
        seconds = round(time.perf_counter() - start, 1)

        def record() -> None:
            io.write_json(out / "result.json", {
                "optimizer": section, "adapter_dir": str(result.adapter_dir) if result.adapter_dir else None,
                "metrics": result.metrics, "seconds": seconds})
            self._mark_done(f"train:{name}", fp)

        distributed.on_main(record)
        return out

    def evaluate(self, roles: Iterable[str], optimizer_sections: dict[str, dict[str, Any]] | None = None) -> dict:
        """Evaluate the base student and/or trained students; returns metrics.json's content.

        Per role: ``predictions/<role>.jsonl`` (per-case answers, outcomes and every label's raw
        score) and, in ranking mode, ``predictions/<role>.calibration.json`` (the calibration
        reference). Then ``deltas.json`` pairs every evaluated role with base (and sft).
        """
        data, rankings = self.load_data(), self.load_rankings()
        eval_cfg = EvalConfig(**self.config["eval"])
        cases = spread_cases(data.split("test"), eval_cfg.max_cases)
        if not cases:
            raise MintError("No test cases to evaluate: raise task.test_fraction or add data.")
        ranking = eval_cfg.mode in ("ranking", "both")
        reference_cases = spread_cases(data.split("val") or data.split("train"), eval_cfg.calibration_cases)
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
            metrics, predictions = evaluate(
                config=dataclasses.replace(eval_cfg, max_cases=None), student_model=model, task=task, data=data,
                rankings=rankings, n_answers=n_answers, cases=cases, prompts=prompts, ctx=self.ctx, ks=ks,
                teacher_q=self.config["builder"].get("q") or n_answers, reference=reference)
            if eval_cfg.constrained and eval_cfg.mode in ("generation", "both"):
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
            distributed.on_main(lambda: self._record_evaluation(role, fp, metrics, predictions, reference))
            del model
        distributed.on_main(lambda: self._write_report(data, rankings, ks))
        return io.read_json(self.run_dir / "metrics.json", expect=dict)

    def _record_evaluation(self, role: str, fp: str, metrics: dict[str, Any], predictions: list[dict[str, Any]],
                           reference: dict[str, Any] | None) -> None:
        pred_path, calibration_path = self.prediction_paths(role)
        if reference is not None:
            io.write_json(calibration_path, reference)
        io.write_jsonl(pred_path, predictions)
        io.update_json(self.run_dir / "metrics.json", role, metrics)
        self._mark_done(f"eval:{role}", fp)

    def _write_report(self, data: TaskData, rankings: dict[str, Ranking], ks: list[int]) -> None:
        """``deltas.json`` and ``report.md`` from ``metrics.json`` and the saved predictions."""
        if not any(k.endswith("_ci") for k in io.read_json(self.run_dir / "metrics.json").get("teacher", {})):
            # A run taught by an older MINT: give the teacher's figures their intervals too (cheap).
            io.update_json(self.run_dir / "metrics.json", "teacher",
                           teacher_metrics(rankings=rankings, cases=data.split("test"), ks=ks))
        all_metrics = io.read_json(self.run_dir / "metrics.json", expect=dict)
        io.write_json(self.run_dir / "deltas.json", self.paired_deltas(all_metrics))
        io.write_text(self.run_dir / "report.md", render_report(self.config, self.run_dir, all_metrics))

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
