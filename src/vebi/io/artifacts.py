"""Saving and loading run artifacts: tensors in safetensors, metadata in JSON, both written atomically.

A run folder holds ``stats.safetensors`` + ``stats.json`` (the collection pass),
``relevance.safetensors`` + ``relevance.json`` (one mu-LASSO fit) and ``run.json`` (how the model
and data were given, written by the CLI). Every JSON carries ``schema``; a file of another
schema version, or statistics of a model whose layers differ, fail to load with a clear message.

A statistics file (``stats.safetensors``, and the checkpoints of ``vebi.io.checkpoint``) holds
every state ``FeatureStats`` declares, under its name, and in its metadata the config and its
``format``, ``STATS_FORMAT``; format 1 (older vebi) kept some state in JSON and is refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from vebi import __version__
from vebi.io.atomic import atomic_path, write_text
from vebi.errors import VebiError
from vebi.core.features import FeatureSpace
from vebi.layers import get_module
from vebi.core.relevance import Relevance
from vebi.core.stats import FeatureStats, StatsConfig

SCHEMA_VERSION = 1
STATS_FORMAT = 2


def versions() -> dict[str, str]:
    return {"vebi": __version__, "torch": torch.__version__}


def model_fingerprint(model: nn.Module, layers: tuple[str, ...] | list[str] = ()) -> str:
    """Hash of the model's architecture: state-dict names and shapes, and the chosen layers' types."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)};".encode())
    for layer in layers:
        h.update(f"{layer}={type(get_module(model, layer)).__name__};".encode())
    return h.hexdigest()[:16]


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path, kind: str) -> dict[str, Any]:
    if not path.is_file():
        raise VebiError(f"{path} not found: is this a vebi run folder with {kind}?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VebiError(f"{path} is not valid JSON ({exc})") from None
    schema = data.get("schema")
    if schema != SCHEMA_VERSION:
        raise VebiError(f"{path} has schema version {schema}, this vebi reads version {SCHEMA_VERSION}; "
                        "re-run the step that wrote it")
    return data


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata=None if meta is None else {"vebi": json.dumps(meta)})


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors of a safetensors file and the JSON metadata under "vebi" ({} when there is none)."""
    if not path.is_file():
        raise VebiError(f"{path} not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("vebi", "{}"))
            return {name: f.get_tensor(name) for name in f.keys()}, meta
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise VebiError(f"{path} is not a readable safetensors file ({exc})") from None


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return _read_tensors(path)[0]


def save_stats_file(path: str | Path, stats: FeatureStats, **meta: Any) -> None:
    """One safetensors file of every declared state; config, format and ``meta`` in its JSON metadata."""
    _save_tensors(Path(path), stats.state_dict(),
                  {"format": STATS_FORMAT, "config": stats.config.to_dict(), **meta})


def load_stats_file(path: str | Path, device: torch.device | str = "cpu") -> tuple[FeatureStats, dict[str, Any]]:
    """The statistics of ``save_stats_file`` on ``device``, and the metadata it was given."""
    tensors, meta = _read_tensors(Path(path))
    found = meta.get("format", 1)
    if found != STATS_FORMAT:
        raise VebiError(f"{path} holds statistics in format {found}, this vebi reads format {STATS_FORMAT}")
    try:
        return FeatureStats.from_state_dict(StatsConfig.from_dict(meta["config"]), tensors, device), meta
    except (VebiError, KeyError) as exc:
        raise VebiError(f"{path} holds unusable statistics ({exc})") from None


def save_stats(stats: FeatureStats, run_dir: str | Path, model: nn.Module | None = None) -> None:
    """Write ``stats`` to ``run_dir``; with ``model``, record its fingerprint for later checks.

    ``stats.safetensors`` holds the statistics; ``stats.json`` repeats their config with a summary
    (count, correct, scored) for readers of the run folder, and the fingerprint.
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    save_stats_file(run / "stats.safetensors", stats)
    write_json(run / "stats.json", {
        "schema": SCHEMA_VERSION,
        **stats.config.to_dict(),
        "count": stats.count,
        "correct": stats.correct,
        "scored": stats.scored,
        "model_fingerprint": model_fingerprint(model, stats.space.layers) if model is not None else None,
        "versions": versions(),
    })


def load_stats(run_dir: str | Path, model: nn.Module | None = None,
               device: torch.device | str = "cpu") -> FeatureStats:
    """Read statistics; with ``model``, fail clearly if its layers do not match those collected."""
    run = Path(run_dir)
    meta = read_json(run / "stats.json", "statistics (run `vebi collect` first)")
    space = FeatureSpace.from_dict(meta["space"])
    if model is not None and meta.get("model_fingerprint"):
        try:
            found = model_fingerprint(model, space.layers)
        except VebiError as exc:
            raise VebiError(f"the model does not match the statistics in {run}: {exc}") from None
        if found != meta["model_fingerprint"]:
            raise VebiError(f"the model does not match the statistics in {run} (its layers or parameter "
                            "shapes differ from the model they were collected with)")
    try:
        stats, _ = load_stats_file(run / "stats.safetensors", device)
    except VebiError as exc:
        raise VebiError(f"{exc}; re-run `vebi collect`") from None
    if StatsConfig.from_dict(meta) != stats.config:
        raise VebiError(f"{run / 'stats.safetensors'} does not match {run / 'stats.json'} (another collection)")
    return stats


def save_relevance(relevance: Relevance, run_dir: str | Path) -> None:
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    _save_tensors(run / "relevance.safetensors", {"weights": relevance.weights})
    write_json(run / "relevance.json", {
        "schema": SCHEMA_VERSION,
        "space": relevance.space.to_dict(),
        "class_names": list(relevance.class_names),
        "mu": relevance.mu,
        "response": relevance.response,
        "tolerance": relevance.tolerance,
        "relevant_counts": relevance.relevant_counts(),
        "versions": versions(),
    })


def load_relevance(run_dir: str | Path) -> Relevance:
    run = Path(run_dir)
    meta = read_json(run / "relevance.json", "a relevance fit (run `vebi fit` first)")
    weights = load_tensors(run / "relevance.safetensors").get("weights")
    if weights is None:
        raise VebiError(f"{run / 'relevance.safetensors'} holds no weights")
    return Relevance(weights, FeatureSpace.from_dict(meta["space"]), tuple(meta["class_names"]), float(meta["mu"]),
                     meta["response"], float(meta.get("tolerance", 0.0)))


def save_run_info(run_dir: str | Path, info: dict[str, Any]) -> None:
    """``run.json``: how to rebuild the model and read the data (written by the CLI)."""
    write_json(Path(run_dir) / "run.json", {"schema": SCHEMA_VERSION, **info, "versions": versions()})


def load_run_info(run_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / "run.json", "run information (run `vebi collect` first)")
