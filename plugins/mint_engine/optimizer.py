""":class:`PackedOptimizer`: the component flow every optimizer on MINT's packed trainer shares.

encode the examples into features -> build the trainer (packing, padding, frozen-bottom cache,
callbacks) -> train, resuming from the newest checkpoint -> save the adapter atomically -> plot the
curve and write ``train_summary.json``. An objective (ORPO, DPO, KTO, SFT, a plugin's SimPO) is a
:class:`mint_engine.trainer.PackedTrainer` subclass with its own ``pair_loss``, named by
:meth:`PackedOptimizer.trainer_class`; everything else is inherited.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from mint_core import distributed
from mint_core.components import Optimizer, Student, StudentModel, TrainResult
from mint_core.io import write_json
from mint_core.registry import MintError
from mint_core.types import PreferenceExample
from mint_engine.callbacks import (
    MetricsLoggerCallback, ProgressCallback, plot_training_curve, read_metrics, remove_printer_callbacks,
)
from mint_engine.checkpoints import atomic_save_adapter, resolve_init_adapter, train_with_resume
from mint_engine.encoding import encode_pairs
from mint_engine.options import TrainingOptions, resolve_seed, training_arguments_kwargs

if TYPE_CHECKING:
    from mint_core.context import RunContext


class PackedOptimizer(Optimizer):
    """An optimizer component on MINT's packed trainer: the extension point for new objectives.

    Subclasses override :meth:`trainer_class` (a :class:`~mint_engine.trainer.PackedTrainer`
    subclass whose ``pair_loss`` is the objective) and, where needed, :meth:`trainer_kwargs`,
    :meth:`encode_features` (what a row holds), :meth:`prepare_model` / :meth:`finish_model` (extra
    adapters), :meth:`training_arguments` and :attr:`display_name`. ``config`` is the component's
    config dataclass, a :class:`~mint_engine.options.TrainingOptions` subclass.
    """

    default_builder = "topk"
    display_name = "packed"
    #: The name of the feature count in ``train_summary.json``.
    count_name = "pairs"
    #: The ``impl`` values this optimizer takes: ``mint`` (the packed trainer); ORPO adds ``trl``.
    impls: tuple[str, ...] = ("mint",)

    def __init__(self, config: TrainingOptions):
        self.config = config

    # -- what a subclass changes ------------------------------------------------------------------
    def trainer_class(self) -> type:
        """The :class:`~mint_engine.trainer.PackedTrainer` subclass that computes this objective."""
        raise NotImplementedError(f"{type(self).__name__} names no trainer class")

    def trainer_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments for the trainer class (beyond ``beta``)."""
        return {}

    def find_init_adapter(self, output_dir: Path) -> Path | None:
        """The adapter training starts from (``init_adapter``), or ``None`` for a fresh LoRA."""
        return resolve_init_adapter(getattr(self.config, "init_adapter", ""))

    def prepare_model(self, sm: StudentModel, *, init_adapter: Path | None, ctx: RunContext) -> None:
        """Called once the trainable student is loaded, before the trainer is built (no-op here)."""

    def finish_model(self, model: Any) -> None:
        """Called on the trained model just before its adapter is saved (no-op here)."""

    def encode_features(self, sm: StudentModel, examples: Sequence[PreferenceExample], *,
                        ctx: RunContext) -> list[dict[str, Any]]:
        """The training features (pair features, see :mod:`mint_engine.packing`) of ``examples``."""
        cfg = self.config
        return encode_pairs(sm, examples, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                            ctx=ctx)

    def training_arguments(self, common: dict[str, Any]) -> dict[str, Any]:
        """The ``TrainingArguments`` keywords (``common``: MINT's, from the options); override to add some."""
        return common

    def check_config(self) -> None:
        """Refuse option combinations this optimizer cannot train (a :class:`MintError` naming the option)."""
        if self.config.impl not in self.impls:
            raise MintError(f"optimizer.impl={self.config.impl!r}: {self.display_name} takes impl="
                            + " or ".join(self.impls))

    def reference_trainer(self, sm: StudentModel, features: list[dict[str, Any]], *, args_kwargs: dict[str, Any],
                          callbacks: Sequence[Any]) -> Any:
        """The reference implementation's trainer for ``impl=trl`` (ORPO: TRL's ``ORPOTrainer``)."""
        raise MintError(f"{self.display_name} has no reference trainer (impl=trl); use impl=mint")

    # -- the flow ----------------------------------------------------------------------------------
    def train(self, *, student: Student, examples: Sequence[PreferenceExample], output_dir: Path,
              ctx: RunContext, callbacks: Sequence[Any] = ()) -> TrainResult:
        """Train into ``output_dir`` (``adapter/``, ``checkpoints/``, ``metrics.jsonl``, ``training_curve.png``).

        Resumes from the newest ``checkpoints/checkpoint-N`` when there is one. ``callbacks`` are
        extra ``TrainerCallback`` objects (tests use one to simulate a kill).
        """
        cfg = self.config
        self.check_config()
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        init = self.find_init_adapter(output_dir)
        sm = student.load(ctx=ctx, adapter_dir=init, trainable=True)
        self.prepare_model(sm, init_adapter=init, ctx=ctx)
        features = self.encode_features(sm, examples, ctx=ctx)
        trainer = build_trainer(cfg, sm, features, output_dir=output_dir, ctx=ctx, callbacks=callbacks,
                                trainer_cls=self.trainer_class(), trainer_kwargs=self.trainer_kwargs(),
                                name=self.display_name, arguments=self.training_arguments,
                                reference=self.reference_trainer if cfg.impl == "trl" else None)
        result = train_with_resume(trainer, checkpoints=output_dir / "checkpoints", ctx=ctx, label=self.display_name)
        self.finish_model(trainer.model)

        def save() -> dict[str, float]:  # process 0 writes; the others wait, then read its figures
            atomic_save_adapter(trainer.model, output_dir / "adapter")
            plot_training_curve(output_dir / "metrics.jsonl", output_dir / "training_curve.png",
                                title=f"{self.display_name} ({cfg.impl}) β={cfg.beta}")
            metrics = summarize(result.metrics, output_dir / "metrics.jsonl", global_step=trainer.state.global_step)
            metrics[self.count_name] = float(len(features))
            write_json(output_dir / "train_summary.json", {**metrics, "init_adapter": str(init) if init else None})
            return metrics

        metrics = distributed.broadcast(distributed.on_main(save))
        return TrainResult(output_dir=output_dir, adapter_dir=output_dir / "adapter", metrics=metrics)


def summarize(train_metrics: dict[str, Any], metrics_jsonl: Path, *, global_step: int) -> dict[str, float]:
    """Final figures: the Trainer's summary plus the last logged loss, NLL and reward accuracy."""
    out = {k: float(v) for k, v in train_metrics.items() if isinstance(v, (int, float))}
    out["global_step"] = float(global_step)
    logged = read_metrics(metrics_jsonl) if metrics_jsonl.exists() else []
    summary = [r for r in logged if "train_loss" in r]
    if summary:  # over every step, also after a resume (see callbacks.curve_mean_loss)
        out["train_loss"] = float(summary[-1]["train_loss"])
    rows = [r for r in logged if "loss" in r]
    if rows:
        last = rows[-1]
        for key in ("loss", "nll", "nll_loss", "or_loss", "rewards/accuracies", "logps/chosen", "logps/rejected"):
            if key in last:
                out[f"final_{key.replace('/', '_')}"] = float(last[key])
    return out


def build_trainer(cfg: TrainingOptions, sm: StudentModel, features: list[dict[str, Any]], *, output_dir: Path,
                  ctx: RunContext, trainer_cls: type, callbacks: Sequence[Any] = (),
                  trainer_kwargs: dict[str, Any] | None = None, name: str = "ORPO",
                  arguments: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                  reference: Callable[..., Any] | None = None) -> Any:
    """The configured trainer (MINT's packed ``trainer_cls``, or ``reference(...)``'s), callbacks attached, not yet run.

    ``arguments`` may adjust the ``TrainingArguments`` keywords (e.g. KTO reads its data in order).
    """
    seed = resolve_seed(cfg, ctx)
    common = training_arguments_kwargs(cfg, output_dir=output_dir, seed=seed)
    if arguments is not None:
        common = arguments(common)
    cbs = [ProgressCallback(ctx, description=f"{name} ({cfg.impl})"), MetricsLoggerCallback(output_dir / "metrics.jsonl"),
           *callbacks]
    if reference is not None:
        trainer = reference(sm, features, args_kwargs=common, callbacks=cbs)
    else:
        trainer = build_mint_trainer(cfg, sm, features, args_kwargs=common, callbacks=cbs, ctx=ctx,
                                     trainer_cls=trainer_cls, trainer_kwargs=trainer_kwargs)
    remove_printer_callbacks(trainer)
    return trainer


def build_mint_trainer(cfg: TrainingOptions, sm: StudentModel, features: list[dict[str, Any]], *,
                       args_kwargs: dict[str, Any], callbacks: Sequence[Any], ctx: RunContext | None = None,
                       trainer_cls: type, trainer_kwargs: dict[str, Any] | None = None) -> Any:
    """MINT's packed trainer ``trainer_cls`` (a :class:`~mint_engine.trainer.PackedTrainer` subclass) on ``features``, not yet run."""
    import torch
    from transformers import TrainingArguments

    from mint_core import prepacked
    from mint_engine.compute import choose_attention, compile_layers, freeze_in, use_compile
    from mint_engine.frozen_cache import build_for_training, cache_plan
    from mint_engine.packing import SEGMENT_KERNEL, attention_weight
    from mint_engine.sharding import owned
    from mint_engine.trainer import PairCollator, choose_packing, choose_padding_free

    model = sm.model
    if getattr(cfg, "disable_dropout", True):
        from trl.trainer.utils import disable_dropout_in_model

        disable_dropout_in_model(model)
    # TrainingArguments first: it joins the process group and places this process on its device.
    args = TrainingArguments(**args_kwargs)
    compiled = use_compile(getattr(cfg, "compile", "false"))
    attention = choose_attention(model, getattr(cfg, "attention", "auto"), device=args.device, compiled=compiled)
    mixed = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None
    if mixed is not None:
        freeze_in(model, mixed)
        if mixed == torch.bfloat16 and not compiled:
            # Frozen bf16 weights reordered once for oneDNN on CPU (same products); PackedTrainer.train removes it.
            prepacked.install(model)
    packed, mask_kind, reason = choose_packing(model, cfg.packing, features)
    padding_free, pf_reason = choose_padding_free(model, cfg.padding_free, features)
    nll_on_prompt = bool(getattr(cfg, "nll_on_prompt", False))  # only ORPO-like objectives have an NLL term
    if ctx is not None:
        layout = f"{'packed' if packed else 'two-sequence'} batches ({reason}), "
        layout += f"{ {True: 'padding-free', False: 'padded', None: 'padded or padding-free'}[padding_free]} rows ({pf_reason})"
        ctx.log(f"{trainer_cls.__name__}: {layout}, {attention} attention, {len(features)} pairs")
    pad_id = getattr(sm, "pad_token_id", None)
    if pad_id is None:
        tok = getattr(sm.processor, "tokenizer", sm.processor)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    frozen_cache = None
    depth, cache_reason = cache_plan(model, getattr(cfg, "cache_frozen", "false"), packed=packed, features=features,
                                     disable_dropout=bool(getattr(cfg, "disable_dropout", True)))
    if depth:
        mine = None if args.world_size == 1 else owned(len(features), rank=args.process_index, world_size=args.world_size,
                                                       batch_size=args.per_device_train_batch_size)
        frozen_cache = build_for_training(model, features, depth=depth, mask_kind=mask_kind, pad_id=int(pad_id),
                                          log=ctx.log if ctx is not None else None, indices=mine, autocast=mixed)
    elif ctx is not None and str(getattr(cfg, "cache_frozen", "false")).lower() != "false":
        ctx.log(f"frozen-bottom cache off: {cache_reason}")
    if compiled:  # after the cache: its bottom layers stay eager
        count = compile_layers(model, start=depth)
        if ctx is not None:
            ctx.log(f"compile: {count} decoder layers (inductor, dynamic shapes); the first step compiles them")
    # Batches say which features they hold: the frozen-bottom cache and the reference cache read it.
    features = [{**f, "feature_index": i} for i, f in enumerate(features)]
    collator_cls = getattr(trainer_cls, "collator_class", PairCollator)  # a trainer may read more per row
    return trainer_cls(model=model, args=args, train_dataset=features, frozen_cache=frozen_cache,
                       data_collator=collator_cls(pad_id=int(pad_id), packed=packed, nll_on_prompt=nll_on_prompt,
                                                 padding_free=padding_free, attention_weight=attention_weight(model),
                                                 segments=attention == SEGMENT_KERNEL),
                       callbacks=list(callbacks), beta=cfg.beta, mask_kind=mask_kind, **(trainer_kwargs or {}))
