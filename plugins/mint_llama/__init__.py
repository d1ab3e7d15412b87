"""MINT text student: any Hugging Face causal LM with a chat template, LoRA via peft.

Registers the student ``llama-text``. The default model is SmolLM2-135M-Instruct (Llama
architecture), found offline when possible (see :mod:`mint_llama.resolve`). Heavy imports live in
:mod:`mint_llama.student`, loaded only when a run uses the student.
"""

from __future__ import annotations

from mint_core.hookspecs import hookimpl
from mint_llama.config import DEFAULT_MODEL, LlamaTextConfig


@hookimpl
def mint_register_students(register):
    register("llama-text", _make_student, config=LlamaTextConfig,
             description="Text LLM with a chat template (default SmolLM2-135M-Instruct), LoRA via peft")


def _make_student(config: LlamaTextConfig | None):
    from mint_llama.student import LlamaTextStudent

    return LlamaTextStudent(config or LlamaTextConfig())


__all__ = ["DEFAULT_MODEL", "LlamaTextConfig"]
