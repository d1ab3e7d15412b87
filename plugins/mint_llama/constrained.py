"""Constrained greedy decoding: the student may write only the answer format listing label names.

The answer is a fixed header line, then numbered lines ``i. NAME\\n`` whose names come from the
label space, each at most once, then the end-of-turn token. :class:`AnswerAutomaton` turns an
:class:`~mint_core.components.AnswerConstraint` into token ids once (one prefix trie over the
names' token ids per item number, since ``1.`` and ``2.`` tokenize differently) and, given the
tokens generated so far, says which token may come next. ``transformers``' ``generate`` applies it
through ``prefix_allowed_tokens_fn``; greedy decoding then picks the likeliest allowed token.

Each line is tokenized on its own. For byte-level BPE tokenizers that split on newlines (GPT-2,
Llama 3, SmolLM2) that is exactly how the whole answer tokenizes; for others the text is still
the same, only the split into tokens may differ from the tokenizer's own.

Trade-off against free generation: nothing can be hallucinated and every answer is well-formed,
but the model is forced onto the label space even when its free answer would have named
something else (that is the point for evaluation, and a loss when the label space is wrong for
the case), and each step costs a Python walk over the generated tokens (small next to a forward).
An answer cut by ``max_new_tokens`` ends mid-name; leave room for ``max_items`` lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from mint_core.components import AnswerConstraint


@dataclass
class _Node:
    children: dict[int, "_Node"] = field(default_factory=dict)
    #: Indices of the names whose line passes through this node (to skip names already listed).
    names: set[int] = field(default_factory=set)
    #: The name whose line ends here (a line ends with its newline, so it is never a prefix of another).
    end: int | None = None


def _trie(lines: Sequence[list[int]]) -> _Node:
    root = _Node()
    for index, ids in enumerate(lines):
        node = root
        node.names.add(index)
        for token in ids:
            node = node.children.setdefault(token, _Node())
            node.names.add(index)
        node.end = index
    return root


class AnswerAutomaton:
    """Which token may follow a partial answer, for one :class:`AnswerConstraint` and tokenizer.

    ``encode(text)`` gives a text's token ids without special tokens; ``stop_ids`` are the tokens
    that end the turn (the first is the one written).
    """

    def __init__(self, constraint: AnswerConstraint, *, encode: Callable[[str], list[int]], stop_ids: Sequence[int]):
        if not constraint.names:
            raise ValueError("constrained generation needs at least one allowed name")
        self.constraint = constraint
        self.encode = encode
        self.end = int(stop_ids[0])
        self.stop_ids = set(int(t) for t in stop_ids)
        self.header = encode(constraint.header())
        self._tries: dict[int, _Node] = {}

    def trie(self, number: int) -> _Node:
        if number not in self._tries:
            self._tries[number] = _trie([self.encode(self.constraint.item(number, name))
                                         for name in self.constraint.names])
        return self._tries[number]

    def allowed(self, generated: Sequence[int]) -> list[int]:
        """Tokens allowed after ``generated`` (the answer's tokens so far, prompt excluded)."""
        if any(int(t) in self.stop_ids for t in generated):
            return [self.end]  # finished: generate pads after the end itself
        n_header = len(self.header)
        if len(generated) < n_header:
            return [self.header[len(generated)]]
        number, used, node = 1, set(), None
        for token in generated[n_header:]:
            node = (node or self.trie(number)).children.get(int(token))
            if node is None:  # cannot happen under the constraint; stop rather than guess
                return [self.end]
            if node.end is not None:
                used.add(node.end)
                number, node = number + 1, None
        if node is None:  # between lines: a new line, or the end after at least one name
            if number > self.constraint.max_items:
                return [self.end]
            node = self.trie(number)
            return [t for t, child in node.children.items() if child.names - used] + ([self.end] if number > 1 else [])
        return [t for t, child in node.children.items() if child.names - used]


def prefix_allowed_tokens_fn(automaton: AnswerAutomaton, prompt_width: int) -> Callable:
    """The callback ``transformers.generate`` takes: ``fn(batch_id, input_ids) -> allowed token ids``.

    Prompts are left-padded to ``prompt_width``, so a row's answer starts at that column.
    """
    def allowed(batch_id: int, input_ids) -> list[int]:
        return automaton.allowed(input_ids[prompt_width:].tolist())

    return allowed
