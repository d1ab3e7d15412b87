"""Loaders for real tile datasets: an image folder (one folder per class) and PanNuke folds.

Both return labels and cases with ``split`` unset; unreadable images are skipped and counted,
never fatal. Tiles are written as RGB PNG copies under the run's ``images/`` (so the run folder
is self-contained and every consumer sees plain 8-bit RGB whatever the source format: 16-bit or
CMYK TIFFs, float arrays), or, for an image folder with ``copy=False``, referenced in place.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from rich.markup import escape

from mint_core.io import atomic_path, safe_file_name
from mint_core.registry import MintError
from mint_core.types import Case, Label
from mint_tissue.labels import label_for_class

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif"})

Log = Callable[[str], None]


@dataclass
class LoadStats:
    """What a loader saw: images kept, and the files it skipped with why."""

    kept: int = 0
    skipped: list[str] = field(default_factory=list)
    ignored: int = 0  # files without an image suffix (README, Thumbs.db)
    empty_folders: list[str] = field(default_factory=list)  # class folders without one image

    def to_dict(self) -> dict[str, object]:
        return {"kept": self.kept, "skipped": len(self.skipped), "skipped_files": self.skipped[:50],
                "ignored_non_images": self.ignored, "empty_class_folders": self.empty_folders}


def save_png(image: Image.Image, target: Path, resize: int = 0) -> None:
    """Write ``image`` as an RGB PNG atomically, square-resized to ``resize`` when > 0."""
    image = image.convert("RGB")
    if resize > 0 and image.size != (resize, resize):
        image = image.resize((resize, resize), Image.BICUBIC)
    with atomic_path(target) as tmp:
        image.save(tmp, format="PNG")


def _safe_name(text: str) -> str:
    return safe_file_name(text, default="tile")


def _tile_names(images: list[Path], class_dir: Path) -> dict[Path, str]:
    """A case name per image, unique within its class folder: the path without its suffix
    (``sub/img001``), or with it when two images share a stem (``dup.png`` and ``dup.jpg`` become
    ``dup_png`` and ``dup_jpg``, two cases with two stored tiles, not one id for both)."""
    stems = [_safe_name(str(p.relative_to(class_dir).with_suffix(""))) for p in images]
    clashes = {stem for stem, n in Counter(stems).items() if n > 1}
    return {p: (_safe_name(str(p.relative_to(class_dir)).replace(".", "_")) if stem in clashes else stem)
            for p, stem in zip(images, stems)}


def _subsample(items: list, limit: int, seed: int, salt: int) -> list:
    """At most ``limit`` items (0 = all), chosen by ``seed``, in their original order."""
    if limit <= 0 or len(items) <= limit:
        return items
    keep = np.random.default_rng([seed & 0xFFFFFFFF, salt, 3]).choice(len(items), size=limit, replace=False)
    return [items[i] for i in sorted(keep)]


def load_imagefolder(root: Path, *, run_dir: Path, images_dir: Path, copy: bool = True, resize: int = 0,
                     max_per_class: int = 0, seed: int = 0, log: Log = print) -> tuple[list[Label], list[Case], LoadStats]:
    """Tiles from ``root/<class>/<image>``: class names cleaned (``01_TUMOR`` -> ``tumor``)."""
    if not root.is_dir():
        raise MintError(f"task.path={str(root)!r} is not a folder: task.source=imagefolder needs a folder "
                        "with one sub-folder of images per class")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise MintError(f"task.path={str(root)!r} has no class sub-folders (expected e.g. {root}/01_TUMOR/*.tif)")
    stats = LoadStats()
    labels: dict[str, Label] = {}
    cases: list[Case] = []
    seen_ids: set[str] = set()
    for salt, class_dir in enumerate(class_dirs):
        label = label_for_class(class_dir.name)
        if label.id in labels:
            log(f"[yellow]tissue: folder {escape(repr(class_dir.name))} maps to the same label as another folder "
                f"({label.id!r}); merging them[/yellow]")
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        stats.ignored += len(files) - len(images)
        if not images:
            stats.empty_folders.append(class_dir.name)
            continue
        names = _tile_names(images, class_dir)
        for path in _subsample(images, max_per_class, seed, salt):
            case_id = f"{label.id}/{names[path]}"
            if case_id in seen_ids:  # two folders merged into one label, with the same file name
                case_id = f"{label.id}/{_safe_name(class_dir.name)}_{names[path]}"
            seen_ids.add(case_id)
            try:
                with Image.open(path) as image:
                    image.load()  # decode fully: a truncated file fails here, not in the teacher
                    if copy:
                        target = images_dir / f"{case_id}.png"
                        save_png(image, target, resize)
                        stored = str(target.relative_to(run_dir))
                    else:
                        stored = str(path.resolve())
            except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
                stats.skipped.append(f"{path}: {type(exc).__name__}: {exc}")
                continue
            labels.setdefault(label.id, label)
            cases.append(Case(id=case_id, label_ids=(label.id,), image=stored,
                              meta={"source": "imagefolder", "file": str(path), "class_folder": class_dir.name}))
            stats.kept += 1
    if stats.empty_folders:
        log(f"[yellow]tissue: {len(stats.empty_folders)} class folder(s) under {escape(str(root))} hold no image "
            f"({', '.join(sorted(IMAGE_SUFFIXES))}) and give no class: {escape(', '.join(stats.empty_folders))}[/yellow]")
    if stats.skipped:
        log(f"[yellow]tissue: skipped {len(stats.skipped)} unreadable image(s) under {escape(str(root))}; first: "
            f"{escape(stats.skipped[0])}[/yellow]")
    return list(labels.values()), cases, stats


def find_pannuke_folds(root: Path) -> list[Path]:
    """Folders holding both ``images.npy`` and ``types.npy``: ``root`` itself or any folder below it."""
    if (root / "images.npy").is_file() and (root / "types.npy").is_file():
        return [root]
    return sorted(p.parent for p in root.rglob("types.npy") if (p.parent / "images.npy").is_file())


def _load_types(path: Path, allow_pickle: bool, log: Log) -> np.ndarray:
    try:
        types = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise MintError(f"{path}: not a readable .npy file ({exc})") from exc
        if not allow_pickle:
            raise MintError(
                f"{path} is an object array that needs pickle to load, and unpickling a file can run "
                "arbitrary code. Convert it to a string array once (np.save(path, types.astype(str))) or, "
                "if you trust the file, set task.allow_pickle=true.") from exc
        log(f"[yellow]tissue: loading {path} with pickle (task.allow_pickle=true)[/yellow]")
        types = np.load(path, allow_pickle=True)
    return np.asarray(types).reshape(-1)


def load_pannuke(root: Path, *, run_dir: Path, images_dir: Path, allow_pickle: bool = False, resize: int = 0,
                 max_per_class: int = 0, seed: int = 0, log: Log = print) -> tuple[list[Label], list[Case], LoadStats]:
    """Tiles from PanNuke folds (``images.npy`` (N, H, W, 3) and ``types.npy`` (N,) tissue names)."""
    if not root.is_dir():
        raise MintError(f"task.path={str(root)!r} is not a folder: task.source=pannuke needs a PanNuke fold "
                        "folder (images.npy + types.npy) or a parent of 'Fold N/images/foldN/'")
    folds = find_pannuke_folds(root)
    if not folds:
        raise MintError(f"No PanNuke fold under {root}: expected images.npy and types.npy together, "
                        "e.g. 'Fold 1/images/fold1/images.npy'")
    stats = LoadStats()
    labels: dict[str, Label] = {}
    cases: list[Case] = []
    for fold_index, fold in enumerate(folds):
        # Memory-mapped: PanNuke's images.npy is float64 and several GB per fold.
        try:
            images = np.load(fold / "images.npy", mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise MintError(f"{fold / 'images.npy'}: not a numeric .npy array ({exc})") from exc
        types = _load_types(fold / "types.npy", allow_pickle, log)
        if images.ndim != 4 or images.shape[-1] not in (3, 4) or len(images) != len(types):
            raise MintError(f"{fold}: images.npy has shape {images.shape} and types.npy {len(types)} entries; "
                            "expected (N, H, W, 3) images and N types")
        fold_name = fold.relative_to(root).as_posix() if fold != root else fold.name
        by_type: dict[str, list[int]] = defaultdict(list)
        for i, name in enumerate(types):
            by_type[str(name)].append(i)
        for salt, type_name in enumerate(sorted(by_type)):
            label = label_for_class(type_name)
            labels.setdefault(label.id, label)
            for i in _subsample(by_type[type_name], max_per_class, seed, fold_index * 1000 + salt):
                case_id = f"pannuke-{_safe_name(fold_name)}-{i}"
                try:
                    array = np.asarray(images[i])[..., :3]
                    if not np.isfinite(array).all():
                        raise ValueError("non-finite pixel values")
                    if array.dtype != np.uint8:  # PanNuke stores 0-255 as float64
                        scale = 255.0 if float(array.max(initial=0)) <= 1.0 else 1.0
                        array = np.clip(array * scale, 0, 255).astype(np.uint8)
                    target = images_dir / label.id / f"{case_id}.png"
                    save_png(Image.fromarray(array, "RGB"), target, resize)
                except Exception as exc:  # noqa: BLE001
                    stats.skipped.append(f"{fold}/images.npy[{i}]: {type(exc).__name__}: {exc}")
                    continue
                cases.append(Case(id=case_id, label_ids=(label.id,), image=str(target.relative_to(run_dir)),
                                  meta={"source": "pannuke", "fold": fold_name, "index": i, "type": str(type_name)}))
                stats.kept += 1
    if stats.skipped:
        log(f"[yellow]tissue: skipped {len(stats.skipped)} unreadable PanNuke tile(s); first: "
            f"{escape(stats.skipped[0])}[/yellow]")
    return list(labels.values()), cases, stats
