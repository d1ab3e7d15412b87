"""MINT's tissue-type task: H&E tiles (synthetic, an image folder, or PanNuke) and their tissue types.

Light on purpose: the task class and numpy/PIL work load only when a run uses the task.
"""

from __future__ import annotations

from mint_core.hookspecs import hookimpl
from mint_tissue.config import TissueConfig


@hookimpl
def mint_register_tasks(register) -> None:
    register("tissue", _make_tissue, config=TissueConfig,
             description="Tissue type from an H&E tile (synthetic, image folder or PanNuke); student sees the image",
             pairs_with={"teacher": "pathclip", "student": "llama-vision"},
             # 6 epochs of the synthetic set's 168 pairs at lr 2e-3: the best of the validation sweep in
             # the README's tissue section (4 epochs or lr 1e-3 taught the image less). The frozen-bottom
             # cache makes an epoch ~45 s on 2 CPU cores; LoRA stays where the student puts it.
             # Answers of 5 synthetic tissue names are 25 tokens: 48 new tokens leave room, while the base
             # model, which rambles to the cap, took 138 s of the demo's evaluation at 160.
             # mint compare: DPO (from SFT) and KTO at their own rates, the best of benchmarks/method_lr_sweep.py
             # on the validation tiles (DPO 1e-5 of 1e-5 .. 5e-4, KTO 5e-5 of 5e-5 .. 1e-3; at 2e-3 neither wrote
             # a list at all); README tissue section.
             demo={"optimizer": {"max_steps": -1, "epochs": 6, "learning_rate": 2e-3},
                   "student": {"lora_layers": "auto"}, "eval": {"max_new_tokens": 48},
                   "compare": {"learning_rates": "dpo=1e-5,kto=5e-5"}})


def _make_tissue(config: TissueConfig):
    from mint_tissue.task import TissueTask

    return TissueTask(config)


__all__ = ["TissueConfig"]
