"""MINT's pathology teacher: a CLIP dual encoder that ranks tissue types for an H&E tile.

``teacher.model=vinid/plip`` (or any Hugging Face CLIP checkpoint id or folder) is the paper's
setting: PLIP zero-shot, optionally with a linear probe or contrastive fine-tuning. The offline
default (``teacher.model=""``) trains a small CLIP from scratch on the task's image-caption pairs.
Light on purpose: torch, timm and open_clip load only in the factory.
"""

from __future__ import annotations

from mint_core.hookspecs import hookimpl
from mint_pathclip.config import PathClipConfig


@hookimpl
def mint_register_teachers(register) -> None:
    register("pathclip", _make_pathclip, config=PathClipConfig,
             description="CLIP dual encoder over H&E tiles and tissue captions (PLIP, or a small CLIP from scratch)",
             pairs_with={"task": "tissue", "student": "llama-vision"})


def _make_pathclip(config: PathClipConfig):
    from mint_pathclip.teacher import PathClipTeacher

    return PathClipTeacher(config)


__all__ = ["PathClipConfig"]
