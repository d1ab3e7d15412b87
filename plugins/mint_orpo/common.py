"""Pieces every MINT trainer shares: common options, callbacks, the training curve, checkpoints.

Imported by ``mint_orpo`` and by ``mint_trl`` (DPO, KTO, SFT), so the signatures here are stable:

- :class:`TrainingOptions`: the options common to all optimizers (``optimizer.epochs=2``, ...).
- :class:`ProgressCallback`: a ``transformers.TrainerCallback`` drawing a rich bar via ``ctx.progress()``.
- :class:`MetricsLoggerCallback`: appends every ``Trainer.log`` call to ``metrics.jsonl``.
- :func:`plot_training_curve`: ``metrics.jsonl`` -> ``training_curve.png`` (matplotlib Agg).
- :func:`find_last_checkpoint`: the newest complete ``checkpoint-N`` folder, for resuming.
- :func:`atomic_save_adapter`: ``save_pretrained`` into a temporary folder, then rename into place.
- :func:`find_init_adapter`: the ``init_adapter`` option -> the adapter folder training starts from.
- :func:`training_arguments_kwargs`: the ``TrainingArguments`` keywords these options map to.

This module is light at import time: torch, transformers and matplotlib load inside functions, and
the callbacks subclass ``TrainerCallback`` lazily through :func:`_trainer_callback_base`.
"""

from __future__ import annotations

import json
import math
import re
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mint_core.io import atomic_dir

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


def resolve_seed(options: TrainingOptions, ctx: RunContext) -> int:
    return int(options.seed) if options.seed is not None else int(ctx.seed)


CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """The bf16 matmul features this CPU reports (``amx_bf16``, ``avx512_bf16``); empty where it has none.

    Without them bf16 on CPU is emulated and slower than fp32, so ``bf16=auto`` stays fp32 there.
    """
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return [flag for flag in CPU_BF16_FLAGS if flag in flags]


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


def resolve_init_adapter(value: str) -> Path | None:
    """``init_adapter`` -> a peft adapter folder (one with adapter_config.json), or ``None`` when empty."""
    if not value:
        return None
    path = Path(value).expanduser()
    for candidate in (path, path / "adapter", *sorted(path.glob("students/*/adapter"))):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise FileNotFoundError(f"optimizer.init_adapter={value!r}: no adapter_config.json in {path} or {path}/adapter; "
                            "give a peft adapter folder or a folder holding adapter/")


def find_init_adapter(value: str, *, output_dir: Path) -> Path | None:
    """``init_adapter`` -> adapter folder. A run folder means its ``students/sft/adapter`` when present."""
    if not value:
        return None
    run_sft = Path(value).expanduser() / "students" / "sft" / "adapter"
    found = run_sft if (run_sft / "adapter_config.json").is_file() else resolve_init_adapter(value)
    if found is not None and found.resolve() == (output_dir / "adapter").resolve():
        from mint_core.registry import MintError

        raise MintError(f"optimizer.init_adapter={value!r} is this optimizer's own output adapter ({found}); "
                        "point it at another run's adapter (e.g. the SFT baseline's)")
    return found


def training_arguments_kwargs(options: TrainingOptions, *, output_dir: Path, seed: int) -> dict[str, Any]:
    """Keywords for ``transformers.TrainingArguments`` (or a TRL config) from the common options."""
    import torch

    return dict(
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
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )


def _warmup_share(value: float) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"optimizer.warmup_ratio={value}: give a share of the steps in [0, 1)")
    return value


# -- checkpoints and adapters --------------------------------------------------------------------
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def find_last_checkpoint(directory: str | Path) -> Path | None:
    """The ``checkpoint-N`` folder with the largest N that holds a ``trainer_state.json``, or ``None``.

    A checkpoint without ``trainer_state.json`` was cut off while saving and is skipped.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = []
    for child in directory.iterdir():
        match = _CHECKPOINT.match(child.name)
        if match and child.is_dir() and (child / "trainer_state.json").is_file():
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


def atomic_save_adapter(model: Any, directory: str | Path) -> Path:
    """``model.save_pretrained`` (safetensors) into a temporary sibling folder, then rename it to ``directory``.

    A reader never sees a half-written adapter: either the old folder or the complete new one.
    """
    with atomic_dir(directory) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
    return Path(directory)


# -- callbacks -----------------------------------------------------------------------------------
def _trainer_callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


def _numeric(logs: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in logs.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and math.isfinite(float(value)):
            out[key] = float(value)
    return out


class _LazyCallbackMeta(type):
    """Makes ``ProgressCallback(...)`` return a real ``TrainerCallback`` subclass built on first use."""

    _built: dict[str, type] = {}

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        name = cls.__name__
        if name not in _LazyCallbackMeta._built:
            base = _trainer_callback_base()
            _LazyCallbackMeta._built[name] = type(name, (cls._Impl, base), {"__module__": cls.__module__})
        return _LazyCallbackMeta._built[name](*args, **kwargs)


class _ProgressImpl:
    def __init__(self, ctx: RunContext, description: str = "train") -> None:
        self.ctx = ctx
        self.description = description
        self._stack: ExitStack | None = None
        self._progress = None
        self._task = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.close()
        self._stack = ExitStack()
        self._progress = self._stack.enter_context(self.ctx.progress())
        self._task = self._progress.add_task(self.description, total=state.max_steps or None,
                                             completed=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._progress is not None and logs:
            shown = [f"{k}={logs[k]:.4g}" for k in ("loss", "nll", "rewards/accuracies")
                     if isinstance(logs.get(k), (int, float))]
            self._progress.update(self._task, status=" ".join(shown))

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        """Stop the bar; also call this when training raised (on_train_end never runs then)."""
        if self._stack is not None:
            self._stack.close()
        self._stack = self._progress = self._task = None


class ProgressCallback(metaclass=_LazyCallbackMeta):
    """``ProgressCallback(ctx)``: a rich progress bar (``ctx.progress()``) over optimizer steps, with the loss."""

    _Impl = _ProgressImpl


class _MetricsLoggerImpl:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_train_begin(self, args, state, control, **kwargs):
        # Resuming from checkpoint-N: rows logged after step N by the killed run will be logged
        # again, so drop them now to keep one row per step. A kill mid-append leaves a cut-off last
        # line: rewriting drops it too, so the next row starts on a line of its own.
        if self.path.exists():
            text = self.path.read_text(encoding="utf-8")
            rows = read_metrics(self.path)
            kept = [row for row in rows if row.get("step", 0) <= state.global_step]
            if len(kept) != len([line for line in text.splitlines() if line.strip()]) or not text.endswith("\n"):
                from mint_core.io import write_jsonl

                write_jsonl(self.path, kept)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        row = {"step": int(state.global_step), "epoch": float(state.epoch or 0.0)}
        row.update(_numeric({k: v for k, v in logs.items() if k not in {"step", "epoch"}}))
        if "train_loss" in row and self.path.exists():
            # The Trainer's train_loss averages only the steps this process ran: after a resume it
            # would differ from the uninterrupted run's. The logged curve covers every step.
            row["train_loss"] = curve_mean_loss(read_metrics(self.path), default=row["train_loss"])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()


class MetricsLoggerCallback(metaclass=_LazyCallbackMeta):
    """``MetricsLoggerCallback(path)``: one JSON line per ``Trainer.log`` call (step, epoch, every number logged)."""

    _Impl = _MetricsLoggerImpl


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``; a line cut off by a kill (the last one) is skipped."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def curve_mean_loss(rows: list[dict[str, Any]], *, default: float) -> float:
    """Mean training loss per step over the logged curve (each row stands for the steps since the
    previous one), or ``default`` when the curve does not start at step 1 without gaps."""
    rows = sorted((r for r in rows if "loss" in r and "train_runtime" not in r), key=lambda r: r["step"])
    total, previous = 0.0, 0
    for row in rows:
        total += float(row["loss"]) * (int(row["step"]) - previous)
        previous = int(row["step"])
    return total / previous if previous else default


# Curves drawn when present, in this order (ORPO names first, then TRL's).
_CURVE_KEYS = ("loss", "nll", "nll_loss", "or_loss", "log_odds_ratio", "logps/chosen", "logps/rejected",
               "rewards/accuracies", "rewards/margins", "kl", "learning_rate")


def plot_training_curve(metrics_jsonl: str | Path, png: str | Path, *, title: str = "training") -> Path | None:
    """Plot the training rows of ``metrics_jsonl`` (one panel per metric) to ``png``; ``None`` if nothing to plot."""
    metrics_jsonl, png = Path(metrics_jsonl), Path(png)
    if not metrics_jsonl.exists():
        return None
    rows = [row for row in read_metrics(metrics_jsonl) if "train_runtime" not in row]
    keys = [key for key in _CURVE_KEYS if any(key in row for row in rows)]
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        points = [(row["step"], row[key]) for row in rows if key in row]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if len(points) < 30 else None, ms=3)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    from mint_core.io import atomic_path

    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return png


def remove_printer_callbacks(trainer: Any) -> None:
    """Drop transformers' own stdout/tqdm printers: the rich bar and metrics.jsonl replace them."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback as HFProgress

    for cb in (PrinterCallback, HFProgress):
        trainer.remove_callback(cb)


__all__ = [
    "MetricsLoggerCallback", "ProgressCallback", "TrainingOptions", "atomic_save_adapter", "find_last_checkpoint",
    "plot_training_curve", "read_metrics", "remove_printer_callbacks", "resolve_init_adapter", "resolve_seed",
    "training_arguments_kwargs", "use_bf16",
]


def train_with_resume(trainer: Any, *, checkpoints: Path, ctx: RunContext, label: str) -> Any:
    """``trainer.train()``, resuming from the newest complete checkpoint in ``checkpoints``; the
    rich progress bar is closed whatever happens (a kill must not leave the terminal garbled)."""
    resume = find_last_checkpoint(checkpoints)
    if resume is not None and _is_final(resume):
        # Killed after its last checkpoint: the Trainer, resumed there, would run one step past
        # max_steps when that is not a whole number of epochs. Load the final weights instead.
        ctx.log(f"{label}: {resume} is the last step; loading it instead of training on")
        return _load_final_checkpoint(trainer, resume)
    if resume is not None:
        ctx.log(f"{label}: resuming from {resume}")
    progress = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, _ProgressImpl))
    try:
        return trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        progress.close()


def _is_final(checkpoint: Path) -> bool:
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    return 0 < int(state.get("max_steps") or 0) <= int(state.get("global_step") or 0)


def _load_final_checkpoint(trainer: Any, checkpoint: Path) -> Any:
    """The trained adapter and Trainer state of a finished run's last checkpoint, and the
    ``TrainOutput`` the run logged (its summary row in ``metrics.jsonl``, when it got that far)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerState
    from transformers.trainer_utils import TrainOutput

    model = trainer.accelerator.unwrap_model(trainer.model)
    set_peft_model_state_dict(model, load_file(str(checkpoint / "adapter_model.safetensors")))
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    metrics: dict[str, float] = {}
    logger = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, _MetricsLoggerImpl)), None)
    if logger is not None and logger.path.exists():
        summary = [row for row in read_metrics(logger.path) if "train_runtime" in row]
        if summary:
            metrics = {k: v for k, v in summary[-1].items() if k not in {"step"}}
    return TrainOutput(trainer.state.global_step, float(metrics.get("train_loss", 0.0)), metrics)
