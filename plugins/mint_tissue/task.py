"""The ``tissue`` task: which tissue type an H&E tile shows."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from mint_core.components import Task
from mint_core.context import RunContext
from mint_core.registry import MintError
from mint_core.types import Case, Label, LabelSpace, Modality, Prompt, TaskData, normalize_name
from mint_tissue.config import TissueConfig
from mint_tissue.captions import write_caption
from mint_tissue.labels import PANNUKE_LABELS
from mint_tissue.sources import LoadStats, load_imagefolder, load_pannuke, save_png
from mint_tissue.splits import assign_splits
from mint_tissue.synthetic import DEFAULT_SYNTHETIC, render_tile

QUESTION = ("Which tissue type is shown in this H&E image? Answer with the header 'Most likely tissue types:' "
            "followed by a numbered list of the {n} most likely tissue types, one per line.")
#: The candidate types, listed before the question as the authors' tissue prompt does ("choose from ...").
CHOICES = "Choose from these tissue types: {names}."
SOURCES = ("synthetic", "imagefolder", "pannuke")


class TissueTask(Task):
    student_modality: ClassVar[Modality] = "image"
    label_noun: ClassVar[str] = "tissue types"
    default_n_answers: ClassVar[int] = 5

    def __init__(self, config: TissueConfig | None = None):
        self.config = config or TissueConfig()

    # -- loading --------------------------------------------------------------------------
    def load(self, *, ctx: RunContext) -> TaskData:
        cfg = self.config
        if cfg.source not in SOURCES:
            raise MintError(f"task.source={cfg.source!r} is not one of {', '.join(SOURCES)}")
        if cfg.source == "synthetic":
            labels, cases, stats = self._synthetic(ctx)
        else:
            if not cfg.path:
                raise MintError(f"task.source={cfg.source} needs task.path=DIR (the data folder)")
            root = Path(cfg.path).expanduser()
            images_dir = ctx.path("images", cfg.source, ".keep").parent
            loader = load_imagefolder if cfg.source == "imagefolder" else load_pannuke
            options = {"copy": cfg.copy_images} if cfg.source == "imagefolder" else {"allow_pickle": cfg.allow_pickle}
            labels, cases, stats = loader(root, run_dir=ctx.run_dir, images_dir=images_dir, resize=cfg.resize,
                                          max_per_class=cfg.max_per_class, seed=ctx.seed, log=ctx.log, **options)
            labels, cases = self._select_real(labels, cases)
        if not cases:
            raise MintError(f"task tissue: no readable tiles from source={cfg.source} "
                            f"{'path=' + cfg.path if cfg.path else ''} ({len(stats.skipped)} skipped)")
        space = LabelSpace(labels)
        for case in cases:  # captions are for the teacher only; wording varies per case, seeded
            rng = np.random.default_rng([ctx.seed & 0xFFFFFFFF, zlib.crc32(case.id.encode()), 11])
            case.text = write_caption(space[case.label_id], rng)
            case.meta["choices"] = [label.name for label in space]  # saved with the case: prompts need no label space
        assign_splits(cases, seed=ctx.seed, test_fraction=cfg.test_fraction, val_fraction=cfg.val_fraction)
        counts = {split: sum(c.split == split for c in cases) for split in ("train", "val", "test")}
        ctx.log(f"tissue: {len(cases)} tiles in {len(space)} classes from {cfg.source} "
                f"(train {counts['train']}, val {counts['val']}, test {counts['test']}"
                f"{f', {len(stats.skipped)} unreadable skipped' if stats.skipped else ''})")
        info = {"source": cfg.source, "path": cfg.path, "n_classes": len(space), "splits": counts, **stats.to_dict()}
        return TaskData(labels=space, cases=cases, student_modality=self.student_modality, info=info)

    def _wanted(self, available: list[Label]) -> list[Label] | None:
        """Labels named by ``task.classes`` (ids, names or synonyms), or None when unset."""
        if not self.config.classes.strip():
            return None
        space = LabelSpace(available)
        chosen: list[Label] = []
        for item in self.config.classes.split(","):
            if not item.strip():
                continue
            label = space[item.strip()] if item.strip() in space else space.by_name(item)
            if label is None:
                raise MintError(f"task.classes: {item.strip()!r} is not a class of this data; "
                                f"available: {', '.join(space.ids)}")
            if label not in chosen:
                chosen.append(label)
        return chosen

    def _synthetic(self, ctx: RunContext) -> tuple[list[Label], list[Case], LoadStats]:
        cfg = self.config
        if cfg.tiles_per_class < 1 or cfg.image_size < 16:
            raise MintError("task.tiles_per_class must be >= 1 and task.image_size >= 16")
        labels = self._wanted(list(PANNUKE_LABELS))
        if labels is None:
            if cfg.n_classes <= 0:
                labels = [label for label in PANNUKE_LABELS if label.id in DEFAULT_SYNTHETIC]
            elif cfg.n_classes > len(PANNUKE_LABELS):
                raise MintError(f"task.n_classes={cfg.n_classes}: synthetic draws at most {len(PANNUKE_LABELS)} types")
            else:
                labels = list(PANNUKE_LABELS[:cfg.n_classes])
        # The folder names everything a tile depends on, so a resumed run reuses only identical tiles.
        folder = f"synthetic-s{ctx.seed}-{cfg.image_size}px-d{cfg.difficulty:g}"
        cases: list[Case] = []
        total = len(labels) * cfg.tiles_per_class
        with ctx.progress() as progress:
            bar = progress.add_task("drawing tiles", total=total)
            for label in labels:
                for i in range(cfg.tiles_per_class):
                    rel = Path("images") / folder / label.id / f"{i:04d}.png"
                    target = ctx.path(*rel.parts)
                    if not target.exists():
                        tile = render_tile(label.id, seed=ctx.seed, index=i, size=cfg.image_size,
                                           difficulty=cfg.difficulty)
                        save_png(Image.fromarray(tile, "RGB"), target)
                    cases.append(Case(id=f"syn-{label.id}-{i:04d}", label_ids=(label.id,), image=rel.as_posix(),
                                      meta={"source": "synthetic", "index": i}))
                    progress.advance(bar)
        return labels, cases, LoadStats(kept=len(cases))

    def _select_real(self, labels: list[Label], cases: list[Case]) -> tuple[list[Label], list[Case]]:
        wanted = self._wanted(labels)
        if wanted is None and self.config.n_classes > 0:
            sizes = {label.id: sum(c.label_id == label.id for c in cases) for label in labels}
            keep = sorted(labels, key=lambda lab: (-sizes[lab.id], lab.id))[:self.config.n_classes]
            wanted = [label for label in labels if label in keep]
        if wanted is None:
            return labels, cases
        ids = {label.id for label in wanted}
        return wanted, [case for case in cases if case.label_id in ids]

    # -- prompting ------------------------------------------------------------------------
    def prompt(self, *, case: Case, n_answers: int) -> Prompt:
        """The question, after the list of candidate types (``case.meta["choices"]``, set by :meth:`load`)."""
        choices = case.meta.get("choices")
        text = QUESTION.format(n=n_answers)
        if choices:  # run folders from before choices were saved: the bare question
            text = CHOICES.format(names=", ".join(choices)) + " " + text
        return Prompt(text=text, image=case.image)

    def content_free_prompt(self, *, n_answers: int, labels: LabelSpace | None = None) -> Prompt:
        """The same question, candidates listed as :meth:`prompt` lists them, with no image."""
        meta = {"choices": [label.name for label in labels]} if labels is not None else {}
        return Prompt(text=self.prompt(case=Case("content-free", (), meta=meta), n_answers=n_answers).text)


def caption_mentions_label(case: Case, labels: LabelSpace) -> bool:
    """Whether a case's caption names its own tissue (a sanity check used in tests)."""
    return normalize_name(labels[case.label_id].name) in normalize_name(case.text or "")
