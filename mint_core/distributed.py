"""Several processes, one run directory: who writes, who waits, and how the processes' results meet.

A launcher (``torchrun``, ``accelerate launch``, DeepSpeed's) starts N copies of the same ``mint``
command with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment. MINT's rule:

- **Process 0 writes the run directory**; the others never write there (artifacts, metrics,
  checkpoints' weights, adapters, ``stages.json``, logs, the terminal). Stages that are cheap or
  cannot be split (teach, prefs) run on process 0 while the others wait at a barrier
  (:func:`on_main`); then every process reads what it wrote.
- **Decisions are process 0's**: whether a stage is already done is read by process 0 and sent to
  the others (:func:`broadcast`), so no process skips a stage the others run.
- **Training** runs on every process (data-parallel, the Trainer's DDP / FSDP / DeepSpeed);
  **evaluation** splits the cases by batches (:func:`shard`) and gathers every process's answers
  on process 0 in the one-process order (:func:`gather`), so ``metrics.json`` is the same.

Without a launcher (``WORLD_SIZE`` unset or 1) every function here is a no-op and imports nothing:
torch is imported only when several processes run.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from datetime import timedelta
from typing import Any, Callable, NoReturn, Sequence, TypeVar

from mint_core.registry import MintError

T = TypeVar("T")

#: Teaching a large cohort on process 0 can take many minutes while the others wait at a barrier:
#: the default 30-minute collective timeout would kill a whole-phenopacket-store run.
TIMEOUT = timedelta(hours=6)


def _env_int(*names: str, default: int) -> int:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                continue
    return default


def world_size() -> int:
    """How many processes run this command (1 without a launcher)."""
    return max(1, _env_int("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", default=1))


def rank() -> int:
    """This process's global index, 0 to ``world_size() - 1``."""
    return _env_int("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", default=0)


def local_rank() -> int:
    """This process's index on its machine (its GPU): ``LOCAL_RANK``."""
    return _env_int("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", default=0)


def is_main() -> bool:
    """Whether this process writes the run directory (process 0)."""
    return rank() == 0


def active() -> bool:
    return world_size() > 1


def setup() -> None:
    """Join the process group once (gloo on CPU, NCCL and gloo with GPUs); a no-op for one process.

    The Trainer (accelerate) finds the group already there and uses it.
    """
    if not active():
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        backend = "cpu:gloo,cuda:nccl"  # objects travel over gloo, tensors over NCCL
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    # Leave the group before the interpreter finalizes. Otherwise gloo's worker threads may still be
    # freeing finished work (a broadcast's tensors, owned by Python objects) when Python can no longer
    # hand them the GIL; the thread then exits mid-destructor and the process aborts with "terminate
    # called without an active exception" (a core dump of the two-process test showed exactly this).
    atexit.register(_leave_group)


def _leave_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def exit_process(status: int) -> NoReturn:
    """End a process of a multi-process run with ``status``, skipping the interpreter's finalization.

    Leaving the group at exit (:func:`setup`) was not enough: a CI run (on eea0ccd) still aborted with
    "terminate called without an active exception" after the last method had trained and written
    everything, most likely a native thread still tearing down while Python finalized (not
    reproduced since: 0 aborts in 20 two-process runs without this, 0 in 23 with it). So every
    output is flushed, the log files closed and the group left here, and the process then ends at
    once (``os._exit``): nothing is left for finalization to race with. Other ``atexit`` handlers
    do not run; MINT registers none but this group's, and writes every artifact before returning.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing left to save
            pass
    logging.shutdown()
    try:
        if "torch.distributed" in sys.modules:  # a command that failed early never imported torch
            _leave_group()
    except Exception:  # noqa: BLE001 - a peer already gone; the status still has to reach the launcher
        pass
    os._exit(status)


def barrier() -> None:
    """Wait until every process got here."""
    if active():
        setup()
        import torch.distributed as dist

        dist.barrier()


def broadcast(value: T) -> T:
    """Process 0's ``value`` on every process (any picklable object)."""
    if not active():
        return value
    setup()
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: T) -> list[T]:
    """Every process's ``value``, in rank order, on every process."""
    if not active():
        return [value]
    setup()
    import torch.distributed as dist

    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


class MainProcessFailed(MintError):
    """Raised on the other processes when process 0 failed a step they waited for (it reports why)."""


def on_main(step: Callable[[], T]) -> T | None:
    """Run ``step`` on process 0 while the others wait; their result is ``None``.

    When ``step`` fails on process 0, it raises there as usual and the others raise
    :class:`MainProcessFailed`, so no process is left waiting at a barrier for one that is gone.
    """
    if not active():
        return step()
    result, failure = None, None
    if is_main():
        try:
            result = step()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others were told
            failure = exc
    message = broadcast(None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    if message is not None:
        raise MainProcessFailed(f"process 0 stopped: {message}")
    return result


def shard(items: Sequence[T], batch_size: int) -> list[int]:
    """Indices of ``items`` this process handles: whole batches ``rank, rank + N, rank + 2N, ...``.

    Splitting by batches keeps each batch exactly what one process would have formed, so batched
    work (left-padded greedy generation) gives the same answers whatever the number of processes.
    """
    size = max(1, int(batch_size))
    starts = range(rank() * size, len(items), world_size() * size)
    return [i for start in starts for i in range(start, min(start + size, len(items)))]


def map_sharded(items: Sequence[T], batch_size: int, work: Callable[[list[T]], list[Any]]) -> list[Any]:
    """``work(items)`` split by :func:`shard` across the processes, gathered back in ``items``' order."""
    if not active():
        return list(work(list(items)))
    mine = shard(items, batch_size)
    results = list(work([items[i] for i in mine])) if mine else []
    if len(results) != len(mine):
        raise RuntimeError(f"{len(results)} results for {len(mine)} items")
    out: list[Any] = [None] * len(items)
    for indices, values in gather((mine, results)):
        for i, value in zip(indices, values):
            out[i] = value
    return out
