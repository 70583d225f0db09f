"""The result of every explanation method: :class:`Explanation` (one image), saved as JSON + safetensors.

vebi's own method fills ``features`` (its top contributing features, each with a heatmap);
baselines leave it empty. ``combined`` is the method's map of the image.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from vebi.errors import VebiError
from vebi.io.atomic import atomic_path, write_text

if TYPE_CHECKING:
    from vebi.classes import ClassMap

__all__ = ["ExplainedFeature", "Explanation", "load_explanation", "resolve_targets"]

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ExplainedFeature:
    """One of the top features of an explanation.

    ``response`` x_f, ``weight`` w_{f,j}, ``contribution`` r_f = x_f w_{f,j} > 0, ``share``
    r_f / sum of the positive r; ``heatmap`` (H, W) float32 in [0, 1] on the CPU;
    ``interpretation`` the path of the feature's average-crop image, when the run has one.
    """

    rank: int
    index: int
    layer: str
    channel: int
    response: float
    weight: float
    contribution: float
    share: float
    heatmap: Tensor
    interpretation: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "index": self.index, "layer": self.layer, "channel": self.channel,
                "response": self.response, "weight": self.weight, "contribution": self.contribution,
                "share": self.share, "interpretation": self.interpretation}


@dataclass(frozen=True)
class Explanation:
    """The explanation of one image by one method: prediction, explained class, features, map.

    ``predicted`` and ``target`` are model outputs, ``predicted_name`` / ``target_name`` their names
    (:class:`vebi.classes.ClassMap`); ``score``/``target_score`` are softmax probabilities of those outputs; ``combined``
    (H, W) float32 in [0, 1] is the method's map (for vebi the combination of its features'
    heatmaps, zeros when no feature contributes positively); ``features`` is empty for methods
    without features; ``image`` the explained file, when it came from one (``vebi explain``: its
    copy, relative to the JSON); ``source`` the file's own folder/name, for people (never read);
    ``relevance_sha256`` the fit it was made from (see :mod:`vebi.io.artifacts`).
    """

    predicted: int
    predicted_name: str | None
    score: float
    target: int
    target_name: str
    target_score: float
    features: tuple[ExplainedFeature, ...]
    combined: Tensor
    method: str = "vebi"
    settings: Mapping[str, Any] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)
    image: str | None = None
    source: str | None = None
    relevance_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The numbers (no maps), as written to JSON."""
        return {"schema": SCHEMA_VERSION, "method": self.method, "predicted": self.predicted,
                "predicted_name": self.predicted_name, "score": self.score, "target": self.target,
                "target_name": self.target_name, "target_score": self.target_score,
                "features": [f.to_dict() for f in self.features], "settings": dict(self.settings),
                "versions": dict(self.versions), "image": self.image, "source": self.source,
                "relevance_sha256": self.relevance_sha256}

    def save(self, path: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``PATH.json`` (numbers) and ``PATH.safetensors`` (maps) atomically; return both paths.
        The JSON records the maps' hash: the two are valid only as a pair."""
        from vebi.io.artifacts import file_hash

        stem = _stem(path)
        tensors = {"combined": self.combined}
        tensors.update({f"feature{f.rank}": f.heatmap for f in self.features})
        maps = stem.with_name(stem.name + ".safetensors")
        numbers = stem.with_name(stem.name + ".json")
        with atomic_path(maps) as tmp:
            save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}, str(tmp))
        write_text(numbers, json.dumps({**self.to_dict(), "tensors_sha256": file_hash(maps)}, indent=2) + "\n")
        return numbers, maps


def load_explanation(path: str | os.PathLike[str]) -> Explanation:
    """Read an explanation written by :meth:`Explanation.save`; VebiError when its two files are not a pair."""
    from vebi.io.artifacts import check_pair

    stem = _stem(path)
    numbers, maps = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".safetensors")
    try:
        meta = json.loads(numbers.read_text(encoding="utf-8"))
        tensors = load_file(str(maps))
    except FileNotFoundError as exc:
        raise VebiError(f"{exc.filename} not found") from None
    except Exception as exc:  # JSON and safetensors raise their own error types
        raise VebiError(f"cannot read the explanation {stem} ({exc})") from None
    if not isinstance(meta, dict):
        raise VebiError(f"{numbers} holds {type(meta).__name__ if meta is not None else 'null'}, not a JSON object")
    if meta.get("schema") != SCHEMA_VERSION:
        raise VebiError(f"{numbers} has schema version {meta.get('schema')}, this vebi reads {SCHEMA_VERSION}")
    check_pair(meta, numbers, maps)
    try:
        features = tuple(ExplainedFeature(heatmap=tensors[f"feature{f['rank']}"], **f) for f in meta["features"])
        return Explanation(meta["predicted"], meta["predicted_name"], meta["score"], meta["target"],
                           meta["target_name"], meta["target_score"], features, tensors["combined"], meta["method"],
                           meta["settings"], meta["versions"], meta.get("image"), meta.get("source"),
                           meta.get("relevance_sha256"))
    except (KeyError, TypeError, ValueError) as exc:
        raise VebiError(f"{numbers} has a missing or malformed entry ({exc!r})") from None


def _stem(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".json", ".safetensors") else p


def resolve_targets(target: Any, predicted: Tensor, classes: ClassMap | None = None) -> Tensor:
    """(B,) model outputs: ``predicted`` for None, else one target for all images or one per image.
    An int is a model output; a string is read by :meth:`vebi.classes.ClassMap.output` (a name,
    ``index:N``, ``name:TEXT`` or a number)."""
    from vebi.classes import ClassMap

    batch = predicted.shape[0]
    if target is None:
        return predicted
    if isinstance(target, Tensor):
        items: list = target.flatten().tolist() if target.dim() else [target.item()] * batch
    elif isinstance(target, (int, str)):
        items = [target] * batch
    else:
        items = list(target)
    if len(items) != batch:
        raise VebiError(f"need one target per image: got {len(items)} for {batch} images")
    lookup = classes if classes is not None else ClassMap((), ())
    return torch.tensor([lookup.output(t if isinstance(t, str) else int(t)) for t in items], dtype=torch.long)
