"""The rare-disease task's splits: :mod:`mint_core.splits` (shared with the ``table`` task), re-exported."""

from mint_core.splits import SPLIT_BY, filter_labels, grouped_split, stratified_split

__all__ = ["SPLIT_BY", "filter_labels", "grouped_split", "stratified_split"]
