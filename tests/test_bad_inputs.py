"""A corpus of bad inputs, each run through the ``mint`` CLI as a user would run it.

Every case writes its inputs (phenopacket files and zips, image folders, predictions files, config
files and overrides, damaged run-directory artifacts) and asserts one outcome class:

- ``error``: the command stops with ``Error: ...`` naming the file, field or flag at fault;
- ``skip``: the command succeeds and its output names the skipped (or ignored) file and says why;
- ``ok``: messy but usable input, accepted, and the written artifacts are right (``check``).

For every case no traceback escapes: the CLI exits with a message or succeeds. No model is
trained or loaded: inputs go through ``mint validate``, ``mint teach`` with the ``predictions``
teacher (task loading, no fitting), and ``mint prefs`` (which reads every artifact of ``teach``).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from click.testing import Result
from PIL import Image

from mint_core.io import read_jsonl
from mint_core.testing import invoke

MARFAN = ("OMIM:154700", "Marfan syndrome")
NEW = ("OMIM:999999", "Made-up syndrome")
GOOD_IDS = [f"marfan_{i}" for i in range(3)] + [f"new_{i}" for i in range(3)]


@dataclass
class Bad:
    """One corpus entry: ``make(tmp)`` writes its inputs and returns the CLI arguments."""

    id: str
    make: Callable[[Path], list[str]]
    outcome: str  # error | skip | ok
    needles: tuple[str, ...] = ()  # the output names these (whitespace-insensitive)
    check: Callable[[Path, Result], None] | None = None
    exit_code: int | None = None  # for errors: 2 (MintError, click usage) unless said otherwise
    extra: dict = field(default_factory=dict)


# -- phenopackets ----------------------------------------------------------------------------
def packet(pid: str, disease=MARFAN, *, observed=(("HP:0001166", "Arachnodactyly"), ("HP:0001083", "Ectopia lentis"),
                                              ("HP:0000316", "Hypertelorism")),
           excluded=(("HP:0001250", "Seizure"),), age: str | None = "P7Y", sex="FEMALE") -> dict:
    features = [{"type": {"id": i, "label": label}} for i, label in observed]
    features += [{"type": {"id": i, "label": label}, "excluded": True} for i, label in excluded]
    subject: dict = {"id": pid, "sex": sex}
    if age is not None:
        subject["timeAtLastEncounter"] = {"age": {"iso8601duration": age}}
    return {"id": pid, "subject": subject, "phenotypicFeatures": features,
            "interpretations": [{"id": f"{pid}-i", "diagnosis": {"disease": {"id": disease[0], "label": disease[1]}}}]}


def good_files() -> dict[str, bytes]:
    files = {f"FBN1/phenopackets/marfan_{i}.json": packet(f"marfan_{i}", age=f"P{7 + i}Y") for i in range(3)}
    files.update({f"NEW1/phenopackets/new_{i}.json": packet(
        f"new_{i}", NEW, observed=[("HP:0001263", "Global developmental delay"), ("HP:0001252", "Hypotonia")],
        age=None, sex="MALE") for i in range(3)})
    return {name: json.dumps(data).encode() for name, data in files.items()}


def write_folder(root: Path, extra: dict[str, bytes]) -> Path:
    for name, data in {**good_files(), **extra}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def write_zip(path: Path, extra: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in {**good_files(), **extra}.items():
            archive.writestr(f"0.1.25/{name}", data)
    return path


def empty_predictions(tmp: Path) -> Path:
    path = tmp / "none.jsonl"
    path.write_text("\n", encoding="utf-8")
    return path


def teach_args(tmp: Path, task_path: Path | str, *more: str) -> list[str]:
    return ["teach", "--run-dir", str(tmp / "run"), "--teacher", "predictions", "task.source=phenopackets",
            f"task.path={task_path}", "task.min_cases_per_disease=2", f"teacher.path={empty_predictions(tmp)}",
            "teacher.allow_missing=true", *more]


def cases_of(tmp: Path) -> list[dict]:
    return read_jsonl(tmp / "run" / "cases.jsonl")


def js(data) -> bytes:
    return json.dumps(data).encode()


def deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


#: A file that cannot be a case: (member name, bytes, reason the log gives).
SKIPPED_FILES = {
    "cut_off": (b'{"id": "x", "subject": ', "malformed"),
    "empty_file": (b"", "malformed"),
    "whitespace_only": (b"  \n\t ", "malformed"),
    "not_utf8": (b'{"id": "\xff\xfe\xfa"}', "malformed"),
    "binary_garbage": (bytes(range(256)) * 4, "malformed"),
    "utf8_bom": (b"\xef\xbb\xbf" + js(packet("bom")), "malformed"),
    "top_level_list": (js([packet("in_a_list")]), "malformed"),
    "top_level_string": (js("phenopacket"), "malformed"),
    "top_level_null": (b"null", "malformed"),
    "top_level_number": (b"42", "malformed"),
    "no_id": (js({k: v for k, v in packet("x").items() if k != "id"}), "malformed"),
    "numeric_id": (js({**packet("x"), "id": 7}), "malformed"),
    "blank_id": (js({**packet("x"), "id": "   "}), "malformed"),
    "features_not_list": (js({**packet("x"), "phenotypicFeatures": {"type": "HP:0001166"}}), "malformed"),
    "feature_not_object": (js({**packet("x"), "phenotypicFeatures": ["HP:0001166"]}), "malformed"),
    "feature_without_id": (js({**packet("x"), "phenotypicFeatures": [{"type": {"label": "Arachnodactyly"}}]}),
                           "malformed"),
    "subject_not_object": (js({**packet("x"), "subject": "FEMALE"}), "malformed"),
    "interpretations_not_list": (js({**packet("x"), "interpretations": {"diagnosis": {}}}), "malformed"),
    "interpretation_not_object": (js({**packet("x"), "interpretations": ["OMIM:154700"]}), "malformed"),
    "diagnosis_not_object": (js({**packet("x"), "interpretations": [{"diagnosis": "OMIM:154700"}]}), "malformed"),
    "disease_without_id": (js({**packet("x"), "interpretations": [{"diagnosis": {"disease": {"label": "MFS"}}}]}),
                           "malformed"),
    "diseases_not_list": (js({**{k: v for k, v in packet("x").items() if k != "interpretations"},
                              "diseases": "OMIM:154700"}), "malformed"),
    "nested_200000_deep": (deep(200_000), "malformed"),
    "nested_deep_inside": (b'{"id": "x", "subject": ' + deep(100_000) + b"}", "malformed"),
    "no_diagnosis": (js({k: v for k, v in packet("x").items() if k != "interpretations"}),
                     "without exactly one diagnosis"),
    "two_diagnoses": (js({**packet("x"), "interpretations": packet("x")["interpretations"]
                          + packet("y", NEW)["interpretations"]}), "without exactly one diagnosis"),
    "no_features": (js({**packet("x"), "phenotypicFeatures": []}), "without observed phenotypes"),
    "only_excluded": (js(packet("x", observed=())), "without observed phenotypes"),
    "only_unknown_unlabelled_terms": (js(packet("x", observed=[("HP:9999999", ""), ("HP:9999998", "")])),
                                      "without observed phenotypes"),
}


def _skipped_file(key: str, container: str) -> Bad:
    """The good corpus plus one bad file, in a folder or in a zip; the log names the file."""
    data, reason = SKIPPED_FILES[key]
    member = f"BAD/phenopackets/{key}.json"

    def make(tmp: Path) -> list[str]:
        path = write_folder(tmp / "store", {member: data}) if container == "folder" else \
            write_zip(tmp / "all.zip", {member: data})
        return teach_args(tmp, path)

    where = member if container == "folder" else f"all.zip:0.1.25/{member}"
    return Bad(f"phenopackets-{container}-{key}", make, "skip", (where, reason),
               check=lambda tmp, r: _six_good_cases(tmp))


def _six_good_cases(tmp: Path) -> None:
    assert sorted(c["id"] for c in cases_of(tmp)) == GOOD_IDS


def _damaged_zip(tmp: Path, how: str) -> Path:
    """A zip whose member BAD/phenopackets/bad.json is damaged: ``crc`` (flipped compressed bytes),
    ``encrypted`` (flagged as encrypted), ``method`` (an unknown compression method)."""
    path = write_zip(tmp / "all.zip", {"BAD/phenopackets/bad.json": js(packet("bad")) * 20})
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("0.1.25/BAD/phenopackets/bad.json")
    local = info.header_offset
    name_len, extra_len = struct.unpack("<HH", raw[local + 26:local + 30])
    start = local + 30 + name_len + extra_len
    central = raw.find(info.filename.encode(), raw.find(b"PK\x01\x02")) - 46
    if how == "crc":
        for i in range(start + 2, start + 12):
            raw[i] ^= 0x5A
    elif how == "encrypted":
        raw[local + 6] |= 0x01
        raw[central + 8] |= 0x01
    elif how == "method":
        raw[local + 8:local + 10] = struct.pack("<H", 77)
        raw[central + 10:central + 12] = struct.pack("<H", 77)
    path.write_bytes(bytes(raw))
    return path


def _damaged_zip_case(how: str) -> Bad:
    return Bad(f"phenopackets-zip-member-{how}", lambda tmp: teach_args(tmp, _damaged_zip(tmp, how)), "skip",
               ("all.zip:0.1.25/BAD/phenopackets/bad.json", "malformed"), check=lambda tmp, r: _six_good_cases(tmp))


def _notes(tmp: Path) -> str:
    return " ".join(c["text"] for c in cases_of(tmp))


def _long_ids_check(tmp: Path, r: Result) -> None:
    faces = sorted((tmp / "run" / "images" / "faces").iterdir())
    assert len(faces) == 8 and all(len(p.name.encode()) <= 255 for p in faces)
    long_cases = [c for c in cases_of(tmp) if len(c["id"]) >= 5000]
    assert len(long_cases) == 2 and long_cases[0]["image"] != long_cases[1]["image"]


def _inside_run(tmp: Path, r: Result) -> None:
    for case in cases_of(tmp):
        image = (tmp / "run" / case["image"]).resolve()
        assert image.is_file() and (tmp / "run" / "images" / "faces").resolve() in image.parents


def _fixed(key: str, extra: dict[str, bytes], needles: tuple[str, ...], check) -> Bad:
    return Bad(f"phenopackets-{key}", lambda tmp: teach_args(tmp, write_folder(tmp / "store", extra)), "ok",
               needles, check=check)


AGE_CASES = {"age_1e20_years": "P99999999999999999999Y", "age_overflows_float": "P" + "9" * 400 + "Y",
             "age_5000000_months": "P5000000M", "age_131_years": "P131Y"}


def _age_case(key: str, age: str) -> Bad:
    def check(tmp: Path, r: Result) -> None:
        notes = _notes(tmp)
        assert re.search(r"\d{3,}-year-old", notes) is None and "inf" not in notes
        assert [c["meta"]["age_years"] for c in cases_of(tmp) if c["id"] == "old"] == [None]

    return _fixed(key, {"OLD/phenopackets/old.json": js(packet("old", age=age)),
                        "OLD/phenopackets/old2.json": js(packet("old2"))},
                  ("ignored 1 age(s) over 130 years", "old.json"), check)


def phenopacket_cases() -> list[Bad]:
    cases = [_skipped_file(key, container) for container in ("folder", "zip") for key in SKIPPED_FILES]
    cases += [_damaged_zip_case(how) for how in ("crc", "encrypted", "method")]
    cases += [_age_case(key, age) for key, age in AGE_CASES.items()]
    unknown_observed = packet("unk", observed=[("HP:0001166", "Arachnodactyly"), ("HP:9999999", "")])
    unknown_excluded = packet("unk", excluded=[("HP:9999999", "")])
    cases += [
        _fixed("unknown_hpo_observed", {"UNK/phenopackets/unk.json": js(unknown_observed),
                                        "UNK/phenopackets/unk2.json": js(packet("unk2"))},
               ("dropped 1 HPO term(s)", "HP:9999999", "unk.json"),
               lambda tmp, r: (_notes(tmp).count("HP:") == 0) or pytest.fail("raw HPO id in the notes")),
        _fixed("unknown_hpo_excluded", {"UNK/phenopackets/unk.json": js(unknown_excluded)},
               ("dropped 1 HPO term(s)", "unk.json"),
               lambda tmp, r: (_notes(tmp).count("HP:") == 0) or pytest.fail("raw HPO id in the notes")),
        _fixed("id_5000_chars", {"LONG/phenopackets/a.json": js(packet("A" * 5000)),
                                 "LONG/phenopackets/b.json": js(packet("A" * 5000 + "B"))}, (), _long_ids_check),
        _fixed("id_is_a_path", {"P/phenopackets/a.json": js(packet("../../../../etc/passwd")),
                                "P/phenopackets/b.json": js(packet("/tmp/x/../../y"))}, (), _inside_run),
        _fixed("id_with_markup_and_newline", {"P/phenopackets/a.json": js(packet("[/bold] x\ny [red]")),
                                              "P/phenopackets/b.json": js(packet("ünï©ødé 🧬"))}, (), _inside_run),
        _fixed("duplicate_ids", {"D/phenopackets/a.json": js(packet("marfan_0"))}, (),
               lambda tmp, r: len({c["id"] for c in cases_of(tmp)}) == 7 or pytest.fail("ids not unique")),
        _fixed("odd_subject_fields", {"S/phenopackets/a.json": js({**packet("odd"), "subject": {
            "sex": ["F"], "timeAtLastEncounter": {"age": {"iso8601duration": 12}}}}),
            "S/phenopackets/b.json": js({**packet("odd2"), "subject": {"timeAtLastEncounter": "P3Y"}})}, (),
               lambda tmp, r: len(cases_of(tmp)) == 8 or pytest.fail("odd subject fields lost a case")),
        _fixed("markup_in_file_name", {"X/phenopackets/[/bold]x.json": b"{"}, ("[/bold]x.json", "malformed"),
               lambda tmp, r: _six_good_cases(tmp)),
        Bad("phenopackets-path-missing", lambda tmp: teach_args(tmp, tmp / "nowhere"), "error",
            ("task.path=", "nowhere", "does not exist")),
        Bad("phenopackets-path-is-a-text-file", lambda tmp: teach_args(tmp, _text(tmp / "notes.txt")), "error",
            ("task.path=", "notes.txt")),
        Bad("phenopackets-zip-truncated", lambda tmp: teach_args(tmp, _truncated(write_zip(tmp / "all.zip", {}))),
            "error", ("task.path=", "all.zip")),
        Bad("phenopackets-zip-without-json", lambda tmp: teach_args(tmp, _zip_of(tmp / "x.zip", {"README": b"hi"})),
            "error", ("task.min_cases_per_disease",)),
        Bad("phenopackets-empty-folder", lambda tmp: teach_args(tmp, _mkdir(tmp / "empty")), "error",
            ("task.min_cases_per_disease",)),
        Bad("phenopackets-only-bad-files", lambda tmp: teach_args(tmp, _only_bad(tmp / "bad")), "error",
            ("task.min_cases_per_disease", "cut_off.json")),
    ]
    return cases


def _text(path: Path) -> Path:
    path.write_text("not phenopackets\n", encoding="utf-8")
    return path


def _truncated(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[:200])
    return path


def _zip_of(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _only_bad(root: Path) -> Path:
    for key in ("cut_off", "no_id", "top_level_list"):
        (root / f"{key}.json").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{key}.json").write_bytes(SKIPPED_FILES[key][0])
    return root


# -- images (task tissue, source imagefolder) ------------------------------------------------
def tiles(root: Path) -> Path:
    for c, folder in enumerate(("01_TUMOR", "02_STROMA")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 80 * c, 50)).save(root / folder / f"t{i}.png")
    return root


def tissue_args(tmp: Path, root: Path, *more: str) -> list[str]:
    return ["teach", "--run-dir", str(tmp / "run"), "--task", "tissue", "--teacher", "predictions",
            "task.source=imagefolder", f"task.path={root}", f"teacher.path={empty_predictions(tmp)}",
            "teacher.allow_missing=true", *more]


def _png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png() -> bytes:
    """A PNG header claiming 40000 x 40000 pixels: PIL refuses it as a decompression bomb."""
    header = struct.pack(">IIBBBBB", 40_000, 40_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")


def _bad_crc_png() -> bytes:
    data = bytearray(_png_bytes(Image.new("RGB", (8, 8), (1, 2, 3))))
    data[29] ^= 0xFF  # inside the IHDR chunk: its CRC no longer matches
    return bytes(data)


UNREADABLE_IMAGES = {
    "truncated.png": lambda: _png_bytes(Image.new("RGB", (64, 64), (9, 9, 9)))[:60],
    "zero_bytes.png": lambda: b"",
    "text.jpg": lambda: b"this is not a JPEG\n",
    "garbage.tif": lambda: bytes(range(256)) * 8,
    "bomb.png": _bomb_png,
    "bad_crc.png": _bad_crc_png,
    "truncated.jpg": lambda: _png_bytes(Image.new("RGB", (64, 64), (200, 10, 10)), "JPEG")[:300],
    "html.webp": lambda: b"<html>404 not found</html>",
}

ODD_IMAGES = {
    "rgba.png": lambda: _png_bytes(Image.new("RGBA", (8, 8), (10, 20, 30, 128))),
    "gray16.png": lambda: _png_bytes(Image.new("I;16", (8, 8), 40000)),
    "palette.gif": lambda: _png_bytes(Image.new("P", (8, 8), 3), "GIF"),
    "cmyk.jpg": lambda: _png_bytes(Image.new("CMYK", (8, 8), (0, 50, 100, 0)), "JPEG"),
    "one_pixel.bmp": lambda: _png_bytes(Image.new("RGB", (1, 1)), "BMP"),
    "bw.tiff": lambda: _png_bytes(Image.new("1", (8, 8), 1), "TIFF"),
    "UPPER.PNG": lambda: _png_bytes(Image.new("RGB", (8, 8), (5, 5, 5))),
    ("x" * 240 + ".png"): lambda: _png_bytes(Image.new("RGB", (8, 8), (6, 6, 6))),
    "ünï [red] ©.png": lambda: _png_bytes(Image.new("RGB", (8, 8), (7, 7, 7))),
}


def _unreadable_image(name: str) -> Bad:
    def make(tmp: Path) -> list[str]:
        root = tiles(tmp / "tiles")
        (root / "01_TUMOR" / name).write_bytes(UNREADABLE_IMAGES[name]())
        return tissue_args(tmp, root)

    return Bad(f"image-unreadable-{name}", make, "skip", ("skipped 1 unreadable image", name),
               check=lambda tmp, r: len(cases_of(tmp)) == 6 or pytest.fail("a good tile was lost"))


def _odd_image(name: str) -> Bad:
    def make(tmp: Path) -> list[str]:
        root = tiles(tmp / "tiles")
        (root / "02_STROMA" / name).write_bytes(ODD_IMAGES[name]())
        return tissue_args(tmp, root)

    def check(tmp: Path, r: Result) -> None:
        cases = cases_of(tmp)
        assert len(cases) == 7
        for case in cases:
            path = tmp / "run" / case["image"]
            assert len(path.name.encode()) <= 255
            with Image.open(path) as image:
                assert image.mode == "RGB"

    return Bad(f"image-odd-{name[:20]}", make, "ok", (), check=check)


def _dup_stems(tmp: Path) -> list[str]:
    root = tiles(tmp / "tiles")
    Image.new("RGB", (8, 8), (250, 0, 0)).save(root / "01_TUMOR" / "dup.png")
    Image.new("RGB", (8, 8), (0, 0, 250)).save(root / "01_TUMOR" / "dup.jpg")
    return tissue_args(tmp, root)


def _dup_check(tmp: Path, r: Result) -> None:
    cases = cases_of(tmp)
    dups = [c for c in cases if "dup" in c["id"]]
    assert len(cases) == 8 and len({c["id"] for c in cases}) == 8
    assert len(dups) == 2 and dups[0]["image"] != dups[1]["image"]
    colors = {Image.open(tmp / "run" / c["image"]).convert("RGB").getpixel((4, 4)) for c in dups}
    assert len(colors) == 2  # two stored images, not one overwritten by the other


def _merged_folders(tmp: Path) -> list[str]:
    root = tiles(tmp / "tiles")
    (root / "tumor").mkdir()
    Image.new("RGB", (8, 8), (1, 250, 1)).save(root / "tumor" / "t0.png")  # maps to the label of 01_TUMOR
    return tissue_args(tmp, root)


def _extra_folder(name: str, files: dict[str, bytes]) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        root = tiles(tmp / "tiles")
        (root / name).mkdir()
        for file, data in files.items():
            (root / name / file).write_bytes(data)
        return tissue_args(tmp, root)

    return make


def _all_unreadable(tmp: Path) -> list[str]:
    root = tmp / "tiles"
    for folder in ("a", "b"):
        (root / folder).mkdir(parents=True)
        (root / folder / "x.png").write_bytes(b"nope")
    return tissue_args(tmp, root)


def image_cases() -> list[Bad]:
    cases = [_unreadable_image(name) for name in UNREADABLE_IMAGES] + [_odd_image(name) for name in ODD_IMAGES]
    cases += [
        Bad("image-dup-png-and-jpg", _dup_stems, "ok", (), check=_dup_check),
        Bad("image-two-folders-one-label", _merged_folders, "ok", ("merging them",),
            check=lambda tmp, r: len({c["id"] for c in cases_of(tmp)}) == 7 or pytest.fail("ids not unique")),
        Bad("image-empty-class-folder", _extra_folder("03_ADIPOSE", {}), "skip", ("03_ADIPOSE", "hold no image")),
        Bad("image-class-folder-readme-only", _extra_folder("04_MUCUS", {"README.txt": b"x"}), "skip",
            ("04_MUCUS", "hold no image")),
        Bad("image-path-missing", lambda tmp: tissue_args(tmp, tmp / "nowhere"), "error", ("task.path=", "nowhere")),
        Bad("image-path-is-a-file", lambda tmp: tissue_args(tmp, _text(tmp / "tiles.txt")), "error",
            ("task.path=", "tiles.txt")),
        Bad("image-no-class-folders", lambda tmp: tissue_args(tmp, _mkdir(tmp / "flat")), "error",
            ("task.path=", "no class sub-folders")),
        Bad("image-all-unreadable", _all_unreadable, "error", ("no readable tiles", "2 skipped")),
    ]
    return cases


# -- predictions files ---------------------------------------------------------------------
def predictions_args(tmp: Path, name: str, content: bytes | str, *more: str) -> list[str]:
    path = tmp / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return ["teach", "--run-dir", str(tmp / "run"), "--teacher", "predictions", "task.source=phenopackets",
            f"task.path={write_folder(tmp / 'store', {})}", "task.min_cases_per_disease=2",
            f"teacher.path={path}", *more]


def line(data) -> str:
    return json.dumps(data) + "\n"


GOOD_LINE = line({"case_id": "marfan_0", "labels": ["OMIM:154700", "OMIM:999999"]})
ALL_GOOD = "".join(line({"case_id": c, "labels": ["OMIM:154700"]}) for c in GOOD_IDS)

#: name -> (file name, content, where the error points). Every one is an error naming file:line.
BAD_PREDICTIONS = {
    "jsonl-cut-off": ("p.jsonl", GOOD_LINE + '{"case_id": "new_0", "lab', "p.jsonl:2"),
    "jsonl-garbage": ("p.jsonl", GOOD_LINE + "hello\n", "p.jsonl:2"),
    "jsonl-no-case-id": ("p.jsonl", line({"labels": ["OMIM:154700"]}), "p.jsonl:1"),
    "jsonl-row-is-list": ("p.jsonl", line(["marfan_0", "OMIM:154700"]), "p.jsonl:1"),
    "jsonl-neither-labels-nor-scores": ("p.jsonl", line({"case_id": "marfan_0", "ranking": []}), "p.jsonl:1"),
    "jsonl-labels-a-string": ("p.jsonl", line({"case_id": "marfan_0", "labels": "OMIM:154700"}), "p.jsonl:1"),
    "jsonl-duplicate-case": ("p.jsonl", GOOD_LINE + GOOD_LINE, "p.jsonl:2"),
    "jsonl-score-infinity": ("p.jsonl", '{"case_id": "marfan_0", "scores": {"OMIM:154700": Infinity}}\n', "p.jsonl:1"),
    "jsonl-score-minus-infinity": ("p.jsonl", '{"case_id": "marfan_0", "scores": {"OMIM:154700": -Infinity}}\n',
                                   "p.jsonl:1"),
    "jsonl-score-1e999": ("p.jsonl", '{"case_id": "marfan_0", "scores": {"OMIM:154700": 1e999}}\n', "p.jsonl:1"),
    "jsonl-score-nan": ("p.jsonl", '{"case_id": "marfan_0", "scores": {"OMIM:154700": NaN}}\n', "p.jsonl:1"),
    "jsonl-score-text": ("p.jsonl", line({"case_id": "marfan_0", "scores": {"OMIM:154700": "high"}}), "p.jsonl:1"),
    "jsonl-score-null": ("p.jsonl", line({"case_id": "marfan_0", "scores": {"OMIM:154700": None}}), "p.jsonl:1"),
    "jsonl-nested-deep": ("p.jsonl", GOOD_LINE + deep(100_000).decode() + "\n", "p.jsonl:2"),
    "jsonl-not-utf8": ("p.jsonl", GOOD_LINE.encode() + b'{"case_id": "\xff"}\n', "p.jsonl"),
    "jsonl-unknown-case": ("p.jsonl", line({"case_id": "nobody", "labels": ["OMIM:154700"]}), "nobody"),
    "jsonl-unknown-label": ("p.jsonl", line({"case_id": "marfan_0", "labels": ["Not a syndrome"]}),
                            "Not a syndrome"),
    "csv-wrong-header": ("p.csv", "patient,label,score\nmarfan_0,OMIM:154700,1\n", "p.csv"),
    "csv-column-count": ("p.csv", "case_id,label,score\nmarfan_0,OMIM:154700\n", "p.csv:2"),
    "csv-score-text": ("p.csv", "case_id,label,score\nmarfan_0,OMIM:154700,high\n", "p.csv:2"),
    "csv-score-inf": ("p.csv", "case_id,label,score\nmarfan_0,OMIM:154700,inf\n", "p.csv:2"),
    "csv-score-minus-inf": ("p.csv", "case_id,label,score\nmarfan_0,OMIM:154700,-inf\n", "p.csv:2"),
    "csv-score-nan": ("p.csv", "case_id,label,score\nmarfan_0,OMIM:154700,nan\n", "p.csv:2"),
    "csv-rank-text": ("p.csv", "case_id,rank,label\nmarfan_0,first,OMIM:154700\n", "p.csv:2"),
    "csv-rank-infinity": ("p.csv", "case_id,rank,label\nmarfan_0,Infinity,OMIM:154700\n", "p.csv:2"),
    "csv-wide-inf": ("p.csv", "case_id,OMIM:154700,OMIM:999999\nmarfan_0,1e400,0.5\n", "p.csv:2"),
    "csv-wide-duplicate": ("p.csv", "case_id,OMIM:154700\nmarfan_0,1\nmarfan_0,2\n", "p.csv:3"),
    "csv-empty": ("p.csv", "", "p.csv"),
    "csv-not-utf8": ("p.csv", b"case_id,label,score\nmarfan_0,OMIM:154700,\xff\n", "p.csv"),
    "tsv-column-count": ("p.tsv", "case_id\tlabel\tscore\nmarfan_0\tOMIM:154700\t1\textra\n", "p.tsv:2"),
    "wrong-extension": ("p.txt", ALL_GOOD, "p.txt"),
}


def prediction_cases() -> list[Bad]:
    cases = [Bad(f"predictions-{key}", (lambda name, content: lambda tmp: predictions_args(tmp, name, content))(n, c),
                 "error", (where,)) for key, (n, c, where) in BAD_PREDICTIONS.items()]
    cases += [
        Bad("predictions-missing-file", lambda tmp: predictions_args(tmp, "p.jsonl", "")[:-1] + [
            f"teacher.path={tmp / 'gone.jsonl'}"], "error", ("teacher.path", "gone.jsonl")),
        Bad("predictions-no-path", lambda tmp: predictions_args(tmp, "p.jsonl", "")[:-1], "error", ("teacher.path",)),
        Bad("predictions-cases-missing", lambda tmp: predictions_args(tmp, "p.jsonl", GOOD_LINE), "error",
            ("p.jsonl", "teacher.allow_missing")),
        Bad("predictions-all-good", lambda tmp: predictions_args(tmp, "p.jsonl", ALL_GOOD), "ok", (),
            check=lambda tmp, r: len(read_jsonl(tmp / "run" / "rankings.jsonl")) == 6 or pytest.fail("rankings")),
    ]
    return cases


# -- configs -----------------------------------------------------------------------------
def validate(*args: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["validate", "--run-dir", str(tmp / "run"), *args]


def config_file(text: str, *args: str) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        (tmp / "run.yaml").write_text(text, encoding="utf-8")
        return ["validate", "--config", str(tmp / "run.yaml"), *args]
    return make


#: override -> what the message must name.
BAD_OVERRIDES = {
    "seed=abc": "seed", "seed=-1": "seed", "seed=1.5": "seed", "seed=[1]": "seed",
    "optimizer.max_steps=-5": "optimizer.max_steps", "optimizer.max_steps=ten": "optimizer.max_steps",
    "optimizer.learning_rate=-1": "optimizer.learning_rate", "optimizer.learning_rate=0": "optimizer.learning_rate",
    "optimizer.learning_rate=nan": "optimizer.learning_rate", "optimizer.learning_rate=fast": "optimizer.learning_rate",
    "optimizer.epochs=inf": "optimizer.epochs", "optimizer.epochs=0": "optimizer.epochs",
    "optimizer.batch_size=0": "optimizer.batch_size", "optimizer.grad_accum=-2": "optimizer.grad_accum",
    "optimizer.warmup_ratio=1.5": "optimizer.warmup_ratio", "optimizer.save_steps=0": "optimizer.save_steps",
    "optimizer.max_length=0": "optimizer.max_length", "optimizer.seed=-4": "optimizer.seed",
    "optimizer.beta=-0.1": "optimizer.beta", "optimizer.gradient_checkpointing=maybe": "optimizer.gradient_checkpointing",
    "eval.max_cases=-1": "eval.max_cases", "eval.batch_size=0": "eval.batch_size",
    "eval.max_new_tokens=-10": "eval.max_new_tokens", "eval.fuzzy_threshold=2": "eval.fuzzy_threshold",
    "eval.fuzzy_threshold=0": "eval.fuzzy_threshold", "eval.ks=a,b": "eval.ks", "eval.ks=0": "eval.ks",
    "eval.mode=guess": "eval.mode", "builder.k=0": "builder.k", "builder.q=-3": "builder.q",
    "optimizer.max_stepz=5": "max_steps", "optimiser.max_steps=5": "optimizer", "teacher.epochs.x=1": "one dot",
    "max_steps": "section.key=value", "teacher=gestlt": "gestalt", "student.nonsense=1": "student.nonsense",
}


def config_cases() -> list[Bad]:
    cases = [Bad(f"config-override-{item}", validate(item), "error", (needle,)) for item, needle in BAD_OVERRIDES.items()]
    cases += [
        Bad("config-flag-seed-abc", validate("--seed", "abc"), "error", ("--seed",)),
        Bad("config-flag-unknown-teacher", validate("--teacher", "nope"), "error", ("teacher", "nope")),
        Bad("config-file-missing", lambda tmp: ["validate", "--config", str(tmp / "none.yaml")], "error",
            ("none.yaml", "--config")),
        Bad("config-file-invalid-yaml", config_file("seed: [1, 2\n"), "error", ("run.yaml", "YAML")),
        Bad("config-file-a-list", config_file("- seed: 1\n"), "error", ("run.yaml", "mapping")),
        Bad("config-file-section-not-mapping", config_file("optimizer: [1, 2]\n"), "error", ("run.yaml", "optimizer")),
        Bad("config-file-unknown-top-level", config_file("sed: 1\n"), "error", ("run.yaml", "seed")),
        Bad("config-file-bad-value", config_file("optimizer:\n  max_steps: -5\n"), "error", ("optimizer.max_steps",)),
        Bad("config-file-seed-text", config_file("seed: abc\n"), "error", ("seed",)),
        Bad("config-file-nested-deep", config_file("task: " + "[" * 100_000 + "\n"), "error", ("run.yaml", "YAML")),
        Bad("config-file-not-utf8", lambda tmp: (tmp / "run.yaml").write_bytes(b"seed: \xff\xfe\n") and
            ["validate", "--config", str(tmp / "run.yaml")], "error", ("run.yaml",)),
    ]
    return cases


# -- run-directory artifacts ----------------------------------------------------------------
@pytest.fixture(scope="module")
def taught_run(tmp_path_factory) -> Path:
    """A run directory after ``mint teach`` (phenopackets + predictions), shared read-only."""
    tmp = tmp_path_factory.mktemp("taught")
    result = invoke(teach_args(tmp, write_folder(tmp / "store", {})), catch_exceptions=True)
    assert result.exit_code == 0, result.output
    return tmp / "run"


#: artifact -> [(variant, bytes or a function of the old text)]: each damaged copy fed to ``mint prefs``.
def _drop_key(key: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        rows = [json.loads(x) for x in text.splitlines() if x.strip()]
        rows[1].pop(key)
        return "".join(line(r) for r in rows)
    return edit


def _set_key(key: str, value) -> Callable[[str], str]:
    def edit(text: str) -> str:
        rows = [json.loads(x) for x in text.splitlines() if x.strip()]
        rows[2][key] = value
        return "".join(line(r) for r in rows)
    return edit


DAMAGED_ARTIFACTS = {
    "stages.json": [("cut-off", lambda t: t[: len(t) // 2]), ("empty", b""), ("a-list", b"[]"), ("not-utf8", b"\xff\xfe"),
                    ("a-string", b'"done"')],
    # name:line in the message: 6 rows; _drop_key edits row 2, _set_key row 3, appended lines are line 7
    "rankings.jsonl": [("cut-off", lambda t: t[: len(t) - 25], 6), ("garbage-line", lambda t: t + "oops\n", 7),
                       ("row-is-list", lambda t: t + "[1, 2]\n", 7), ("missing-case-id", _drop_key("case_id"), 2),
                       ("label-ids-a-string", _set_key("label_ids", "OMIM:154700"), 3), ("not-utf8", b"\xff\n")],
    "cases.jsonl": [("cut-off", lambda t: t[: len(t) - 40], 6), ("missing-id", _drop_key("id"), 2),
                    ("missing-label-ids", _drop_key("label_ids"), 2), ("bad-split", _set_key("split", "holdout"), 3),
                    ("label-ids-a-number", _set_key("label_ids", 7), 3),
                    ("nested-deep", lambda t: t + deep(50_000).decode(), 7)],
    "labels.json": [("cut-off", lambda t: t[:20]), ("an-object", b'{"id": "OMIM:1"}'),
                    ("item-without-name", b'[{"id": "OMIM:154700"}]'), ("items-not-objects", b'["OMIM:154700"]')],
    "task.json": [("cut-off", lambda t: t[:10]), ("a-list", b"[]"), ("no-modality", b'{"info": {}}')],
    "config.yaml": [("invalid-yaml", b"task: {name: [\n"), ("a-list", b"- 1\n"), ("bad-value", lambda t: _replace_once(
        t, r"max_steps: -?\d+", "max_steps: -7"))],
}

ARTIFACT_NEEDLES = {"config.yaml": ("config.yaml",)}


def _replace_once(text: str, pattern: str, replacement: str) -> str:
    """``text`` with ``pattern`` replaced exactly once: a damage that finds nothing to damage fails."""
    damaged, count = re.subn(pattern, replacement, text, count=1)
    assert count == 1, f"nothing matched {pattern!r}"
    return damaged


def _damaged(artifact: str, variant: str, damage, line_number: int | None = None, command: str = "prefs") -> Bad:
    def make(tmp: Path, run: Path) -> list[str]:
        target = tmp / "run"
        shutil.copytree(run, target)
        path = target / artifact
        data = damage if isinstance(damage, bytes) else damage(path.read_text(encoding="utf-8")).encode()
        path.write_bytes(data)
        return [command, "--run-dir", str(target)]

    needles = ("max_steps",) if variant == "bad-value" else (f"{artifact}:{line_number}" if line_number else artifact,)
    suffix = "" if command == "prefs" else f"-{command}"
    return Bad(f"artifact-{artifact}-{variant}{suffix}", make, "error", needles, extra={"needs_run": True})


def _missing(artifact: str) -> Bad:
    def make(tmp: Path, run: Path) -> list[str]:
        shutil.copytree(run, tmp / "run")
        (tmp / "run" / artifact).unlink()
        return ["prefs", "--run-dir", str(tmp / "run")]
    return Bad(f"artifact-{artifact}-missing", make, "error", (artifact, "mint teach"), extra={"needs_run": True})


def artifact_cases() -> list[Bad]:
    cases = [_damaged(artifact, *variant) for artifact, variants in DAMAGED_ARTIFACTS.items() for variant in variants]
    cases += [_missing("cases.jsonl"), _missing("rankings.jsonl")]
    # teach and eval read stages.json too (eval before it loads any model)
    cases += [_damaged("stages.json", variant, damage, command=command) for command in ("teach", "eval")
              for variant, damage in DAMAGED_ARTIFACTS["stages.json"][:2]]
    cases += [_damaged("rankings.jsonl", *DAMAGED_ARTIFACTS["rankings.jsonl"][0], command="eval")]

    def summary(tmp: Path, run: Path) -> list[str]:
        shutil.copytree(run, tmp / "run")
        (tmp / "run" / "prefs_summary.json").write_text("[1, 2]", encoding="utf-8")
        return ["prefs", "--run-dir", str(tmp / "run")]

    cases.append(Bad("artifact-prefs_summary.json-a-list", summary, "error", ("prefs_summary.json",),
                     extra={"needs_run": True}))
    # The file system says no (an OSError): a message naming the path, exit 1.
    cases.append(Bad("artifact-run-dir-name-too-long",
                     lambda tmp: teach_args(tmp, write_folder(tmp / "store", {}))[:2] + [str(tmp / ("R" * 300))]
                     + teach_args(tmp, tmp / "store")[3:], "error", ("File name too long", "RRRR"), exit_code=1))
    return cases


CORPUS = phenopacket_cases() + image_cases() + prediction_cases() + config_cases() + artifact_cases()


def flat(text: str) -> str:
    """Output without whitespace: rich wraps long lines and long words anywhere."""
    return re.sub(r"\s+", "", text)


def test_corpus_is_large_and_covers_every_kind():
    kinds = {bad.id.split("-")[0] for bad in CORPUS}
    assert kinds == {"phenopackets", "image", "predictions", "config", "artifact"}
    assert len(CORPUS) >= 100 and len({bad.id for bad in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("bad", CORPUS, ids=[bad.id for bad in CORPUS])
def test_bad_input(bad: Bad, tmp_path: Path, request):
    args = bad.make(tmp_path, request.getfixturevalue("taught_run")) if bad.extra.get("needs_run") else bad.make(tmp_path)
    result = invoke(args, catch_exceptions=True)
    output = result.output
    # Never a traceback: the command succeeded, or exited with a message.
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{type(result.exception).__name__}: {result.exception}\n{output}"
    assert "Traceback" not in output, output
    if bad.outcome == "error":
        assert result.exit_code == (bad.exit_code or 2), output
        assert "Error:" in output, output
    else:
        assert result.exit_code == 0, output
    for needle in bad.needles:
        assert flat(needle) in flat(output), f"{needle!r} not in:\n{output}"
    if bad.outcome == "skip":
        assert re.search(r"skipped|holdnoimage", flat(output)), output
    if bad.check is not None:
        bad.check(tmp_path, result)
