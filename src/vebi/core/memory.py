"""How much memory the collection statistics take, and a guard that refuses a run that cannot fit.

For m features, C classes, top-K lists and batches of B images, one process holds
  G (m x m, 8 or 4 bytes each), B = X^T L (m x C, float64), the top-K lists (m x K values, image
  ids and (y, x): 28 bytes each), and per batch the sort buffers of the top-K merge (m x (K + B)).
None of this grows with the number of images N. A checkpoint serialises one more copy; the
distributed reduction gathers the top-K lists of every process.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

from vebi.errors import VebiError

ENV_BUDGET = "VEBI_MEMORY_BUDGET"
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}
_TOPK_BYTES = 4 + 8 + 16  # float32 value, int64 image id, int64 (y, x)
_MERGE_BYTES = 4 * _TOPK_BYTES  # concatenation, two sort orders and the gathered copies


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes the statistics of one process need: state that lives through the pass, and the peaks on top."""

    features: int
    gram: int
    state: int
    working: int

    @property
    def total(self) -> int:
        return self.state + self.working


def estimate(features: int, num_classes: int, top_k: int, batch_size: int, *,
             gram_dtype: torch.dtype = torch.float64, world_size: int = 1, checkpoint: bool = False) -> MemoryEstimate:
    """Estimate for m = ``features`` (see the module docstring for the terms)."""
    m, c, k, b = features, num_classes, top_k, batch_size
    gram = m * m * torch.empty((), dtype=gram_dtype).element_size()
    state = gram + 8 * (m * c + m + c + 1) + _TOPK_BYTES * m * k
    batch = 12 * b * m + _MERGE_BYTES * m * (k + b)
    reduce = _TOPK_BYTES * m * k * (world_size + 1) if world_size > 1 else 0
    return MemoryEstimate(m, gram, state, max(batch, reduce) + (state if checkpoint else 0))


def parse_size(text: str | int) -> int:
    """'8GiB', '500 MB', '2e9' or an int -> bytes."""
    if isinstance(text, int):
        return text
    found = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if not found or found.group(2) not in _UNITS:
        raise VebiError(f"memory size {text!r} is not understood; write for example 8GiB, 500MB or 2000000000")
    return int(float(found.group(1)) * _UNITS[found.group(2)])


def format_size(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def available(device: torch.device | str) -> int:
    """Free memory for one process on ``device``: free GPU memory (plus PyTorch's cached blocks), or the
    host's available memory shared by the processes of this machine (``LOCAL_WORLD_SIZE``)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
    share = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
        return kib * 1024 // share
    except (OSError, StopIteration, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // share


def budget(device: torch.device | str, given: str | int | None = None) -> tuple[int, str]:
    """The budget in bytes and where it came from: ``given``, else $VEBI_MEMORY_BUDGET, else free memory."""
    if given is not None:
        return parse_size(given), "the given budget"
    if os.environ.get(ENV_BUDGET):
        return parse_size(os.environ[ENV_BUDGET]), f"${ENV_BUDGET}"
    return available(device), f"free memory on {torch.device(device)}"


def check(est: MemoryEstimate, device: torch.device | str, given: str | int | None = None) -> None:
    """Raise a VebiError naming the ways through when ``est`` exceeds the budget."""
    limit, source = budget(device, given)
    if est.total <= limit:
        return
    raise VebiError(
        f"the statistics of {est.features} features need about {format_size(est.total)} "
        f"(G = X^T X alone {format_size(est.gram)}), more than {format_size(limit)} ({source}); "
        f"restrict the layers (--layer / layers=, see `vebi layers`), keep G in float32 "
        f"(--gram-dtype float32 / gram_dtype=torch.float32: {format_size(4 * est.features**2)}), lower --top-k or "
        f"--batch-size, or raise --memory-budget / ${ENV_BUDGET} if the memory is there")
