"""Which process trains on which features, so that N processes train what one process would.

Under data parallelism (DDP, FSDP, DeepSpeed) accelerate deals the batches of the training order to
the processes in turn: batch ``k`` of size ``b`` goes to process ``k mod N``. MINT fixes that
order itself (:class:`FeatureOrder`):

- every feature belongs to one process for the whole run: feature ``i`` to process ``(i // b) mod N``
  (:func:`owner`), so the frozen-bottom cache of a process holds its own features only;
- ``shuffle=False``: the order is the file order, so the step-``s`` batches of N processes at batch
  ``b`` are exactly the step-``s`` batch of one process at batch ``N * b`` (same loss, same adapter);
- ``shuffle=True``: each process's features are reshuffled every epoch (seeded by the seed, the
  epoch and the process), and the order interleaves the processes' batches so the dealing above
  hands each process its own.

With one process both reduce to what the Trainer does by itself: the file order, or for epoch ``e``
``torch.randperm(n)`` seeded with ``seed + e`` (its ``RandomSampler`` under accelerate), so a
one-process run trains exactly what it trained before this order existed.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


def owner(index: int, *, batch_size: int, world_size: int) -> int:
    """The process that trains feature ``index``."""
    return (index // max(1, batch_size)) % max(1, world_size)


def owned(n: int, *, rank: int, batch_size: int, world_size: int) -> list[int]:
    """The features process ``rank`` trains on, in file order."""
    return [i for i in range(n) if owner(i, batch_size=batch_size, world_size=world_size) == rank]


class FeatureOrder(Sampler[int]):
    """The global training order (see the module docstring); accelerate splits it into the processes' batches."""

    def __init__(self, n: int, *, batch_size: int, world_size: int = 1, shuffle: bool = True, seed: int = 0):
        self.n, self.batch_size, self.world_size = int(n), max(1, int(batch_size)), max(1, int(world_size))
        self.shuffle, self.seed, self.epoch = bool(shuffle), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer (through accelerate) before each epoch."""
        self.epoch = int(epoch)

    def order(self) -> list[int]:
        shards = [owned(self.n, rank=r, batch_size=self.batch_size, world_size=self.world_size)
                  for r in range(self.world_size)]
        if self.shuffle:
            for r, shard in enumerate(shards):
                generator = torch.Generator().manual_seed(self.seed + self.epoch + 1_000_003 * r)
                shards[r] = [shard[i] for i in torch.randperm(len(shard), generator=generator).tolist()]
        out: list[int] = []
        b = self.batch_size
        for step in range(max((len(s) + b - 1) // b for s in shards)):
            for shard in shards:
                out += shard[step * b:(step + 1) * b]
        return out

    def __iter__(self) -> Iterator[int]:
        return iter(self.order())

    def __len__(self) -> int:
        return self.n
