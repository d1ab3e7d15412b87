"""MINT vision student: Llama 3.2 Vision (Mllama) with LoRA, for tasks whose student sees an image.

Registers the student ``llama-vision``. ``student.model`` is a hub id (the paper's setting is
``meta-llama/Llama-3.2-11B-Vision-Instruct``, on a GPU, optionally ``load_in_4bit``) or a local
folder of any ``MllamaForConditionalGeneration`` checkpoint (safetensors, no remote code). The
default, ``smollm2``, is an Mllama built offline once and cached whose language model is the
pretrained SmolLM2-135M-Instruct, joined to a small new vision tower through a gated
cross-attention layer; see :mod:`mint_llama_vision.from_text` for how it is built and what it can
and cannot learn. ``tiny`` is a small random Mllama (:mod:`mint_llama_vision.tiny`) for tests.

LoRA adapts the language model's linear layers (self- and cross-attention, MLP) and, for hub
checkpoints, the multimodal projector; ``full_train`` names the modules trained in full instead
(the built default's new parts: cross-attention layers, projector, vision tower). Heavy imports
live in :mod:`mint_llama_vision.student`, loaded only when a run uses the student.
"""

from __future__ import annotations

from mint_core.hookspecs import hookimpl
from mint_llama_vision.config import TINY, DEFAULT_MODEL, PAPER_MODEL, LlamaVisionConfig


@hookimpl
def mint_register_students(register):
    register("llama-vision", _make_student, config=LlamaVisionConfig,
             description="Llama 3.2 Vision (Mllama) image+text student, LoRA on the LM "
                         "(default: SmolLM2-135M + a small vision tower, built offline)",
             pairs_with={"task": "tissue"})


def _make_student(config: LlamaVisionConfig | None):
    from mint_llama_vision.student import LlamaVisionStudent

    return LlamaVisionStudent(config or LlamaVisionConfig())


__all__ = ["TINY", "DEFAULT_MODEL", "PAPER_MODEL", "LlamaVisionConfig"]
