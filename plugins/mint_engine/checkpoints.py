"""Checkpoints, adapters and resuming: what makes a killed training run continue where it stopped.

- :func:`find_last_checkpoint`: the newest complete ``checkpoint-N`` folder.
- :func:`train_with_resume`: ``trainer.train()`` resumed from it (or the final weights loaded).
- :func:`atomic_save_adapter`: ``save_pretrained`` into a temporary folder, then renamed into place.
- :func:`resolve_init_adapter` / :func:`find_init_adapter`: the ``init_adapter`` option -> a folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mint_core.io import atomic_dir
from mint_engine.callbacks import _MetricsLoggerImpl, _ProgressImpl, read_metrics

if TYPE_CHECKING:
    from mint_core.context import RunContext

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
