"""Every collective the training loop issues, with its tensors on the training device.

NCCL serves only CUDA tensors: an all-reduce of a CPU tensor in an NCCL group fails with "No backend type
associated with device type cpu" (gloo serves both). So the loop never calls ``torch.distributed``
itself: metric and validation sums, the batch-health flag, the early-stop decision, the auto batch size
and barriers all go through this module, which builds each tensor on ``device`` (the worker's training
device: ``cuda:<local rank>`` under NCCL, ``cpu`` under gloo) and refuses, with one clear line, a device
the process group has no backend for.

Without an initialised process group every function is the identity (one worker, local mode). With a
group of any size (also one worker with DDP forced on) the collective runs, so a one-GPU check exercises
the same NCCL calls as a multi-GPU run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = [
    "any_across_workers",
    "barrier",
    "broadcast_from_rank_zero",
    "distributed_is_active",
    "min_across_workers",
    "sum_across_workers",
]


def distributed_is_active() -> bool:
    """True when a default process group exists (Ray Train with more than one worker, or DDP forced on)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _collective_tensor(values: Sequence[float], device: torch.device | str) -> torch.Tensor:
    """``values`` as a float64 tensor on ``device``, after checking the group can reduce on that device."""
    import torch
    import torch.distributed as dist

    target = torch.device(device)
    served = getattr(dist.group.WORLD, "_device_types", None)
    if served is not None and target.type not in {d.type for d in served}:
        names = ", ".join(sorted({d.type for d in served}))
        raise RuntimeError(
            f"the process group (backend {dist.get_backend()}) serves only {names} tensors, but training runs on "
            f"{target}: the collective would fail; set scaling.backend to match scaling.use_gpu"
        )
    return torch.tensor(list(values), dtype=torch.float64, device=target)


def sum_across_workers(values: Sequence[float], device: torch.device | str) -> list[float]:
    """Element-wise sum over all workers (``values`` itself without a process group)."""
    if not distributed_is_active():
        return [float(v) for v in values]
    import torch.distributed as dist

    tensor = _collective_tensor(values, device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [float(v) for v in tensor.cpu().tolist()]


def min_across_workers(value: float, device: torch.device | str) -> float:
    """The smallest ``value`` over all workers (e.g. the largest batch that fits on every GPU)."""
    if not distributed_is_active():
        return float(value)
    import torch.distributed as dist

    tensor = _collective_tensor([value], device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return float(tensor.item())


def any_across_workers(flag: bool, device: torch.device | str) -> bool:
    """True on every worker when ``flag`` is true on at least one (health flags: all ranks act together)."""
    if not distributed_is_active():
        return bool(flag)
    import torch.distributed as dist

    tensor = _collective_tensor([1.0 if flag else 0.0], device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def broadcast_from_rank_zero(value: float, device: torch.device | str) -> float:
    """Rank 0's ``value`` on every worker (a decision every rank must take identically, e.g. early stop)."""
    if not distributed_is_active():
        return float(value)
    import torch.distributed as dist

    tensor = _collective_tensor([value], device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def barrier(device: torch.device | str) -> None:
    """Wait for every worker. Under NCCL the barrier names this worker's GPU (otherwise NCCL guesses it
    from the rank, which is wrong when workers share a node with other processes' GPUs)."""
    if not distributed_is_active():
        return
    import torch
    import torch.distributed as dist

    target = torch.device(device)
    if target.type == "cuda" and dist.get_backend() == "nccl":
        dist.barrier(device_ids=[target.index if target.index is not None else torch.cuda.current_device()])
    else:
        dist.barrier()
