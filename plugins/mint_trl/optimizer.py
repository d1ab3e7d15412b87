"""The ``dpo``, ``kto`` and ``sft`` optimizers: TRL's trainers with LoRA on a MINT student, or, where
they compute the same loss, MINT's packed trainers (``impl=auto``; always for ``sft``).

How the model is prepared (decisions):

- **Fresh adapter** (no ``init_adapter``): the student's LoRA config (``lora_config()``, else the
  config of the adapter ``load(trainable=True)`` attaches, which is then unloaded) goes to TRL as
  ``peft_config=`` and TRL wraps the bare model. DPO and KTO then take the reference policy from
  the same weights with the adapter disabled: no second model copy.
- **Starting adapter** (``init_adapter``, e.g. the SFT baseline's): the student loads it as the
  trainable adapter. TRL copies it into a frozen ``ref`` adapter, so the policy *starts from* the
  SFT model and the DPO/KTO reference *is* the SFT model, the DPO-after-SFT recipe. The saved
  adapter is a single LoRA (SFT + preference updates) that loads on the plain base model; the
  ``ref`` copy is dropped before saving. (Merging the SFT adapter into the base instead would
  make the result unusable without that merged base.)
- Text students train on rows pre-tokenized by ``StudentModel.encode`` (see :mod:`mint_trl.data`);
  vision students (Mllama) use TRL's vision collators plus the cross-attention repair of
  :mod:`mint_trl.vision`.

Every run checkpoints under ``output_dir/checkpoints`` and resumes from the newest checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from mint_core import distributed
from mint_core.components import Optimizer, Student, StudentModel, TrainResult
from mint_core.io import write_json
from mint_core.registry import MintError
from mint_core.types import PreferenceExample
from mint_engine.callbacks import MetricsLoggerCallback, ProgressCallback, plot_training_curve, remove_printer_callbacks
from mint_engine.checkpoints import atomic_save_adapter, find_init_adapter, train_with_resume
from mint_engine.optimizer import summarize
from mint_engine.options import resolve_seed, training_arguments_kwargs
from mint_trl.config import DpoConfig, KtoConfig, SftConfig
from mint_trl.data import Method, as_rows, to_dataset, tokenized_rows, vision_rows

if TYPE_CHECKING:
    from mint_core.context import RunContext


class TrlOptimizer(Optimizer):
    """Shared flow; subclasses name the TRL trainer and config and add their options."""

    method: ClassVar[Method]
    config_class: ClassVar[type]
    label: ClassVar[str]

    impls: ClassVar[tuple[str, ...]] = ("trl",)

    def __init__(self, config: Any):
        if getattr(config, "impl", "trl") not in self.impls:
            raise MintError(f"optimizer.impl={config.impl!r}: optimizer={self.method} takes impl="
                            + " or ".join(self.impls))
        self.config = config

    # -- subclass hooks ------------------------------------------------------------------------
    def trl_config(self, common: dict[str, Any]) -> Any:
        raise NotImplementedError

    def trainer_class(self, *, vision: bool) -> type:
        raise NotImplementedError

    def vision_collator(self, processor: Any, args: Any) -> Any:
        raise NotImplementedError

    def packed_optimizer(self) -> tuple[type | None, str | None]:
        """MINT's packed optimizer class for this method, or ``None`` and why it cannot take this configuration."""
        return None, "TRL's trainer only"

    # -- the flow ------------------------------------------------------------------------------
    def train(self, *, student: Student, examples: Sequence[PreferenceExample], output_dir: Path,
              ctx: RunContext, callbacks: Sequence[Any] = ()) -> TrainResult:
        """Train into ``output_dir`` (``adapter/``, ``checkpoints/``, ``metrics.jsonl``, ``training_curve.png``).

        ``impl=auto`` runs MINT's packed trainer where it computes the same loss (:meth:`packed_optimizer`),
        else TRL's. ``callbacks`` are extra ``TrainerCallback`` objects (tests use one to simulate a kill).
        """
        cfg = self.config
        rows = as_rows(examples, self.method)  # the same clear error for unusable examples, whichever trainer runs
        if cfg.impl != "trl":
            packed, problem = self.packed_optimizer()
            if cfg.impl == "mint" and packed is None:
                raise MintError(f"optimizer.impl=mint is not possible here: {problem}; use optimizer.impl=auto or trl")
            if packed is not None:
                from dataclasses import replace

                return packed(replace(cfg, impl="mint")).train(student=student, examples=examples,
                                                               output_dir=output_dir, ctx=ctx, callbacks=callbacks)
        return self.train_with_trl(student=student, rows=rows, output_dir=output_dir, ctx=ctx, callbacks=callbacks)

    def train_with_trl(self, *, student: Student, rows: list[dict[str, Any]], output_dir: Path,
                       ctx: RunContext, callbacks: Sequence[Any] = ()) -> TrainResult:
        """Train with TRL's trainer (``impl=trl``) on ``rows`` (:func:`mint_trl.data.as_rows`)."""
        cfg = self.config
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        init = find_init_adapter(cfg.init_adapter, output_dir=output_dir)
        sm, peft_config = self._load(student, init=init, ctx=ctx)
        if init is not None:
            ctx.log(f"{self.label}: starting from adapter {init}"
                    + ("" if self.method == "sft" else " (also the reference policy)"))
        vision = getattr(sm, "modality", "text") == "image"
        seed = resolve_seed(cfg, ctx)
        common = training_arguments_kwargs(cfg, output_dir=output_dir, seed=seed)
        args = self.trl_config(common)
        dataset, collator = self._dataset(sm, rows, args=args, vision=vision, seed=seed, ctx=ctx)
        ctx.log(f"{self.label}: {len(dataset)} training rows, {'vision' if vision else 'text'} student")

        trainer_cls = self.trainer_class(vision=vision)
        cbs = [ProgressCallback(ctx, description=self.label), MetricsLoggerCallback(output_dir / "metrics.jsonl"),
               *callbacks]
        trainer = trainer_cls(model=sm.model, args=args, train_dataset=dataset, processing_class=sm.processor,
                              data_collator=collator, callbacks=cbs, peft_config=peft_config)
        remove_printer_callbacks(trainer)
        result = train_with_resume(trainer, checkpoints=output_dir / "checkpoints", ctx=ctx, label=self.label)

        model = trainer.accelerator.unwrap_model(trainer.model)
        if "ref" in getattr(model, "peft_config", {}):
            model.delete_adapter("ref")  # the frozen reference copy is not part of the result

        def save() -> dict[str, float]:  # process 0 writes; the others wait, then read its figures
            atomic_save_adapter(model, output_dir / "adapter")
            plot_training_curve(output_dir / "metrics.jsonl", output_dir / "training_curve.png",
                                title=f"{self.label} β={cfg.beta}" if self.method != "sft" else self.label)
            metrics = summarize(result.metrics, output_dir / "metrics.jsonl", global_step=trainer.state.global_step)
            metrics["rows"] = float(len(dataset))
            write_json(output_dir / "train_summary.json", {**metrics, "init_adapter": str(init) if init else None})
            return metrics

        metrics = distributed.broadcast(distributed.on_main(save))
        return TrainResult(output_dir=output_dir, adapter_dir=output_dir / "adapter", metrics=metrics)

    @staticmethod
    def _load(student: Student, *, init: Path | None, ctx: RunContext) -> tuple[StudentModel, Any]:
        """The student model for TRL, and the ``peft_config`` TRL should wrap it with (``None``: already peft)."""
        sm = student.load(ctx=ctx, adapter_dir=init, trainable=True)
        if init is not None:
            return sm, None
        # A fresh adapter: keep the student's LoRA config (its lora_config(), else the one it just
        # attached) and strip the adapter, so TRL wraps the bare model itself and takes the
        # reference from the adapter-disabled base, not from a copy of a freshly initialised adapter.
        config = sm.lora_config() if callable(getattr(sm, "lora_config", None)) else sm.model.peft_config["default"]
        if hasattr(sm.model, "unload"):
            sm.model = sm.model.unload()
        return sm, config

    def _dataset(self, sm: StudentModel, rows: list[dict[str, Any]], *, args: Any, vision: bool, seed: int,
                 ctx: RunContext) -> tuple[Any, Any]:
        # KTO estimates its KL term from neighbours within a batch and so reads the data in order:
        # shuffle once here instead (seeded) so batches mix cases and desirable/undesirable rows.
        shuffle = seed if self.method == "kto" and self.config.shuffle else None
        if not vision:
            tokenized = tokenized_rows(sm, rows, self.method, max_length=int(self.config.max_length),
                                       max_prompt_length=int(self.config.max_prompt_length), ctx=ctx)
            return to_dataset(tokenized, shuffle_seed=shuffle), None
        from mint_trl.vision import MllamaCrossAttentionCollator, MllamaTextProcessor, is_mllama

        dataset = to_dataset(vision_rows(sm, rows, self.method, ctx), shuffle_seed=shuffle)
        if not is_mllama(getattr(sm.model, "get_base_model", lambda: sm.model)()):
            return dataset, self.vision_collator(sm.processor, args)
        collator = self.vision_collator(MllamaTextProcessor(sm.processor), args)
        image_token_id = int(sm.model.config.image_token_index)
        return dataset, MllamaCrossAttentionCollator(collator=collator, image_token_id=image_token_id)


# -- DPO -------------------------------------------------------------------------------------------
class DpoOptimizer(TrlOptimizer):
    method = "dpo"
    config_class = DpoConfig
    label = "DPO"
    default_builder = "topk"
    impls = ("auto", "mint", "trl")

    def packed_optimizer(self) -> tuple[type | None, str | None]:
        if self.loss_types() != ["sigmoid"]:
            return None, f"loss_type={self.config.loss_type!r} is TRL's only"
        from mint_engine.dpo import PackedDpoOptimizer

        return PackedDpoOptimizer, None

    def loss_types(self) -> list[str]:
        """``loss_type`` as TRL's list (comma-separated names; empty means sigmoid)."""
        return [name.strip() for name in str(self.config.loss_type).split(",") if name.strip()] or ["sigmoid"]

    def trl_config(self, common: dict[str, Any]) -> Any:
        from trl import DPOConfig

        cfg = self.config
        return DPOConfig(**common, beta=float(cfg.beta), loss_type=self.loss_types(),
                         label_smoothing=float(cfg.label_smoothing), max_length=int(cfg.max_length),
                         truncation_mode="keep_start", disable_dropout=True)

    def trainer_class(self, *, vision: bool) -> type:
        from trl import DPOTrainer

        class MintDPOTrainer(DPOTrainer):
            """DPOTrainer taking rows the student already tokenized (``prompt_ids``/``chosen_ids``/``rejected_ids``)."""

            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                if "prompt_ids" in dataset.column_names:
                    return dataset
                return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

        return MintDPOTrainer

    def vision_collator(self, processor: Any, args: Any) -> Any:
        from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

        return DataCollatorForVisionPreference(processor=processor, max_length=args.max_length)


# -- KTO -------------------------------------------------------------------------------------------
class KtoOptimizer(TrlOptimizer):
    method = "kto"
    config_class = KtoConfig
    label = "KTO"
    default_builder = "kto"
    impls = ("auto", "mint", "trl")

    def packed_optimizer(self) -> tuple[type | None, str | None]:
        if self.config.loss_type != "kto":
            return None, f"loss_type={self.config.loss_type!r} is TRL's only"
        from mint_engine.kto import PackedKtoOptimizer

        return PackedKtoOptimizer, None

    def trl_config(self, common: dict[str, Any]) -> Any:
        from trl import KTOConfig

        cfg = self.config
        if cfg.loss_type == "kto" and int(cfg.batch_size) < 2:
            raise MintError("optimizer=kto with loss_type=kto estimates its KL reference point from the other "
                            "answers of a batch: set optimizer.batch_size >= 2 (or loss_type=apo_zero_unpaired)")
        # KL completions pair each prompt with its batch neighbour's answer: read batches in order.
        sampling = "sequential" if cfg.loss_type == "kto" else "random"
        return KTOConfig(**{**common, "train_sampling_strategy": sampling}, beta=float(cfg.beta),
                         loss_type=cfg.loss_type, desirable_weight=float(cfg.desirable_weight),
                         undesirable_weight=float(cfg.undesirable_weight), max_length=int(cfg.max_length),
                         disable_dropout=True)

    def trainer_class(self, *, vision: bool) -> type:
        from trl import KTOTrainer

        class MintKTOTrainer(KTOTrainer):
            """KTOTrainer taking rows the student already tokenized (``prompt_ids``/``completion_ids``/``label``)."""

            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                if "prompt_ids" not in dataset.column_names:
                    return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
                if self.calculate_KL:
                    # TRL's own step: each row's KL answer is its batch predecessor's (rotation by one),
                    # within the global batch (all processes' rows of a step), as MINT's packed KTO does:
                    # the pairing then does not depend on how many processes share the batch.
                    def add_kl(batch):
                        batch["KL_completion_ids"] = [batch["completion_ids"][-1]] + batch["completion_ids"][:-1]
                        return batch

                    dataset = dataset.map(add_kl, batched=True,
                                          batch_size=args.per_device_train_batch_size * max(1, args.world_size))
                return dataset

        if vision:
            from mint_trl.vision import kto_trainer_class

            return kto_trainer_class(MintKTOTrainer)
        return MintKTOTrainer

    def vision_collator(self, processor: Any, args: Any) -> Any:
        from trl.trainer.kto_trainer import DataCollatorForVisionUnpairedPreference

        return DataCollatorForVisionUnpairedPreference(processor=processor, max_length=args.max_length,
                                                       calculate_kl=self.config.loss_type == "kto")


# -- SFT -------------------------------------------------------------------------------------------
class SftOptimizer(TrlOptimizer):
    method = "sft"
    config_class = SftConfig
    label = "SFT"
    default_builder = "sft"
    impls = ("auto", "mint", "trl")

    def packed_optimizer(self) -> tuple[type | None, str | None]:
        from mint_engine.sft import PackedSftOptimizer

        return PackedSftOptimizer, None

    def trl_config(self, common: dict[str, Any]) -> Any:
        from trl import SFTConfig

        # Loss on the answer only (the prompt is the case, not something to imitate); no packing so
        # every row is one case, as in evaluation.
        return SFTConfig(**common, max_length=int(self.config.max_length), completion_only_loss=True,
                         packing=False, padding_free=False, dataset_kwargs={})

    def trainer_class(self, *, vision: bool) -> type:
        from trl import SFTTrainer

        return SFTTrainer

    def vision_collator(self, processor: Any, args: Any) -> Any:
        from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

        return DataCollatorForVisionLanguageModeling(processor=processor, max_length=args.max_length,
                                                     completion_only_loss=True)


OPTIMIZERS: dict[str, type[TrlOptimizer]] = {"dpo": DpoOptimizer, "kto": KtoOptimizer, "sft": SftOptimizer}
