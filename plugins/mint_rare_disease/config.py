"""Options of the ``rare-disease`` task (``task.NAME=VALUE``). Kept free of heavy imports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

RELEASE_URL = "https://github.com/monarch-initiative/phenopacket-store/releases/latest/download/all_phenopackets.zip"
SOURCES = ("hpo-sim", "phenopackets")


def _opt(default, help_text: str):  # noqa: ANN001, ANN202 - dataclass field helper
    return field(default=default, metadata={"help": help_text})


@dataclass
class RareDiseaseConfig:
    source: Literal["hpo-sim", "phenopackets"] = _opt("hpo-sim", "Where cases come from: 'hpo-sim' (simulated from HPO disease annotations, "
                                  "offline) or 'phenopackets' (GA4GH Phenopacket v2 files)")
    path: str = _opt("", "phenopackets: a folder of phenopacket JSON (phenopacket-store layout GENE/phenopackets/"
                         "*.json) or all_phenopackets.zip; empty = download the latest phenopacket-store release "
                         "once into ~/.cache/mint")
    download_url: str = _opt(RELEASE_URL, "phenopackets: release archive downloaded when task.path is empty")
    photos: str = _opt("", "Folder of real face photos named <case_id>.png/.jpg/.jpeg; they replace rendered faces")
    facial_terms_in_notes: bool = _opt(False, "Also write facial findings in the notes (by default only the face "
                                              "image shows them)")
    excluded_in_notes: bool = _opt(True, "Write excluded findings as negations ('No seizures.')")
    max_note_terms: int = _opt(10, "At most this many findings in the notes (the most specific ones), to keep "
                                   "prompts short")
    max_excluded_in_notes: int = _opt(3, "At most this many negated findings in the notes")
    # hpo-sim
    n_diseases: int = _opt(20, "hpo-sim: number of diseases (drawn by seed from the disease pool)")
    cases_per_disease: int = _opt(12, "hpo-sim: simulated patients per disease")
    diseases: str = _opt("", "hpo-sim: comma-separated OMIM ids to simulate instead of drawing from the pool")
    similar_diseases: bool = _opt(True, "hpo-sim: draw a group of related diseases (an anchor and diseases sharing "
                                        "many annotated terms with it) rather than unrelated ones")
    min_disease_terms: int = _opt(15, "hpo-sim pool: OMIM diseases with at least this many annotated phenotype terms")
    min_disease_facial_terms: int = _opt(4, "hpo-sim pool: ... and at least this many facial terms")
    min_terms: int = _opt(3, "hpo-sim: fewest non-facial findings per patient")
    max_terms: int = _opt(7, "hpo-sim: most non-facial findings per patient")
    min_facial_terms: int = _opt(3, "hpo-sim: fewest facial findings per patient (a disease's facial profile is its gestalt: "
                                          "a face showing 1-2 findings says little)")
    max_facial_terms: int = _opt(7, "hpo-sim: most facial findings per patient")
    imprecision: float = _opt(0.3, "hpo-sim: probability a finding is recorded as its parent term")
    noise_terms: int = _opt(2, "hpo-sim: up to this many unrelated findings per patient")
    noise_prob: float = _opt(0.3, "hpo-sim: probability of each unrelated finding")
    max_excluded: int = _opt(2, "hpo-sim: up to this many pertinent negatives per patient")
    # label space and splits
    min_cases_per_disease: int = _opt(3, "Drop diseases with fewer cases (at least 2: one to train, one to test)")
    max_diseases: int = _opt(0, "Keep at most this many diseases, those with most cases (0 = all)")
    split_by: str = _opt("publication", "phenopackets: keep cases of one 'publication' (PMID from the file name "
                                        "or id) or one 'gene' (phenopacket-store folder) in one split, for diseases "
                                        "with two or more of them (the others fall back to the case split); 'case' "
                                        "splits cases independently. hpo-sim always splits by case")
    test_fraction: float = _opt(0.25, "Share of each disease's cases in the test split (at least one)")
    val_fraction: float = _opt(0.1, "Share of each disease's cases in the validation split (teacher early stopping)")
    image_size: int = _opt(128, "Side in pixels of rendered face images")
    profile_terms: int = _opt(10, "Phenotype terms in each label's description (its profile)")
    seed: int = _opt(0, "Combined with the run seed for simulation, faces and splits")
