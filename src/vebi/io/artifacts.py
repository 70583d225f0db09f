"""Saving and loading run artifacts: tensors in safetensors, metadata in JSON, both written atomically.

A run folder holds ``stats.safetensors`` + ``stats.json`` (the collection pass),
``relevance.safetensors`` + ``relevance.json`` (one mu-LASSO fit) and ``run.json`` (how the model
and data were given, written by the CLI). Every JSON carries ``schema``; a file of another
schema version, or statistics of a model whose layers differ, fail to load with a clear message.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vebi import __version__
from vebi.io.atomic import atomic_path, write_text
from vebi.errors import VebiError
from vebi.core.features import FeatureSpace
from vebi.layers import get_module
from vebi.core.relevance import Relevance
from vebi.core.stats import FeatureStats

SCHEMA_VERSION = 1
STATS_TENSORS = ("gram", "cross", "class_counts", "feature_sum", "top_values", "top_indices", "top_yx")


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


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise VebiError(f"{path} not found")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise VebiError(f"{path} is not a readable safetensors file ({exc})") from None


def save_stats(stats: FeatureStats, run_dir: str | Path, model: nn.Module | None = None) -> None:
    """Write ``stats`` to ``run_dir``; with ``model``, record its fingerprint for later checks."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    _save_tensors(run / "stats.safetensors", {n: getattr(stats, n) for n in STATS_TENSORS})
    write_json(run / "stats.json", {
        "schema": SCHEMA_VERSION,
        "space": stats.space.to_dict(),
        "class_names": list(stats.class_names),
        "response": stats.response,
        "labels": stats.labels,
        "top_k": stats.top_k,
        "map_sizes": {k: list(v) for k, v in stats.map_sizes.items()},
        "input_size": list(stats.input_size) if stats.input_size else None,
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
    stats = FeatureStats(space, tuple(meta["class_names"]), meta["response"], meta["labels"], int(meta["top_k"]),
                         {k: (int(v[0]), int(v[1])) for k, v in meta["map_sizes"].items()},
                         tuple(meta["input_size"]) if meta["input_size"] else None, device)
    tensors = load_tensors(run / "stats.safetensors")
    for name in STATS_TENSORS:
        if name not in tensors or tensors[name].shape != getattr(stats, name).shape:
            raise VebiError(f"{run / 'stats.safetensors'} does not match {run / 'stats.json'} ({name})")
        setattr(stats, name, tensors[name].to(device))
    stats.count, stats.correct, stats.scored = int(meta["count"]), int(meta["correct"]), int(meta.get("scored", 0))
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
