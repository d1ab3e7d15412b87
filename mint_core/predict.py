"""Use an aligned student on new cases: ``mint predict`` and :func:`mint_core.api.load_student`.

For each case the student writes its answer (free, or constrained to the label space), the answer
is parsed and matched to the label space exactly as evaluation does (hallucinated names kept and
flagged), and every label is ranked by the student's log-likelihood of answering it, calibrated
when the run directory holds a calibration vector (:func:`saved_calibration`).

Inputs (:func:`read_inputs`): a text file (one case per line), JSONL (``id``, ``text`` and/or
``image`` per line), a file or folder in the task's own source format (phenopacket JSON for the
rare-disease task, through ``Task.read_cases``), or standard input (text lines or JSONL).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence, TextIO

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mint_core import io
from mint_core.components import AnswerConstraint, StudentModel, Task
from mint_core.config import build_config, load_config_file
from mint_core.registry import MintError, Registry, get_registry
from mint_core.report import roles_in_order
from mint_core.types import Case, LabelSpace, Prompt

BASE_ROLE = "base"


@dataclass
class RankedLabel:
    label_id: str
    name: str
    #: Log-likelihood of answering this label alone, minus its calibration value when there is one.
    score: float


@dataclass
class Prediction:
    """What the student says about one case."""

    case_id: str
    answer: str
    #: Listed names in order (duplicates dropped), each with its label id or ``None`` (hallucinated).
    names: list[str]
    matched_ids: list[str | None]
    well_formed: bool
    problem: str
    ranking: list[RankedLabel] = field(default_factory=list)
    constrained: bool = False
    calibrated: bool = False
    true_label_ids: list[str] = field(default_factory=list)

    @property
    def hallucinated(self) -> list[str]:
        return [name for name, label_id in zip(self.names, self.matched_ids) if label_id is None]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hallucinated"] = self.hallucinated
        return data


# -- inputs --------------------------------------------------------------------------------------
def read_inputs(source: str | Path | None, *, task: Task, ctx: Any, stdin: TextIO | None = None) -> list[Case]:
    """The cases in ``source``: a text/JSONL file, a task-format file or folder, or stdin (``None`` or ``-``)."""
    if source is None or str(source) == "-":
        return parse_lines((stdin or sys.stdin).read().splitlines(), origin="<stdin>", base=Path.cwd(),
                           modality=task.student_modality)
    path = Path(source).expanduser()
    if not path.exists():
        raise MintError(f"{path} does not exist: pass a text file (one case per line), a .jsonl file, "
                        f"a task file or folder (e.g. phenopackets), or '-' for standard input")
    if path.is_dir() or path.suffix.lower() in (".json", ".zip"):
        cases = task.read_cases(path=path, ctx=ctx)
        if cases is None:
            raise MintError(f"{path}: the task {type(task).__name__} reads no files of its own format; "
                            f"pass a text file (one case per line) or a .jsonl file instead")
        if not cases:
            raise MintError(f"{path}: no cases found")
        return cases
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise MintError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    return parse_lines(lines, origin=str(path), base=path.parent, modality=task.student_modality,
                       jsonl=path.suffix.lower() == ".jsonl" or None)


def parse_lines(lines: Sequence[str], *, origin: str, base: Path, modality: str = "text",
                jsonl: bool | None = None) -> list[Case]:
    """Cases from text lines (one case each) or JSON lines; ``jsonl=None`` guesses from the first line."""
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        raise MintError(f"{origin}: no cases (the input is empty)")
    if jsonl is None:
        jsonl = numbered[0][1].lstrip().startswith("{")
    cases: list[Case] = []
    seen: set[str] = set()
    for n, line in numbered:
        case = _json_case(line, origin=origin, number=n, base=base) if jsonl else Case(
            id=f"line-{n}", label_ids=(), split="test", text=line.strip())
        if case.id in seen:
            raise MintError(f"{origin}:{n}: id {case.id!r} is used twice; give every case its own id")
        seen.add(case.id)
        if modality == "image" and not case.image:
            raise MintError(f"{origin}:{n}: this task's student reads images: give an 'image' path (JSONL)")
        if modality == "text" and not case.text:
            raise MintError(f"{origin}:{n}: this task's student reads text: give a 'text' field")
        cases.append(case)
    return cases


def _json_case(line: str, *, origin: str, number: int, base: Path) -> Case:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise MintError(f"{origin}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(row, dict):
        raise MintError(f"{origin}:{number}: expected a JSON object with 'text' or 'image', got {type(row).__name__}")
    unknown = set(row) - {"id", "text", "image", "label_ids"}
    if unknown:
        raise MintError(f"{origin}:{number}: unknown field(s) {sorted(unknown)}; use id, text, image (label_ids)")
    for key in ("id", "text", "image"):
        if key in row and (not isinstance(row[key], (str, int)) or not str(row[key]).strip()):
            raise MintError(f"{origin}:{number}: field {key!r} must be a non-empty string")
    image = None
    if row.get("image"):
        image_path = Path(str(row["image"])).expanduser()
        image_path = image_path if image_path.is_absolute() else base / image_path
        if not image_path.is_file():
            raise MintError(f"{origin}:{number}: image {image_path} does not exist")
        image = str(image_path.resolve())
    labels = row.get("label_ids") or ()
    return Case(id=str(row.get("id", f"line-{number}")), label_ids=tuple(str(x) for x in labels), split="test",
                text=str(row["text"]) if row.get("text") else None, image=image)


# -- ranking -------------------------------------------------------------------------------------
def saved_calibration(run_dir: Path, role: str, labels: LabelSpace) -> list[float] | None:
    """The per-label value to subtract from raw ranking scores, when evaluation saved one; else ``None``.

    Read from ``predictions/<role>.calibration.json``: ``{label_id: value}`` or ``{"label_ids": [...],
    "vector": [...]}`` (eval.calibration, issue 10). This is the one place predict learns about
    calibration: wire evaluation's saved vector here.
    """
    path = Path(run_dir) / "predictions" / f"{role}.calibration.json"
    if not path.exists():
        return None
    data = io.read_json(path)
    if isinstance(data, dict) and "vector" in data:
        data = dict(zip(data.get("label_ids", labels.ids), data["vector"]))
    if not isinstance(data, dict) or set(labels.ids) - set(data):
        raise MintError(f"{path}: expected a value for every label id ({len(labels)} labels)")
    return [float(data[label_id]) for label_id in labels.ids]


def rank_labels(*, student_model: StudentModel, task: Task, labels: LabelSpace, prompts: Sequence[Prompt],
                batch_size: int, calibration: Sequence[float] | None = None) -> list[list[RankedLabel]]:
    """Every label of ``labels`` for each prompt, best first: raw log-likelihood minus ``calibration``."""
    from mint_core.evaluation import ranking_candidates

    candidates = ranking_candidates(task, labels)
    scores = student_model.score(prompts=list(prompts), candidates=candidates, batch_size=batch_size)
    shift = list(calibration) if calibration is not None else [0.0] * len(labels)
    ranked = []
    for row in scores:
        values = [s - c for s, c in zip(row, shift)]
        order = sorted(range(len(values)), key=lambda i: -values[i])
        ranked.append([RankedLabel(labels.labels[i].id, labels.labels[i].name, values[i]) for i in order])
    return ranked


# -- the predictor -------------------------------------------------------------------------------
def open_run(run_dir: str | Path, *, registry: Registry | None = None, console: Console | None = None):
    """The :class:`~mint_core.pipeline.Run` saved in ``run_dir`` (its ``config.yaml``)."""
    from mint_core.pipeline import Run

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise MintError(f"{run_dir} is not a MINT run directory (no config.yaml): pass --run-dir of a run "
                        f"made by 'mint run' or 'mint train'")
    return Run(registry=registry or get_registry(), config=load_config_file(config_path), run_dir=run_dir,
               console=console or Console(stderr=True))


def trained_adapter(run, role: str) -> tuple[Path | None, dict[str, Any] | None]:
    """The adapter folder and optimizer section of ``role`` in ``run`` (``(None, None)`` for ``base``)."""
    if role == BASE_ROLE:
        return None, None
    result_path = run.student_dir(role) / "result.json"
    if not result_path.exists():
        trained = sorted(p.parent.name for p in run.run_dir.glob("students/*/result.json"))
        raise MintError(f"No trained student {role!r} in {run.run_dir} (trained: {', '.join(trained) or 'none'}; "
                        f"'base' is the untrained student). Run 'mint train --optimizer {role}' first.")
    result = io.read_json(result_path)
    return (Path(result["adapter_dir"]) if result.get("adapter_dir") else None), result["optimizer"]


def evaluated_roles(run) -> list[str]:
    """The roles ``run``'s ``metrics.json`` holds whose predictions were saved, in report order (no ``teacher``)."""
    path = run.run_dir / "metrics.json"
    return [role for role in roles_in_order(io.read_json(path, expect=dict) if path.exists() else {})
            if role != "teacher" and run.prediction_paths(role)[0].exists()]


class Predictor:
    """A run's student (``role``: ``base`` or an optimizer name) ready to answer new cases."""

    def __init__(self, run_dir: str | Path, *, role: str = "orpo", registry: Registry | None = None,
                 console: Console | None = None):
        self.run = open_run(run_dir, registry=registry, console=console)
        self.role = role
        self.data = self.run.load_data()
        self.labels = self.data.labels
        self.task: Task = self.run.component("task")
        self.n_answers = self.run.n_answers()
        adapter_dir, section = trained_adapter(self.run, role)
        self._optimizer = None
        if section is not None:
            spec = self.run.registry.get("optimizer", role)
            options = {k: v for k, v in section.items() if k != "name"}
            self._optimizer = spec.create(build_config(spec.config, options, section="optimizer", component=role))
        self.adapter_dir = adapter_dir
        self.model: StudentModel = self.run.component("student").load(ctx=self.run.ctx, adapter_dir=adapter_dir,
                                                                        trainable=False)
        self.calibration = saved_calibration(self.run.run_dir, role, self.labels)

    @property
    def eval_config(self) -> dict[str, Any]:
        return self.run.config["eval"]

    def read(self, source: str | Path | None) -> list[Case]:
        """Cases from a file, folder or stdin (see :func:`read_inputs`)."""
        return read_inputs(source, task=self.task, ctx=self.run.ctx)

    def prompts(self, cases: Sequence[Case]) -> list[Prompt]:
        prompts = [self.task.prompt(case=case, n_answers=self.n_answers) for case in cases]
        if self._optimizer is not None:  # retrieval-augmented baselines rewrite the prompt
            prompts = self._optimizer.augment_prompts(prompts=prompts, cases=list(cases),
                                                      output_dir=self.run.student_dir(self.role), ctx=self.run.ctx)
        return prompts

    def constraint(self) -> AnswerConstraint:
        return AnswerConstraint(names=tuple(label.name for label in self.labels),
                                noun=getattr(self.task, "label_noun", "labels"), max_items=self.n_answers)

    def predict(self, cases: Sequence[Case | str] | str, *, constrained: bool = False, top: int = 10,
                rank: bool = True, max_new_tokens: int | None = None) -> list[Prediction]:
        """Answer each case (a :class:`Case` or a text of notes) and rank the label space (``top`` labels kept)."""
        from mint_core.answers import parse_answer
        from mint_core.matching import NameMatcher, unique_entries

        if isinstance(cases, str):
            cases = [cases]
        case_list = [c if isinstance(c, Case) else Case(id=f"case-{i}", label_ids=(), split="test", text=str(c))
                     for i, c in enumerate(cases, 1)]
        if not case_list:
            return []
        prompts = self.prompts(case_list)
        batch_size = int(self.eval_config.get("batch_size") or 8)
        kwargs: dict[str, Any] = {}
        if constrained:
            if not getattr(self.model, "supports_constrained", False):
                raise MintError(f"The student {type(self.model).__name__} cannot constrain generation "
                                f"(--constrained / eval.constrained): drop the option")
            kwargs["allowed_answers"] = self.constraint()
        answers = self.model.generate(prompts=prompts, max_new_tokens=int(max_new_tokens or self.eval_config.get(
            "max_new_tokens") or 160), batch_size=batch_size, **kwargs)
        rankings = (rank_labels(student_model=self.model, task=self.task, labels=self.labels, prompts=prompts,
                                batch_size=batch_size, calibration=self.calibration)
                    if rank else [[] for _ in case_list])
        matcher = NameMatcher(self.labels, float(self.eval_config.get("fuzzy_threshold") or 0.8))
        out = []
        for case, answer, ranking in zip(case_list, answers, rankings):
            parsed = parse_answer(answer)
            names, ids = unique_entries(parsed.names, [matcher.match(name) for name in parsed.names])
            out.append(Prediction(case_id=case.id, answer=answer, names=names, matched_ids=ids,
                                  well_formed=parsed.well_formed, problem=parsed.problem,
                                  ranking=ranking[:max(0, top)], constrained=constrained,
                                  calibrated=self.calibration is not None, true_label_ids=list(case.label_ids)))
        return out


# -- showing -------------------------------------------------------------------------------------
def predictions_table(predictions: Sequence[Prediction], labels: LabelSpace, *, top: int,
                      title: str = "MINT predictions") -> Table:
    """One row per case: the parsed answer (hallucinated names flagged) and the top of the label ranking."""
    calibrated = any(p.calibrated for p in predictions)
    table = Table(title=title, show_lines=True, caption=(
        "answer: the student's list matched to the label space, [red]✗[/red] = names no label matches; "
        f"ranking: labels by {'calibrated ' if calibrated else ''}log-likelihood of answering them"))
    table.add_column("case", style="bold", overflow="fold", max_width=18)
    table.add_column("answer (parsed)", overflow="fold", ratio=3)
    table.add_column(f"ranking (top {top})", overflow="fold", ratio=3)
    show_truth = any(p.true_label_ids for p in predictions)
    if show_truth:
        table.add_column("true", overflow="fold", ratio=1)
    for p in predictions:
        lines = []
        for i, (name, label_id) in enumerate(zip(p.names, p.matched_ids), 1):
            shown = name if len(name) <= 60 else name[:59] + "…"  # a hallucinated "name" can be a paragraph
            lines.append(f"{i}. [red]✗ {escape(shown)}[/red]" if label_id is None else f"{i}. {labels[label_id].name}")
        if not p.well_formed:
            lines.append(f"[yellow]({escape(p.problem or 'not well-formed')})[/yellow]")
        ranking = "\n".join(f"{i}. {r.name} [dim]{r.score:.2f}[/dim]" for i, r in enumerate(p.ranking, 1))
        if not p.names:
            lines.insert(0, f"[dim]{escape(p.answer[:120]) or '(empty answer)'}[/dim]")
        row = [p.case_id, "\n".join(lines), ranking or "—"]
        if show_truth:
            row.append(", ".join(labels[t].name if t in labels else t for t in p.true_label_ids) or "—")
        table.add_row(*row)
    return table


__all__ = ["Prediction", "Predictor", "RankedLabel", "saved_calibration", "open_run", "parse_lines",
           "predictions_table", "rank_labels", "read_inputs", "trained_adapter"]
