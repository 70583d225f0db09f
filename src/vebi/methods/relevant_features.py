"""Methods built on a fitted relevance: vebi's own explanation (default; as in the authors' demo;
without the stride fix) and the upsampled activation maps of the same top features (the paper's
baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vebi.errors import VebiError
from vebi.explanation.explainer import MIN_SHARE, Explainer, top_contributions
from vebi.explanation.postprocess import postprocess_map
from vebi.hooks import preserve_model
from vebi.layers import capture_outputs
from vebi.methods.registry import Method, check_inputs, register_method
from vebi.models import model_device, model_dtype

if TYPE_CHECKING:
    from vebi.classes import ClassMap
    from vebi.core.relevance import Relevance
    from vebi.explanation.result import Explanation

__all__ = ["ActivationMap", "Vebi", "VebiNoFix", "VebiPaper"]


@register_method("vebi")
@dataclass(frozen=True)
class Vebi(Method):
    """vebi's explanation (:class:`vebi.explanation.explainer.Explainer`): the image's ``num_features``
    contributing features, each with its backward heatmap, and their combination.

    ``combine``: ``"share"`` (maps weighted by their share of the evidence, those under ``min_share``
    left out) or ``"max"``; ``upsample``: the stride fix's ``"linear"`` or ``"nearest"`` upsampling
    (see :mod:`vebi.explanation.explainer`, :mod:`vebi.explanation.stride_fix`).
    ``interpretations``: a run folder whose average-crop images are linked from the features.
    In the evaluation it also contributes ``vebi_feature<r>``, the r-th feature's map alone.
    """

    needs_relevance: ClassVar[bool] = True

    relevance: Relevance
    num_features: int = 3
    stride_fix: bool = True
    pool_fix: bool = False
    upsample: str = "linear"
    combine: str = "share"
    min_share: float = MIN_SHARE
    interpretations: str | None = None

    def explainer(self, model: nn.Module) -> Explainer:
        return Explainer(model, self.relevance, num_features=self.num_features, stride_fix=self.stride_fix,
                         pool_fix=self.pool_fix, upsample=self.upsample, combine=self.combine,
                         min_share=self.min_share, interpretation_dir=self.interpretations)

    def maps(self, model: nn.Module, images: Tensor, target: Tensor) -> Tensor:
        return self.explainer(model).maps(images, target)

    def explain(self, model: nn.Module, images: Tensor, target: Any = None,
                classes: ClassMap | None = None) -> tuple[Explanation, ...]:
        return self.explainer(model)(images, target, classes)

    def output_names(self) -> tuple[str, ...]:
        return (self.name, *[f"{self.name}_feature{r + 1}" for r in range(self.num_features)])

    def evaluation_maps(self, model: nn.Module, images: Tensor, target: Tensor) -> dict[str, Tensor]:
        explanations = self.explainer(model)(images, target)
        maps = {self.name: torch.stack([e.combined for e in explanations])}
        blank = torch.zeros_like(maps[self.name][0])
        for r in range(self.num_features):
            maps[f"{self.name}_feature{r + 1}"] = torch.stack(
                [e.features[r].heatmap if r < len(e.features) else blank for e in explanations])
        return maps


@register_method("vebi_nofix")
@dataclass(frozen=True)
class VebiNoFix(Vebi):
    """vebi's explanation without the stride fix (plain guided backprop from each feature)."""

    stride_fix: bool = False

    output_names = Method.output_names
    evaluation_maps = Method.evaluation_maps


@register_method("vebi_paper")
@dataclass(frozen=True)
class VebiPaper(Vebi):
    """vebi's explanation as in the authors' demo: the pixel-wise max of the feature maps and the
    stride fix's nearest upsampling."""

    upsample: str = "nearest"
    combine: str = "max"

    output_names = Method.output_names
    evaluation_maps = Method.evaluation_maps


@register_method("activation_map")
@dataclass(frozen=True)
class ActivationMap(Method):
    """Upsampled activation maps of the method's top features (the paper's "upsampled activation
    map" baseline).

    For image b and the class j of model output target[b]: responses x (as in collection, ``relevance.response``),
    contributions r = x o w_j; the k = ``num_features`` features with the largest r > 0 are kept. Each one's
    activation map A_{l,f} is bilinearly resized to (H, W) and post-processed (positive part,
    min-max); the result is their pixel-wise maximum. No feature with r > 0 gives an all-zero map.
    """

    needs_relevance: ClassVar[bool] = True

    relevance: Relevance
    num_features: int = 3

    def __post_init__(self) -> None:
        if self.num_features < 1:
            raise VebiError(f"num_features must be >= 1, got {self.num_features}")

    def maps(self, model: nn.Module, images: Tensor, target: Tensor) -> Tensor:
        from vebi.core.responses import as_maps, responses

        check_inputs(images, target)
        relevance = self.relevance
        columns = relevance.columns(target)
        if columns.numel() and int(columns.min()) < 0:
            raise VebiError(f"model output {int(target[columns < 0][0])} is none of the relevance's "
                            f"{len(relevance.class_names)} classes")
        space = relevance.space
        device = model_device(model, images.device)
        x = images.detach().to(device, model_dtype(model, images.dtype))
        with preserve_model(model), torch.no_grad(), capture_outputs(model, list(space.layers)) as acts:
            model(x)
            activations = dict(acts)
        resp = responses(activations, space, kind=relevance.response)
        _, _, values, indices = top_contributions(resp, relevance.weights, columns, self.num_features)
        height, width = images.shape[-2:]
        out = torch.zeros(images.shape[0], height, width, device=device)
        for b in range(images.shape[0]):
            for value, index in zip(values[b].tolist(), indices[b].tolist()):
                if value <= 0:
                    break
                feature = space.feature(index)
                channel_map = as_maps(activations[feature.layer])[b, feature.channel].float()
                up = F.interpolate(channel_map[None, None], size=(height, width), mode="bilinear", align_corners=False)
                out[b] = torch.maximum(out[b], postprocess_map(up[0])[0])
        return out.to(images.device)
