"""Data-parallel training with PyTorch DDP: the process group, the data shards and the collectives.

The training loop (:func:`ngsll.train.train_phase`) takes a :class:`DistributedContext`. With one process
(the default) nothing here touches ``torch.distributed``. Under ``torchrun`` (which sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``) :func:`init_distributed` joins the process group: NCCL on GPUs, gloo on
CPU, with a timeout so that a rank that died or hangs fails the others instead of blocking them forever.

Sharding follows :class:`torch.utils.data.DistributedSampler`: every epoch one seeded permutation of the
training set, padded to a multiple of the world size, with rank ``r`` taking positions ``r, r + W, ...``.
With a per-rank batch of ``batch_size / W`` the ranks' j-th batches together are exactly the j-th
``batch_size`` positions of that permutation, so the averaged DDP gradient is the single-process one.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from ngsll.errors import ConfigError

BACKENDS = ("auto", "gloo", "nccl")
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: ``rank`` of ``world_size`` processes, ``local_rank`` on its node.

    The default is the single process. Only the main process (rank 0) writes files and logs runs.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True inside a process that ``torchrun`` started (its rank variables are set)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def context_from_environment() -> DistributedContext:
    """The context torchrun's environment variables describe; the single process without them."""
    if not launched_by_torchrun():
        return DistributedContext()
    try:
        values = {name: int(os.environ[name]) for name in TORCHRUN_VARIABLES}
    except ValueError as error:
        raise ConfigError(f"torchrun variables {TORCHRUN_VARIABLES} must be integers: {error}") from error
    context = DistributedContext(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
    if not 0 <= context.rank < context.world_size:
        raise ConfigError(f"RANK must lie in [0, WORLD_SIZE), got RANK={context.rank}, WORLD_SIZE={context.world_size}")
    return context


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` -> ``nccl`` on CUDA, ``gloo`` on CPU; NCCL is refused on CPU."""
    if backend not in BACKENDS:
        raise ConfigError(f"distributed.backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("distributed.backend 'nccl' needs CUDA devices; use 'gloo' (or 'auto') on CPU")
    return backend


def init_distributed(device: torch.device, backend: str = "auto", timeout_s: float = 600.0) -> tuple[
        DistributedContext, torch.device]:
    """Join torchrun's process group when there is one; returns the context and this rank's device.

    On CUDA each process takes GPU ``LOCAL_RANK``. Collectives that wait longer than ``timeout_s``
    seconds raise instead of hanging. Without torchrun: the single-process context and ``device``.
    """
    context = context_from_environment()
    if not context.is_distributed:
        return context, device
    if timeout_s <= 0:
        raise ConfigError(f"distributed.timeout_s must be > 0, got {timeout_s}")
    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=resolve_backend(backend, device), rank=context.rank, world_size=context.world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return context, device


def shutdown() -> None:
    """Leave the process group (a no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def per_rank_batch_size(batch_size: int, context: DistributedContext) -> int:
    """``batch_size`` split evenly over the ranks (the global batch stays ``batch_size``)."""
    if batch_size % context.world_size:
        raise ConfigError(
            f"batch_size {batch_size} must be divisible by the number of processes ({context.world_size}) so every "
            f"rank takes an equal share of each batch"
        )
    return batch_size // context.world_size


def epoch_indices(num_samples: int, epoch: int, seed: int, context: DistributedContext) -> torch.Tensor:
    """(ceil(N / W),) int64: this rank's shuffled sample indices for ``epoch`` (DistributedSampler order).

    The same ``seed`` and ``epoch`` give every rank a disjoint share of one permutation (padded by
    repeating its first indices); with one process it is the whole permutation.
    """
    sampler = DistributedSampler(range(num_samples), num_replicas=context.world_size, rank=context.rank,
                                 shuffle=True, seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    return torch.as_tensor(list(sampler), dtype=torch.int64)


def shard(num_samples: int, context: DistributedContext) -> torch.Tensor:
    """(~N / W,) int64: rank's evaluation share ``rank, rank + W, ...`` (no padding, nothing counted twice)."""
    return torch.arange(context.rank, num_samples, context.world_size)


def all_reduce_sum(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Elementwise sum of ``values`` over all ranks (the tensor itself with one process)."""
    if context.is_distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def agree(flag: bool, context: DistributedContext, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank, so decisions such as early stopping are taken identically."""
    if not context.is_distributed:
        return flag
    decision = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(decision, src=0)
    return bool(decision.item())


def torchrun_command(script: str, arguments: list[str], nproc_per_node: int) -> list[str]:
    """The command that reruns ``script arguments`` as ``nproc_per_node`` DDP processes on this machine.

    ``torch.distributed.run`` (torchrun) with a standalone rendezvous on a free local port and no restarts:
    when one rank fails, torchrun stops the others and exits non-zero with that rank's error.
    """
    if nproc_per_node < 1:
        raise ConfigError(f"nproc_per_node must be >= 1, got {nproc_per_node}")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc_per_node}",
            "--max-restarts=0", script, *arguments]
