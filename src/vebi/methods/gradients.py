"""Gradient baselines computed by Captum: guided backprop, deconvnet, integrated gradients.

Each map is the input-space attribution post-processed by
:func:`vebi.explanation.postprocess.postprocess_gradient` (positive part, L2 over colour
channels, min-max). Every call runs inside :func:`vebi.hooks.preserve_model`: eval mode,
parameters frozen, in-place activations off (Captum's ReLU overrides need the ReLU input kept
intact), hooks Captum leaves behind removed; all restored afterwards, also after an exception.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from vebi.errors import VebiError
from vebi.explanation.postprocess import postprocess_gradient
from vebi.hooks import preserve_model
from vebi.methods.registry import Method, class_range_errors, model_inputs, register_method
from vebi.models import in_fast_layout

__all__ = ["Deconvnet", "GuidedBackprop", "IntegratedGradients"]


def _captum(kind: str, model: nn.Module, images: Tensor, target: Tensor, **options: Any) -> Tensor:
    from captum.attr import Deconvolution, GuidedBackprop, IntegratedGradients

    x, t = model_inputs(model, images, target)
    cls = {"guided": GuidedBackprop, "deconv": Deconvolution, "ig": IntegratedGradients}[kind]
    with preserve_model(model), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        with class_range_errors(model, x, t):
            attributions = in_fast_layout(model, lambda inputs: cls(model).attribute(inputs, target=t, **options), x)
    return postprocess_gradient(attributions.detach()).to(images.device)


@register_method("guided_backprop")
@dataclass(frozen=True)
class GuidedBackprop(Method):
    """Guided backpropagation (Springenberg et al. 2015) via ``captum.attr.GuidedBackprop``.

    Gradient of logit ``target`` w.r.t. the input where each ``nn.ReLU`` passes g * [x > 0] * [g > 0].
    Captum only overrides ``nn.ReLU`` modules (functional ReLUs and ReLU6 pass plain gradients).
    """

    def maps(self, model: nn.Module, images: Tensor, target: Tensor) -> Tensor:
        return _captum("guided", model, images, target)


@register_method("deconvnet")
@dataclass(frozen=True)
class Deconvnet(Method):
    """Deconvnet (Zeiler & Fergus 2014) via ``captum.attr.Deconvolution``: each ReLU passes max(g, 0)."""

    def maps(self, model: nn.Module, images: Tensor, target: Tensor) -> Tensor:
        return _captum("deconv", model, images, target)


@register_method("integrated_gradients")
@dataclass(frozen=True)
class IntegratedGradients(Method):
    """Integrated gradients (Sundararajan et al. 2017) via ``captum.attr.IntegratedGradients``.

    a = (x - x0) * integral_0^1 dF_target(x0 + s (x - x0)) / dx ds, Gauss-Legendre with ``steps`` nodes;
    the baseline x0 is the constant ``baseline`` in model-input space (0 = the dataset mean for
    mean/std-normalised inputs). ``internal_batch_size`` bounds the images per forward pass
    (default max(B, 256)); it changes only how the B * steps images are grouped.
    """

    steps: int = 50
    baseline: float = 0.0
    internal_batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise VebiError(f"integrated gradients needs steps >= 1, got {self.steps}")

    def maps(self, model: nn.Module, images: Tensor, target: Tensor) -> Tensor:
        chunk = self.internal_batch_size if self.internal_batch_size is not None else max(images.shape[0], 256)
        return _captum("ig", model, images, target, baselines=float(self.baseline), n_steps=int(self.steps),
                       internal_batch_size=chunk)
