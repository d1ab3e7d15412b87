"""Preference builders: turn a teacher's rankings into ORPO/DPO pairs, KTO examples or SFT targets.

- ``topk`` (pairs): chosen = the teacher's top-k, rejected = its bottom-q (or the hard negatives
  just below rank k).
- ``kto`` (unpaired): the same two answers as separate desirable / undesirable examples.
- ``onpolicy`` (pairs): ``topk``'s chosen against the student's own greedy list (:mod:`mint_builders.onpolicy`).
- ``sft`` (supervised): the same chosen list as ``topk``, as a supervised target.

Every builder shares ``k``, ``truth_first`` and ``force_true_label`` (``mint compare`` hands the run's
values to every builder it uses), so every method of a grid is trained on the same target lists.

Every builder is deterministic (no sampling; ``onpolicy`` decodes greedily), so a resumed run rebuilds
the same examples.
"""

from __future__ import annotations

from mint_core.hookspecs import hookimpl

from mint_builders.config import KTOConfig, OnPolicyConfig, SFTConfig, TopKConfig

__all__ = ["KTOConfig", "OnPolicyConfig", "SFTConfig", "TopKConfig"]


@hookimpl
def mint_register_builders(register):
    register("topk", _make_topk, config=TopKConfig,
             description="Pairs: chosen = teacher's top-k, rejected = its bottom-q or hard negatives")
    register("kto", _make_kto, config=KTOConfig,
             description="Unpaired KTO examples: top-k answer desirable, bottom-q/hard answer undesirable")
    register("onpolicy", _make_onpolicy, config=OnPolicyConfig,
             description="Pairs: topk's chosen list against the student's own greedy list where it differs (cached)")
    register("sft", _make_sft, config=SFTConfig,
             description="SFT targets: topk's chosen list (by default the true label first, then the teacher's best)")


def _make_topk(config: TopKConfig):
    from mint_builders.builders import TopKBuilder
    return TopKBuilder(config)


def _make_kto(config: KTOConfig):
    from mint_builders.builders import KTOBuilder
    return KTOBuilder(config)


def _make_onpolicy(config):
    from mint_builders.onpolicy import OnPolicyBuilder
    return OnPolicyBuilder(config)


def _make_sft(config: SFTConfig):
    from mint_builders.builders import SFTBuilder
    return SFTBuilder(config)
