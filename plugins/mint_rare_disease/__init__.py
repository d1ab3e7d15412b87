"""MINT's ``rare-disease`` task: patient notes (+ a face image) -> the rare genetic disease.

Sources: ``task.source=hpo-sim`` (default; patients simulated offline from the HPO's disease
annotations, faces rendered from their facial terms) or ``task.source=phenopackets`` (GA4GH
Phenopacket v2 files, e.g. phenopacket-store). See :mod:`mint_rare_disease.task`.

This module stays light: the ontology, PIL and the task code load only when a run uses the task.
"""

from __future__ import annotations

from mint_core.hookspecs import hookimpl

from mint_rare_disease.config import RareDiseaseConfig

__all__ = ["RareDiseaseConfig", "mint_register_tasks"]


@hookimpl
def mint_register_tasks(register):  # noqa: ANN001 - pluggy passes the core's register callable
    register("rare-disease", _make_task, config=RareDiseaseConfig,
             description="Rare genetic diseases: HPO-based notes + face image (simulated from HPO or phenopackets)",
             # mint compare: DPO (from SFT) at its own rate; at the shared 1e-3 it collapsed into hallucinated
             # names (0.93). benchmarks/method_lr_sweep.py on the 20 validation cases of the demo: 1e-5 top-10
             # 0.45 against 1e-4's 0.35 (both top-1 0.05, well-formed 1.0); README "Text comparison".
             # KTO: the rate its tissue sweep chose (1e-3 stopped it writing lists there). On text no swept
             # setting beat it: from base 2e-4 writes no list either, from SFT 5e-5 scores as SFT does on
             # validation (README "Text comparison"), so the borrowed rate stays.
             demo={"compare": {"learning_rates": "dpo=1e-5,kto=5e-5"}})


def _make_task(config: RareDiseaseConfig):  # noqa: ANN202
    from mint_rare_disease.task import RareDiseaseTask

    return RareDiseaseTask(config)
