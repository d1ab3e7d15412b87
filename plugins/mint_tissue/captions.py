"""Captions for teacher training: what a pathology atlas would say under each tile.

The teacher (a CLIP dual encoder) learns from image-caption pairs, so each case gets a caption
naming its tissue type and two or three of its morphology phrases, in varied wording. The
student never sees captions: its prompt is the image and the question.
"""

from __future__ import annotations

import numpy as np

from mint_core.types import Label
from mint_tissue.labels import phrases_for

TEMPLATES: tuple[str, ...] = (
    "An H&E image of {name} tissue: {details}.",
    "H&E stained section of {name} showing {details}.",
    "Histology of {name} tissue with {details}.",
    "A {name} tissue tile, H&E stain: {details}.",
    "Photomicrograph of {name}: {details}.",
)


def write_caption(label: Label, rng: np.random.Generator) -> str:
    """One caption for a tile of ``label``, its wording drawn from ``rng``."""
    phrases = list(phrases_for(label))
    count = min(len(phrases), int(rng.integers(2, 4)))
    chosen = [phrases[i] for i in sorted(rng.choice(len(phrases), size=count, replace=False))]
    details = ", ".join(chosen[:-1]) + (" and " if len(chosen) > 1 else "") + chosen[-1]
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    return template.format(name=label.name, details=details)
