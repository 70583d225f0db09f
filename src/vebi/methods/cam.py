"""Grad-CAM and Grad-CAM++ computed by pytorch-grad-cam, at one layer of the model.

Maps are layer-space class activation maps, bilinearly resized to the image and post-processed
by :func:`vebi.explanation.postprocess.postprocess_map` (positive part, min-max). ``layer=None``
uses :func:`default_cam_layer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vebi.errors import VebiError
from vebi.explanation.postprocess import postprocess_map
from vebi.hooks import HookHandles, preserve_model
from vebi.layers import get_module
from vebi.methods.registry import Method, class_range_errors, model_inputs, register_method
from vebi.models import in_fast_layout, model_device, model_dtype

__all__ = ["GradCAM", "GradCAMPlusPlus", "default_cam_layer"]

_RESAMPLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample)


def default_cam_layer(model: nn.Module, images: Tensor) -> str:
    """Name of the default CAM layer: the last module to finish in a forward pass whose output is a
    (B, C, H, W) map with H * W > 1, excluding the model itself, modules called more than once and
    resampling modules (adaptive pooling, upsampling). For ResNets this is ``layer4``, for VGG
    ``features`` (the standard Grad-CAM choices), for a plain conv stack its last activation.
    """
    finished: list[str] = []
    calls: dict[str, int] = {}

    def hook(name: str) -> Any:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, Tensor) and output.dim() == 4 and output.shape[2] * output.shape[3] > 1:
                finished.append(name)

        return record

    with HookHandles() as handles:
        for name, module in model.named_modules():
            if name and not isinstance(module, _RESAMPLING):
                handles.append(module.register_forward_hook(hook(name)))
        x = images[:1].detach().to(model_device(model, images.device), model_dtype(model, images.dtype))
        with preserve_model(model), torch.no_grad():
            model(x)
    once = [name for name in finished if calls[name] == 1]
    if not once:
        raise VebiError(
            "no layer with a spatial output (H * W > 1) for Grad-CAM at this input size; pass layer= explicitly"
        )
    return once[-1]


def _module(model: nn.Module, layer: str | nn.Module) -> nn.Module:
    if isinstance(layer, nn.Module):
        if not any(layer is m for m in model.modules()):
            raise VebiError(f"layer {type(layer).__name__} is not a submodule of the model")
        return layer
    return get_module(model, layer)


def _cam(kind: str, model: nn.Module, images: Tensor, target: Tensor, layer: str | nn.Module | None) -> Tensor:
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x, t = model_inputs(model, images, target)
    module = _module(model, layer if layer is not None else default_cam_layer(model, images))
    with preserve_model(model):
        cam = (GradCAM if kind == "gradcam" else GradCAMPlusPlus)(model=model, target_layers=[module])
        try:
            with class_range_errors(model, x, t):
                targets = [ClassifierOutputTarget(int(c)) for c in t]
                maps = in_fast_layout(model, lambda inputs: cam(input_tensor=inputs, targets=targets), x)
        finally:
            cam.activations_and_grads.release()
    return postprocess_map(torch.from_numpy(maps)).to(images.device)


@register_method("grad_cam")
@dataclass(frozen=True)
class GradCAM(Method):
    """Grad-CAM (Selvaraju et al. 2017) via ``pytorch_grad_cam.GradCAM`` at ``layer``.

    h = relu(sum_c alpha_c A_c), alpha_c = mean over (u, v) of d y_target / d A_c(u, v), bilinearly
    resized to the image.
    """

    layer: str | nn.Module | None = None

    def maps(self, model: nn.Module, images: Tensor, target: Tensor) -> Tensor:
        return _cam("gradcam", model, images, target, self.layer)


@register_method("grad_cam_plus_plus")
@dataclass(frozen=True)
class GradCAMPlusPlus(Method):
    """Grad-CAM++ (Chattopadhyay et al. 2018) via ``pytorch_grad_cam.GradCAMPlusPlus`` at ``layer``
    (second-order weighting of positive gradients)."""

    layer: str | nn.Module | None = None

    def maps(self, model: nn.Module, images: Tensor, target: Tensor) -> Tensor:
        return _cam("gradcampp", model, images, target, self.layer)
