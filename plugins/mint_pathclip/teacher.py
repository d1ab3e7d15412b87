"""The ``pathclip`` teacher: fit (contrastive and/or linear probe), checkpoint, rank."""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from mint_core.components import Teacher
from mint_core.context import RunContext
from mint_core.io import atomic_path, read_json, write_json
from mint_core.registry import MintError
from mint_core.types import Case, LabelSpace, Ranking, TaskData
from mint_pathclip.config import PathClipConfig
from mint_pathclip.model import build_backend, compact_vocab, is_scratch
from mint_pathclip.training import (TEMPLATES, FitHistory, Pairs, class_text_embeddings, image_embeddings,
                                    train_contrastive, train_linear_probe)

CHECKPOINT = "pathclip.safetensors"
META = "pathclip.json"
FORMAT_VERSION = 1
# Options that change no weights: a checkpoint stays valid when only these differ.
_NOT_IN_FINGERPRINT = {"eval_batch_size", "device", "max_minutes", "threads"}


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op threads (0: unchanged). Oversubscribed cores make CPU training crawl."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_image(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def topk_accuracy(rankings: Sequence[Ranking], cases: Sequence[Case], k: int) -> float:
    """Share of cases whose true label is in the ranking's top ``k`` (for checks and tests)."""
    by_id = {r.case_id: r for r in rankings}
    hits = [by_id[c.id].rank_of(c.label_id) < k for c in cases if c.id in by_id]
    return sum(hits) / len(hits) if hits else float("nan")


class PathClipTeacher(Teacher):
    def __init__(self, config: PathClipConfig | None = None):
        self.config = config or PathClipConfig()
        self.backend: Any = None
        self.probe: torch.nn.Linear | None = None
        self.fingerprint: str | None = None
        self.device = self._device()

    # -- setup ------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        want = self.config.device
        if want == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if want == "cuda" and not torch.cuda.is_available():
            raise MintError("teacher.device=cuda but no CUDA device is available; use teacher.device=auto")
        return torch.device(want)

    def templates(self) -> list[str]:
        extra = [t.strip() for t in self.config.templates.split("|") if t.strip()]
        for template in extra:
            if "{name}" not in template:
                raise MintError(f"teacher.templates: {template!r} has no {{name}} placeholder")
        return list(TEMPLATES) + extra

    def _fingerprint(self, data: TaskData, seed: int) -> str:
        config = {k: v for k, v in asdict(self.config).items() if k not in _NOT_IN_FINGERPRINT}
        payload = {"version": FORMAT_VERSION, "config": config, "seed": seed,
                   "labels": [[label.id, label.name] for label in data.labels],
                   "train": sorted(c.id for c in data.split("train")),
                   "val": sorted(c.id for c in data.split("val"))}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def _pairs(self, cases: Sequence[Case], labels: LabelSpace, ctx: RunContext) -> Pairs:
        images, captions, classes = [], [], []
        for case in cases:
            if not case.image:
                continue
            try:
                images.append(load_image(ctx.resolve(case.image)))
            except Exception as exc:  # noqa: BLE001
                ctx.log(f"[yellow]pathclip: skipping {case.id}: cannot read {case.image} ({exc})[/yellow]")
                continue
            label = labels[case.label_id]
            captions.append(case.text or TEMPLATES[0].format(name=label.name))
            classes.append(labels.index(label.id))
        return Pairs(images, captions, torch.tensor(classes, dtype=torch.long))

    def _needs_training(self) -> bool:
        return is_scratch(self.config.model) or self.config.finetune

    # -- checkpoint -------------------------------------------------------------------------
    def _save(self, folder: Path, meta: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        if self._needs_training():
            tensors.update({f"model.{k}": v.detach().cpu().contiguous()
                            for k, v in self.backend.module.state_dict().items()})
        if self.probe is not None:
            tensors.update({f"probe.{k}": v.detach().cpu().contiguous() for k, v in self.probe.state_dict().items()})
        if tensors:
            with atomic_path(folder / CHECKPOINT) as tmp:
                save_file(tensors, str(tmp), metadata={"fingerprint": meta["fingerprint"]})
        write_json(folder / META, meta)  # written last: it marks the checkpoint complete

    def _try_load(self, folder: Path, fingerprint: str, n_labels: int) -> bool:
        """Load a finished checkpoint for this exact config and data; False when there is none."""
        meta_path, weights = folder / META, folder / CHECKPOINT
        if not meta_path.exists():
            return False
        meta = read_json(meta_path)
        if meta.get("fingerprint") != fingerprint:
            return False
        if meta.get("has_weights") and not weights.exists():
            return False
        from safetensors.torch import load_file

        tensors = load_file(str(weights)) if meta.get("has_weights") else {}
        self.backend = build_backend(self.config, self.device, vocab=tensors.get("model.vocab"))
        self.probe = None
        if tensors:
            model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
            if model_state:
                self.backend.module.load_state_dict(model_state)
            probe_state = {k[6:]: v for k, v in tensors.items() if k.startswith("probe.")}
            if probe_state:
                self.probe = torch.nn.Linear(probe_state["weight"].shape[1], n_labels)
                self.probe.load_state_dict(probe_state)
                self.probe.to(self.device).eval()
        self.backend.eval()
        self.fingerprint = fingerprint
        return True

    # -- Teacher API ------------------------------------------------------------------------
    def fit(self, *, data: TaskData, ctx: RunContext) -> None:
        with torch_threads(self.config.threads):
            self._fit(data, ctx)

    def _fit(self, data: TaskData, ctx: RunContext) -> None:
        cfg = self.config
        fingerprint = self._fingerprint(data, ctx.seed)
        folder = ctx.path("teacher", META).parent
        if self.fingerprint == fingerprint and self.backend is not None:
            return
        if self._try_load(folder, fingerprint, len(data.labels)):
            ctx.log(f"pathclip: reusing checkpoint {folder / CHECKPOINT} (same config and data)")
            return
        torch.manual_seed(ctx.seed)
        started = time.monotonic()
        names = [label.name for label in data.labels]
        templates = self.templates()
        train = self._pairs(data.split("train"), data.labels, ctx)
        val = self._pairs(data.split("val"), data.labels, ctx)
        vocab = None
        if is_scratch(cfg.model):
            prompts = [t.format(name=name) for t in templates for name in names]
            vocab = compact_vocab(train.captions + val.captions + prompts, cfg.context_length)
        if not train.images:
            raise MintError("pathclip: the task has no readable training images (split 'train')")
        self.backend = build_backend(cfg, self.device, vocab=vocab)
        self.probe = None
        history = FitHistory()
        if self._needs_training():
            lr = cfg.lr or (2e-3 if is_scratch(cfg.model) else 1e-5)
            ctx.log(f"pathclip: contrastive training of {'a small CLIP from scratch' if is_scratch(cfg.model) else cfg.model} "
                    f"on {len(train.images)} image-caption pairs (val {len(val.images)}), up to {cfg.epochs} epochs")
            if not val.images:
                ctx.log("[yellow]pathclip: no val split; selecting the epoch on train accuracy[/yellow]")
            history = train_contrastive(self.backend, train, val, names=names, templates=templates, epochs=cfg.epochs,
                                        batch_size=cfg.batch_size, lr=lr, weight_decay=cfg.weight_decay,
                                        patience=cfg.patience, max_seconds=cfg.max_minutes * 60, seed=ctx.seed,
                                        device=self.device, ctx=ctx)
            best = history.epochs[history.best_epoch - 1] if history.best_epoch > 0 else {}
            ctx.log(f"pathclip: best epoch {history.best_epoch}/{len(history.epochs)} "
                    f"(val zero-shot top-1 {best.get('val_top1', float('nan')):.3f}); {history.stopped or 'all epochs run'}")
        self.backend.eval()
        if cfg.linear_probe:
            text = class_text_embeddings(self.backend, names, templates).cpu()
            feats = image_embeddings(self.backend, train.images, cfg.eval_batch_size, self.device)
            scale = float(self.backend.logit_scale.detach().exp())
            self.probe = train_linear_probe(feats, train.classes, len(names), init=text, scale=scale,
                                            steps=cfg.probe_steps, seed=ctx.seed).to(self.device)
            note = ""
            if val.images:
                val_feats = image_embeddings(self.backend, val.images, cfg.eval_batch_size, self.device)
                with torch.no_grad():
                    hits = self.probe(val_feats.to(self.device)).argmax(1).cpu() == val.classes
                note = f" (val top-1 {float(hits.float().mean()):.3f})"
            ctx.log(f"pathclip: linear probe trained on {len(feats)} image embeddings{note}")
        self.fingerprint = fingerprint
        meta = {"fingerprint": fingerprint, "format": FORMAT_VERSION, "model": cfg.model or "scratch",
                "config": asdict(cfg), "labels": data.labels.ids, "templates": templates,
                "has_weights": self._needs_training() or self.probe is not None,
                "history": history.epochs, "best_epoch": history.best_epoch, "stopped": history.stopped,
                "fit_seconds": round(time.monotonic() - started, 1)}
        self._save(folder, meta)

    def scores(self, *, data: TaskData, cases: Sequence[Case], ctx: RunContext) -> torch.Tensor:
        """Class probabilities ``[n_cases, n_labels]`` in ``data.labels`` order."""
        if self.backend is None or self.fingerprint != self._fingerprint(data, ctx.seed):
            self.fit(data=data, ctx=ctx)  # loads the checkpoint when one matches
        with torch_threads(self.config.threads), torch.no_grad():
            return self._scores(data, cases, ctx)

    def _scores(self, data: TaskData, cases: Sequence[Case], ctx: RunContext) -> torch.Tensor:
        names = [label.name for label in data.labels]
        text = class_text_embeddings(self.backend, names, self.templates()).to(self.device)
        scale = self.backend.logit_scale.exp().float()
        out = []
        with ctx.progress() as progress:
            bar = progress.add_task("pathclip ranking", total=len(cases))
            for start in range(0, len(cases), self.config.eval_batch_size):
                batch = cases[start:start + self.config.eval_batch_size]
                images = []
                for case in batch:
                    if not case.image:
                        raise MintError(f"pathclip: case {case.id} has no image")
                    try:
                        images.append(load_image(ctx.resolve(case.image)))
                    except Exception as exc:  # noqa: BLE001 - a ranking per case is owed; say which failed
                        raise MintError(f"pathclip: cannot read the image of case {case.id} ({case.image}): {exc}. "
                                        "Re-run the task stage (mint teach) to rewrite the run's images.") from exc
                feats = F.normalize(self.backend.encode_image(self.backend.pixels(images).to(self.device)).float(), dim=-1)
                logits = self.probe(feats) if self.probe is not None else scale * feats @ text.T
                out.append(logits.softmax(-1).cpu())
                progress.advance(bar, len(batch))
        return torch.cat(out) if out else torch.zeros(0, len(names))

    def rank(self, *, data: TaskData, cases: Sequence[Case], ctx: RunContext) -> list[Ranking]:
        probs = self.scores(data=data, cases=cases, ctx=ctx)
        ids = data.labels.ids
        rankings = []
        for case, row in zip(cases, probs):
            order = torch.argsort(row, descending=True, stable=True).tolist()
            rankings.append(Ranking(case_id=case.id, label_ids=[ids[i] for i in order],
                                    scores=[round(float(row[i]), 6) for i in order]))
        return rankings
