"""Reading GA4GH Phenopacket v2 JSON: a folder tree, phenopacket-store's release zip, or a download.

phenopacket-store (https://github.com/monarch-initiative/phenopacket-store) keeps one folder per
gene, ``GENE/phenopackets/*.json``; its releases ship every file in ``all_phenopackets.zip``. Both
are read the same way: every ``*.json`` member, in sorted order, so the result does not depend on
the file system. A file that cannot be used is skipped and counted, never fatal: one malformed
file in a 7,000-file release must not stop a run.
"""

from __future__ import annotations

import json
import os
import urllib.request
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from mint_core.io import atomic_path
from mint_core.registry import MintError

from mint_rare_disease.config import RELEASE_URL
from mint_rare_disease.notes import parse_iso_age


@dataclass
class Phenopacket:
    """The parts of a phenopacket a case needs."""

    id: str
    disease_id: str
    disease_label: str
    observed: list[tuple[str, str]] = field(default_factory=list)   # (HPO id, label)
    excluded: list[tuple[str, str]] = field(default_factory=list)
    sex: str | None = None
    age_years: float | None = None
    source: str = ""


class Skip(Exception):
    """A file that is not a usable case; ``reason`` is the counter it goes to."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


MALFORMED = "malformed"
DIAGNOSIS = "without exactly one diagnosis"
NO_PHENOTYPES = "without observed phenotypes"


def _ontology_class(value: Any, what: str) -> tuple[str, str]:
    if not isinstance(value, dict) or not isinstance(value.get("id"), str) or not value["id"].strip():
        raise Skip(MALFORMED, f"{what} has no ontology class id")
    return value["id"].strip(), str(value.get("label") or "").strip()


def _age_years(element: Any) -> float | None:
    """Years from a TimeElement: ``age.iso8601duration`` or the start of an ``ageRange``."""
    if not isinstance(element, dict):
        return None
    age = element.get("age")
    if isinstance(age, dict) and isinstance(age.get("iso8601duration"), str):
        return parse_iso_age(age["iso8601duration"])
    age_range = element.get("ageRange")
    if isinstance(age_range, dict):
        return _age_years(age_range.get("start"))
    return None


def _diagnoses(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Distinct diagnosed diseases: ``interpretations[].diagnosis.disease``, else ``diseases[]``
    (not excluded) for phenopackets written without interpretations."""
    found: dict[str, str] = {}
    interpretations = data.get("interpretations") or []
    if not isinstance(interpretations, list):
        raise Skip(MALFORMED, "interpretations is not a list")
    for item in interpretations:
        if not isinstance(item, dict):
            raise Skip(MALFORMED, "an interpretation is not an object")
        diagnosis = item.get("diagnosis")
        if diagnosis is None:
            continue
        if not isinstance(diagnosis, dict):
            raise Skip(MALFORMED, "a diagnosis is not an object")
        disease_id, label = _ontology_class(diagnosis.get("disease"), "interpretations[].diagnosis.disease")
        found.setdefault(disease_id, label)
    if not interpretations:
        diseases = data.get("diseases") or []
        if not isinstance(diseases, list):
            raise Skip(MALFORMED, "diseases is not a list")
        for item in diseases:
            if isinstance(item, dict) and not item.get("excluded"):
                disease_id, label = _ontology_class(item.get("term"), "diseases[].term")
                found.setdefault(disease_id, label)
    return list(found.items())


def parse_phenopacket(data: Any, *, source: str = "", require_diagnosis: bool = True) -> Phenopacket:
    """One phenopacket's case; raises :class:`Skip` with the reason it cannot be used.

    ``require_diagnosis=False`` (``mint predict`` on new patients) accepts a packet without a
    diagnosis (``disease_id`` is then empty); more than one still skips it.
    """
    if not isinstance(data, dict):
        raise Skip(MALFORMED, "top level is not a JSON object")
    packet_id = data.get("id")
    if not isinstance(packet_id, str) or not packet_id.strip():
        raise Skip(MALFORMED, "no phenopacket id")
    features = data.get("phenotypicFeatures", [])
    if not isinstance(features, list):
        raise Skip(MALFORMED, "phenotypicFeatures is not a list")
    subject = data.get("subject") or {}
    if not isinstance(subject, dict):
        raise Skip(MALFORMED, "subject is not an object")
    diagnoses = _diagnoses(data)
    if len(diagnoses) != 1 and (require_diagnosis or diagnoses):
        raise Skip(DIAGNOSIS, f"{len(diagnoses)} diagnoses")
    observed: list[tuple[str, str]] = []
    excluded: list[tuple[str, str]] = []
    for feature in features:
        if not isinstance(feature, dict):
            raise Skip(MALFORMED, "a phenotypic feature is not an object")
        term = _ontology_class(feature.get("type"), "phenotypicFeatures[].type")
        target = excluded if feature.get("excluded") is True else observed
        if term[0] not in {t for t, _ in target}:
            target.append(term)
    if not observed:
        raise Skip(NO_PHENOTYPES, "no observed phenotypic feature")
    sex = subject.get("sex") if subject.get("sex") in ("FEMALE", "MALE") else None
    age = _age_years(subject.get("timeAtLastEncounter"))
    disease_id, disease_label = diagnoses[0] if diagnoses else ("", "")
    return Phenopacket(id=packet_id.strip(), disease_id=disease_id, disease_label=disease_label, observed=observed,
                       excluded=excluded, sex=sex, age_years=age, source=source)


def _json_members(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every ``*.json`` file under a folder or inside a zip, sorted by name."""
    if path.is_file() and path.suffix == ".json":
        yield path.name, path.read_bytes()
    elif path.is_dir():
        for file in sorted(path.rglob("*.json")):
            if file.is_file() and not file.name.startswith("."):
                yield str(file.relative_to(path)), file.read_bytes()
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = sorted(n for n in archive.namelist()
                           if n.endswith(".json") and not n.startswith("__MACOSX/") and "/." not in f"/{n}")
            for name in names:
                yield name, archive.read(name)
    else:
        raise MintError(f"task.path={path}: expected a folder of phenopacket JSON files or a .zip of them "
                        f"(phenopacket-store's all_phenopackets.zip)")


def read_phenopackets(path: str | Path, *, require_diagnosis: bool = True) -> tuple[list[Phenopacket], Counter[str]]:
    """Every usable phenopacket under ``path`` (a folder, a zip or one ``.json`` file) and a counter of skipped files by reason."""
    path = Path(path).expanduser()
    if not path.exists():
        raise MintError(f"task.path={path} does not exist: pass a folder of phenopacket JSON files or "
                        f"phenopacket-store's all_phenopackets.zip")
    packets: list[Phenopacket] = []
    skipped: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    for name, raw in _json_members(path):
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            skipped[MALFORMED] += 1
            continue
        try:
            packet = parse_phenopacket(data, source=name, require_diagnosis=require_diagnosis)
        except Skip as skip:
            skipped[skip.reason] += 1
            continue
        # Ids are meant to be unique; keep duplicates apart rather than overwrite a case.
        seen[packet.id] += 1
        if seen[packet.id] > 1:
            packet.id = f"{packet.id}__{seen[packet.id]}"
        packets.append(packet)
    return packets, skipped


def cache_dir() -> Path:
    return Path(os.environ.get("MINT_CACHE_DIR") or Path.home() / ".cache" / "mint")


def download_release(url: str = RELEASE_URL, *, timeout: float = 60.0, log: Any = None) -> Path:
    """phenopacket-store's release zip, downloaded once into the cache and reused afterwards."""
    target = cache_dir() / "phenopacket-store" / "all_phenopackets.zip"
    if target.exists() and zipfile.is_zipfile(target):
        return target
    if log is not None:
        log(f"Downloading phenopacket-store release from {url} to {target}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, atomic_path(target) as tmp:
            with open(tmp, "wb") as handle:
                while chunk := response.read(1 << 20):
                    handle.write(chunk)
            if not zipfile.is_zipfile(tmp):
                raise OSError("the download is not a zip file")
    except OSError as exc:  # URLError, timeouts and HTTP errors are all OSErrors
        raise MintError(f"Could not download the phenopacket-store release ({url}): {exc}. Without network "
                        f"access, download all_phenopackets.zip from "
                        f"https://github.com/monarch-initiative/phenopacket-store/releases elsewhere and pass "
                        f"task.path=/path/to/all_phenopackets.zip (or a folder of phenopacket JSON files).") from exc
    return target
