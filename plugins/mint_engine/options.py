"""The options every MINT trainer shares, and how they map to ``transformers.TrainingArguments``.

- :class:`TrainingOptions`: the options common to all optimizers (``optimizer.epochs=2``, ...);
  subclass it to add your own.
- :class:`PackedOptions`: the layout options of the packed trainers (``packing``, ``padding_free``).
- :func:`training_arguments_kwargs`: the ``TrainingArguments`` keywords these options map to.
- :func:`use_bf16`: the ``bf16`` option on this machine (AMX / AVX512-BF16 read from /proc/cpuinfo).

Light at import time (dataclasses only): plugin modules import it to declare their options.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mint_core.hardware import cpu_bf16_flags  # here so tests can patch what use_bf16 reads

if TYPE_CHECKING:
    from mint_core.context import RunContext

@dataclass
class TrainingOptions:
    """Options shared by every MINT optimizer (ORPO, DPO, KTO, SFT); subclass it to add your own."""

    epochs: float = field(default=1, metadata={"help": "Passes over the training examples (ignored when max_steps > 0).", "gt": 0})
    max_steps: int = field(default=-1, metadata={"help": "Optimizer steps to run; -1 uses epochs.", "min": -1})
    learning_rate: float = field(default=2e-4, metadata={
        "help": "Peak learning rate (AdamW). 2e-4 suits the CPU demo with LoRA r=16; the ORPO paper used 5e-5 "
                "with r=256.", "gt": 0})
    lr_scheduler: str = field(default="linear", metadata={
        "help": "transformers scheduler name: linear, cosine, constant, constant_with_warmup, ..."})
    warmup_ratio: float = field(default=0.0, metadata={"help": "Share of the steps spent warming the learning rate up.", "min": 0, "max": 1})
    batch_size: int = field(default=2, metadata={"help": "Examples (pairs) per device per micro-batch.", "min": 1})
    grad_accum: int = field(default=1, metadata={"help": "Micro-batches accumulated per optimizer step.", "min": 1})
    beta: float = field(default=0.1, metadata={
        "help": "Preference strength: ORPO's λ (weight of the odds-ratio term), DPO/KTO's β.", "min": 0})
    max_length: int = field(default=1024, metadata={
        "help": "Longest prompt + answer in tokens; answers are cut to fit.", "min": 1})
    max_prompt_length: int = field(default=768, metadata={
        "help": "Longest prompt in tokens; longer prompts lose their beginning (left truncation).", "min": 1})
    seed: int | None = field(default=None, metadata={"help": "Training seed; empty uses the run seed.", "min": 0})
    save_steps: int = field(default=10, metadata={
        "help": "Checkpoint every N optimizer steps under <output>/checkpoints; a killed run resumes from the last.",
        "min": 1})
    logging_steps: int = field(default=1, metadata={"help": "Log metrics (metrics.jsonl) every N steps.", "min": 1})
    bf16: str = field(default="auto", metadata={
        "help": "bfloat16 autocast: auto (on a GPU that supports it, or a CPU with AMX or AVX512-BF16, read from "
                "/proc/cpuinfo; fp32 elsewhere, where CPU bf16 is emulated and slower), true, false. Parity tests "
                "stay fp32."})
    impl: str = field(default="mint", metadata={
        "help": "mint: MINT's own trainer; trl: the TRL reference trainer (text students only)."})
    init_adapter: str = field(default="", metadata={
        "help": "Start from this adapter: a peft adapter folder or a run/student folder holding adapter/."})
    cache_frozen: str = field(default="auto", metadata={
        "help": "MINT's packed trainers (orpo; dpo with impl=mint): compute the frozen bottom layers' hidden states "
                "(those below student.lora_layers) once per pair and reuse them every epoch. auto: whenever exact "
                "(packed pairs, dropout off, a frozen bottom; for a vision student, the language-model layers below "
                "its first cross-attention layer); true (error if not possible); false. Costs tokens x hidden x 4 "
                "bytes of memory (~136 MB for the demo's 160 pairs, ~43 MB for the tissue demo's 168)."})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "Recompute activations in backward: less memory, ~30% slower."})
    report_to: str = field(default="none", metadata={
        "help": "Trackers transformers logs training to: none, or a comma-separated list (tensorboard, wandb, "
                "mlflow, ...; each needs its package). TensorBoard writes to <student folder>/tensorboard."})
    training_args: str = field(default="", metadata={
        "help": "Other transformers TrainingArguments, passed through: 'key=value;key=value' (YAML values), e.g. "
                "'max_grad_norm=0.5;adam_beta2=0.99'. MINT's own options win where they overlap."})
    shuffle: bool = field(default=True, metadata={
        "help": "Reshuffle the training examples every epoch (seeded). false: file order, in every trainer (MINT's "
                "and TRL's); then N processes at batch_size b train what one process at batch N x b trains."})


@dataclass
class PackedOptions(TrainingOptions):
    """Layout options of MINT's packed trainers (``impl=mint``); every built-in optimizer has them."""

    packing: str = field(default="auto", metadata={
        "help": "auto: one [prompt, chosen, rejected] sequence per pair (shared prompt; images once per pair for "
                "Mllama) when the model's attention accepts custom 4D masks (sdpa, eager), else two sequences; "
                "packed; two-sequence."})
    padding_free: str = field(default="auto", metadata={
        "help": "Put a batch's pairs back to back in one row, no padding. auto: always with flash/flex attention "
                "(they skip the work between sequences); with sdpa/eager (dense mask) per batch, when the padding "
                "saved outweighs the attention added (estimated); true; false."})
    compile: str = field(default="false", metadata={
        "help": "torch.compile (inductor) the decoder layers each step runs (those above the frozen-bottom cache): "
                "3-9% off a demo step, but the first step compiles (55-82 s on a fresh machine, 10-17 s with "
                "inductor's cache warm), so it pays only over a few hundred steps. Needs a C++ compiler on CPU. true, false."})
    attention: str = field(default="auto", metadata={
        "help": "Attention kernel while training: auto (on CPU, MINT's segment kernel for Llama students: eager's "
                "arithmetic on the packed row's blocks, skipping the block between the two answers; eager for "
                "other students or with compile=true; the model's own elsewhere), segments, sdpa, eager, "
                "flash_attention_2, flex_attention."})


def resolve_seed(options: TrainingOptions, ctx: RunContext) -> int:
    return int(options.seed) if options.seed is not None else int(ctx.seed)


def use_bf16(value: str | bool) -> bool:
    """``bf16`` option -> whether to train with bf16 autocast.

    ``auto``: on a bf16-capable CUDA GPU, or on a CPU run where the CPU has AMX or AVX512-BF16
    (:func:`cpu_bf16_flags`); fp32 elsewhere.
    """
    text = str(value).strip().lower()
    if text in {"true", "1", "yes", "on"}:
        return True
    if text in {"false", "0", "no", "off", ""}:
        return False
    if text != "auto":
        raise ValueError(f"optimizer.bf16={value!r}: use auto, true or false")
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    return bool(cpu_bf16_flags())



def training_arguments_kwargs(options: TrainingOptions, *, output_dir: Path, seed: int) -> dict[str, Any]:
    """Keywords for ``transformers.TrainingArguments`` (or a TRL config) from the common options."""
    import torch

    return extra_training_arguments(getattr(options, "training_args", "")) | dict(
        output_dir=str(output_dir / "checkpoints"),
        num_train_epochs=float(options.epochs),
        max_steps=int(options.max_steps),
        learning_rate=float(options.learning_rate),
        lr_scheduler_type=options.lr_scheduler,
        # transformers 5 reads a float in [0, 1) as a share of the steps (warmup_ratio is gone).
        warmup_steps=_warmup_share(options.warmup_ratio),
        per_device_train_batch_size=int(options.batch_size),
        gradient_accumulation_steps=int(options.grad_accum),
        seed=seed,
        data_seed=seed,
        save_strategy="steps",
        save_steps=int(options.save_steps),
        save_only_model=False,  # optimizer + scheduler + RNG too, so resuming continues exactly
        # A resume reads only the newest complete checkpoint; the one before it covers a save cut off
        # mid-write. Keeping every one cost 2.6 GB for one tissue KTO run (51 MB x 52).
        save_total_limit=2,
        logging_strategy="steps",
        logging_steps=int(options.logging_steps),
        bf16=use_bf16(options.bf16),
        fp16=False,
        use_cpu=not torch.cuda.is_available(),
        activation_checkpointing=bool(options.gradient_checkpointing),
        report_to=report_to(options.report_to, output_dir=output_dir),
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        # MINT's packed trainers read this through mint_engine.sharding.FeatureOrder; TRL's directly.
        train_sampling_strategy="random" if options.shuffle else "sequential",
    )


def report_to(value: str, *, output_dir: Path) -> str | list[str]:
    """``report_to`` option -> transformers' ``report_to``; TensorBoard logs go under ``output_dir``."""
    trackers = [t.strip() for t in str(value or "none").split(",") if t.strip()]
    if not trackers or trackers == ["none"]:
        return "none"
    if "tensorboard" in trackers:
        # transformers' TensorBoardCallback reads its folder from this variable only (default: under
        # the checkpoints, which MINT prunes); the student folder keeps it beside metrics.jsonl.
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(output_dir) / "tensorboard")
    return trackers


def extra_training_arguments(value: str) -> dict[str, Any]:
    """``training_args`` option ('key=value;...') -> keywords; unknown ``TrainingArguments`` fields are an error."""
    import dataclasses

    import yaml
    from transformers import TrainingArguments

    defaults = {f.name: f.default for f in dataclasses.fields(TrainingArguments)}
    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in str(value or "").split(";"))):
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in defaults:
            raise ValueError(f"optimizer.training_args: {item!r} is not key=value with a TrainingArguments field "
                             f"(e.g. max_grad_norm=0.5)")
        value = yaml.safe_load(text)
        # YAML 1.1 reads "1e-4" as a string; a float field takes it as the number it spells.
        if isinstance(defaults[key], float) and isinstance(value, (str, int)) and not isinstance(value, bool):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"optimizer.training_args: {key}={text.strip()!r} is not a number") from None
        out[key] = value
    return out


def _warmup_share(value: float) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"optimizer.warmup_ratio={value}: give a share of the steps in [0, 1)")
    return value

