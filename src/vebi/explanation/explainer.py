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
input-space signal is post-processed by :func:`vebi.explanation.postprocess.postprocess_gradient`
(positive part, L2 over colour channels, min-max to [0, 1]). The combined explanation is
the pixel-wise maximum of the k maps. A batch costs one forward pass; the k backward passes
reuse its graph, each one serving the whole batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from vebi import __version__
from vebi.explanation.backward import forward_with_rules, guided_rules
from vebi.explanation.rules import RuleMap
from vebi.explanation.postprocess import postprocess_gradient
from vebi.explanation.result import ExplainedFeature, Explanation, resolve_targets
from vebi.errors import VebiError
from vebi.hooks import preserve_model
from vebi.models import model_device
from vebi.core.relevance import Relevance
from vebi.core.responses import responses

__all__ = ["Explainer", "top_contributions"]

Target = None | int | str | Sequence[int | str] | Tensor


class Explainer:
    """Explain a model's predictions with the relevant features of ``relevance``.

    ``explainer(images (B, C, H, W), target=None)`` returns one :class:`Explanation` per image.
    ``target``: None (the predicted class), a class index or name for every image, or one per
    image. ``num_features`` features with r > 0 are kept; ``stride_fix`` / ``pool_fix`` switch the
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
        num_features: int = 3,
        stride_fix: bool = True,
        pool_fix: bool = False,
        interpretation_dir: str | os.PathLike[str] | None = None,
        rules: RuleMap | None = None,
    ) -> None:
        if num_features < 1:
            raise VebiError(f"num_features must be at least 1, not {num_features}")
        self.model = model
        self.relevance = relevance
        self.num_features = int(num_features)
        self.rules = rules if rules is not None else guided_rules(stride_fix=stride_fix, pool_fix=pool_fix)
        self.settings = {"num_features": self.num_features, "stride_fix": bool(stride_fix), "pool_fix": bool(pool_fix),
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
            for s in range(self.num_features):
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
        space, k = self.relevance.space, self.num_features
        device = model_device(self.model, images.device)
        batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
        with preserve_model(self.model, no_inplace=False):
            fw = forward_with_rules(self.model, images.to(device), self.rules, space.layers)
            logits = fw.output
            if not isinstance(logits, Tensor) or logits.dim() != 2:
                raise VebiError("the model must return class scores of shape (B, classes)")
            probs = logits.detach().float().softmax(dim=1)
            predicted = probs.argmax(dim=1)
            targets = self._targets(target, predicted, logits.shape[1]).to(device)
            acts = {layer: fw.activations[layer] for layer in space.layers}
            x = responses({n: a.detach() for n, a in acts.items()}, space, self.relevance.response).double()
            w, r, values, indices = top_contributions(x, self.relevance.weights, targets, k)
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

    def _targets(self, target: Target, predicted: Tensor, outputs: int) -> Tensor:
        classes = self.relevance.num_classes
        if target is None and outputs != classes:
            raise VebiError(f"the model has {outputs} outputs but the relevance has {classes} classes; "
                            "pass target= to say which class to explain")
        return resolve_targets(target, predicted, index=self.relevance.class_index)


def top_contributions(x: Tensor, weights: Tensor, targets: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """w = columns ``targets`` of ``weights`` (B, m), r = x o w, and the k largest r per image
    (values, indices; padded with zeros when m < k), all float64 on x's device."""
    w = weights.to(device=x.device, dtype=torch.float64)[:, targets.to(x.device)].T
    r = x.double() * w
    values, indices = r.topk(min(k, r.shape[1]), dim=1)
    if values.shape[1] < k:
        pad = k - values.shape[1]
        values = torch.cat([values, values.new_zeros(values.shape[0], pad)], dim=1)
        indices = torch.cat([indices, indices.new_zeros(indices.shape[0], pad)], dim=1)
    return w, r, values, indices


def _interpretation_links(folder: str | os.PathLike[str], relevance: Relevance) -> dict[tuple[int | None, int], str]:
    """(class, feature index) -> path of the average image, and (None, index) for any class."""
    from vebi.interpretation.store import INTERPRETATION_DIR

    root = Path(folder)
    if (root / INTERPRETATION_DIR / "interpretation.json").is_file():
        root = root / INTERPRETATION_DIR
    meta_path = root / "interpretation.json"
    if not meta_path.is_file():
        return {}
    from vebi.io.artifacts import read_json

    meta = read_json(meta_path, "interpretations")
    links: dict[tuple[int | None, int], str] = {}
    try:
        for cls in meta.get("classes", []):
            for f in cls.get("features", []):
                index = int(f["index"])
                known = relevance.space.feature(index) if 0 <= index < relevance.space.size else None
                if known is None or (known.layer, known.channel) != (f["layer"], int(f["channel"])):
                    raise VebiError(f"the interpretations in {root} were made for other features than this relevance")
                path = str((root / f["average"]).resolve())
                links[(int(cls["index"]), index)] = path
                links.setdefault((None, index), path)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, VebiError):
            raise
        raise VebiError(f"{meta_path} has a missing or malformed entry ({exc!r}); re-run `vebi interpret`") from None
    return links
