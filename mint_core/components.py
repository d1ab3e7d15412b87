"""The interface of each component kind.

A plugin registers a *factory* per component (see :mod:`mint_core.hookspecs`); the core calls
``factory(config)`` with an instance of the component's config dataclass and then uses the
returned object through the methods below. Every method takes keyword arguments only, so the
contract can grow without breaking plugins.

Heavy imports (torch, transformers) belong inside these methods, never at a plugin's top level:
``mint --help`` must not pay for them.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Literal, Sequence

from mint_core.answers import HEADER
from mint_core.types import Case, LabelSpace, Modality, PreferenceExample, Prompt, Ranking, TaskData

if TYPE_CHECKING:
    from mint_core.context import RunContext

ExampleKind = Literal["pair", "unpaired", "sft"]


class Task(ABC):
    """A data source with its label space (rare diseases from phenopackets, tissue tiles, ...)."""

    #: What the student sees of a case: the notes (``text``) or the image (``image``).
    student_modality: ClassVar[Modality] = "text"
    #: Plural noun for the labels, used in prompts and reports ("diseases", "tissue types").
    label_noun: ClassVar[str] = "labels"

    @abstractmethod
    def load(self, *, ctx: RunContext) -> TaskData:
        """Return the label space and every case with its split assigned.

        Images the task creates (rendered faces, synthetic tiles) go under ``ctx.path("images")``
        and are referenced from :attr:`Case.image` relative to the run directory.
        """

    @abstractmethod
    def prompt(self, *, case: Case, n_answers: int) -> Prompt:
        """The student's unimodal view of ``case``: a question asking for ``n_answers`` labels."""

    def content_free_prompt(self, *, n_answers: int, labels: LabelSpace | None = None) -> Prompt | None:
        """The question of :meth:`prompt` with no findings (no notes, no image), or ``None``.

        ``labels`` is the run's label space, for tasks whose prompt lists the candidates.

        Ranking evaluation subtracts each label's score under this prompt (``eval.calibration=
        content-free``) to remove the student's prior for the label's name. ``None``: the task
        builds no such prompt (that calibration is then refused with a clear message).
        """
        return None

    def read_cases(self, *, path: Path, ctx: RunContext) -> list[Case] | None:
        """New, unlabelled cases from a file or folder in the task's own source format (``mint predict``).

        A rare-disease task reads phenopacket JSON and writes the notes exactly as ``load`` does.
        Returned cases may have no ``label_ids``. ``None`` (the default) means this task reads no
        such format; ``mint predict`` then accepts only text lines and JSONL.
        """
        return None


class Teacher(ABC):
    """A multimodal model that ranks the whole label space for each case."""

    @abstractmethod
    def fit(self, *, data: TaskData, ctx: RunContext) -> None:
        """Train on ``data.split("train")`` (and ``"val"``); a no-op for pretrained or precomputed teachers.

        Checkpoints go under ``ctx.path("teacher")`` as safetensors.
        """

    @abstractmethod
    def rank(self, *, data: TaskData, cases: Sequence[Case], ctx: RunContext) -> list[Ranking]:
        """Rank every label of ``data.labels`` for each case, best first, one :class:`Ranking` per case."""

    def variant_rankings(self, *, data: TaskData, cases: Sequence[Case], ctx: RunContext) -> dict[str, list[Ranking]]:
        """Rankings of ``cases`` by variants of the fitted teacher, for its report: one branch alone
        (``notes-only``, ``face-only``) or a baseline it wants shown beside it. The core scores each
        like the teacher (top-k with 95% intervals in ``metrics.json`` and report.md). Default: none."""
        return {}


class PreferenceBuilder(ABC):
    """Turns teacher rankings into training examples for an optimizer."""

    #: The kind of example built: ``pair`` (ORPO, DPO), ``unpaired`` (KTO), ``sft``.
    kind: ClassVar[ExampleKind] = "pair"
    #: True for builders that need the run's student (on-policy negatives): ``build`` then also
    #: receives ``student=`` (the :class:`Student` component, not loaded). Others never get it.
    needs_student: ClassVar[bool] = False

    @abstractmethod
    def build(self, *, task: Task, data: TaskData, rankings: dict[str, Ranking],
              ctx: RunContext) -> list[PreferenceExample]:
        """Examples for the training cases (``data.split("train")``), using ``task.prompt`` for prompts."""


@dataclass(frozen=True)
class AnswerConstraint:
    """What constrained generation may write: the answer format (:mod:`mint_core.answers`) listing only ``names``.

    The answer is ``header()`` followed by up to ``max_items`` lines ``item(i, name)``, each name at
    most once, then the end of the turn: nothing outside the label space can be written.
    """

    names: tuple[str, ...]
    noun: str
    max_items: int

    def header(self) -> str:
        return HEADER.format(noun=self.noun) + "\n"

    def item(self, number: int, name: str) -> str:
        return f"{number}. {name}\n"


@dataclass
class TrainResult:
    """What an optimizer leaves behind in its output directory."""

    output_dir: Path
    #: A peft adapter folder, or ``None`` when the optimizer changes no weights (RAG).
    adapter_dir: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class StudentModel(ABC):
    """A loaded student (base model, optionally with an adapter) used by optimizers and evaluation."""

    modality: Modality
    #: The transformers model (a ``peft.PeftModel`` once an adapter is attached).
    model: Any
    #: The tokenizer (text) or processor (vision).
    processor: Any

    @abstractmethod
    def encode(self, *, prompt: Prompt, completion: str | None = None) -> dict[str, Any]:
        """Model inputs for ``prompt`` through the chat template, plus ``completion`` (ending in EOS) when given.

        Returns a dict with ``input_ids`` (list[int]), ``prompt_length`` (int) and, for vision
        students, the processor's image tensors.
        """

    #: Whether :meth:`generate` takes ``allowed_answers`` (constrained decoding); the core passes
    #: that keyword only to students that set this, and says so clearly otherwise.
    supports_constrained: ClassVar[bool] = False

    @abstractmethod
    def generate(self, *, prompts: Sequence[Prompt], max_new_tokens: int, batch_size: int) -> list[str]:
        """Greedy answers, one per prompt.

        Students with ``supports_constrained`` also take ``allowed_answers: AnswerConstraint | None
        = None``: when given, greedy decoding is restricted to that answer format and its names.
        """

    @abstractmethod
    def score(self, *, prompts: Sequence[Prompt], candidates: Sequence[str], batch_size: int) -> list[list[float]]:
        """Sum of log-probabilities of each candidate answer given each prompt: ``[n_prompts][n_candidates]``."""

    @contextlib.contextmanager
    def reusing_prompts(self) -> Iterator[None]:
        """A block in which :meth:`score` may reuse what :meth:`generate` computed for the same prompts (a
        decoder's keys and values of each prompt), instead of running those prompts again.

        Evaluation wraps one split's generation and ranking in it. Inside the block the model must not
        change; scores may differ from a fresh computation by the rounding of another batch shape. The
        default reuses nothing.
        """
        yield

    def export(self, *, out_dir: Path, merged: bool = False) -> dict[str, Any]:
        """Write the model in Hugging Face format to ``out_dir`` (``mint export``).

        ``merged=False``: the adapter (safetensors) and the tokenizer/processor. ``merged=True``: the
        base model with the adapter merged in, loadable by ``AutoModelForCausalLM.from_pretrained``
        (safetensors, tokenizer, chat template, generation config); the loaded model may be changed
        in place. Returns model-card facts: ``base_model`` (hub id or path) and ``license`` when known.
        The default raises: a student that cannot export says so.
        """
        from mint_core.registry import MintError

        raise MintError(f"The student {type(self).__name__} cannot export models (it has no export method).")


class Student(ABC):
    """A unimodal LLM that MINT aligns."""

    modality: ClassVar[Modality] = "text"

    @abstractmethod
    def load(self, *, ctx: RunContext, adapter_dir: Path | None = None, trainable: bool = False) -> StudentModel:
        """Load the base model, attach ``adapter_dir`` if given, or a fresh LoRA adapter when ``trainable``."""


class Optimizer(ABC):
    """Aligns a student on preference examples (ORPO, DPO, KTO) or builds a baseline (SFT, RAG)."""

    #: The preference builder whose examples this optimizer consumes by default.
    default_builder: ClassVar[str] = "topk"
    #: Student modalities it can align; ``mint compare`` leaves it out of grids it cannot serve.
    modalities: ClassVar[tuple[Modality, ...]] = ("text", "image")

    @abstractmethod
    def train(self, *, student: Student, examples: Sequence[PreferenceExample], output_dir: Path,
              ctx: RunContext) -> TrainResult:
        """Train and save into ``output_dir``; resume from the last checkpoint found there."""

    def augment_prompts(self, *, prompts: Sequence[Prompt], cases: Sequence[Case], output_dir: Path,
                        ctx: RunContext) -> list[Prompt]:
        """Rewrite evaluation prompts (retrieval-augmented baselines); the default leaves them unchanged."""
        return list(prompts)


__all__ = [
    "AnswerConstraint", "ExampleKind", "LabelSpace", "Optimizer", "PreferenceBuilder", "Student", "StudentModel", "Task",
    "Teacher", "TrainResult",
]
