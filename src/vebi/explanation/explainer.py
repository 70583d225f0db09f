"""Explanation of predictions: each image's top contributing features and their heatmaps.

For image I with response vector x (the relevance's response function over its layers) and
explained class j (the prediction unless ``target`` is given):

    r = x o w_j                                   (contribution of every feature)

the k features with the largest r > 0 are kept. *(choice)* The authors' demo divides r by
sum(w_j); that only rescales r when sum(w_j) > 0 and flips every sign (so selects other
features) when it is negative, so vebi keeps r = x o w_j and reports each feature's ``share``
r_f / sum_{f': r_f' > 0} r_f' of the positive evidence instead.

Each kept feature (l, f) gets a heatmap: a backward pass from layer l seeded with the
feature's own activation map A_{l,f} (all other channels zero) through guided-backprop ReLUs
and, by default, the stride fix for strided convolutions (:mod:`vebi.explanation.backward`); the
input-space signal is post-processed by :func:`vebi.methods.baselines.postprocess_gradient`
(positive part, L2 over colour channels, min-max to [0, 1]). The combined explanation is
the pixel-wise maximum of the k maps. A batch costs one forward pass; the k backward passes
reuse its graph, each one serving the whole batch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from vebi import __version__
from vebi.io.atomic import atomic_path, write_text
from vebi.explanation.backward import RuleMap, forward_with_rules, guided_backprop
from vebi.methods.baselines import ExplainFn, postprocess_gradient, register_method
from vebi.errors import VebiError
from vebi.hooks import preserve_model
from vebi.models import model_device
from vebi.core.relevance import Relevance
from vebi.core.responses import responses

__all__ = ["ExplainedFeature", "Explainer", "Explanation", "load_explanation", "vebi_method"]

SCHEMA_VERSION = 1
Target = None | int | str | Sequence[int | str] | Tensor


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
    """The explanation of one image: prediction, explained class, top features, combined map.

    ``score``/``target_score`` are softmax probabilities of the model's output; ``combined``
    (H, W) float32 in [0, 1] is the pixel-wise max of the features' heatmaps (zeros when no
    feature contributes positively).
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

    def to_dict(self) -> dict[str, Any]:
        """The numbers (no maps), as written to JSON."""
        return {"schema": SCHEMA_VERSION, "method": self.method, "predicted": self.predicted,
                "predicted_name": self.predicted_name, "score": self.score, "target": self.target,
                "target_name": self.target_name, "target_score": self.target_score,
                "features": [f.to_dict() for f in self.features], "settings": dict(self.settings),
                "versions": dict(self.versions)}

    def save(self, path: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``PATH.json`` (numbers) and ``PATH.safetensors`` (maps) atomically; return both paths."""
        stem = _stem(path)
        tensors = {"combined": self.combined}
        tensors.update({f"feature{f.rank}": f.heatmap for f in self.features})
        maps = stem.with_name(stem.name + ".safetensors")
        numbers = stem.with_name(stem.name + ".json")
        with atomic_path(maps) as tmp:
            save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}, str(tmp))
        write_text(numbers, json.dumps(self.to_dict(), indent=2) + "\n")
        return numbers, maps


def load_explanation(path: str | os.PathLike[str]) -> Explanation:
    """Read an explanation written by :meth:`Explanation.save`."""
    stem = _stem(path)
    numbers, maps = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".safetensors")
    try:
        meta = json.loads(numbers.read_text(encoding="utf-8"))
        tensors = load_file(str(maps))
    except FileNotFoundError as exc:
        raise VebiError(f"{exc.filename} not found") from None
    except Exception as exc:  # JSON and safetensors raise their own error types
        raise VebiError(f"cannot read the explanation {stem} ({exc})") from None
    if meta.get("schema") != SCHEMA_VERSION:
        raise VebiError(f"{numbers} has schema version {meta.get('schema')}, this vebi reads {SCHEMA_VERSION}")
    features = tuple(ExplainedFeature(heatmap=tensors[f"feature{f['rank']}"], **f) for f in meta["features"])
    return Explanation(meta["predicted"], meta["predicted_name"], meta["score"], meta["target"], meta["target_name"],
                       meta["target_score"], features, tensors["combined"], meta["method"], meta["settings"],
                       meta["versions"])


def _stem(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".json", ".safetensors") else p


class Explainer:
    """Explain a model's predictions with the relevant features of ``relevance``.

    ``explainer(images (B, C, H, W), target=None)`` returns one :class:`Explanation` per image.
    ``target``: None (the predicted class), a class index or name for every image, or one per
    image. ``top_k`` features with r > 0 are kept; ``stride_fix`` / ``pool_fix`` switch the
    backward rules (see :mod:`vebi.explanation.backward`), ``rules`` replaces them altogether.
    ``interpretation_dir``: a run folder (or its ``interpretation`` folder) whose average-crop
    images are linked from the features. The model is used in eval mode and is left exactly
    as it was (training flags, ``requires_grad``, hooks).
    """

    def __init__(
        self,
        model: nn.Module,
        relevance: Relevance,
        *,
        top_k: int = 3,
        stride_fix: bool = True,
        pool_fix: bool = False,
        interpretation_dir: str | os.PathLike[str] | None = None,
        rules: RuleMap | None = None,
    ) -> None:
        if top_k < 1:
            raise VebiError(f"top_k must be at least 1, not {top_k}")
        self.model = model
        self.relevance = relevance
        self.top_k = int(top_k)
        self.rules = rules if rules is not None else guided_backprop(stride_fix=stride_fix, pool_fix=pool_fix)
        self.settings = {"top_k": self.top_k, "stride_fix": bool(stride_fix), "pool_fix": bool(pool_fix),
                         "rules": "custom" if rules is not None else "guided_backprop",
                         "response": relevance.response, "mu": relevance.mu}
        self.method = "vebi" if stride_fix else "vebi_nofix"
        self.interpretations = _interpretation_links(interpretation_dir, relevance) if interpretation_dir else {}

    def __call__(self, images: Tensor, target: Target = None) -> tuple[Explanation, ...]:
        run = self._run(images, target)
        versions = {"vebi": __version__, "torch": torch.__version__}
        names = self.relevance.class_names
        out = []
        for b in range(images.shape[0]):
            j = int(run["targets"][b])
            feats = []
            for s in range(self.top_k):
                if not run["kept"][b, s]:
                    break
                index = int(run["indices"][b, s])
                f = self.relevance.space.feature(index)
                link = self.interpretations.get((j, index)) or self.interpretations.get((None, index))
                feats.append(ExplainedFeature(
                    s, index, f.layer, f.channel, float(run["x"][b, index]), float(run["w"][b, index]),
                    float(run["values"][b, s]), float(run["values"][b, s] / run["positive"][b]),
                    run["heat"][b, s].clone(), link))
            predicted = int(run["predicted"][b])
            out.append(Explanation(
                predicted, names[predicted] if predicted < len(names) else None, float(run["probs"][b, predicted]),
                j, names[j], float(run["probs"][b, j]) if j < run["probs"].shape[1] else float("nan"),
                tuple(feats), run["combined"][b].clone(), self.method, dict(self.settings), versions))
        return tuple(out)

    def maps(self, images: Tensor, target: Target = None) -> Tensor:
        """Only the combined maps (B, H, W) in [0, 1], on the images' device."""
        return self._run(images, target)["combined"].to(images.device)

    # ------------------------------------------------------------------------------------------

    def _run(self, images: Tensor, target: Target) -> dict[str, Tensor]:
        if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise VebiError(f"images must be a float tensor (B, C, H, W), got {shape}")
        space, k = self.relevance.space, self.top_k
        device = model_device(self.model, images.device)
        batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
        with preserve_model(self.model, no_inplace=False):
            fw = forward_with_rules(self.model, images.to(device), self.rules, space.layers)
            logits = fw.output
            if not isinstance(logits, Tensor) or logits.dim() != 2:
                raise VebiError("the model must return class scores of shape (B, classes)")
            probs = logits.detach().float().softmax(dim=1)
            predicted = probs.argmax(dim=1)
            targets = self._targets(target, predicted, batch, logits.shape[1]).to(device)
            acts = {layer: fw.activations[layer] for layer in space.layers}
            x = responses({n: a.detach() for n, a in acts.items()}, space, self.relevance.response).double()
            w = self.relevance.weights.to(device=device, dtype=torch.float64)[:, targets].T
            r = x * w
            values, indices = r.topk(min(k, space.size), dim=1)
            if values.shape[1] < k:
                pad = k - values.shape[1]
                values = torch.cat([values, values.new_zeros(batch, pad)], dim=1)
                indices = torch.cat([indices, indices.new_zeros(batch, pad)], dim=1)
            kept = values > 0
            heat = torch.zeros(batch, k, height, width, dtype=torch.float32)
            for s in range(k):
                rows = torch.nonzero(kept[:, s]).flatten().tolist()
                if not rows:
                    continue
                seeds: dict[str, Tensor] = {}
                for b in rows:
                    f = space.feature(int(indices[b, s]))
                    act = acts[f.layer]
                    if f.layer not in seeds:
                        seeds[f.layer] = torch.zeros_like(act)
                    seeds[f.layer][b, f.channel] = act[b, f.channel].detach()
                signal = fw.backward(seeds)
                heat[rows, s] = postprocess_gradient(signal[rows]).cpu()
        combined = heat.amax(dim=1) if k else torch.zeros(batch, height, width)
        positive = r.clamp(min=0).sum(dim=1).clamp(min=torch.finfo(torch.float64).tiny)
        return {"predicted": predicted.cpu(), "probs": probs.cpu(), "targets": targets.cpu(), "x": x.cpu(),
                "w": w.cpu(), "values": values.cpu(), "indices": indices.cpu(), "kept": kept.cpu(),
                "positive": positive.cpu(), "heat": heat, "combined": combined}

    def _targets(self, target: Target, predicted: Tensor, batch: int, outputs: int) -> Tensor:
        classes = self.relevance.num_classes
        if target is None:
            if outputs != classes:
                raise VebiError(f"the model has {outputs} outputs but the relevance has {classes} classes; "
                                "pass target= to say which class to explain")
            return predicted
        if isinstance(target, Tensor):
            items: list = target.flatten().tolist() if target.dim() else [target.item()] * batch
        elif isinstance(target, (int, str)):
            items = [target] * batch
        else:
            items = list(target)
        if len(items) != batch:
            raise VebiError(f"need one target per image: got {len(items)} for {batch} images")
        return torch.tensor([self.relevance.class_index(t if isinstance(t, str) else int(t)) for t in items])


def _interpretation_links(folder: str | os.PathLike[str], relevance: Relevance) -> dict[tuple[int | None, int], str]:
    """(class, feature index) -> path of the average image, and (None, index) for any class."""
    from vebi.interpretation.crops import INTERPRETATION_DIR

    root = Path(folder)
    if (root / INTERPRETATION_DIR / "interpretation.json").is_file():
        root = root / INTERPRETATION_DIR
    meta_path = root / "interpretation.json"
    if not meta_path.is_file():
        return {}
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VebiError(f"{meta_path} is not valid JSON ({exc})") from None
    links: dict[tuple[int | None, int], str] = {}
    for cls in meta.get("classes", []):
        for f in cls.get("features", []):
            index = int(f["index"])
            known = relevance.space.feature(index) if 0 <= index < relevance.space.size else None
            if known is None or (known.layer, known.channel) != (f["layer"], int(f["channel"])):
                raise VebiError(f"the interpretations in {root} were made for other features than this relevance")
            path = str((root / f["average"]).resolve())
            links[(int(cls["index"]), index)] = path
            links.setdefault((None, index), path)
    return links


def vebi_method(relevance: Relevance | None = None, *, top_k: int = 3, stride_fix: bool = True,
                pool_fix: bool = False) -> ExplainFn:
    """The method as an ``explain(model, images, target) -> (B, H, W)`` function (the combined maps)."""
    if relevance is None:
        raise VebiError("method 'vebi' needs a relevance (a fitted run)")

    def explain(model: nn.Module, images: Tensor, target: Tensor) -> Tensor:
        return Explainer(model, relevance, top_k=top_k, stride_fix=stride_fix, pool_fix=pool_fix).maps(images, target)

    return explain


def _vebi_nofix(relevance: Relevance | None = None, **options: Any) -> ExplainFn:
    return vebi_method(relevance, **{**options, "stride_fix": False})


register_method("vebi", vebi_method)
register_method("vebi_nofix", _vebi_nofix)
