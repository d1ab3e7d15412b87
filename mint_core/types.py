"""The data that flows between MINT's components.

Every stage of a run reads and writes these records as JSON lines, so each type has
``to_dict`` / ``from_dict`` and nothing in them is a live object (no tensors, no PIL images):
an image is a path, relative to the run directory unless absolute.

    Task ──cases, labels──▶ Teacher ──Ranking──▶ PreferenceBuilder ──PreferenceExample──▶ Optimizer
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Literal, Sequence

Modality = Literal["text", "image"]
Split = Literal["train", "val", "test"]


def normalize_name(name: str) -> str:
    """Lower-case, accent-free, punctuation-free form used to match label names."""
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    text = re.sub(r"[^a-z0-9]+", " ", text.lower())
    return " ".join(text.split())


@dataclass(frozen=True)
class Label:
    """One element of a task's label space (a disease, a tissue type)."""

    id: str
    name: str
    synonyms: tuple[str, ...] = ()
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "synonyms": list(self.synonyms), "description": self.description}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Label:
        return cls(id=str(data["id"]), name=str(data["name"]), synonyms=tuple(data.get("synonyms", ())),
                   description=str(data.get("description", "")))


class LabelSpace:
    """An ordered label space with lookup by id and by (normalized) name or synonym."""

    def __init__(self, labels: Iterable[Label]):
        self.labels: list[Label] = list(labels)
        self._by_id: dict[str, Label] = {}
        for label in self.labels:
            if label.id in self._by_id:
                raise ValueError(f"Duplicate label id {label.id!r} in the label space")
            self._by_id[label.id] = label
        self._index = {label.id: i for i, label in enumerate(self.labels)}
        # Names win over synonyms when both map a string: a synonym of one disease that
        # is another disease's name must resolve to that other disease.
        self._by_name: dict[str, Label] = {}
        for label in self.labels:
            for syn in label.synonyms:
                self._by_name.setdefault(normalize_name(syn), label)
        for label in self.labels:
            self._by_name[normalize_name(label.name)] = label

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self):
        return iter(self.labels)

    def __contains__(self, label_id: object) -> bool:
        return label_id in self._by_id

    def __getitem__(self, label_id: str) -> Label:
        return self._by_id[label_id]

    def index(self, label_id: str) -> int:
        return self._index[label_id]

    @property
    def ids(self) -> list[str]:
        return [label.id for label in self.labels]

    def by_name(self, name: str) -> Label | None:
        """Exact match on the normalized name or a synonym; ``None`` when nothing matches."""
        return self._by_name.get(normalize_name(name))

    def names_index(self) -> dict[str, Label]:
        """Normalized name/synonym -> label, for fuzzy matching."""
        return dict(self._by_name)

    def to_list(self) -> list[dict[str, Any]]:
        return [label.to_dict() for label in self.labels]

    @classmethod
    def from_list(cls, items: Sequence[dict[str, Any]]) -> LabelSpace:
        return cls(Label.from_dict(item) for item in items)


def _id_list(value: Any, name: str, *, empty: bool = True) -> list[str]:
    """``value`` as a list of ids; a string or a number is an error, not a list of characters."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, (str, int)) for item in value):
        raise ValueError(f"{name} must be a list of ids, not {value!r:.60}")
    if not value and not empty:
        raise ValueError(f"{name} is empty")
    return [str(item) for item in value]


@dataclass
class Case:
    """One patient or specimen: its modalities and its true label(s).

    ``text`` is the clinical notes (or caption), ``image`` a path to the face photo or tissue
    tile. A teacher may see every modality; the student sees only the task's student modality.
    """

    id: str
    label_ids: tuple[str, ...]
    split: Split = "train"
    text: str | None = None
    image: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def label_id(self) -> str:
        return self.label_ids[0]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["label_ids"] = list(self.label_ids)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Case:
        split = data.get("split", "train")
        if split not in ("train", "val", "test"):
            raise ValueError(f"split {split!r} is not train, val or test")
        return cls(id=str(data["id"]), label_ids=tuple(_id_list(data["label_ids"], "label_ids", empty=False)),
                   split=split, text=data.get("text"), image=data.get("image"), meta=dict(data.get("meta") or {}))


@dataclass
class Ranking:
    """A teacher's ranking of the whole label space for one case, best first."""

    case_id: str
    label_ids: list[str]
    scores: list[float] | None = None
    #: Which model made the ranking: the cross-fitting fold whose model was trained *without* this
    #: case (see :mod:`mint_core.crossfit`), or ``None`` for the model trained on all training cases.
    fold: int | None = None

    def rank_of(self, label_id: str) -> int:
        """0-based rank of ``label_id`` (len(label_ids) when absent)."""
        try:
            return self.label_ids.index(label_id)
        except ValueError:
            return len(self.label_ids)

    def to_dict(self) -> dict[str, Any]:
        row = {"case_id": self.case_id, "label_ids": list(self.label_ids), "scores": self.scores}
        return row if self.fold is None else {**row, "fold": self.fold}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Ranking:
        fold = data.get("fold")
        return cls(case_id=str(data["case_id"]), label_ids=_id_list(data["label_ids"], "label_ids"),
                   scores=data.get("scores"), fold=None if fold is None else int(fold))


@dataclass
class Prompt:
    """The student's unimodal view of a case: a question, plus an image for vision students.

    The student turns this into model inputs with its own chat template; builders and
    evaluation never see token ids.
    """

    text: str
    image: str | None = None
    system: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "image": self.image, "system": self.system}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | str) -> Prompt:
        if isinstance(data, str):
            return cls(text=data)
        return cls(text=data["text"], image=data.get("image"), system=data.get("system"))


@dataclass
class PreferenceExample:
    """One training example for an optimizer.

    Paired (``kind="pair"``): ``chosen`` / ``rejected`` answers to one prompt.
    Unpaired (``kind="unpaired"``, KTO): one ``completion`` and a desirable ``label``.
    Supervised (``kind="sft"``): one ``completion``.
    ``meta`` records how it was built (the teacher ranks used, the true label's rank).
    """

    case_id: str
    prompt: Prompt
    kind: Literal["pair", "unpaired", "sft"] = "pair"
    chosen: str | None = None
    rejected: str | None = None
    completion: str | None = None
    label: bool | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = {"case_id": self.case_id, "kind": self.kind, "prompt": self.prompt.to_dict()}
        for key in ("chosen", "rejected", "completion", "label"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        data["meta"] = self.meta
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreferenceExample:
        return cls(case_id=str(data["case_id"]), prompt=Prompt.from_dict(data["prompt"]),
                   kind=data.get("kind", "pair"), chosen=data.get("chosen"), rejected=data.get("rejected"),
                   completion=data.get("completion"), label=data.get("label"), meta=dict(data.get("meta") or {}))


@dataclass
class TaskData:
    """What a task hands the pipeline: the label space and every case, split assigned."""

    labels: LabelSpace
    cases: list[Case]
    student_modality: Modality = "text"
    info: dict[str, Any] = field(default_factory=dict)

    def split(self, name: Split) -> list[Case]:
        return [case for case in self.cases if case.split == name]
