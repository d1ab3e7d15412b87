"""The ``predictions`` teacher: rankings precomputed by any model (GestaltMML, a lab's own), read from a file.

Plug in another model's output with ``teacher=predictions teacher.path=preds.jsonl``; the
accepted formats are documented in :mod:`mint_predictions.formats`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mint_core.hookspecs import hookimpl


@dataclass
class PredictionsConfig:
    path: str = field(default="", metadata={
        "help": "Rankings file: JSONL ({case_id, labels:[...]} or {case_id, scores:{label: score}}) or CSV/TSV "
                "(case_id,rank,label | case_id,label,score | case_id,<label1>,<label2>,... of scores). "
                "Labels by id or name."})
    higher_is_better: bool = field(default=True, metadata={
        "help": "For score formats: true when a higher score means more likely (probabilities, logits); "
                "false for distances."})
    allow_missing: bool = field(default=False, metadata={
        "help": "Allow cases without a prediction: they get the label-space order (no information) and a warning."})


@hookimpl
def mint_register_teachers(register):
    register("predictions", _make_predictions, config=PredictionsConfig,
             description="Precomputed rankings from a CSV/JSONL file (any model's output, e.g. GestaltMML)")


def _make_predictions(config: PredictionsConfig):
    from mint_predictions.teacher import PredictionsTeacher
    return PredictionsTeacher(config)
