"""Contrastive training (InfoNCE with a learnable temperature), zero-shot class embeddings, linear probe."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mint_core.context import RunContext

TEMPLATES: tuple[str, ...] = (
    "an H&E image of {name} tissue.",
    "an H&E stained section of {name}.",
    "histology of {name} tissue.",
    "a photomicrograph of {name}.",
)


@dataclass
class Pairs:
    """Images with their captions and class indices (same order)."""

    images: list[Image.Image]
    captions: list[str]
    classes: torch.Tensor


@dataclass
class FitHistory:
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    stopped: str = ""


@torch.no_grad()
def class_text_embeddings(backend: Any, names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """One unit vector per class: the normalised mean of its prompts' embeddings."""
    rows = []
    for name in names:
        emb = F.normalize(backend.encode_text([t.format(name=name) for t in templates]).float(), dim=-1)
        rows.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(rows)


@torch.no_grad()
def image_embeddings(backend: Any, images: Sequence[Image.Image], batch_size: int, device: torch.device) -> torch.Tensor:
    out = []
    for start in range(0, len(images), batch_size):
        pixels = backend.pixels(images[start:start + batch_size]).to(device)
        out.append(F.normalize(backend.encode_image(pixels).float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, 1)


def multi_positive_infonce(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor,
                           classes: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where every caption of the same class is a positive.

    Captions are written from the class, so two tiles of one class in a batch have
    interchangeable captions; standard CLIP would push them apart as false negatives.
    """
    logits = scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    positives = (classes[:, None] == classes[None, :]).float()
    targets = positives / positives.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def zero_shot_accuracy(backend: Any, pairs: Pairs, names: Sequence[str], templates: Sequence[str],
                       batch_size: int, device: torch.device) -> float:
    if not pairs.images:
        return float("nan")
    text = class_text_embeddings(backend, names, templates).cpu()
    sims = image_embeddings(backend, pairs.images, batch_size, device) @ text.T
    return float((sims.argmax(1) == pairs.classes).float().mean())


def train_contrastive(backend: Any, train: Pairs, val: Pairs, *, names: Sequence[str], templates: Sequence[str],
                      epochs: int, batch_size: int, lr: float, weight_decay: float, patience: int,
                      max_seconds: float, seed: int, device: torch.device, ctx: RunContext) -> FitHistory:
    """Train ``backend`` in place; keep the weights of the best validation epoch (zero-shot top-1)."""
    module: nn.Module = backend.module
    decay = [p for n, p in module.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in module.named_parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    steps_per_epoch = max(1, -(-len(train.images) // batch_size))
    total = max(1, epochs * steps_per_epoch)
    warmup = min(steps_per_epoch * 2, total // 10 + 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    generator = torch.Generator().manual_seed(seed)
    history = FitHistory()
    best_key: tuple[float, float] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    stale = 0
    started = time.monotonic()
    monitor = val if val.images else train  # no val split: select on train (logged)
    with ctx.progress() as progress:
        bar = progress.add_task("pathclip contrastive", total=epochs)
        for epoch in range(epochs):
            backend.train()
            order = torch.randperm(len(train.images), generator=generator).tolist()
            running, seen = 0.0, 0
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                if len(idx) < 2:
                    continue  # a contrastive batch needs negatives
                pixels = backend.pixels([train.images[i] for i in idx], augment=True, generator=generator).to(device)
                loss = multi_positive_infonce(backend.encode_image(pixels),
                                              backend.encode_text([train.captions[i] for i in idx]),
                                              backend.logit_scale.exp(), train.classes[idx].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                with torch.no_grad():  # CLIP's clamp: temperature no lower than 1/100
                    backend.logit_scale.clamp_(0, 4.6052)
                running += float(loss.detach()) * len(idx)
                seen += len(idx)
            backend.eval()
            acc = zero_shot_accuracy(backend, monitor, names, templates, 128, device)
            row = {"epoch": epoch + 1, "loss": running / max(1, seen), "val_top1": acc,
                   "temperature": float(1 / backend.logit_scale.detach().exp())}
            history.epochs.append(row)
            key = (acc, -row["loss"])
            if best_key is None or key > best_key:
                best_key, stale = key, 0
                history.best_epoch = epoch + 1
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in module.state_dict().items()})
            else:
                stale += 1
            progress.update(bar, advance=1,
                            status=f"loss {row['loss']:.3f}  val top-1 {acc:.2f}  best {best_key[0]:.2f}@{history.best_epoch}")
            if stale >= patience:
                history.stopped = f"early stop: no val improvement for {patience} epochs"
                break
            if max_seconds > 0 and time.monotonic() - started > max_seconds:
                history.stopped = f"time budget reached after {epoch + 1} epochs"
                break
    if best_state is not None:
        module.load_state_dict(best_state)
    backend.eval()
    return history


def train_linear_probe(features: torch.Tensor, classes: torch.Tensor, n_classes: int, *, init: torch.Tensor,
                       scale: float, steps: int, weight_decay: float = 1e-3, seed: int = 0) -> nn.Linear:
    """A logistic-regression head on frozen unit-norm image embeddings, started at the zero-shot classifier."""
    torch.manual_seed(seed)
    head = nn.Linear(features.shape[1], n_classes)
    with torch.no_grad():
        head.weight.copy_(init * scale)
        head.bias.zero_()
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=weight_decay)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(head(features), classes)
        loss.backward()
        optimizer.step()
    return head.eval()
