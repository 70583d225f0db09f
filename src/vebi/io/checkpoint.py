"""Checkpoints of a running collection: one file per process, replaced atomically every N batches.

A checkpoint is a statistics file (``vebi.io.artifacts.save_stats_file``) of the first ``batches``
batches of this process's shard, with a ``key`` describing the run (model, data, batch size,
layers, processes, ...). Resuming with the same key continues after those batches; a different
key, or a file of another format, is refused, so that a checkpoint of another run is never mixed
in. Its size is that of the statistics: it does not grow with N.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vebi.errors import VebiError
from vebi.core.stats import FeatureStats
from vebi.io.artifacts import load_stats_file, save_stats_file


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
            stats, meta = load_stats_file(self.path, device)
        except VebiError as exc:
            raise VebiError(f"checkpoint {self.path} is unreadable by this vebi ({exc}); "
                            "delete it to start over") from None
        if meta.get("key") != self.key:
            theirs = meta.get("key") or {}
            diff = sorted(k for k in {**theirs, **self.key} if theirs.get(k) != self.key.get(k)) or ["key"]
            raise VebiError(f"checkpoint {self.path} belongs to another collection (it differs in "
                            f"{', '.join(diff)}); rerun the same command or delete {self.path.parent}")
        self.batches = int(meta["batches"])
        return Resume(stats, self.batches)

    def __call__(self, stats: FeatureStats) -> None:
        self.batches += 1
        if self.batches % self.every == 0:
            self.save(stats)

    def save(self, stats: FeatureStats) -> None:
        """Write the statistics after ``self.batches`` batches (replacing the file in one rename)."""
        save_stats_file(self.path, stats, key=self.key, batches=self.batches)

    def remove(self) -> None:
        """Delete the checkpoint (and temporary files of a write that was killed), then the folder if empty."""
        for path in (self.path, *self.path.parent.glob(f".{self.path.name}.*")):
            path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()
        except OSError:
            pass
