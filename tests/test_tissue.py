"""The tissue task: synthetic tiles, the image-folder and PanNuke loaders, splits, prompts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

import mint_tissue
from mint_core.context import RunContext
from mint_core.registry import MintError, Registry
from mint_core.types import Case
from mint_tissue import TissueConfig
from mint_tissue.labels import PANNUKE_LABELS, clean_class_name, label_for_class
from mint_tissue.splits import split_counts
from mint_tissue.synthetic import STYLES, hematoxylin_fraction, render_tile
from mint_tissue.task import TissueTask, caption_mentions_label


def make_ctx(tmp_path: Path, seed: int = 0) -> RunContext:
    return RunContext(run_dir=tmp_path / "run", seed=seed, console=Console(quiet=True))


# -- synthetic tiles -------------------------------------------------------------------------
def test_synthetic_tiles_are_deterministic_by_seed():
    a = render_tile("colon", seed=3, index=5, size=48)
    b = render_tile("colon", seed=3, index=5, size=48)
    c = render_tile("colon", seed=4, index=5, size=48)
    d = render_tile("colon", seed=3, index=6, size=48)
    assert a.shape == (48, 48, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, d)


def test_synthetic_classes_differ_in_nucleus_density():
    dense = [hematoxylin_fraction(render_tile("ovarian", seed=0, index=i, size=48)) for i in range(8)]
    sparse = [hematoxylin_fraction(render_tile("lung", seed=0, index=i, size=48)) for i in range(8)]
    assert np.mean(dense) > 2.5 * np.mean(sparse)
    # Significant given the per-tile variation (Welch's t), not just a lucky mean.
    welch_t = (np.mean(dense) - np.mean(sparse)) / np.sqrt(np.var(dense, ddof=1) / 8 + np.var(sparse, ddof=1) / 8)
    assert welch_t > 3


def test_every_pannuke_type_has_a_style():
    assert len(PANNUKE_LABELS) == 19
    assert {label.id for label in PANNUKE_LABELS} == set(STYLES)
    assert all(label.description for label in PANNUKE_LABELS)


# -- labels and splits -----------------------------------------------------------------------
@pytest.mark.parametrize("raw, expected", [("01_TUMOR", "tumor"), ("08_EMPTY", "empty"), ("Bile-duct", "bile duct"),
                                           ("HeadNeck", "head neck"), ("Adrenal_gland", "adrenal gland")])
def test_clean_class_name(raw, expected):
    assert clean_class_name(raw) == expected


def test_label_for_class_maps_pannuke_spellings_and_keeps_unknown_classes():
    assert label_for_class("HeadNeck").id == "head_and_neck"
    assert label_for_class("Bile-duct").name == "bile duct"
    assert label_for_class("04_LYMPHO").id == "lympho" and "lymphocytes" in label_for_class("04_LYMPHO").synonyms
    novel = label_for_class("12_Weird Tissue")
    assert (novel.id, novel.name) == ("weird_tissue", "weird tissue")


@pytest.mark.parametrize("n, expected", [(1, (1, 0, 0)), (2, (1, 0, 1)), (3, (1, 1, 1)), (10, (7, 1, 2)),
                                         (30, (21, 3, 6))])
def test_split_counts_keep_every_split_for_small_classes(n, expected):
    assert split_counts(n, test_fraction=0.2, val_fraction=0.1) == expected


# -- the task on synthetic data --------------------------------------------------------------
def test_synthetic_task_loads_stratified_cases_with_captions(tmp_path):
    config = TissueConfig(classes="colon,liver,lung", tiles_per_class=10, image_size=32)
    data = TissueTask(config).load(ctx=make_ctx(tmp_path))
    assert data.labels.ids == ["colon", "liver", "lung"]
    assert data.student_modality == "image" and len(data.cases) == 30
    for label_id in data.labels.ids:
        splits = [c.split for c in data.cases if c.label_id == label_id]
        assert (splits.count("train"), splits.count("val"), splits.count("test")) == (7, 1, 2)
    for case in data.cases:
        path = tmp_path / "run" / case.image
        assert not Path(case.image).is_absolute() and path.exists()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (32, 32) and image.mode == "RGB"
        assert caption_mentions_label(case, data.labels)
    assert len({c.text for c in data.cases}) > 3  # captions vary
    again = TissueTask(config).load(ctx=make_ctx(tmp_path / "other"))
    assert [(c.id, c.split, c.text) for c in again.cases] == [(c.id, c.split, c.text) for c in data.cases]
    first = data.cases[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "run" / first.image)),
                          np.asarray(Image.open(tmp_path / "other" / "run" / first.image)))


def test_synthetic_default_is_eight_classes_and_prompt_asks_for_n(tmp_path):
    task = TissueTask(TissueConfig(tiles_per_class=1, image_size=16, test_fraction=0, val_fraction=0))
    data = task.load(ctx=make_ctx(tmp_path))
    assert len(data.labels) == 8 and task.default_n_answers == 5 and task.label_noun == "tissue types"
    prompt = task.prompt(case=data.cases[0], n_answers=3)
    assert prompt.image == data.cases[0].image
    names = ", ".join(label.name for label in data.labels)
    assert prompt.text == (f"Choose from these tissue types: {names}. Which tissue type is shown in this H&E image? "
                           "Answer with the header 'Most likely tissue types:' followed by a numbered list of the 3 "
                           "most likely tissue types, one per line.")
    assert "colon" in names and "thyroid" in names
    saved = Case.from_dict(json.loads(json.dumps(data.cases[0].to_dict())))  # as cases.jsonl stores it
    assert task.prompt(case=saved, n_answers=3) == prompt


def test_unknown_class_and_source_are_clear_errors(tmp_path):
    with pytest.raises(MintError, match="task.classes"):
        TissueTask(TissueConfig(classes="colon,spleen", tiles_per_class=1)).load(ctx=make_ctx(tmp_path))
    with pytest.raises(MintError, match="task.source"):
        TissueTask(TissueConfig(source="tcga")).load(ctx=make_ctx(tmp_path))
    with pytest.raises(MintError, match="task.path"):
        TissueTask(TissueConfig(source="imagefolder")).load(ctx=make_ctx(tmp_path))


# -- image folder ------------------------------------------------------------------------------
def _tile(colour: tuple[int, int, int], size: int = 20) -> Image.Image:
    array = np.zeros((size, size, 3), np.uint8) + np.array(colour, np.uint8)
    return Image.fromarray(array, "RGB")


def write_imagefolder(root: Path) -> Path:
    (root / "01_TUMOR").mkdir(parents=True)
    (root / "02_STROMA").mkdir()
    for i in range(3):
        _tile((120 + i, 60, 140)).save(root / "01_TUMOR" / f"t{i}.png")
    _tile((200, 100, 150)).save(root / "01_TUMOR" / "t3.tif")  # TIFF, as in Kather's data
    for i in range(3):
        _tile((230, 160, 190 + i)).save(root / "02_STROMA" / f"s{i}.tiff")
    (root / "02_STROMA" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (root / "02_STROMA" / "notes.txt").write_text("not an image")
    return root


def test_imagefolder_loads_converts_and_skips_corrupt_files(tmp_path):
    root = write_imagefolder(tmp_path / "tiles")
    data = TissueTask(TissueConfig(source="imagefolder", path=str(root))).load(ctx=make_ctx(tmp_path))
    assert data.labels.ids == ["tumor", "stroma"]
    assert len(data.cases) == 7
    assert data.info["skipped"] == 1 and "broken.png" in data.info["skipped_files"][0]
    assert data.info["ignored_non_images"] == 1
    tiff_case = next(c for c in data.cases if c.meta["file"].endswith("t3.tif"))
    with Image.open(tmp_path / "run" / tiff_case.image) as image:
        assert image.format == "PNG" and image.getpixel((0, 0)) == (200, 100, 150)
    assert {c.split for c in data.cases if c.label_id == "stroma"} == {"train", "val", "test"}


def test_imagefolder_in_place_references_absolute_paths(tmp_path):
    root = write_imagefolder(tmp_path / "tiles")
    config = TissueConfig(source="imagefolder", path=str(root), copy_images=False, classes="stroma")
    data = TissueTask(config).load(ctx=make_ctx(tmp_path))
    assert data.labels.ids == ["stroma"] and len(data.cases) == 3
    assert all(Path(c.image).is_absolute() and Path(c.image).exists() for c in data.cases)
    assert not (tmp_path / "run" / "images").exists() or not any((tmp_path / "run" / "images").rglob("*.png"))


def test_imagefolder_without_class_folders_is_an_error(tmp_path):
    (tmp_path / "flat").mkdir()
    _tile((1, 2, 3)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(MintError, match="no class sub-folders"):
        TissueTask(TissueConfig(source="imagefolder", path=str(tmp_path / "flat"))).load(ctx=make_ctx(tmp_path))


# -- PanNuke -----------------------------------------------------------------------------------
def write_pannuke_fold(folder: Path, types: np.ndarray) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (len(types), 16, 16, 3))  # PanNuke stores float64 0-255
    np.save(folder / "images.npy", images)
    np.save(folder / "types.npy", types, allow_pickle=True)


def test_pannuke_folds_load_with_canonical_tissue_names(tmp_path):
    root = tmp_path / "pannuke"
    write_pannuke_fold(root / "Fold 1" / "images" / "fold1",
                       np.array(["Colon", "HeadNeck", "Colon", "Bile-duct", "Colon"]))
    write_pannuke_fold(root / "Fold 2" / "images" / "fold2", np.array(["HeadNeck", "Bile-duct", "Colon"]))
    data = TissueTask(TissueConfig(source="pannuke", path=str(root))).load(ctx=make_ctx(tmp_path))
    assert sorted(data.labels.ids) == ["bile_duct", "colon", "head_and_neck"]
    assert data.labels["head_and_neck"].name == "head and neck"
    assert len(data.cases) == 8 and {c.meta["fold"] for c in data.cases} == {"Fold 1/images/fold1",
                                                                            "Fold 2/images/fold2"}
    case = next(c for c in data.cases if c.meta["fold"].startswith("Fold 2") and c.meta["index"] == 2)
    assert case.label_id == "colon"
    expected = np.load(root / "Fold 2" / "images" / "fold2" / "images.npy")[2].astype(np.uint8)
    with Image.open(tmp_path / "run" / case.image) as image:
        assert np.array_equal(np.asarray(image), expected)
    # A single fold folder works directly too.
    one = TissueTask(TissueConfig(source="pannuke", path=str(root / "Fold 2" / "images" / "fold2")))
    assert len(one.load(ctx=make_ctx(tmp_path / "one")).cases) == 3


def test_pannuke_types_needing_pickle_are_refused_unless_allowed(tmp_path):
    root = tmp_path / "fold"
    write_pannuke_fold(root, np.array(["Colon", "Liver", "Colon"], dtype=object))
    with pytest.raises(MintError, match="allow_pickle=true"):
        TissueTask(TissueConfig(source="pannuke", path=str(root))).load(ctx=make_ctx(tmp_path))
    allowed = TissueTask(TissueConfig(source="pannuke", path=str(root), allow_pickle=True))
    assert sorted(allowed.load(ctx=make_ctx(tmp_path)).labels.ids) == ["colon", "liver"]


def test_pannuke_missing_files_are_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MintError, match="images.npy and types.npy"):
        TissueTask(TissueConfig(source="pannuke", path=str(tmp_path / "empty"))).load(ctx=make_ctx(tmp_path))


# -- registration ------------------------------------------------------------------------------
def test_plugin_registers_the_tissue_task():
    registry = Registry()
    info = registry.register_plugin(mint_tissue, name="tissue")
    assert info.status == "ok", info.error
    spec = registry.get("task", "tissue")
    assert spec.config is TissueConfig and spec.pairs_with["teacher"] == "pathclip"
    task = spec.create()
    assert isinstance(task, TissueTask) and task.student_modality == "image"
