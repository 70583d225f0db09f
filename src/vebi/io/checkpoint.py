"""Checkpoints of a running collection: one file per process, replaced atomically every N batches.

A checkpoint holds the statistics of the first ``batches`` batches of this process's shard and a
``key`` describing the run (model, data, batch size, layers, processes, ...). Resuming with the
same key continues after those batches; a different key is refused, so that a checkpoint of
another run is never mixed in. Its size is that of the statistics: it does not grow with N.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from vebi.io.atomic import atomic_path
from vebi.errors import VebiError
from vebi.core.features import FeatureSpace
from vebi.core.stats import FeatureStats

SCHEMA = 1
_TENSORS = ("gram", "cross", "class_counts", "feature_sum", "top_values", "top_indices", "top_yx", "hits")


@dataclass(frozen=True)
class Resume:
    """Statistics of the first ``batches`` batches, read from a checkpoint."""

    stats: FeatureStats
    batches: int


class Checkpointer:
    """Call it after every batch (``collect(on_batch=...)``); every ``every``-th call writes ``path``."""

    def __init__(self, path: str | Path, every: int, key: dict[str, Any]) -> None:
        if every < 1:
            raise VebiError(f"checkpoints are written every N >= 1 batches, not {every}")
        self.path, self.every, self.key = Path(path), every, json.loads(json.dumps(key, default=str))
        self.batches = 0

    def load(self, device: torch.device | str = "cpu") -> Resume | None:
        """The saved state (and the batch count continues from it), or None when there is no checkpoint."""
        if not self.path.is_file():
            return None
        try:
            with safe_open(str(self.path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["vebi"])
                tensors = {name: f.get_tensor(name) for name in _TENSORS}
        except (SafetensorError, OSError, ValueError, KeyError) as exc:
            raise VebiError(f"checkpoint {self.path} is unreadable ({exc}); delete it to start over") from None
        if meta.get("schema") != SCHEMA or meta.get("key") != self.key:
            theirs = meta.get("key") or {}
            diff = sorted(k for k in {**theirs, **self.key} if theirs.get(k) != self.key.get(k)) or ["schema"]
            raise VebiError(f"checkpoint {self.path} belongs to another collection (it differs in "
                            f"{', '.join(diff)}); rerun the same command or delete {self.path.parent}")
        s = meta["stats"]
        stats = FeatureStats(FeatureSpace.from_dict(s["space"]), tuple(s["class_names"]), s["response"], s["labels"],
                             s["top_k"], {k: tuple(v) for k, v in s["map_sizes"].items()},
                             tuple(s["input_size"]) if s["input_size"] else None, device,
                             count=s["count"], scored=s["scored"], gram_dtype=getattr(torch, s["gram_dtype"]))
        for name in _TENSORS:
            setattr(stats, name, tensors[name].to(device))
        self.batches = int(meta["batches"])
        return Resume(stats, self.batches)

    def __call__(self, stats: FeatureStats) -> None:
        self.batches += 1
        if self.batches % self.every == 0:
            self.save(stats)

    def save(self, stats: FeatureStats) -> None:
        """Write the statistics after ``self.batches`` batches (replacing the file in one rename)."""
        meta = {"schema": SCHEMA, "key": self.key, "batches": self.batches, "stats": {
            "space": stats.space.to_dict(), "class_names": list(stats.class_names), "response": stats.response,
            "labels": stats.labels, "top_k": stats.top_k, "map_sizes": {k: list(v) for k, v in stats.map_sizes.items()},
            "input_size": list(stats.input_size) if stats.input_size else None, "count": stats.count,
            "scored": stats.scored, "gram_dtype": str(stats.gram.dtype).removeprefix("torch.")}}
        tensors = {n: getattr(stats, n).detach().to("cpu").contiguous() for n in _TENSORS}
        with atomic_path(self.path) as tmp:
            save_file(tensors, str(tmp), metadata={"vebi": json.dumps(meta)})

    def remove(self) -> None:
        """Delete the checkpoint (and temporary files of a write that was killed), then the folder if empty."""
        for path in (self.path, *self.path.parent.glob(f".{self.path.name}.*")):
            path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()
        except OSError:
            pass
