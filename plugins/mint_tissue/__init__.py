"""MINT's tissue-type task: H&E tiles (synthetic, an image folder, or PanNuke) and their tissue types.

Light on purpose: the task class and numpy/PIL work load only when a run uses the task.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mint_core.hookspecs import hookimpl


@dataclass
class TissueConfig:
    source: str = field(default="synthetic", metadata={
        "help": "where tiles come from: 'synthetic' (procedural H&E-like tiles, offline), 'imagefolder' "
                "(task.path/<class>/<image>) or 'pannuke' (task.path holds images.npy + types.npy, or 'Fold N/' folders)"})
    path: str = field(default="", metadata={"help": "data folder for source=imagefolder or pannuke"})
    n_classes: int = field(default=0, metadata={
        "help": "0 = the source's default: 8 well-known, distinct types for synthetic (breast, colon, kidney, liver, "
                "lung, prostate, skin, thyroid; fast on CPU), every class found for real data. "
                "N > 0: the first N PanNuke types for synthetic (19 = all), the N largest classes for real data"})
    classes: str = field(default="", metadata={
        "help": "comma-separated tissue ids or names to keep (e.g. 'colon,liver,lung'); overrides n_classes"})
    tiles_per_class: int = field(default=30, metadata={"help": "synthetic: tiles drawn per class"})
    image_size: int = field(default=64, metadata={"help": "synthetic: tile side in pixels"})
    difficulty: float = field(default=1.0, metadata={
        "help": "synthetic: per-tile variation (stain, density, size); 0 = every tile of a type alike"})
    max_per_class: int = field(default=0, metadata={"help": "real data: at most this many tiles per class, seeded (0 = all)"})
    resize: int = field(default=0, metadata={"help": "real data: resize copied tiles to this square side (0 = keep)"})
    copy_images: bool = field(default=True, metadata={
        "help": "imagefolder: convert tiles to RGB PNG copies under the run's images/ (false: reference in place)"})
    allow_pickle: bool = field(default=False, metadata={
        "help": "pannuke: allow a types.npy that needs pickle (unsafe for untrusted files)"})
    test_fraction: float = field(default=0.2, metadata={"help": "share of each class held out for test"})
    val_fraction: float = field(default=0.1, metadata={"help": "share of each class held out for validation"})


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
