"""Options of the ``tissue`` task. Light: dataclasses only."""

from __future__ import annotations

from dataclasses import dataclass, field

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
