"""Data-parallel training over several processes (torchrun), or one process.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_from_env` reads them and starts the process group (``nccl`` on CUDA, ``gloo`` on CPU).
Without them it returns a single-process :class:`DistInfo` and starts nothing.

Sharding: every rank draws the same shuffled permutation of the split for an epoch (same seed),
cuts it into global batches of ``batch_size`` and keeps ``global_batch[rank::world_size]``
(:func:`shard_epoch`), so the global batch is ``batch_size`` whatever the number of processes.
Gradients are averaged by DDP; the training loop weights each rank's loss by its share of the
global batch so that the average equals the loss of the whole global batch.  Metrics are reduced
with :func:`reduce_mean` (weighted by the number of queries).  Only rank 0 writes files or logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device: str | torch.device | None = None, timeout_s: float = 600.0) -> tuple[DistInfo, torch.device]:
    """Start the process group from torchrun's environment; pick this rank's device.

    ``device``: "cpu", "cuda" or None (CUDA when available).  On CUDA each rank takes
    ``cuda:LOCAL_RANK``.  Returns ``(info, device)``.
    """
    want = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    world = env_world_size()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if want.type == "cuda":
        want = torch.device("cuda", local_rank if world > 1 else (want.index or 0))
        torch.cuda.set_device(want)
    info = DistInfo(rank=rank, world_size=world, local_rank=local_rank)
    if world > 1 and not dist.is_initialized():
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise RuntimeError(f"WORLD_SIZE={world} but {missing} not set: launch with torchrun")
        backend = "nccl" if want.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    return info, want


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_epoch(perm: torch.Tensor, batch_size: int, info: DistInfo) -> tuple[torch.Tensor, int, list[int]]:
    """This rank's share of an epoch's permutation ``perm [Q]``.

    The permutation is cut into global batches of ``batch_size``; rank ``r`` keeps
    ``global_batch[r::world_size]`` of each.  Because ``batch_size`` is a multiple of the world
    size, that is ``perm[r::world_size]`` read in local batches of ``batch_size // world_size``.
    With several processes a last global batch smaller than the world size is dropped (a rank
    would get no sample and DDP needs every rank in every step).

    Returns ``(local_order [Q_r], local_batch_size, global_sizes)``; ``global_sizes[i]`` is the
    size of global batch ``i`` (each rank weights its loss by its share of it).
    """
    world = info.world_size
    if batch_size % world:
        raise ValueError(f"train.batch_size={batch_size} is not a multiple of the {world} processes")
    n_full, rest = divmod(len(perm), batch_size)
    if info.enabled and 0 < rest < world:
        perm, rest = perm[: len(perm) - rest], 0
    sizes = [batch_size] * n_full + ([rest] if rest else [])
    return perm[info.rank :: world], batch_size // world, sizes


def reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum over ranks (in place on a copy); identity in one process."""
    if not info.enabled:
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def reduce_mean(metrics: dict[str, float], count: int, info: DistInfo, device: torch.device) -> dict[str, float]:
    """Mean of per-rank means weighted by ``count`` (queries seen by this rank)."""
    if not info.enabled:
        return dict(metrics)
    keys = sorted(metrics)
    vals = torch.tensor([metrics[k] * count for k in keys] + [float(count)], dtype=torch.float64, device=device)
    vals = reduce_sum(vals, info)
    total = vals[-1].item()
    return {k: (vals[i].item() / total if total else float("nan")) for i, k in enumerate(keys)}


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj: object, info: DistInfo) -> object:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
