"""Collection across processes with torch.distributed: who runs, which images are whose, one result.

Started by ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ... in the environment),
rank r of W takes the images r, r + W, r + 2W, ... (``DistributedSampler`` order without its
padding, so every image counts exactly once), and the per-rank statistics are combined: the
sums G, B, n_c, s, N by all-reduce, the top-K lists by an all-gather and ``merge_topk``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vebi.errors import VebiError
from vebi.core.stats import FeatureStats, merge_topk

_SUMS = ("gram", "cross", "class_counts", "feature_sum", "hits")


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
    """Statistics of all ranks' images together, on every rank (in place for the sums).

    The sums are all-reduced where they are; the top-K lists of all ranks are gathered and merged
    in rank order, which gives the same lists as one pass (ties go to the smaller image index).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return stats
    for name in _SUMS:
        dist.all_reduce(getattr(stats, name))
    counts = torch.tensor([stats.count, stats.scored], dtype=torch.int64, device=stats.device)
    dist.all_reduce(counts)
    stats.count, stats.scored = (int(v) for v in counts.tolist())
    world = dist.get_world_size()
    gathered = []
    for name in ("top_values", "top_indices", "top_yx"):
        local = getattr(stats, name).contiguous()
        gathered.append([torch.empty_like(local) for _ in range(world)])
        dist.all_gather(gathered[-1], local)
    merged = tuple(parts[0] for parts in gathered)
    for r in range(1, world):
        merged = merge_topk(merged, tuple(parts[r] for parts in gathered), stats.top_k)
    stats.top_values, stats.top_indices, stats.top_yx = merged
    return stats
