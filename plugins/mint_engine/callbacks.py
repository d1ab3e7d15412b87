"""Trainer callbacks every MINT trainer attaches, and the training curve.

- :class:`ProgressCallback`: a ``transformers.TrainerCallback`` drawing a rich bar via ``ctx.progress()``.
- :class:`MetricsLoggerCallback`: appends every ``Trainer.log`` call to ``metrics.jsonl``.
- :func:`plot_training_curve`: ``metrics.jsonl`` -> ``training_curve.png`` (matplotlib Agg).

Light at import time: the callbacks subclass ``TrainerCallback`` lazily (:class:`_LazyCallbackMeta`),
matplotlib loads inside :func:`plot_training_curve`.
"""

from __future__ import annotations

import json
import math
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mint_core.context import RunContext

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
        if not state.is_world_process_zero:  # one process writes the run directory
            return
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
        if not logs or not state.is_world_process_zero:
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


