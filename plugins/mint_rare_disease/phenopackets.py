"""Reading GA4GH Phenopacket v2 JSON: a folder tree, phenopacket-store's release zip, or a download.

phenopacket-store (https://github.com/monarch-initiative/phenopacket-store) keeps one folder per
gene, ``GENE/phenopackets/*.json``; its releases ship every file in ``all_phenopackets.zip``. Both
are read the same way: every ``*.json`` member, in sorted order, so the result does not depend on
the file system. A file that cannot be used is skipped and counted, never fatal: one malformed
file in a 7,000-file release must not stop a run. The same goes for a corrupted zip member and for
JSON nested too deeply to parse; the log names each skipped file (the first
:data:`MAX_NAMED_SKIPS`) and its reason.

Within a usable file, two things are dropped and counted rather than written into the notes: an
HPO term without a label that this HPO release does not know (the notes would say "with
HP:9999999"), and an age beyond :data:`~mint_rare_disease.notes.MAX_AGE_YEARS` (the case keeps no
age rather than "a 100000000000000000000-year-old woman").
"""

from __future__ import annotations

import json
import os
import urllib.request
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from rich.markup import escape

from mint_core.io import atomic_path
from mint_core.registry import MintError

from mint_rare_disease.config import RELEASE_URL
from mint_rare_disease.notes import MAX_AGE_YEARS, parse_iso_age


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
    age_text: str = ""  # the ISO 8601 duration as written, kept to explain a rejected age


class Skip(Exception):
    """A file that is not a usable case; ``reason`` is the counter it goes to."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


MALFORMED = "malformed"
DIAGNOSIS = "without exactly one diagnosis"
NO_PHENOTYPES = "without observed phenotypes"
#: How many skipped files the log names one by one; the rest are counted.
MAX_NAMED_SKIPS = 10
#: Errors reading one zip member: a bad CRC or header, a broken deflate stream, an unsupported
#: compression method. The member is skipped, the rest of the archive is still read.
ZIP_MEMBER_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError, RuntimeError)


def _ontology_class(value: Any, what: str) -> tuple[str, str]:
    if not isinstance(value, dict) or not isinstance(value.get("id"), str) or not value["id"].strip():
        raise Skip(MALFORMED, f"{what} has no ontology class id")
    return value["id"].strip(), str(value.get("label") or "").strip()


def _age_text(element: Any) -> str:
    """The ISO 8601 duration of a TimeElement: ``age.iso8601duration`` or the start of an ``ageRange``."""
    if not isinstance(element, dict):
        return ""
    age = element.get("age")
    if isinstance(age, dict) and isinstance(age.get("iso8601duration"), str):
        return age["iso8601duration"]
    age_range = element.get("ageRange")
    if isinstance(age_range, dict):
        start = age_range.get("start")
        return _age_text({"age": start} if isinstance(start, dict) and "iso8601duration" in start else start)
    return ""


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
    diagnosis (``disease_id`` is then empty); more than one still skips it."""
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
    age_text = _age_text(subject.get("timeAtLastEncounter"))
    age = parse_iso_age(age_text) if age_text else None
    disease_id, disease_label = diagnoses[0] if diagnoses else ("", "")
    return Phenopacket(id=packet_id.strip(), disease_id=disease_id, disease_label=disease_label, observed=observed,
                       excluded=excluded, sex=sex, age_years=age, source=source, age_text=age_text)


def _json_members(path: Path) -> Iterator[tuple[str, bytes | None, str]]:
    """(name, bytes, "") of every ``*.json`` file under a folder or inside a zip, sorted by name;
    (name, None, why) for one that cannot be read (a corrupted zip member, an unreadable file)."""
    if path.is_file() and path.suffix == ".json":
        try:
            yield path.name, path.read_bytes(), ""
        except OSError as exc:
            yield path.name, None, f"unreadable ({exc.strerror or exc})"
    elif path.is_dir():
        for file in sorted(path.rglob("*.json")):
            if file.is_file() and not file.name.startswith("."):
                name = str(file.relative_to(path))
                try:
                    yield name, file.read_bytes(), ""
                except OSError as exc:
                    yield name, None, f"unreadable ({exc.strerror or exc})"
    elif zipfile.is_zipfile(path):
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise MintError(f"task.path={path}: not a readable zip archive ({exc})") from exc
        with archive:
            names = sorted(n for n in archive.namelist()
                           if n.endswith(".json") and not n.startswith("__MACOSX/") and "/." not in f"/{n}")
            for name in names:
                try:
                    data = archive.read(name)
                except ZIP_MEMBER_ERRORS as exc:
                    yield name, None, f"corrupted zip member ({type(exc).__name__}: {exc})"
                    continue
                yield name, data, ""
    else:
        raise MintError(f"task.path={path}: expected a folder of phenopacket JSON files or a .zip of them "
                        f"(phenopacket-store's all_phenopackets.zip)")


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise Skip(MALFORMED, f"not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise Skip(MALFORMED, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise Skip(MALFORMED, "JSON nested too deeply to read") from None


def _known_terms(packet: Phenopacket) -> list[str]:
    """Drop, from ``packet``, terms with no label that HPO does not know; returns the dropped ids."""
    from mint_rare_disease import hpo

    dropped = []
    for terms in (packet.observed, packet.excluded):
        keep = [(term_id, label) for term_id, label in terms if label or hpo.term(term_id) is not None]
        dropped += [term_id for term_id, label in terms if (term_id, label) not in keep]
        terms[:] = keep
    return dropped


def read_phenopackets(path: str | Path, *, log: Callable[[str], None] | None = None, require_diagnosis: bool = True
                      ) -> tuple[list[Phenopacket], Counter[str]]:
    """Every usable phenopacket under ``path`` (a folder, a zip or one ``.json`` file) and a counter of
    skipped files by reason; ``require_diagnosis`` as in :func:`parse_phenopacket`.

    ``log`` receives one line per skipped file (the first :data:`MAX_NAMED_SKIPS`, naming it and
    why) and a line counting dropped terms and ages (see the module docstring).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise MintError(f"task.path={path} does not exist: pass a folder of phenopacket JSON files or "
                        f"phenopacket-store's all_phenopackets.zip")
    say = log or (lambda message: None)
    packets: list[Phenopacket] = []
    skipped: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    dropped_terms: list[tuple[str, str]] = []  # (file, HPO id)
    dropped_ages: list[tuple[str, str]] = []  # (file, duration)
    for name, raw, unreadable in _json_members(path):
        try:
            if raw is None:
                raise Skip(MALFORMED, unreadable)
            packet = parse_phenopacket(_decode(raw), source=name, require_diagnosis=require_diagnosis)
            dropped_terms += [(name, term_id) for term_id in _known_terms(packet)]
            if not packet.observed:
                raise Skip(NO_PHENOTYPES, "no observed phenotypic feature HPO knows")
        except Skip as skip:
            skipped[skip.reason] += 1
            total = sum(skipped.values())
            if total <= MAX_NAMED_SKIPS:
                where = path / name if path.is_dir() else f"{path}:{name}"
                say(f"[yellow]rare-disease: skipped {escape(str(where))}: {skip.reason} ({escape(str(skip))})[/yellow]")
            elif total == MAX_NAMED_SKIPS + 1:
                say("[yellow]rare-disease: more files skipped; the totals follow[/yellow]")
            continue
        if packet.age_years is not None and not packet.age_years <= MAX_AGE_YEARS:
            dropped_ages.append((name, packet.age_text))
            packet.age_years = None
        # Ids are meant to be unique; keep duplicates apart rather than overwrite a case.
        seen[packet.id] += 1
        if seen[packet.id] > 1:
            packet.id = f"{packet.id}__{seen[packet.id]}"
        packets.append(packet)
    if dropped_terms:
        file, term_id = dropped_terms[0]
        say(f"[yellow]rare-disease: dropped {len(dropped_terms)} HPO term(s) without a label that this HPO "
            f"release does not know, from {len({f for f, _ in dropped_terms})} file(s); first: {escape(term_id)} in "
            f"{escape(file)}[/yellow]")
    if dropped_ages:
        file, text = dropped_ages[0]
        say(f"[yellow]rare-disease: ignored {len(dropped_ages)} age(s) over {MAX_AGE_YEARS} years (the case "
            f"keeps no age); first: {escape(repr(text))} in {escape(file)}[/yellow]")
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
