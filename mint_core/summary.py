"""A summary of built preference examples, for the run log, ``prefs_summary.json`` and report.md.

It lives in the core because the pipeline writes it for every builder; it reads only the
documented ``PreferenceExample.meta`` keys (any builder may set them, missing ones are skipped).
"""

from __future__ import annotations

from collections import Counter
from statistics import mean
from typing import Any, Sequence

from mint_core.types import PreferenceExample


def summarize(examples: Sequence[PreferenceExample]) -> dict[str, Any]:
    """Counts and teacher-rank statistics of ``examples`` (any builder's; missing meta is skipped).

    - ``by_kind``: examples per kind (``pair``, ``unpaired``, ``sft``); ``by_label`` for KTO's
      desirable/undesirable split.
    - ``mean_true_label_rank``: the teacher's mean 1-based rank of the true label.
    - ``true_label_in_chosen``: share of cases whose chosen answer (desirable / SFT completion)
      lists the true label; ``mean_true_label_position``: its mean 1-based position there.
    - ``true_label_forced``: cases where the true label had to be inserted (teacher ranked it below k).
    - ``chosen_starts_with_truth``: share of cases whose chosen list starts with the true label: 1.0 means
      the preferences carry the label and little else (a teacher that memorised its training cases).
    - ``true_label_position_counts``: 1-based position of the truth in the chosen list -> cases
      (``"absent"`` when it is not there); ``teacher_rank_counts``: the same for the teacher's ranking
      (``"11+"`` beyond rank 10), so a reader sees where the truth sits before any forcing.
    """
    by_kind = Counter(ex.kind for ex in examples)
    by_label = Counter(str(ex.label).lower() for ex in examples if ex.kind == "unpaired")
    # One record per case: KTO writes two examples per case with the same meta.
    per_case: dict[str, dict[str, Any]] = {}
    for ex in examples:
        per_case.setdefault(ex.case_id, ex.meta or {})
    metas = list(per_case.values())
    ranks = [m["true_label_rank"] + 1 for m in metas if m.get("true_label_rank") is not None]
    in_chosen = [bool(m["true_label_in_chosen"]) for m in metas if "true_label_in_chosen" in m]
    positions = [m["true_label_position"] + 1 for m in metas if m.get("true_label_position") is not None]
    forced = [bool(m["true_label_forced"]) for m in metas if "true_label_forced" in m]
    ks = sorted({m["k"] for m in metas if "k" in m})
    builders = sorted({m["builder"] for m in metas if "builder" in m})
    position_counts = Counter(str(m["true_label_position"] + 1) if m.get("true_label_position") is not None
                              else "absent" for m in metas if "true_label_position" in m)
    rank_counts = Counter(str(r) if r <= 10 else "11+" for r in ranks)

    def _mean(values):
        return round(mean(values), 4) if values else None

    return {
        "n_examples": len(examples),
        "n_cases": len(per_case),
        "by_kind": dict(by_kind),
        **({"by_label": dict(by_label)} if by_label else {}),
        "builders": builders,
        "k": ks[0] if len(ks) == 1 else ks,
        "mean_true_label_rank": _mean(ranks),
        "true_label_in_chosen": _mean([float(v) for v in in_chosen]),
        "mean_true_label_position": _mean(positions),
        "true_label_forced": sum(forced),
        "true_label_forced_share": _mean([float(v) for v in forced]),
        "chosen_starts_with_truth": _mean([float(m.get("true_label_position") == 0) for m in metas
                                           if "true_label_position" in m]),
        "true_label_position_counts": _sorted_counts(position_counts),
        "teacher_rank_counts": _sorted_counts(rank_counts),
    }


def _sorted_counts(counts: Counter[str]) -> dict[str, int]:
    """Numeric keys in numeric order, then the others ("11+", "absent")."""
    return dict(sorted(counts.items(), key=lambda kv: (not kv[0].isdigit(), int(kv[0]) if kv[0].isdigit() else 0, kv[0])))
