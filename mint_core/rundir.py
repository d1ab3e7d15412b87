"""Run-directory bookkeeping shared by the stages: fingerprints, seeding, the environment record.

A finished stage is recorded in ``stages.json`` with a :func:`fingerprint` of the configuration it
depends on; the same fingerprint later means "done, skip" (see :mod:`mint_core.pipeline`).
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
from importlib import metadata
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from mint_core import io
from mint_core.registry import MintError, Registry
from mint_core.types import Case, LabelSpace, Ranking, TaskData

STAGES = ("teach", "prefs", "train", "eval")
BASE_ROLE = "base"
#: What to do about a damaged bookkeeping file. A corrupt stages.json is an error, not "absent":
#: treating it as absent would silently redo hours of finished stages; deleting it is one command.
STAGES_HINT = "It records which stages finished: delete it to re-run every stage."
TEACH_HINT = "Run 'mint teach' again on this run directory to rewrite it (delete stages.json first)."


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (when importable) so a config + seed reproduces a run."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass


def fingerprint(*parts: Any) -> str:
    blob = json.dumps(_canonical(parts), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _canonical(value: Any) -> Any:
    """``1`` and ``1.0`` are one option value: a float option whose default is written as an int
    (``epochs: float = 1``) comes back as ``1.0`` from the saved config.yaml, and the resumed run
    must not take that for a changed option (it would discard the killed run's checkpoints)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    return value


def check_rankings(rankings: Sequence[Ranking], data: TaskData) -> None:
    """A teacher must rank every label for every case: fail early, naming the first offender."""
    ids = set(data.labels.ids)
    seen = {r.case_id for r in rankings}
    missing = [c.id for c in data.cases if c.id not in seen]
    if missing:
        raise MintError(f"The teacher returned no ranking for {len(missing)} case(s), e.g. {missing[:3]}.")
    for ranking in rankings:
        if set(ranking.label_ids) != ids or len(ranking.label_ids) != len(ids):
            raise MintError(f"The teacher's ranking for case {ranking.case_id!r} does not cover the label space "
                            f"exactly once ({len(ranking.label_ids)} entries for {len(ids)} labels).")


def environment(registry: Registry) -> dict[str, Any]:
    """Versions of the stack and of every plugin, for env.json."""
    versions = {}
    for dist in ("torch", "transformers", "trl", "peft", "accelerate", "timm", "mint-toolkit"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": versions,
            "plugins": [p.to_dict() for p in registry.plugins.values()]}


def read_task_data(run_dir: Path) -> TaskData:
    """The task data ``teach`` saved: ``cases.jsonl`` (cases with their split), ``labels.json``, ``task.json``."""
    cases_path = run_dir / "cases.jsonl"
    if not cases_path.exists():
        raise MintError(f"{cases_path} is missing: run 'mint teach --run-dir {run_dir}' first.")
    meta = io.read_json(run_dir / "task.json", expect=dict, hint=TEACH_HINT)
    if not isinstance(meta.get("student_modality"), str) or not isinstance(meta.get("info"), dict):
        raise MintError(f"{run_dir / 'task.json'}: needs 'student_modality' and 'info'. {TEACH_HINT}")
    labels_path = run_dir / "labels.json"
    try:
        labels = LabelSpace.from_list(io.read_json(labels_path, expect=list, hint=TEACH_HINT))
    except (KeyError, TypeError, ValueError) as exc:
        raise MintError(f"{labels_path}: not a list of labels with 'id' and 'name' ({exc}). {TEACH_HINT}") from None
    cases = io.read_jsonl(cases_path, parse=Case.from_dict)
    return TaskData(labels=labels, cases=cases, student_modality=meta["student_modality"], info=meta["info"])


def read_rankings(run_dir: Path) -> dict[str, Ranking]:
    """The teacher's rankings ``teach`` saved, by case id."""
    path = run_dir / "rankings.jsonl"
    if not path.exists():
        raise MintError(f"{path} is missing: run 'mint teach --run-dir {run_dir}' first.")
    return {r.case_id: r for r in io.read_jsonl(path, parse=Ranking.from_dict)}


def discard_stale_training(out: Path, fp: str, *, log: Callable[[str], None]) -> None:
    """Checkpoints resume a killed run only if they came from the same configuration: a changed
    option (more steps, another learning rate) starts training afresh instead of resuming."""
    marker = out / "fingerprint.json"
    if marker.exists() and io.read_json(marker, expect=dict).get("fingerprint") != fp:
        log(f"train: the configuration changed since {out.name}'s checkpoints; training afresh")
        for stale in ("checkpoints", "adapter", "metrics.jsonl", "result.json"):
            target = out / stale
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    io.write_json(marker, {"fingerprint": fp})
