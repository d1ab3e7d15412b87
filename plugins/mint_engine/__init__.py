"""MINT's training engine: the packed preference trainers that optimizer plugins register on.

The engine is a library, not a plugin: it registers nothing. The built-in optimizers (``orpo`` in
``mint_orpo``; ``dpo``, ``kto``, ``sft`` in ``mint_trl``) and third-party ones (``examples/mint-simpo``)
are thin plugins that declare their options and hand training to it.

What it does for every objective: each preference pair is one row ``[prompt, chosen, rejected]``
(the prompt computed once, :mod:`mint_engine.packing`), the vocabulary projection runs only where a
log-probability is read, the frozen bottom layers' states are computed once per pair
(:mod:`mint_engine.frozen_cache`), training resumes from its newest checkpoint
(:mod:`mint_engine.checkpoints`), and one process writes the run directory when several train
together (:mod:`mint_engine.sharding`).

The extension API (see CONTRIBUTING.md, "Writing an optimizer"):

- :class:`TrainingOptions` / :class:`PackedOptions` (:mod:`mint_engine.options`): the common options;
  a plugin's config dataclass subclasses one. Light: safe to import in a plugin's ``__init__``.
- :class:`PackedTrainer` (:mod:`mint_engine.trainer`): subclass it and implement
  ``pair_loss(stats) -> (loss, metrics)``; ``stats`` holds each pair's mean and summed answer
  log-probabilities and the batch NLL (:func:`mint_engine.packing.pair_statistics`).
- :class:`PackedOptimizer` (:mod:`mint_engine.optimizer`): the optimizer component; subclass it and
  return your trainer class from ``trainer_class()``.
- The built-in objectives to read or extend: :mod:`mint_engine.orpo`, :mod:`mint_engine.dpo`,
  :mod:`mint_engine.kto`, :mod:`mint_engine.sft`.

Heavy names (torch, transformers) load on first access, so ``from mint_engine import TrainingOptions``
stays as light as the options module.
"""

from __future__ import annotations

import importlib
from typing import Any

from mint_engine.options import PackedOptions, TrainingOptions

_LAZY = {
    "PackedTrainer": "mint_engine.trainer",
    "PackedOptimizer": "mint_engine.optimizer",
    "OrpoTrainer": "mint_engine.orpo",
    "OrpoOptimizer": "mint_engine.orpo",
    "pair_statistics": "mint_engine.packing",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mint_engine' has no attribute {name!r}")


__all__ = ["OrpoOptimizer", "OrpoTrainer", "PackedOptimizer", "PackedOptions", "PackedTrainer", "TrainingOptions",
           "pair_statistics"]
