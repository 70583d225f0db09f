"""Collection across processes with torch.distributed: who runs, which images are whose, one result.

Started by ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ... in the environment),
rank r of W takes the images r, r + W, r + 2W, ... (``DistributedSampler`` order without its
padding, so every image counts exactly once), and the per-rank statistics are combined as their
declaration in ``vebi.core.stats`` says: the sums by all-reduce, the top-K lists by an all-gather
and a merge.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vebi.errors import VebiError
from vebi.core.stats import STATES, FeatureStats, Reduce


@dataclass(frozen=True)
class Dist:
    """This process's place: rank of world_size processes, local_rank of local_world_size on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> Dist:
    """From the initialised process group, else from torchrun's environment, else a single process."""
    env = os.environ
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1"))
    return Dist(rank, world, int(env.get("LOCAL_RANK", "0")), int(env.get("LOCAL_WORLD_SIZE", str(world))))


def device_for(device: torch.device, where: Dist) -> torch.device:
    """A bare ``cuda`` becomes this process's GPU ``cuda:LOCAL_RANK`` when several processes run."""
    if device.type == "cuda" and device.index is None and where.world_size > 1:
        return torch.device("cuda", where.local_rank)
    return device


@contextlib.contextmanager
def process_group(device: torch.device | str = "cpu") -> Iterator[Dist]:
    """Join the process group torchrun describes (nccl for CUDA, gloo otherwise) and leave it on exit.

    In a single process, or when the caller already initialised a group, nothing is started.
    """
    where = current()
    if where.world_size == 1 or dist.is_initialized():
        yield where
        return
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    try:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    except (ValueError, RuntimeError) as exc:
        raise VebiError(f"cannot join the torch.distributed process group ({str(exc).splitlines()[0]}); "
                        "start the command with torchrun") from None
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def shard(num_images: int, where: Dist) -> range:
    """Dataset indices of this rank: rank, rank + W, ... (no padding: shards differ in size by at most one)."""
    if num_images < where.world_size:
        raise VebiError(f"{num_images} images cannot be shared by {where.world_size} processes")
    return range(where.rank, num_images, where.world_size)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def reduce_stats(stats: FeatureStats) -> FeatureStats:
    """Statistics of all ranks' images together, on every rank.

    Every declared state is reduced as ``STATES`` says: sums by all-reduce (in place on the device),
    the top-K lists gathered from all ranks and merged in rank order, which gives the same lists
    as one pass (ties go to the smaller image index).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return stats
    world = dist.get_world_size()
    state = {name: t.to(stats.device) for name, t in stats.state_dict().items()}
    for reduce in Reduce:
        names = [s.name for s in STATES if s.reduce is reduce]
        if reduce is Reduce.SUM:
            for name in names:
                dist.all_reduce(state[name])
            continue
        ranks = [[torch.empty_like(state[n]) for n in names] for _ in range(world)]
        for i, name in enumerate(names):
            dist.all_gather([parts[i] for parts in ranks], state[name].contiguous())
        merged: tuple[torch.Tensor, ...] = tuple(ranks[0])
        for parts in ranks[1:]:
            merged = reduce.combine(merged, parts, stats.top_k)
        state.update(zip(names, merged, strict=True))
    return FeatureStats.from_state_dict(stats.config, state, stats.device)
