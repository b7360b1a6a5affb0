"""Which process this is in a launch, and the few collectives the recipe needs outside the Trainer."""

import os
import resource
import sys
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist

from tuning.runtime.errors import DataError

T = TypeVar("T")


def global_rank() -> int:
    """This process's rank among all processes of the launch (0 without a launcher)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's index on its machine: the device it binds."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return global_rank() == 0


def note(message: str) -> None:
    """A one-line note on stderr, printed by the first process only."""
    if is_main_process():
        print(f"note: {message}", file=sys.stderr, flush=True)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def leave_process_group() -> None:
    """All processes leave the process group together, after the last collective (collective).

    A process that exits while another still holds its connections can abort at exit ("terminate called without an
    active exception", seen with gloo under ZeRO-3).
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _launched() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_from_main(value: T) -> T:
    """Rank 0's `value` on every process (any picklable object); collective."""
    if not _launched():
        return value
    holder = [value if is_main_process() else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_from_all(value: T) -> list[T]:
    """Every process's `value`, in rank order, on every process; collective."""
    if not _launched():
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def decided_by_main(decide: Callable[[], T]) -> T:
    """`decide()` run once, on rank 0, and its result on every process.

    A DataError or OSError of `decide()` is raised on every process as a DataError, after they all left the process
    group together (no process waits for the others, none aborts at exit).
    """
    outcome: tuple[bool, object] | None = None
    if is_main_process():
        try:
            outcome = (True, decide())
        except (DataError, OSError) as error:
            outcome = (False, str(error))
    succeeded, value = broadcast_from_main(outcome)
    if not succeeded:
        leave_process_group()
        raise DataError(value)
    return value


def max_over_processes(value: int, device: torch.device) -> int:
    tensor = torch.tensor(value, dtype=torch.long, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def peak_host_memory_bytes() -> int:
    """Peak resident memory of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
