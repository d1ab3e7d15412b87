"""How much can a face add to the notes? Naive Bayes on the HPO terms each view carries, read perfectly.

The rare-disease task writes the notes' terms (``notes_hpo_ids``) and, separately, the facial
findings that only the face shows (``facial_hpo_ids``) into each case's metadata. This benchmark
fits :class:`mint_hpo.scoring.NaiveBayes` (the ``hpo`` teacher's model, same ``alpha``) on the
train + val cases of a run directory and reports test top-1 (95% Wilson interval) from

- ``notes``: the notes' terms and negations (what the ``hpo`` baseline reads);
- ``face_terms``: the facial findings alone, as if the face were read without error;
- ``notes_and_face_terms``: both: the ceiling of a teacher whose face branch reads every finding.

The gap between ``notes`` and ``notes_and_face_terms`` bounds what a perfect face reader adds over
the ``hpo`` baseline; the gestalt teacher's face CNN reads far less (its face-only top-1 is in
``metrics.json``).

    python benchmarks/face_ceiling.py runs/s0 runs/s1 runs/s2 --json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from orpo_step import report  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories where `mint teach` has run")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)

    from rich.console import Console

    from mint_core.config import load_config_file, resolve
    from mint_core.pipeline import Run, with_intervals
    from mint_core.registry import get_registry
    from mint_hpo import HpoConfig
    from mint_hpo.scoring import NaiveBayes

    registry = get_registry()
    alpha = HpoConfig().alpha  # the `hpo` teacher's smoothing
    views = {"notes": ("notes_hpo_ids", "notes_excluded_hpo_ids"), "face_terms": ("facial_hpo_ids", None),
             "notes_and_face_terms": ("hpo_ids", "notes_excluded_hpo_ids")}
    result: dict = {"benchmark": "face_ceiling", "alpha": alpha}
    for run_dir in args.run_dirs:
        config = resolve(registry, file=load_config_file(run_dir / "config.yaml"))
        data = Run(registry=registry, config=config, run_dir=run_dir, console=Console(stderr=True, quiet=True)).load_data()
        ids = data.labels.ids
        fit_on, test = data.split("train") + data.split("val"), data.split("test")
        for view, (observed, excluded) in views.items():
            model = NaiveBayes(ids, alpha=alpha).fit(
                [(case.label_id, case.meta[observed]) for case in fit_on])
            hits = 0
            for case in test:
                scores = model.log_scores(case.meta[observed], case.meta[excluded] if excluded else [])
                hits += ids[max(range(len(ids)), key=scores.__getitem__)] == case.label_id
            # Test top-1 with its 95% Wilson interval, as `mint teach` reports the teachers.
            result[f"{run_dir.name}_{view}"] = with_intervals({"top1": round(hits / len(test), 3), "n": len(test)})
    return report(result, as_json=args.json)


if __name__ == "__main__":
    main()
