"""Options of the ``llama-vision`` student and its model ids. Light: dataclasses only."""

from __future__ import annotations

from dataclasses import dataclass, field

TINY = "tiny"
DEFAULT_MODEL = "smollm2"
PAPER_MODEL = "meta-llama/Llama-3.2-11B-Vision-Instruct"


@dataclass
class LlamaVisionConfig:
    model: str = field(default=DEFAULT_MODEL, metadata={
        "help": f"'{DEFAULT_MODEL}' (SmolLM2-135M-Instruct + a small vision tower, built offline once and cached "
                f"under $MINT_CACHE), '{TINY}' (a small random Mllama, for tests), a hub id ({PAPER_MODEL}, "
                "the paper's, needs network + GPU) or a local Mllama folder."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scaling = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch while training."})
    lora_target_modules: str = field(default="all-linear", metadata={
        "help": "Language-model modules LoRA adapts: 'all-linear' (q,k,v,o,gate,up,down of self- and "
                "cross-attention layers) or a comma-separated list (q_proj,v_proj). Never the vision tower."})
    lora_projector: bool = field(default=True, metadata={
        "help": "Also put LoRA on the multimodal projector (vision features -> text hidden size), "
                "unless full_train trains it in full."})
    lora_layers: str = field(default="auto", metadata={
        "help": "Language-model layers LoRA adapts: auto (a model built from a text model, the default among "
                "them: from its first cross-attention layer on, so backward stops there; other checkpoints: all), "
                "all, none, or indices (24,25,26)."})
    full_train: str = field(default="auto", metadata={
        "help": "Modules trained in full (peft modules_to_save), comma-separated: 'cross_attn' (the gated "
                "cross-attention layers), 'projector', 'vision' (the vision tower); '' = LoRA only. "
                f"auto: all three for a model built from a text model (the default '{DEFAULT_MODEL}': its vision "
                "side starts untrained), '' for any other checkpoint."})
    load_in_4bit: bool = field(default=False, metadata={
        "help": "QLoRA: load the language model in 4-bit NF4 (needs CUDA and bitsandbytes)."})
    dtype: str = field(default="auto", metadata={
        "help": "Weights dtype: auto (bf16 on a GPU that supports it, else fp32), float32, bfloat16, float16."})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu, cuda, cuda:1."})
