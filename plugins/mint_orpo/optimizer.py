"""The ``orpo`` optimizer component: encode pairs, train (MINT's trainer or TRL's), save, plot."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from mint_core.components import Optimizer, Student, StudentModel, TrainResult
from mint_core.io import write_json
from mint_core.registry import MintError
from mint_core.types import PreferenceExample, Prompt
from mint_orpo import OrpoConfig
from mint_orpo.common import (
    MetricsLoggerCallback, ProgressCallback, atomic_save_adapter, plot_training_curve, read_metrics,
    remove_printer_callbacks, resolve_init_adapter, resolve_seed, train_with_resume, training_arguments_kwargs,
)

if TYPE_CHECKING:
    from mint_core.context import RunContext


def encode_answer(sm: StudentModel, prompt: Prompt, answer: str, *, max_length: int,
                  max_prompt_length: int) -> tuple[list[int], list[int], dict[str, Any]]:
    """``(prompt_ids, answer_ids, extras)`` of one prompt and answer, truncated as every MINT trainer does.

    Prompts longer than ``max_prompt_length`` lose their beginning (text students; an image prompt
    keeps its image tokens); the answer is cut so that prompt + answer fits ``max_length`` (it may
    come back empty). ``extras`` are the student's other inputs (pixel values, a cross-attention
    mask cut to the prompt rows).
    """
    enc = sm.encode(prompt=prompt, completion=answer)
    split = int(enc["prompt_length"])
    prompt_ids, answer_ids = list(enc["input_ids"][:split]), list(enc["input_ids"][split:])
    extras = {k: v for k, v in enc.items() if k not in {"input_ids", "prompt_length", "attention_mask"}}
    if len(prompt_ids) > max_prompt_length and not extras:
        prompt_ids = prompt_ids[-max_prompt_length:]
    if "cross_attention_mask" in extras:  # keep the prompt rows; answers extend it (see packing._stack_extras)
        import torch

        extras["cross_attention_mask"] = torch.as_tensor(extras["cross_attention_mask"])[:split]
    return prompt_ids, answer_ids[:max(max_length - len(prompt_ids), 0)], extras


def encode_pair(sm: StudentModel, example: PreferenceExample, *, max_length: int,
                max_prompt_length: int) -> dict[str, Any] | None:
    """One pair feature (see :mod:`mint_orpo.packing`), truncated by :func:`encode_answer`; ``None``
    when no answer token fits."""
    if example.chosen is None or example.rejected is None:
        raise MintError(f"preference example {example.case_id!r} is not a pair (kind={example.kind!r}); "
                        "ORPO needs chosen and rejected answers (builder=topk)")
    limits = dict(max_length=max_length, max_prompt_length=max_prompt_length)
    prompt, chosen, extras = encode_answer(sm, example.prompt, example.chosen, **limits)
    prompt_r, rejected, _ = encode_answer(sm, example.prompt, example.rejected, **limits)
    if prompt != prompt_r:
        raise MintError(f"case {example.case_id}: the student encodes the prompt differently before the chosen and "
                        "the rejected answer; ORPO needs one shared prompt encoding")
    if not chosen or not rejected:
        return None
    return {"case_id": example.case_id, "prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected,
            "extras": extras}


def encode_answers(sm: StudentModel, rows: Sequence[tuple[PreferenceExample, str, dict[str, Any]]], *, name: str,
                   max_length: int, max_prompt_length: int, ctx: RunContext | None = None) -> list[dict[str, Any]]:
    """Single-answer features (KTO, SFT): per ``(example, answer, fields)`` row, ``case_id``,
    ``prompt_ids``, ``chosen_ids`` (the answer, by :func:`encode_answer`), ``extras`` and ``fields``.

    Rows whose answer does not fit ``max_length`` are dropped (logged); none left is an error.
    """
    features = []
    for example, answer, fields in rows:
        prompt, answer_ids, extras = encode_answer(sm, example.prompt, answer, max_length=max_length,
                                                   max_prompt_length=max_prompt_length)
        if answer_ids:
            features.append({"case_id": example.case_id, "prompt_ids": prompt, "chosen_ids": answer_ids,
                             "extras": extras, **fields})
    return check_dropped(features, total=len(rows), name=name, max_length=max_length, ctx=ctx)


def check_dropped(features: list[dict[str, Any]], *, total: int, name: str, max_length: int,
                  ctx: RunContext | None = None) -> list[dict[str, Any]]:
    """``features`` back, after logging how many of ``total`` rows did not fit ``max_length``; none left is an error."""
    dropped = total - len(features)
    if dropped and ctx is not None:
        ctx.log(f"{name.upper()}: {dropped} example(s) dropped: the prompt fills max_length "
                "(raise optimizer.max_length)")
    if not features:
        raise MintError(f"optimizer={name}: every prompt fills optimizer.max_length={max_length}; raise it")
    return features


def encode_pairs(sm: StudentModel, examples: Sequence[PreferenceExample], *, max_length: int,
                 max_prompt_length: int, ctx: RunContext | None = None) -> list[dict[str, Any]]:
    features = []
    for example in examples:
        feature = encode_pair(sm, example, max_length=max_length, max_prompt_length=max_prompt_length)
        if feature is not None:
            features.append(feature)
    dropped = len(examples) - len(features)
    if dropped and ctx is not None:
        ctx.log(f"ORPO: {dropped} pair(s) dropped: the prompt fills max_length (raise optimizer.max_length)")
    if not features:
        raise MintError("ORPO has no training pairs (empty preferences, or every prompt exceeds max_length)")
    return features


class OrpoOptimizer(Optimizer):
    """MINT's ORPO. Subclass it for other reference-free pair objectives: override
    :meth:`trainer_class` (a :class:`mint_orpo.trainer.OrpoTrainer` subclass whose ``pair_loss``
    is the new objective), :meth:`trainer_kwargs` and :attr:`display_name`."""

    default_builder = "topk"
    display_name = "ORPO"

    def trainer_class(self) -> type:
        from mint_orpo.trainer import OrpoTrainer

        return OrpoTrainer

    def trainer_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments for the trainer class (beyond ``beta``)."""
        return {}

    def find_init_adapter(self, output_dir: Path) -> Path | None:
        """The adapter training starts from (``init_adapter``), or ``None`` for a fresh LoRA."""
        return resolve_init_adapter(self.config.init_adapter)

    def prepare_model(self, sm: StudentModel, *, init_adapter: Path | None, ctx: RunContext) -> None:
        """Called once the trainable student is loaded, before the trainer is built (no-op here)."""

    def finish_model(self, model: Any) -> None:
        """Called on the trained model just before its adapter is saved (no-op here)."""

    def encode_features(self, sm: StudentModel, examples: Sequence[PreferenceExample], *,
                        ctx: RunContext) -> list[dict[str, Any]]:
        """The training features (pair features, see :mod:`mint_orpo.packing`) of ``examples``."""
        cfg = self.config
        return encode_pairs(sm, examples, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                            ctx=ctx)

    def training_arguments(self, common: dict[str, Any]) -> dict[str, Any]:
        """The ``TrainingArguments`` keywords (``common``: MINT's, from the options); override to add some."""
        return common

    #: The name of the feature count in ``train_summary.json``.
    count_name = "pairs"

    def __init__(self, config: OrpoConfig):
        self.config = config

    def train(self, *, student: Student, examples: Sequence[PreferenceExample], output_dir: Path,
              ctx: RunContext, callbacks: Sequence[Any] = ()) -> TrainResult:
        """Train ORPO into ``output_dir`` (``adapter/``, ``checkpoints/``, ``metrics.jsonl``, ``training_curve.png``).

        Resumes from the newest ``checkpoints/checkpoint-N`` when there is one. ``callbacks`` are
        extra ``TrainerCallback`` objects (tests use one to simulate a kill).
        """
        cfg = self.config
        if cfg.impl not in {"mint", "trl"}:
            raise MintError(f"optimizer.impl={cfg.impl!r}: use mint or trl")
        if cfg.impl == "trl" and not getattr(cfg, "nll_on_prompt", True):
            raise MintError("optimizer.nll_on_prompt=false needs optimizer.impl=mint (TRL's NLL always covers the "
                            "prompt)")
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        init = self.find_init_adapter(output_dir)
        sm = student.load(ctx=ctx, adapter_dir=init, trainable=True)
        self.prepare_model(sm, init_adapter=init, ctx=ctx)
        features = self.encode_features(sm, examples, ctx=ctx)
        trainer = build_trainer(cfg, sm, features, output_dir=output_dir, ctx=ctx, callbacks=callbacks,
                                trainer_cls=self.trainer_class(), trainer_kwargs=self.trainer_kwargs(),
                                name=self.display_name, arguments=self.training_arguments)
        result = train_with_resume(trainer, checkpoints=output_dir / "checkpoints", ctx=ctx, label=self.display_name)
        self.finish_model(trainer.model)
        adapter_dir = atomic_save_adapter(trainer.model, output_dir / "adapter")
        plot_training_curve(output_dir / "metrics.jsonl", output_dir / "training_curve.png",
                            title=f"{self.display_name} ({cfg.impl}) β={cfg.beta}")
        metrics = summarize(result.metrics, output_dir / "metrics.jsonl", global_step=trainer.state.global_step)
        metrics[self.count_name] = float(len(features))
        write_json(output_dir / "train_summary.json", {**metrics, "init_adapter": str(init) if init else None})
        return TrainResult(output_dir=output_dir, adapter_dir=adapter_dir, metrics=metrics)


def summarize(train_metrics: dict[str, Any], metrics_jsonl: Path, *, global_step: int) -> dict[str, float]:
    """Final figures: the Trainer's summary plus the last logged loss, NLL and reward accuracy."""
    out = {k: float(v) for k, v in train_metrics.items() if isinstance(v, (int, float))}
    out["global_step"] = float(global_step)
    logged = read_metrics(metrics_jsonl) if metrics_jsonl.exists() else []
    summary = [r for r in logged if "train_loss" in r]
    if summary:  # over every step, also after a resume (see common.curve_mean_loss)
        out["train_loss"] = float(summary[-1]["train_loss"])
    rows = [r for r in logged if "loss" in r]
    if rows:
        last = rows[-1]
        for key in ("loss", "nll", "nll_loss", "or_loss", "rewards/accuracies", "logps/chosen", "logps/rejected"):
            if key in last:
                out[f"final_{key.replace('/', '_')}"] = float(last[key])
    return out


def build_trainer(cfg: OrpoConfig, sm: StudentModel, features: list[dict[str, Any]], *, output_dir: Path,
                  ctx: RunContext, callbacks: Sequence[Any] = (), trainer_cls: type | None = None,
                  trainer_kwargs: dict[str, Any] | None = None, name: str = "ORPO",
                  arguments: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> Any:
    """The configured trainer (MINT's :class:`OrpoTrainer` or TRL's), callbacks attached, not yet run.

    ``arguments`` may adjust the ``TrainingArguments`` keywords (e.g. KTO reads its data in order).
    """
    seed = resolve_seed(cfg, ctx)
    common = training_arguments_kwargs(cfg, output_dir=output_dir, seed=seed)
    if arguments is not None:
        common = arguments(common)
    cbs = [ProgressCallback(ctx, description=f"{name} ({cfg.impl})"), MetricsLoggerCallback(output_dir / "metrics.jsonl"),
           *callbacks]
    if cfg.impl == "trl":
        from mint_orpo.trl_impl import build_trl_trainer

        trainer = build_trl_trainer(cfg, sm, features, args_kwargs=common, callbacks=cbs)
    else:
        trainer = build_mint_trainer(cfg, sm, features, args_kwargs=common, callbacks=cbs, ctx=ctx,
                                     trainer_cls=trainer_cls, trainer_kwargs=trainer_kwargs)
    remove_printer_callbacks(trainer)
    return trainer


def build_mint_trainer(cfg: OrpoConfig, sm: StudentModel, features: list[dict[str, Any]], *,
                       args_kwargs: dict[str, Any], callbacks: Sequence[Any], ctx: RunContext | None = None,
                       trainer_cls: type | None = None, trainer_kwargs: dict[str, Any] | None = None) -> Any:
    from transformers import TrainingArguments

    from mint_orpo.frozen_cache import build_for_training, cache_plan
    from mint_orpo.packing import attention_weight
    from mint_orpo.trainer import OrpoTrainer, PairCollator, choose_packing, choose_padding_free

    model = sm.model
    if getattr(cfg, "disable_dropout", True):
        from trl.trainer.utils import disable_dropout_in_model

        disable_dropout_in_model(model)
    packed, mask_kind, reason = choose_packing(model, cfg.packing, features)
    padding_free, pf_reason = choose_padding_free(model, cfg.padding_free, features)
    nll_on_prompt = bool(getattr(cfg, "nll_on_prompt", False))  # only ORPO-like objectives have an NLL term
    if ctx is not None:
        layout = f"{'packed' if packed else 'two-sequence'} batches ({reason}), "
        layout += f"{ {True: 'padding-free', False: 'padded', None: 'padded or padding-free'}[padding_free]} rows ({pf_reason})"
        ctx.log(f"{trainer_cls.__name__ if trainer_cls else 'ORPO'}: {layout}, {len(features)} pairs")
    pad_id = getattr(sm, "pad_token_id", None)
    if pad_id is None:
        tok = getattr(sm.processor, "tokenizer", sm.processor)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    frozen_cache = None
    depth, cache_reason = cache_plan(model, getattr(cfg, "cache_frozen", "false"), packed=packed, features=features,
                                     disable_dropout=bool(getattr(cfg, "disable_dropout", True)))
    if depth:
        frozen_cache = build_for_training(model, features, depth=depth, mask_kind=mask_kind, pad_id=int(pad_id),
                                          log=ctx.log if ctx is not None else None)
    elif ctx is not None and str(getattr(cfg, "cache_frozen", "false")).lower() != "false":
        ctx.log(f"frozen-bottom cache off: {cache_reason}")
    # Batches say which features they hold: the frozen-bottom cache and the reference cache read it.
    features = [{**f, "feature_index": i} for i, f in enumerate(features)]
    args = TrainingArguments(**args_kwargs)
    trainer_cls = trainer_cls or OrpoTrainer
    collator_cls = getattr(trainer_cls, "collator_class", PairCollator)  # a trainer may read more per row
    return trainer_cls(model=model, args=args, train_dataset=features, frozen_cache=frozen_cache,
                       data_collator=collator_cls(pad_id=int(pad_id), packed=packed, nll_on_prompt=nll_on_prompt,
                                                 padding_free=padding_free, attention_weight=attention_weight(model)),
                       callbacks=list(callbacks), beta=cfg.beta, mask_kind=mask_kind, **(trainer_kwargs or {}))
