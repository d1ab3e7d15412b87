"""The tissue label space: PanNuke's 19 tissue types, plus known classes of common tile datasets.

Each label carries readable synonyms (PanNuke's own spellings such as ``HeadNeck`` or ``Bile-duct``
among them, so its ``types.npy`` maps without a table elsewhere) and a one-line morphology
description, which captions and the teacher's text prompts build on.
"""

from __future__ import annotations

import re

from mint_core.types import Label, normalize_name

# (id, readable name, synonyms, morphology description, caption phrases)
_PANNUKE: list[tuple[str, str, tuple[str, ...], str, tuple[str, ...]]] = [
    ("adrenal_gland", "adrenal gland", ("adrenal", "adrenal_gland", "adrenal cortex"),
     "cords of polygonal cortical cells with pale, lipid-rich cytoplasm and round central nuclei",
     ("cords of pale cells", "clear lipid-rich cytoplasm", "round central nuclei", "thin sinusoids between cords")),
    ("bile_duct", "bile duct", ("bile-duct", "bileduct", "biliary", "cholangio"),
     "small ducts lined by cuboidal cells with round nuclei in dense fibrous stroma",
     ("small round ducts", "cuboidal lining cells", "fibrous pink stroma", "scattered stromal nuclei")),
    ("bladder", "bladder", ("urinary bladder", "urothelium"),
     "multilayered urothelium with crowded oval nuclei over a loose lamina propria",
     ("multilayered urothelium", "crowded oval nuclei", "a surface of umbrella cells", "nuclei stacked in layers")),
    ("breast", "breast", ("mammary", "mammary gland"),
     "ducts and lobules of epithelial cells within collagen-rich stroma and fat",
     ("ducts and lobules", "collagen-rich stroma", "clusters of fat cells", "two-layered glands")),
    ("cervix", "cervix", ("uterine cervix", "cervical"),
     "stratified squamous epithelium with small regular nuclei maturing toward the surface",
     ("stratified squamous epithelium", "small regular nuclei", "maturation toward the surface", "a dense basal layer")),
    ("colon", "colon", ("colorectal", "large intestine", "rectum"),
     "crypts of tall columnar cells with elongated basal nuclei around open lumens",
     ("tall columnar glands", "elongated basal nuclei", "open crypt lumens", "glands in rings")),
    ("esophagus", "esophagus", ("oesophagus", "esophageal"),
     "thick non-keratinizing squamous epithelium with large pale cells and sparse nuclei",
     ("thick squamous epithelium", "large pale cells", "sparse nuclei", "flattened surface cells")),
    ("head_and_neck", "head and neck", ("headneck", "head neck", "head-neck", "oral cavity"),
     "squamous epithelium with pleomorphic, irregular nuclei in nests and sheets",
     ("squamous nests", "pleomorphic irregular nuclei", "dark crowded nuclei", "keratinizing cells")),
    ("kidney", "kidney", ("renal", "renal cortex"),
     "tubules with small lumens and round nuclei, with cellular glomeruli",
     ("renal tubules", "small tubular lumens", "round nuclei", "a cellular glomerulus")),
    ("liver", "liver", ("hepatic", "hepatocytes"),
     "plates of large polygonal hepatocytes with round central nuclei and sinusoids",
     ("plates of hepatocytes", "large pink polygonal cells", "round evenly spaced nuclei", "sinusoids between plates")),
    ("lung", "lung", ("pulmonary", "alveoli"),
     "thin alveolar walls around large empty air spaces with few nuclei",
     ("large empty air spaces", "thin alveolar walls", "few scattered nuclei", "a lace-like pattern")),
    ("ovarian", "ovarian", ("ovary", "ovarian stroma"),
     "densely cellular stroma of spindle cells with elongated nuclei",
     ("dense spindle cell stroma", "elongated nuclei", "swirling sheets of cells", "little cytoplasm")),
    ("pancreatic", "pancreatic", ("pancreas", "pancreatic acini"),
     "acini of basophilic cells with round basal nuclei in small clusters",
     ("acinar clusters", "purple basophilic cytoplasm", "round basal nuclei", "densely packed acini")),
    ("prostate", "prostate", ("prostatic", "prostate gland"),
     "glands with wide irregular lumens lined by pale cells with round nuclei",
     ("wide irregular gland lumens", "pale glandular cells", "round uniform nuclei", "fibromuscular stroma")),
    ("skin", "skin", ("epidermis", "dermis", "cutaneous"),
     "keratinizing epidermis over collagen-rich dermis",
     ("a keratin layer", "stratified epidermis", "collagen fibres in the dermis", "a basal layer of dark nuclei")),
    ("stomach", "stomach", ("gastric", "gastric mucosa"),
     "foveolar glands of pale mucin-filled cells with elongated nuclei",
     ("foveolar glands", "pale mucin-filled cells", "elongated nuclei", "glands with narrow lumens")),
    ("testis", "testis", ("testicular", "testes", "seminiferous tubules"),
     "seminiferous tubules packed with many layers of germ cell nuclei",
     ("seminiferous tubules", "many layers of germ cells", "densely packed round nuclei", "tubules in cross-section")),
    ("thyroid", "thyroid", ("thyroid gland", "follicles"),
     "follicles lined by flat cells with small round nuclei around pink colloid",
     ("round follicles", "pink colloid", "small round nuclei", "flat follicular cells")),
    ("uterus", "uterus", ("endometrium", "myometrium", "uterine"),
     "endometrial stroma of spindle cells with scattered glands",
     ("spindle cell stroma", "scattered endometrial glands", "oval to elongated nuclei", "cellular stroma")),
]

# Kather et al. 2016 colorectal tiles (01_TUMOR ... 08_EMPTY) and NCT-CRC-HE-100K's codes.
_KNOWN_EXTRA: list[tuple[str, str, tuple[str, ...], str, tuple[str, ...]]] = [
    ("tumor", "tumor", ("tum", "tumour", "tumor epithelium", "adenocarcinoma"),
     "malignant epithelium with crowded, enlarged, atypical nuclei",
     ("crowded atypical nuclei", "malignant glands", "enlarged dark nuclei")),
    ("stroma", "stroma", ("str", "simple stroma"),
     "homogeneous pink fibrous stroma with few spindle nuclei",
     ("pink fibrous stroma", "few spindle nuclei", "parallel collagen")),
    ("complex", "complex", ("complex stroma",),
     "mixed stroma with scattered immune cells and occasional tumor cells",
     ("mixed stroma", "scattered immune cells", "heterogeneous texture")),
    ("lympho", "lympho", ("lym", "lymphocytes", "lymphoid tissue", "immune cells"),
     "sheets of small, round, dark lymphocyte nuclei",
     ("sheets of small dark nuclei", "lymphocytes", "little cytoplasm")),
    ("debris", "debris", ("deb", "necrosis", "mucus"),
     "necrotic debris, hemorrhage and mucus without intact tissue",
     ("necrotic debris", "fragmented nuclei", "mucus and hemorrhage")),
    ("mucosa", "mucosa", ("muc", "normal mucosa", "normal colon mucosa"),
     "normal colonic mucosa with regular crypts",
     ("regular crypts", "goblet cells", "normal mucosal glands")),
    ("adipose", "adipose", ("adi", "fat", "adipose tissue"),
     "large empty fat cells with thin membranes",
     ("large empty fat cells", "thin cell membranes", "few nuclei")),
    ("empty", "empty", ("back", "background", "empty background"),
     "slide background without tissue",
     ("no tissue", "blank background", "glass")),
    ("normal", "normal", ("norm", "normal tissue"),
     "normal tissue", ("normal tissue",)),
    ("muscle", "muscle", ("mus", "smooth muscle"),
     "bundles of smooth muscle with elongated cigar-shaped nuclei",
     ("smooth muscle bundles", "cigar-shaped nuclei", "eosinophilic fibres")),
]

PANNUKE_IDS: tuple[str, ...] = tuple(row[0] for row in _PANNUKE)


def _make(row: tuple[str, str, tuple[str, ...], str, tuple[str, ...]]) -> Label:
    return Label(id=row[0], name=row[1], synonyms=row[2], description=row[3])


PANNUKE_LABELS: tuple[Label, ...] = tuple(_make(row) for row in _PANNUKE)
_KNOWN: dict[str, Label] = {row[0]: _make(row) for row in _PANNUKE + _KNOWN_EXTRA}
_PHRASES: dict[str, tuple[str, ...]] = {row[0]: row[4] for row in _PANNUKE + _KNOWN_EXTRA}
_BY_NAME: dict[str, str] = {}
for _label in _KNOWN.values():
    for _text in (_label.id, _label.name, *_label.synonyms):
        _BY_NAME.setdefault(normalize_name(_text), _label.id)
        _BY_NAME.setdefault(normalize_name(_text).replace(" ", ""), _label.id)


def clean_class_name(raw: str) -> str:
    """A folder or type name made readable: ``01_TUMOR`` -> ``tumor``, ``Bile-duct`` -> ``bile duct``."""
    text = re.sub(r"^\d+[\s._-]*", "", raw.strip())  # numeric ordering prefix (01_TUMOR)
    text = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", text)  # CamelCase (HeadNeck)
    return normalize_name(text) or normalize_name(raw) or raw.strip().lower()


def label_for_class(raw: str) -> Label:
    """The label for a class name found in data: a known tissue when the name matches one, else a new label."""
    cleaned = clean_class_name(raw)
    known = _BY_NAME.get(cleaned) or _BY_NAME.get(cleaned.replace(" ", ""))
    if known is not None:
        return _KNOWN[known]
    label_id = re.sub(r"[^a-z0-9]+", "_", cleaned).strip("_") or "class"
    return Label(id=label_id, name=cleaned, synonyms=(raw,) if raw != cleaned else (),
                 description=f"{cleaned} tissue")


def phrases_for(label: Label) -> tuple[str, ...]:
    """Short morphology phrases for captions; falls back to the description."""
    return _PHRASES.get(label.id) or ((label.description,) if label.description else (f"{label.name} tissue",))
