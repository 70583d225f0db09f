"""Saving and loading run artifacts: tensors in safetensors, metadata in JSON, both written atomically.

A run folder holds ``stats.safetensors`` + ``stats.json`` (the collection pass),
``relevance.safetensors`` + ``relevance.json`` (one mu-LASSO fit) and ``run.json`` (how the model
and data were given, written by the CLI). Every JSON carries ``schema``; a file of another
schema version, or statistics of a model whose layers differ, fail to load with a clear message.

Artifacts are bound to what they were made from by content hashes (:func:`file_hash`): each JSON
records the SHA-256 of its own tensors file (``tensors_sha256``: the two are valid only as a pair,
so a write killed between the two renames is detected), ``stats.json`` the model's fingerprint
(architecture and weights), ``relevance.json`` the statistics' hash (``stats_sha256``), the
interpretations and explanations the relevance's (``relevance_sha256``). Loading refuses a pair or
a chain that does not match; :func:`clear_dependents` removes what a new collection or fit
makes stale.

A statistics file (``stats.safetensors``, and the checkpoints of ``vebi.io.checkpoint``) holds
every state ``FeatureStats`` declares, under its name, and in its metadata the config and its
``format``, ``STATS_FORMAT``; format 1 (older vebi) kept some state in JSON and is refused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from vebi import __version__
from vebi.io.atomic import atomic_path
from vebi.io.folders import SCHEMA_VERSION, read_json, write_json
from vebi.errors import VebiError
from vebi.core.features import FeatureSpace
from vebi.layers import get_module
from vebi.core.relevance import Relevance
from vebi.core.stats import FeatureStats, StatsConfig

STATS_FORMAT = 2


def versions() -> dict[str, str]:
    return {"vebi": __version__, "torch": torch.__version__}


def model_fingerprint(model: nn.Module, layers: tuple[str, ...] | list[str] = ()) -> str:
    """Hash of the model: state-dict names, shapes, dtypes and values, and the chosen layers' types."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    for layer in layers:
        h.update(f"{layer}={type(get_module(model, layer)).__name__};".encode())
    return h.hexdigest()[:16]


def file_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_pair(meta: Mapping[str, Any], json_path: Path, tensors_path: Path) -> None:
    """VebiError unless ``tensors_path`` is the file ``json_path`` recorded (``tensors_sha256``)."""
    recorded = meta.get("tensors_sha256")
    if recorded is not None and tensors_path.is_file() and file_hash(tensors_path) != recorded:
        raise VebiError(f"{tensors_path} is not the file {json_path.name} was written with (another run, or a write "
                        "that was interrupted); re-run the step that wrote them")


def check_made_from(meta: Mapping[str, Any], key: str, found: str | None, path: Path, what: str, step: str) -> None:
    """VebiError unless the input hash ``meta[key]`` recorded in ``path`` is ``found`` (the input now)."""
    recorded = meta.get(key)
    if recorded is not None and found is not None and recorded != found:
        raise VebiError(f"{path} was made from other {what} than the run holds now; re-run `{step}`")


DEPENDENTS = {
    "stats": ("relevance.json", "relevance.safetensors", "interpretation", "explanations", "evaluation", "report"),
    "relevance": ("interpretation", "explanations", "evaluation", "report"),
}


def clear_dependents(run_dir: str | Path, of: str) -> list[str]:
    """Remove what was made from the run's ``of`` ("stats" or "relevance"), which is being replaced;
    return the names removed."""
    removed = []
    for name in DEPENDENTS[of]:
        path = Path(run_dir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def relevance_hash(run_dir: str | Path) -> str | None:
    """The hash that identifies the run's relevance fit (None without one)."""
    path = Path(run_dir) / "relevance.json"
    return read_json(path, "a relevance fit").get("tensors_sha256") if path.is_file() else None


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
    except (VebiError, KeyError, TypeError, ValueError, AttributeError) as exc:
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
        "tensors_sha256": file_hash(run / "stats.safetensors"),
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
    space = _entry(run / "stats.json", lambda: FeatureSpace.from_dict(meta["space"]))
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
    check_pair(meta, run / "stats.json", run / "stats.safetensors")
    if _entry(run / "stats.json", lambda: StatsConfig.from_dict(meta)) != stats.config:
        raise VebiError(f"{run / 'stats.safetensors'} does not match {run / 'stats.json'} (another collection)")
    return stats


def save_relevance(relevance: Relevance, run_dir: str | Path) -> None:
    """``relevance.safetensors`` + ``relevance.json``, bound to the run's statistics by their hash."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    _save_tensors(run / "relevance.safetensors", {"weights": relevance.weights})
    write_json(run / "relevance.json", {
        "schema": SCHEMA_VERSION,
        "tensors_sha256": file_hash(run / "relevance.safetensors"),
        "stats_sha256": _stats_hash(run),
        "space": relevance.space.to_dict(),
        "class_names": list(relevance.class_names),
        "mu": relevance.mu,
        "response": relevance.response,
        "tolerance": relevance.tolerance,
        "features_per_class": relevance.features_per_class,
        "relevant_counts": relevance.relevant_counts(),
        "versions": versions(),
    })


def load_relevance(run_dir: str | Path) -> Relevance:
    """The run's fit; VebiError when its two files are not a pair or it was fitted on other statistics."""
    run = Path(run_dir)
    meta = read_json(run / "relevance.json", "a relevance fit (run `vebi fit` first)")
    check_pair(meta, run / "relevance.json", run / "relevance.safetensors")
    check_made_from(meta, "stats_sha256", _stats_hash(run), run / "relevance.json", "statistics", "vebi fit")
    weights = load_tensors(run / "relevance.safetensors").get("weights")
    if weights is None:
        raise VebiError(f"{run / 'relevance.safetensors'} holds no weights")
    return _entry(run / "relevance.json", lambda: Relevance(
        weights, FeatureSpace.from_dict(meta["space"]), tuple(str(c) for c in meta["class_names"]),
        float(meta["mu"]), str(meta["response"]), float(meta.get("tolerance", 0.0)),
        features_per_class=meta.get("features_per_class")))


def _stats_hash(run: Path) -> str | None:
    path = run / "stats.json"
    return read_json(path, "statistics").get("tensors_sha256") if path.is_file() else None


def _entry(path: Path, build):  # noqa: ANN001, ANN202
    """``build()``, with a missing or mistyped entry of ``path`` reported as a VebiError naming the file."""
    try:
        return build()
    except VebiError:
        raise
    except KeyError as exc:
        raise VebiError(f"{path} has no {exc} entry; re-run the step that wrote it") from None
    except (TypeError, ValueError, AttributeError, IndexError) as exc:
        raise VebiError(f"{path} has an entry of the wrong type ({exc}); re-run the step that wrote it") from None


def save_run_info(run_dir: str | Path, info: dict[str, Any]) -> None:
    """``run.json``: how to rebuild the model and read the data (written by the CLI)."""
    write_json(Path(run_dir) / "run.json", {"schema": SCHEMA_VERSION, **info, "versions": versions()})
