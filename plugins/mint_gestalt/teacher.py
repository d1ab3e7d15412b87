"""The ``gestalt`` teacher: trains the fused face+notes classifier and ranks the label space.

Artifacts under ``ctx.path("teacher")``:
- ``gestalt.safetensors``: the network's weights (no text encoder unless ``finetune_text``);
- ``gestalt.json``: config, label ids, fingerprint, image normalization, training history;
- ``text_embeddings.safetensors``: the frozen encoder's cached note embeddings;
- ``fold-<k>.safetensors`` and ``folds.json`` with cross-fitting: the model trained without fold
  ``k`` of the training cases, and each fold model's training cases.

``fit`` is skipped when ``gestalt.json`` carries the same fingerprint (config, label ids and
train/val case ids), so a resumed run reuses the trained teacher.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mint_core.components import Teacher
from mint_core.crossfit import FOLDS_FILE, assign_folds, cross_fit, fold_members
from mint_core.io import atomic_path, read_json, write_json
from mint_core.registry import MintError
from mint_core.types import Case, Ranking, TaskData
from mint_gestalt.images import augment, load_images, normalize
from mint_gestalt.model import GestaltNet, branches
from mint_gestalt.text import CachedTextEmbedder, encode, load_text_encoder

CHECKPOINT = "gestalt.safetensors"
META = "gestalt.json"
TEXT_CACHE = "text_embeddings.safetensors"
#: Config fields that do not change the trained weights.
_NOT_FINGERPRINTED = {"device", "num_threads"}


@contextmanager
def _threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch CPU threads (0: torch's default), restoring the previous setting.

    Never chosen from the machine's load: a different thread count sums in a different order, and
    the teacher's rankings (then the pairs, then the students) changed with whatever else was
    running (a fresh demo under load: teacher top-1 0.967 instead of 0.983, ORPO 0.283 instead of
    0.217). ``teacher.num_threads=1`` is the fast choice on a busy CPU, asked for explicitly.
    """
    previous = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def topk_accuracy(rankings: Iterable[Ranking], cases: Iterable[Case], ks: Sequence[int] = (1, 10)) -> dict[str, float]:
    """Share of ``cases`` whose true label is in the ranking's top k: ``{"top1": ..., "top10": ...}``."""
    by_id = {ranking.case_id: ranking for ranking in rankings}
    cases = [case for case in cases if case.id in by_id]
    if not cases:
        return {f"top{k}": 0.0 for k in ks}
    return {f"top{k}": sum(by_id[c.id].rank_of(c.label_id) < k for c in cases) / len(cases) for k in ks}


@dataclass
class _Inputs:
    """Everything the network needs for a list of cases, precomputed once."""

    texts: list[str]
    text: torch.Tensor | None  # [N, D] cached embeddings (None when fine-tuning or text unused)
    phenotype: torch.Tensor | None  # [N, V + L] the notes' phenotype features (None when off)
    text_mask: torch.Tensor  # [N] bool
    images: torch.Tensor | None  # [N, 3, S, S] uint8
    image_mask: torch.Tensor  # [N] bool


class GestaltTeacher(Teacher):
    def __init__(self, config):
        self.config = config
        self.use_text, self.use_image = branches(config.modalities)
        self.model: GestaltNet | None = None
        self.meta: dict | None = None
        self._embedder: CachedTextEmbedder | None = None
        self.folds: dict[str, int] = {}  # training case id -> cross-fitting fold
        self.fold_models: dict[int, GestaltNet] = {}
        self._tokenizer = None

    # -- setup ---------------------------------------------------------------------------------
    @property
    def device(self) -> str:
        if self.config.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.config.device

    def _split(self, data: TaskData, seed: int) -> tuple[list[Case], list[Case]]:
        """Train and validation cases; without a 'val' split, a seeded slice of train."""
        train, val = data.split("train"), data.split("val")
        if not train:
            raise MintError("teacher gestalt: the task has no training cases (split == 'train')")
        if val:
            return train, val
        n_val = round(len(train) * self.config.val_fraction)
        if n_val < 1 or len(train) - n_val < 2:
            return train, []
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
        held = set(order[:n_val])
        return [c for i, c in enumerate(train) if i not in held], [c for i, c in enumerate(train) if i in held]

    def _fingerprint(self, data: TaskData, train: list[Case], val: list[Case], seed: int) -> str:
        config = {k: v for k, v in asdict(self.config).items() if k not in _NOT_FINGERPRINTED}
        payload = {"config": config, "labels": data.labels.ids, "seed": seed,
                   "train": sorted(c.id for c in train), "val": sorted(c.id for c in val)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def _text_embedder(self, ctx) -> CachedTextEmbedder:
        if self._embedder is None:
            self._embedder = CachedTextEmbedder(self.config.text_model, max_tokens=self.config.max_text_tokens,
                                                cache_path=ctx.path("teacher", TEXT_CACHE), device=self.device)
        return self._embedder

    def _build(self, n_labels: int, ctx, *, pretrained: bool) -> GestaltNet:
        text_encoder, text_dim = None, 0
        if self.use_text and self.config.finetune_text:
            self._tokenizer, text_encoder = load_text_encoder(self.config.text_model)
            text_dim = int(text_encoder.config.hidden_size)
        elif self.use_text:
            text_dim = self._text_embedder(ctx).embedding_dim()
        if self.use_text and self.config.phenotype:
            text_dim += len(self.meta["phenotype_vocabulary"]) + n_labels
        c = self.config
        return GestaltNet(n_labels=n_labels, modalities=c.modalities, text_dim=text_dim, image_model=c.image_model,
                          pretrained=pretrained, embed_dim=c.embed_dim, hidden_dim=c.hidden_dim, dropout=c.dropout,
                          text_encoder=text_encoder, prior=self.use_text and c.phenotype)

    def _inputs(self, cases: Sequence[Case], ctx, progress=None) -> _Inputs:
        texts = [(case.text or "").strip() for case in cases]
        text_mask = torch.tensor([bool(t) for t in texts], dtype=torch.bool)
        text = None
        if self.use_text and not self.config.finetune_text:
            text = self._text_embedder(ctx).embed(texts, progress=progress) * text_mask.unsqueeze(-1)
        phenotype = None
        if self.use_text and self.config.phenotype:
            from mint_gestalt.phenotype import phenotype_features

            phenotype = phenotype_features(cases, self.meta["phenotype_vocabulary"], self.meta["label_ids"])
        images, image_mask = None, torch.zeros(len(cases), dtype=torch.bool)
        if self.use_image:
            paths = []
            for case in cases:
                path = ctx.resolve(case.image) if case.image else None
                if path is not None and not path.is_file():
                    raise MintError(f"Case {case.id!r}: image {case.image!r} not found at {path}")
                paths.append(path)
            images, image_mask = load_images(paths, self.config.image_size)
        return _Inputs(texts, text, phenotype, text_mask, images, image_mask)

    # -- forward -------------------------------------------------------------------------------
    def _forward(self, inputs: _Inputs, idx: torch.Tensor, *, generator: torch.Generator | None = None,
                 per_branch: bool = False):
        """Logits for cases ``idx``; ``generator`` set means training (augmentation, modality dropout)."""
        model, device = self.model, self.device
        text_mask = inputs.text_mask[idx].to(device)
        image_mask = inputs.image_mask[idx].to(device)
        if generator is not None and self.use_text and self.use_image and self.config.modality_dropout > 0:
            # Hide one branch of a few cases that have both, so the head learns to use each alone.
            both = (text_mask & image_mask).cpu()
            draw = torch.rand(len(idx), generator=generator)
            p = self.config.modality_dropout
            text_mask = text_mask & ~(both & (draw < p / 2)).to(device)
            image_mask = image_mask & ~(both & (draw >= p / 2) & (draw < p)).to(device)
        kwargs = {}
        if self.use_text:
            if self.config.finetune_text:
                text = encode(model.text_encoder, self._tokenizer, [inputs.texts[i] or "." for i in idx.tolist()],
                              max_tokens=self.config.max_text_tokens, device=device)
            else:
                text = inputs.text[idx].to(device)
            if inputs.phenotype is not None:
                phenotype = inputs.phenotype[idx].to(device)
                text = torch.cat([text, phenotype], dim=-1)
                # The last n_labels features are the diseases' similarities: also the logits' prior.
                kwargs["prior"] = phenotype[:, -len(self.meta["label_ids"]):]
            kwargs.update(text=text, text_mask=text_mask)
        if self.use_image:
            images = normalize(inputs.images[idx].to(device), self.meta["image_mean"], self.meta["image_std"])
            if generator is not None and self.config.augment:
                images = augment(images, generator)
            kwargs.update(images=images, image_mask=image_mask)
        return model(**kwargs, per_branch=per_branch)

    @torch.no_grad()
    def _recalibrate_batchnorm(self, inputs: _Inputs) -> None:
        """Recompute the image encoder's BatchNorm statistics on the (unaugmented) training images.

        With a few hundred cases an epoch is a handful of batches, so the running averages lag
        far behind the weights of a CNN trained from scratch and evaluation-mode outputs drift
        (validation loss explodes while training loss falls). Exact statistics fix that.
        """
        if not self.use_image or inputs.images is None:
            return
        encoder = self.model.image_encoder
        norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        present = inputs.image_mask.nonzero().flatten()
        if not norms or len(present) < 2:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the pass
        was_training = encoder.training
        encoder.train()
        for start in range(0, len(present), self.config.batch_size):
            idx = present[start:start + self.config.batch_size]
            if len(idx) > 1:
                encoder(normalize(inputs.images[idx].to(self.device), self.meta["image_mean"], self.meta["image_std"]))
        encoder.train(was_training)
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum

    @torch.no_grad()
    def _evaluate(self, inputs: _Inputs, targets: torch.Tensor) -> tuple[float, float]:
        self.model.eval()
        logits = self._logits(inputs)
        loss = nn.functional.cross_entropy(logits, targets).item()
        return loss, (logits.argmax(-1) == targets).float().mean().item()

    @torch.no_grad()
    def _logits(self, inputs: _Inputs) -> torch.Tensor:
        self.model.eval()
        n, step = len(inputs.texts), max(1, 2 * self.config.batch_size)
        return torch.cat([self._forward(inputs, torch.arange(i, min(i + step, n))).float().cpu()
                          for i in range(0, n, step)]) if n else torch.zeros(0)

    # -- Teacher API ---------------------------------------------------------------------------
    def fit(self, *, data: TaskData, ctx) -> None:
        with _threads(self.config.num_threads):
            self._fit(data, ctx)

    def _fit(self, data: TaskData, ctx) -> None:
        c = self.config
        train, val = self._split(data, ctx.seed)
        fingerprint = self._fingerprint(data, train, val, ctx.seed)
        meta_path, ckpt_path = ctx.path("teacher", META), ctx.path("teacher", CHECKPOINT)
        if meta_path.exists() and ckpt_path.exists() and read_json(meta_path).get("fingerprint") == fingerprint:
            ctx.log(f"teacher gestalt: reusing the trained checkpoint {ckpt_path} (same config, labels and cases)")
            self._load(data, ctx)
            return
        for case in train + val:
            if case.label_id not in data.labels:
                raise MintError(f"Case {case.id!r} has label {case.label_id!r} outside the label space")
        self.meta = {"fingerprint": fingerprint, "config": asdict(c), "label_ids": data.labels.ids,
                     "n_train": len(train), "n_val": len(val)}
        if self.use_text and c.phenotype:
            from mint_gestalt.phenotype import vocabulary

            # Terms of the cases the teacher is trained on (labels unused): a fold model's unseen
            # terms would only add untrained weights.
            self.meta["phenotype_vocabulary"] = vocabulary(train + val)
        start = time.monotonic()
        with ctx.progress() as progress:
            val_in = self._inputs(val, ctx, progress) if val else None
            # The all-train model first, with the run seed: the same model as without cross-fitting.
            self.model, history, best = self._fit_model(data, train, val_in, val, seed=ctx.seed, ctx=ctx,
                                                        progress=progress, epochs=c.epochs)
            self.meta.update(best, history=history, n_parameters=sum(p.numel() for p in self.model.parameters()))
            self._save(self.model, ckpt_path, fingerprint)
            self.fold_models, self.folds = {}, {}
            if c.crossfit:
                self._cross_fit(data, train, val, val_in, best["best_epoch"], fingerprint, ctx, progress)
        self.meta["train_seconds"] = round(time.monotonic() - start, 1)
        write_json(meta_path, self.meta)
        val_note = (f", val loss {best['val_loss']:.3f} top-1 {best['val_top1']:.3f} at epoch {best['best_epoch']}"
                    if best["val_loss"] is not None else "")
        folds_note = f" (+ {len(self.fold_models)} cross-fitting fold models)" if self.fold_models else ""
        ctx.log(f"teacher gestalt ({c.modalities}): {len(history)} epoch(s){folds_note} in {self.meta['train_seconds']}s"
                f"{val_note}; saved {ckpt_path}")

    def _cross_fit(self, data, train, val, val_in, best_epoch: int, fingerprint: str, ctx, progress) -> None:
        """One model per fold, trained without that fold's training cases, early-stopped on the same
        validation cases and capped at ``crossfit_epochs`` x the all-train model's best epoch (what keeps
        5 folds cheap)."""
        c = self.config
        if c.crossfit == 1 or c.crossfit < 0:
            raise MintError(f"teacher.crossfit={c.crossfit}: use 0 (off) or at least 2 folds")
        if len(train) < 2 * c.crossfit:
            ctx.log(f"teacher gestalt: {len(train)} training cases are too few for teacher.crossfit={c.crossfit}; "
                    "training cases are ranked by the all-train model")
            return
        self.folds = assign_folds(train, c.crossfit, seed=ctx.seed)
        main_model = self.model
        for fold in sorted(set(self.folds.values())):
            fit_on = [case for case in train if self.folds[case.id] != fold]
            epochs = max(1, round(best_epoch * c.crossfit_epochs))
            model, history, _ = self._fit_model(data, fit_on, val_in, val, seed=ctx.seed + 1 + fold, ctx=ctx,
                                                progress=progress, epochs=epochs, label=f"fold {fold}")
            self._save(model, ctx.path("teacher", f"fold-{fold}.safetensors"), fingerprint)
            self.fold_models[fold] = model
            self.meta.setdefault("fold_epochs", []).append(len(history))
        self.model = main_model
        members = fold_members(train, self.folds)
        write_json(ctx.path("teacher", FOLDS_FILE),
                   {"folds": self.folds, "trained_on": {f: ids + sorted(v.id for v in val) for f, ids in members.items()}})
        self.meta["crossfit_folds"] = self.folds

    def _fit_model(self, data, train, val_in, val, *, seed: int, ctx, progress, epochs: int,
                   label: str = "all") -> tuple[GestaltNet, list[dict], dict]:
        torch.manual_seed(seed)
        self.model = self._build(len(data.labels), ctx, pretrained=self.config.pretrained).to(self.device)
        self.meta.update(self._image_norm())
        y_train = torch.tensor([data.labels.index(case.label_id) for case in train])
        y_val = torch.tensor([data.labels.index(case.label_id) for case in val])
        train_in = self._inputs(train, ctx, progress)
        history, best = self._train(train_in, y_train, val_in, y_val, ctx, progress, seed=seed, epochs=epochs,
                                    label=label)
        if label == "all":
            self.meta["n_train_images"] = int(train_in.image_mask.sum())
        return self.model, history, best

    @staticmethod
    def _save(model: GestaltNet, path, fingerprint: str) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata={"fingerprint": fingerprint})

    def _image_norm(self) -> dict:
        if not self.use_image:
            return {"image_mean": None, "image_std": None}
        from timm.data import resolve_model_data_config

        cfg = resolve_model_data_config(self.model.image_encoder)
        return {"image_mean": list(cfg["mean"]), "image_std": list(cfg["std"])}

    def _train(self, train_in: _Inputs, y_train, val_in, y_val, ctx, progress, *, seed: int, epochs: int,
               label: str = "all") -> tuple[list[dict], dict]:
        c, model = self.config, self.model
        text_params = list(model.text_encoder.parameters()) if getattr(model, "text_encoder", None) else []
        text_ids = {id(p) for p in text_params}
        groups = [{"params": [p for p in model.parameters() if id(p) not in text_ids], "lr": c.lr}]
        if text_params:
            groups.append({"params": text_params, "lr": c.text_lr})
        optimizer = torch.optim.AdamW(groups, weight_decay=c.weight_decay)
        generator = torch.Generator().manual_seed(seed)
        n = len(y_train)
        best = {"best_epoch": 0, "val_loss": float("inf"), "val_top1": 0.0}
        best_state, history, stale = None, [], 0
        name = f"teacher: gestalt ({c.modalities})" + ("" if label == "all" else f" {label}")
        job = progress.add_task(name, total=epochs)
        for epoch in range(1, epochs + 1):
            model.train()
            order = torch.randperm(n, generator=generator)
            batches = [order[i:i + c.batch_size] for i in range(0, n, c.batch_size)]
            if len(batches) > 1 and len(batches[-1]) == 1:
                batches.pop()  # BatchNorm cannot train on a single example
            total = 0.0
            for idx in batches:
                target = y_train[idx].to(self.device)
                logits, alone = self._forward(train_in, idx, generator=generator, per_branch=True)
                loss = nn.functional.cross_entropy(logits, target)
                # Each branch alone must also classify: otherwise the notes, fitted within a few epochs,
                # drive the loss to zero and the slower face CNN stops receiving a gradient.
                for branch_logits in (alone if c.branch_loss > 0 else []):
                    loss = loss + c.branch_loss * nn.functional.cross_entropy(branch_logits, target) / len(alone)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
            record = {"epoch": epoch, "train_loss": round(total / sum(len(b) for b in batches), 5)}
            self._recalibrate_batchnorm(train_in)
            if val_in is not None:
                val_loss, val_top1 = self._evaluate(val_in, y_val)
                record.update(val_loss=round(val_loss, 5), val_top1=round(val_top1, 4))
                if val_loss < best["val_loss"]:
                    best = {"best_epoch": epoch, "val_loss": val_loss, "val_top1": val_top1}
                    best_state, stale = copy.deepcopy(model.state_dict()), 0
                else:
                    stale += 1
            history.append(record)
            status = " ".join(f"{k} {v}" for k, v in record.items() if k != "epoch")
            progress.update(job, advance=1, status=status)
            if val_in is not None and stale >= c.patience:
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        else:
            best = {"best_epoch": len(history), "val_loss": None, "val_top1": None}
        return history, best

    def _load(self, data: TaskData, ctx) -> None:
        meta_path, ckpt_path = ctx.path("teacher", META), ctx.path("teacher", CHECKPOINT)
        if not (meta_path.exists() and ckpt_path.exists()):
            raise MintError(f"teacher gestalt: no checkpoint in {ckpt_path.parent}; run the teacher stage (fit) first")
        meta = read_json(meta_path)
        if meta["label_ids"] != data.labels.ids:
            raise MintError(f"teacher gestalt: the checkpoint in {ckpt_path.parent} was trained on another label "
                            "space; delete that folder to retrain")
        self.meta = meta
        self.model = self._load_model(data, ctx, ckpt_path)
        self.folds = dict(meta.get("crossfit_folds") or {})
        self.fold_models = {fold: self._load_model(data, ctx, ctx.path("teacher", f"fold-{fold}.safetensors"))
                            for fold in sorted(set(self.folds.values()))}

    def _load_model(self, data: TaskData, ctx, path) -> GestaltNet:
        if not path.exists():
            raise MintError(f"teacher gestalt: {path} is missing; delete {path.parent} to retrain the teacher")
        # Weights come from the checkpoint: never download pretrained ones to overwrite them.
        model = self._build(len(data.labels), ctx, pretrained=False)
        model.load_state_dict(load_file(str(path)))
        return model.to(self.device).eval()

    def rank(self, *, data: TaskData, cases: Sequence[Case], ctx) -> list[Ranking]:
        with _threads(self.config.num_threads):
            return self._rank(data, cases, ctx)

    def _rank(self, data: TaskData, cases: Sequence[Case], ctx, *, hide: str | None = None) -> list[Ranking]:
        """Training cases of a cross-fitted teacher by their fold's model, the others by the all-train one;
        ``hide`` ('text' or 'image') masks a branch, for the ablation."""
        if self.model is None:
            self._load(data, ctx)
        held = [case for case in cases if case.id in self.folds]
        out = {r.case_id: r for r in self._rank_with(self.model, data, [c for c in cases if c.id not in self.folds],
                                                     ctx, hide)}
        if held:
            oof = cross_fit(held, self.folds, lambda fold, _fit_on, held_out:
                            self._rank_with(self.fold_models[fold], data, held_out, ctx, hide))
            out.update({r.case_id: r for r in oof})
        return [out[case.id] for case in cases]

    def _rank_with(self, model: GestaltNet, data: TaskData, cases: Sequence[Case], ctx, hide: str | None) -> list[Ranking]:
        if not cases:
            return []
        with ctx.progress() as progress:
            inputs = self._inputs(cases, ctx, progress)
        if hide == "text":
            inputs = dataclasses.replace(inputs, text_mask=torch.zeros_like(inputs.text_mask))
        elif hide == "image":
            inputs = dataclasses.replace(inputs, image_mask=torch.zeros_like(inputs.image_mask))
        main, self.model = self.model, model
        try:
            probs = torch.softmax(self._logits(inputs), dim=-1)
        finally:
            self.model = main
        ids = data.labels.ids
        rankings = []
        for case, row in zip(cases, probs):
            # Stable sort: ties keep label-space order, so rankings are reproducible.
            order = sorted(range(len(ids)), key=lambda j: -row[j].item())
            rankings.append(Ranking(case_id=case.id, label_ids=[ids[j] for j in order],
                                    scores=[round(row[j].item(), 6) for j in order]))
        return rankings

    def variant_rankings(self, *, data: TaskData, cases: Sequence[Case], ctx) -> dict[str, list[Ranking]]:
        """The ablation (each branch alone, from the fitted model) and the text-only ``hpo`` baseline."""
        from mint_hpo import HpoConfig
        from mint_hpo.teacher import HpoTeacher

        variants: dict[str, list[Ranking]] = {}
        with _threads(self.config.num_threads):
            if self.use_text and self.use_image:
                variants["notes-only"] = self._rank(data, cases, ctx, hide="image")
                variants["face-only"] = self._rank(data, cases, ctx, hide="text")
        hpo_teacher = HpoTeacher(HpoConfig(crossfit=0))
        hpo_teacher.fit(data=data, ctx=ctx)
        variants["hpo"] = hpo_teacher.rank(data=data, cases=cases, ctx=ctx)
        return variants
