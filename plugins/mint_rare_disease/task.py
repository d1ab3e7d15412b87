"""The ``rare-disease`` task: patient notes + face -> the rare genetic disease.

A case is free-text notes written from HPO phenotype terms (with sex and age), a face image (a
real photo from ``task.photos`` or one rendered from the case's facial terms), and its disease.
The student reads only the notes; by default facial findings are left out of them, so the face
carries information the student can only get from the teacher.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, ClassVar

from mint_core.answers import HEADER
from mint_core.components import Task
from mint_core.context import RunContext
from mint_core.io import safe_file_name
from mint_core.registry import MintError
from mint_core.types import Case, Label, LabelSpace, Modality, Prompt, TaskData, normalize_name

from mint_rare_disease import hpo
from mint_rare_disease.config import SOURCES, RareDiseaseConfig
from mint_rare_disease.faces import save_face
from mint_rare_disease.notes import write_notes
from mint_rare_disease.splits import SPLIT_BY, filter_labels, grouped_split, stratified_split

_PMID = re.compile(r"PMID[_:]?(\d+)", re.IGNORECASE)
PHOTO_EXTENSIONS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")
SYSTEM = "You are a clinical geneticist."


def _publication(source_file: str, packet_id: str) -> str | None:
    """``PMID:nnn`` from phenopacket-store's file name (``PMID_27573763_Patient_1.json``) or the id."""
    for text in (Path(source_file).name, packet_id):
        match = _PMID.search(text or "")
        if match:
            return f"PMID:{match.group(1)}"
    return None


def _gene(source_file: str) -> str | None:
    """phenopacket-store's folder (``FBN1/phenopackets/x.json`` -> ``FBN1``); ``None`` for a flat folder."""
    parts = Path(source_file).parts
    return parts[-3] if len(parts) >= 3 and parts[-2] == "phenopackets" else (parts[0] if len(parts) > 1 else None)


def _safe_name(case_id: str) -> str:
    return safe_file_name(case_id, default="case")  # long ids are cut and hashed: no "File name too long"


class RareDiseaseTask(Task):
    student_modality: ClassVar[Modality] = "text"
    label_noun: ClassVar[str] = "diseases"
    #: How many disease names a prompt asks for (the core's default for builder.k).
    default_n_answers: ClassVar[int] = 10

    def __init__(self, config: RareDiseaseConfig | None = None):
        self.config = config or RareDiseaseConfig()
        self._term_names: dict[str, str] = {}  # HPO id -> label as the source wrote it
        self._check(self.config)

    @staticmethod
    def _check(c: RareDiseaseConfig) -> None:
        if c.source not in SOURCES:
            raise MintError(f"task.source={c.source!r} is not one of: {', '.join(SOURCES)}")
        if not (0 < c.test_fraction < 1 and 0 <= c.val_fraction < 1 and c.test_fraction + c.val_fraction < 1):
            raise MintError(f"task.test_fraction={c.test_fraction} and task.val_fraction={c.val_fraction} must be "
                            f"in [0, 1) with test > 0 and test + val < 1")
        if c.split_by not in SPLIT_BY:
            raise MintError(f"task.split_by={c.split_by!r} is not one of: {', '.join(SPLIT_BY)}")
        if c.min_cases_per_disease < 2:
            raise MintError(f"task.min_cases_per_disease={c.min_cases_per_disease}: needs at least 2 "
                            f"(one case to train on, one to test)")
        for low, high in (("min_terms", "max_terms"), ("min_facial_terms", "max_facial_terms")):
            if getattr(c, low) < 0 or getattr(c, low) > getattr(c, high):
                raise MintError(f"task.{low}={getattr(c, low)} must be between 0 and task.{high}={getattr(c, high)}")
        if not 0 <= c.imprecision <= 1 or not 0 <= c.noise_prob <= 1:
            raise MintError("task.imprecision and task.noise_prob are probabilities: use values in [0, 1]")
        if c.image_size < 32:
            raise MintError(f"task.image_size={c.image_size}: use at least 32 pixels")

    # -- loading -------------------------------------------------------------------------------
    def load(self, *, ctx: RunContext) -> TaskData:
        c = self.config
        seed = f"{ctx.seed}:{c.seed}"
        if c.source == "hpo-sim":
            records, names, info = self._simulate(seed, ctx)
        else:
            records, names, info = self._phenopackets(ctx)
        counts = Counter(r["disease_id"] for r in records)
        kept, dropped = filter_labels(counts, min_cases=c.min_cases_per_disease, max_labels=c.max_diseases)
        if dropped:
            ctx.log(f"rare-disease: dropped {len(dropped)} diseases (fewer than task.min_cases_per_disease="
                    f"{c.min_cases_per_disease} cases, or beyond task.max_diseases={c.max_diseases})")
        keep = set(kept)
        records = [r for r in records if r["disease_id"] in keep]
        if not records:
            raise MintError(f"rare-disease: no disease has task.min_cases_per_disease={c.min_cases_per_disease} "
                            f"cases (read {sum(counts.values())} cases over {len(counts)} diseases)")
        by_label: dict[str, list[str]] = defaultdict(list)
        for r in records:
            by_label[r["disease_id"]].append(r["id"])
        splits = self._split(records, by_label, seed, info, ctx)

        cases = self._cases(records, splits, seed=seed, ctx=ctx)
        labels = self._labels(kept, names, cases)
        info.update(source=c.source, n_cases=len(cases), n_diseases=len(labels), dropped_diseases=dropped,
                    hpo_version=str(hpo.ontology().version()))
        split_counts = Counter(case.split for case in cases)
        ctx.log(f"rare-disease: {len(cases)} cases over {len(labels)} diseases from {c.source} "
                f"(train {split_counts['train']}, val {split_counts['val']}, test {split_counts['test']})")
        return TaskData(labels=labels, cases=cases, student_modality=self.student_modality, info=info)

    def _split(self, records: list[dict[str, Any]], by_label: dict[str, list[str]], seed: str, info: dict[str, Any],
               ctx: RunContext) -> dict[str, str]:
        c = self.config
        fractions = {"test_fraction": c.test_fraction, "val_fraction": c.val_fraction, "seed": seed}
        if c.source != "phenopackets" or c.split_by == "case":
            info["split_by"] = "case"
            return stratified_split(by_label, **fractions)
        groups = {r["id"]: r["meta"].get(c.split_by) for r in records}
        splits, how = grouped_split(by_label, groups, **fractions)
        grouped = sorted(label for label, kind in how.items() if kind == "group")
        sides: dict[str, set[str]] = defaultdict(set)
        for case_id, split in splits.items():
            if groups.get(case_id):
                sides[groups[case_id]].add(split)
        n_groups = {s: sum(1 for v in sides.values() if s in v) for s in ("train", "val", "test")}
        info.update(split_by=c.split_by, diseases_split_by_group=len(grouped), diseases_split_by_case=len(how) - len(grouped),
                    groups_per_split=n_groups)
        ctx.log(f"rare-disease: split by {c.split_by} for {len(grouped)} diseases (with 2+ {c.split_by}s), by case "
                f"for {len(how) - len(grouped)}; {c.split_by}s in train {n_groups['train']}, val {n_groups['val']}, "
                f"test {n_groups['test']}")
        return splits

    def _simulate(self, seed: str, ctx: RunContext) -> tuple[list[dict[str, Any]], dict[str, list[str]], dict[str, Any]]:
        from mint_rare_disease import simulate

        c = self.config
        ids = [x.strip() for x in c.diseases.split(",") if x.strip()]
        diseases = simulate.choose_diseases(n=c.n_diseases, seed=seed, min_terms=c.min_disease_terms,
                                            min_facial_terms=c.min_disease_facial_terms, ids=ids,
                                            similar=c.similar_diseases)
        sim = simulate.simulate_cases(diseases, cases_per_disease=c.cases_per_disease, seed=seed,
                                      terms=(c.min_terms, c.max_terms), facial_terms=(c.min_facial_terms, c.max_facial_terms),
                                      imprecision=c.imprecision, noise_terms=c.noise_terms, noise_prob=c.noise_prob,
                                      max_excluded=c.max_excluded)
        names = {d.id: [d.name] + ([d.omim_name] if d.omim_name else []) for d in diseases}
        records = [{
            "id": s.id, "disease_id": s.disease_id,
            "observed": [(t, hpo.term_name(t)) for t in s.observed + s.facial],
            "excluded": [(t, hpo.term_name(t)) for t in s.excluded],
            "sex": s.sex, "age_years": s.age_years, "meta": {"source": "hpo-sim"},
        } for s in sim]
        return records, names, {"simulated": True}

    def _phenopackets(self, ctx: RunContext) -> tuple[list[dict[str, Any]], dict[str, list[str]], dict[str, Any]]:
        from mint_rare_disease.phenopackets import DIAGNOSIS, MALFORMED, NO_PHENOTYPES, download_release, read_phenopackets

        c = self.config
        path = Path(c.path).expanduser() if c.path else download_release(c.download_url, log=ctx.log)
        packets, skipped = read_phenopackets(path, log=ctx.log)
        total = sum(skipped.values())
        if total:
            extra = f", {skipped[NO_PHENOTYPES]} {NO_PHENOTYPES}" if skipped[NO_PHENOTYPES] else ""
            ctx.log(f"rare-disease: skipped {total} files: {skipped[MALFORMED]} malformed, "
                    f"{skipped[DIAGNOSIS]} {DIAGNOSIS}{extra}")
        ctx.log(f"rare-disease: read {len(packets)} phenopackets from {path}")
        names: dict[str, Counter[str]] = defaultdict(Counter)
        records = []
        for p in packets:
            if p.disease_label:
                names[p.disease_id][p.disease_label] += 1
            records.append({"id": p.id, "disease_id": p.disease_id, "observed": p.observed, "excluded": p.excluded,
                            "sex": p.sex, "age_years": p.age_years,
                            "meta": {"source": "phenopackets", "source_file": p.source, "disease_label": p.disease_label,
                                     "publication": _publication(p.source, p.id), "gene": _gene(p.source)}})
        # Most frequent label first (ties alphabetical); the others become synonyms.
        ordered = {d: [n for n, _ in sorted(cnt.items(), key=lambda kv: (-kv[1], kv[0]))] for d, cnt in names.items()}
        info = {"path": str(path), "skipped": {k: int(v) for k, v in skipped.items()}, "n_files_read": len(packets) + total}
        return records, ordered, info

    # -- cases -----------------------------------------------------------------------------
    def _notes_terms(self, observed: list[tuple[str, str]]) -> list[tuple[str, str]]:
        c = self.config
        terms = [t for t in observed if c.facial_terms_in_notes or not hpo.is_facial(t[0])]
        if len(terms) > c.max_note_terms:
            # Keep the most specific findings, written in their original order.
            ranked = sorted(range(len(terms)), key=lambda i: (-hpo.information_content(terms[i][0]), i))
            chosen = sorted(ranked[:c.max_note_terms])
            terms = [terms[i] for i in chosen]
        return terms

    def _cases(self, records: list[dict[str, Any]], splits: dict[str, str], *, seed: str, ctx: RunContext) -> list[Case]:
        c = self.config
        photos = Path(c.photos).expanduser() if c.photos else None
        if photos is not None and not photos.is_dir():
            raise MintError(f"task.photos={c.photos}: not a folder (expected <case_id>.png/.jpg files)")
        cases: list[Case] = []
        n_photos = 0
        with ctx.progress() as progress:
            job = progress.add_task("rare-disease: cases", total=len(records))
            for r in records:
                observed = [(t, label or hpo.term_name(t)) for t, label in r["observed"]]
                excluded = [(t, label or hpo.term_name(t)) for t, label in r["excluded"]]
                facial = [t for t, _ in observed if hpo.is_facial(t)]
                self._term_names.update(observed)
                text, in_notes, negated = self._notes(r, observed, excluded, seed=seed)
                image, image_source = self._image(r["id"], facial, photos, seed=seed, ctx=ctx)
                n_photos += image_source == "photo"
                meta = dict(r["meta"])
                meta.update(hpo_ids=[t for t, _ in observed], excluded_hpo_ids=[t for t, _ in excluded],
                            facial_hpo_ids=facial, notes_hpo_ids=[t for t, _ in in_notes],
                            notes_excluded_hpo_ids=[t for t, _ in negated], sex=r["sex"],
                            age_years=r["age_years"], image_source=image_source)
                cases.append(Case(id=r["id"], label_ids=(r["disease_id"],), split=splits[r["id"]],  # type: ignore[arg-type]
                                  text=text, image=image, meta=meta))
                progress.update(job, advance=1)
        if photos is not None:
            ctx.log(f"rare-disease: {n_photos} real photos from {photos}, {len(cases) - n_photos} rendered faces")
        return cases

    def _notes(self, r: dict[str, Any], observed: list[tuple[str, str]], excluded: list[tuple[str, str]], *,
               seed: str) -> tuple[str, list[tuple[str, str]], list[tuple[str, str]]]:
        """The notes the student reads for record ``r``, the terms they mention, and those they negate."""
        c = self.config
        in_notes = self._notes_terms(observed)
        negated = [x for x in excluded if c.facial_terms_in_notes or not hpo.is_facial(x[0])]
        negated = negated[:c.max_excluded_in_notes] if c.excluded_in_notes else []
        rng = random.Random(f"notes:{seed}:{r['id']}")
        text = write_notes(observed=[name for _, name in in_notes], excluded=[name for _, name in negated],
                           sex=r["sex"], age_years=r["age_years"], rng=rng)
        return text, in_notes, negated

    def read_cases(self, *, path: Path, ctx: RunContext) -> list[Case]:
        """Phenopacket JSON files (one file, a folder or a zip) as cases, notes written exactly as ``load`` writes them.

        A diagnosis is optional here (new patients have none); when present it becomes the case's label.
        """
        from mint_rare_disease.phenopackets import read_phenopackets

        packets, skipped = read_phenopackets(path, require_diagnosis=False)
        if not packets:
            reasons = ", ".join(f"{n} {reason}" for reason, n in skipped.items() if n) or "no *.json files"
            raise MintError(f"{path}: no usable phenopacket ({reasons})")
        if sum(skipped.values()):
            ctx.log(f"rare-disease: skipped {sum(skipped.values())} files under {path}: {dict(skipped)}")
        seed = f"{ctx.seed}:{self.config.seed}"
        cases = []
        for p in packets:
            record = {"id": p.id, "sex": p.sex, "age_years": p.age_years}
            observed = [(t, label or hpo.term_name(t)) for t, label in p.observed]
            excluded = [(t, label or hpo.term_name(t)) for t, label in p.excluded]
            text, *_ = self._notes(record, observed, excluded, seed=seed)
            cases.append(Case(id=p.id, label_ids=(p.disease_id,) if p.disease_id else (), split="test", text=text,
                              meta={"source_file": p.source, "hpo_ids": [t for t, _ in observed]}))
        return cases

    def _image(self, case_id: str, facial: list[str], photos: Path | None, *, seed: str,
               ctx: RunContext) -> tuple[str, str]:
        if photos is not None:
            for ext in PHOTO_EXTENSIONS:
                photo = photos / f"{case_id}{ext}"
                if photo.is_file():
                    return str(photo.resolve()), "photo"
        relative = Path("images") / "faces" / f"{_safe_name(case_id)}.png"
        save_face(ctx.path(*relative.parts), facial, key=f"{seed}:{case_id}", size=self.config.image_size)
        return relative.as_posix(), "rendered"

    # -- labels ----------------------------------------------------------------------------
    def _labels(self, kept: list[str], names: dict[str, list[str]], cases: list[Case]) -> LabelSpace:
        train_terms: dict[str, Counter[str]] = defaultdict(Counter)
        for case in cases:
            if case.split == "train":
                for t in case.meta["hpo_ids"]:
                    train_terms[case.label_id][t] += 1
        labels = []
        for disease_id in kept:
            candidates = list(names.get(disease_id, []))
            omim_name = hpo.disease_name(disease_id)
            if omim_name:
                candidates += [hpo.readable_name(omim_name), omim_name]
            candidates = candidates or [disease_id]
            name = candidates[0]
            synonyms, seen = [], {normalize_name(name)}
            for other in candidates[1:]:
                if normalize_name(other) not in seen:
                    seen.add(normalize_name(other))
                    synonyms.append(other)
            profile = hpo.disease_profile(disease_id, self.config.profile_terms)
            if not profile:
                # Not annotated in this HPO release (a newly described disease): profile it from its
                # training cases only, so no test case leaks into the label space.
                common = [t for t, _ in train_terms[disease_id].most_common(self.config.profile_terms)]
                profile = ", ".join(self._term_names.get(t) or hpo.term_name(t) for t in common)
            labels.append(Label(id=disease_id, name=name, synonyms=tuple(synonyms), description=profile))
        return LabelSpace(labels)

    # -- prompts -----------------------------------------------------------------------------
    def prompt(self, *, case: Case, n_answers: int) -> Prompt:
        if not case.text:
            raise ValueError(f"case {case.id!r} has no notes: the rare-disease student reads notes only")
        return self._question(case.text, n_answers)

    def content_free_prompt(self, *, n_answers: int, labels: LabelSpace | None = None) -> Prompt:
        """The same question about notes that say nothing ("N/A", as in Zhao et al. 2021's calibration)."""
        return self._question("N/A", n_answers)

    def _question(self, notes: str, n_answers: int) -> Prompt:
        header = HEADER.format(noun=self.label_noun)
        wanted = "the most likely disease" if n_answers == 1 else f"the {n_answers} most likely diseases"
        text = (f"Patient notes: {notes}\n\n"
                f"Which rare genetic diseases best explain these findings? Answer with the header '{header}' "
                f"followed by a numbered list of {wanted}, one per line.")
        return Prompt(text=text, system=SYSTEM)
