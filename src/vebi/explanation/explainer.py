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
(positive part, L2 over colour channels, min-max to [0, 1]). The combined explanation of the
kept maps h_f (``combine``):

* ``"share"`` (default): each map weighted by its feature's share a_f = r_f / sum_{r_f' > 0} r_f',
  features with a_f < ``min_share`` (default :data:`MIN_SHARE`) left out (the top feature always
  counts), then min-max to [0, 1]:  c = minmax(sum_f a_f [a_f >= min_share] h_f);
* ``"max"`` (the authors' demo): c = max_f h_f, which draws a feature with 1 % of the evidence as
  strongly as the main one.

A batch costs one forward pass; the k backward passes reuse its graph, each one serving the
whole batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from vebi import __version__
from vebi.explanation.backward import forward_with_rules, guided_rules
from vebi.explanation.rules import RuleMap
from vebi.explanation.postprocess import minmax, postprocess_gradient
from vebi.explanation.result import ExplainedFeature, Explanation, resolve_targets
from vebi.errors import VebiError
from vebi.hooks import preserve_model
from vebi.models import model_device
from vebi.core.relevance import Relevance
from vebi.core.responses import responses

if TYPE_CHECKING:
    from vebi.classes import ClassMap

__all__ = ["COMBINE_MODES", "MIN_SHARE", "Explainer", "NotARunClass", "combine_maps", "top_contributions"]

COMBINE_MODES = ("share", "max")
MIN_SHARE = 0.05  # features with less of the positive evidence are left out of the share-weighted map


class NotARunClass(VebiError):
    """The output to explain is none of the run's classes, so there are no relevant features for it."""


Target = None | int | str | Sequence[int | str] | Tensor


class Explainer:
    """Explain a model's predictions with the relevant features of ``relevance``.

    ``explainer(images (B, C, H, W), target=None, classes=None)`` returns one :class:`Explanation`
    per image. ``target``: None (the prediction), a model output or class name for every image, or
    one per image; it must be one of the run's classes (``relevance.outputs``), the columns of W.
    ``classes`` (:class:`vebi.classes.ClassMap`) names the outputs (default: the relevance's classes).
    ``num_features`` features with r > 0 are kept; ``combine`` / ``min_share`` choose how
    their maps are combined (module docstring); ``stride_fix`` / ``pool_fix`` / ``upsample`` set the
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
        upsample: str = "linear",
        combine: str = "share",
        min_share: float = MIN_SHARE,
        interpretation_dir: str | os.PathLike[str] | None = None,
        rules: RuleMap | None = None,
    ) -> None:
        if num_features < 1:
            raise VebiError(f"num_features must be at least 1, not {num_features}")
        if combine not in COMBINE_MODES:
            raise VebiError(f"combine must be one of {', '.join(COMBINE_MODES)}, not {combine!r}")
        if not 0 <= min_share < 1:
            raise VebiError(f"min_share must be in [0, 1), not {min_share}")
        self.model = model
        self.relevance = relevance
        self.num_features = int(num_features)
        self.combine, self.min_share = combine, float(min_share)
        self.rules = rules if rules is not None else guided_rules(stride_fix=stride_fix, pool_fix=pool_fix,
                                                                  upsample=upsample)
        self.settings = {"num_features": self.num_features, "stride_fix": bool(stride_fix), "pool_fix": bool(pool_fix),
                         "upsample": upsample if stride_fix else None, "combine": combine,
                         "min_share": self.min_share if combine == "share" else None,
                         "rules": "custom" if rules is not None else "guided_backprop",
                         "response": relevance.response, "mu": relevance.mu}
        self.method = "vebi" if stride_fix else "vebi_nofix"
        self.interpretations = _interpretation_links(interpretation_dir, relevance) if interpretation_dir else {}

    def __call__(self, images: Tensor, target: Target = None, classes: ClassMap | None = None) -> tuple[Explanation, ...]:
        classes = classes or self.classes()
        run = self._run(images, target, classes)
        versions = {"vebi": __version__, "torch": torch.__version__}
        out = []
        for b in range(images.shape[0]):
            j = int(run["columns"][b])
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
            predicted, t = int(run["predicted"][b]), int(run["targets"][b])
            out.append(Explanation(
                predicted, classes.name(predicted), float(run["probs"][b, predicted]),
                t, classes.name(t), float(run["probs"][b, t]),
                tuple(feats), run["combined"][b].clone(), self.method, dict(self.settings), versions))
        return tuple(out)

    def maps(self, images: Tensor, target: Target = None) -> Tensor:
        """Only the combined maps (B, H, W) in [0, 1], on the images' device."""
        return self._run(images, target, self.classes())["combined"].to(images.device)

    def classes(self) -> ClassMap:
        """The class map of the relevance alone (its classes named by their folders)."""
        from vebi.classes import ClassMap

        rel = self.relevance
        return ClassMap(rel.class_names, tuple(rel.output(j) for j in range(rel.num_classes)))

    # ------------------------------------------------------------------------------------------

    def _run(self, images: Tensor, target: Target, classes: ClassMap) -> dict[str, Tensor]:
        if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise VebiError(f"images must be a float tensor (B, C, H, W), got {shape}")
        space, k = self.relevance.space, self.num_features
        device = model_device(self.model, images.device)
        batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
        with preserve_model(self.model, no_inplace=False):
            fw = forward_with_rules(self.model, images.to(device), self.rules, space.layers, guard=False)
            logits = fw.output
            if not isinstance(logits, Tensor) or logits.dim() != 2:
                raise VebiError("the model must return class scores of shape (B, classes)")
            probs = logits.detach().float().softmax(dim=1)
            predicted = probs.argmax(dim=1)
            targets = resolve_targets(target, predicted, classes).to(device)
            columns = self._columns(targets, logits.shape[1], classes, target is None)
            acts = {layer: fw.activations[layer] for layer in space.layers}
            x = responses({n: a.detach() for n, a in acts.items()}, space, self.relevance.response).double()
            w, r, values, indices = top_contributions(x, self.relevance.weights, columns, k)
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
        positive = r.clamp(min=0).sum(dim=1).clamp(min=torch.finfo(torch.float64).tiny)
        shares = (values.clamp(min=0) / positive[:, None]).cpu()
        combined = combine_maps(heat, shares, self.combine, self.min_share)
        return {"predicted": predicted.cpu(), "probs": probs.cpu(), "targets": targets.cpu(),
                "columns": columns.cpu(), "x": x.cpu(),
                "w": w.cpu(), "values": values.cpu(), "indices": indices.cpu(), "kept": kept.cpu(),
                "positive": positive.cpu(), "heat": heat, "combined": combined}

    def _columns(self, targets: Tensor, outputs: int, classes: ClassMap, predicted: bool) -> Tensor:
        """The relevance columns of the target outputs; VebiError for an output outside the run's classes."""
        columns = self.relevance.columns(targets)
        bad = torch.nonzero((columns < 0) | (targets >= outputs)).flatten().tolist()
        if bad:
            o = int(targets[bad[0]])
            if o >= outputs:
                raise VebiError(f"target {o} is out of range for a model with {outputs} outputs")
            what = "the model predicts" if predicted else "the target is"
            shown = ", ".join(classes.names[:8]) + (" ..." if len(classes.names) > 8 else "")
            raise NotARunClass(f"{what} output {o} ({classes.name(o)}), which is none of the run's "
                            f"classes ({shown}), so vebi has no relevant features to explain it with; pass --target "
                            "one of them, or explain it with a baseline (--method grad_cam)")
        return columns


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


def combine_maps(heat: Tensor, shares: Tensor, combine: str = "share", min_share: float = MIN_SHARE) -> Tensor:
    """Combined map (B, H, W) of the feature maps ``heat`` (B, k, H, W) in [0, 1], features in
    descending order of contribution, ``shares`` (B, k) their shares of the positive evidence (0
    for a feature not kept): ``"max"`` -> max_f h_f; ``"share"`` -> minmax(sum_f a_f h_f) with
    a_f = share_f where share_f >= ``min_share`` or f is the first feature, else 0."""
    if combine == "max":
        return heat.amax(dim=1) if heat.shape[1] else heat.new_zeros(heat.shape[0], *heat.shape[2:])
    weights = shares.to(heat.dtype) * (shares >= min_share)
    weights[:, :1] = shares[:, :1].to(heat.dtype)
    return minmax((weights[:, :, None, None] * heat).sum(dim=1))


def _interpretation_links(folder: str | os.PathLike[str], relevance: Relevance) -> dict[tuple[int | None, int], str]:
    """(class, feature index) -> path of the average image, and (None, index) for any class."""
    from vebi.interpretation.store import INTERPRETATION_DIR

    root = Path(folder)
    if (root / INTERPRETATION_DIR / "interpretation.json").is_file():
        root = root / INTERPRETATION_DIR
    meta_path = root / "interpretation.json"
    if not meta_path.is_file():
        return {}
    from vebi.io.folders import read_json

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
