"""Grad-CAM and Grad-CAM++ at one layer of the model.

Maps are layer-space class activation maps, bilinearly resized to the image and post-processed
by :func:`vebi.explanation.postprocess.postprocess_map` (positive part, min-max). ``layer=None``
uses :func:`default_cam_layer`. The weights follow pytorch-grad-cam 1.5 (``GradCAM``,
``GradCAMPlusPlus``), and the maps equal its maps to float32 rounding (tests/test_baselines.py);
they are computed here because importing that package takes 2-3 s (it loads scikit-learn for
other CAMs), and here the gradients stop at the layer and the maps stay on the model's device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vebi.errors import VebiError
from vebi.explanation.postprocess import postprocess_map
from vebi.hooks import HookHandles, preserve_model
from vebi.layers import get_module
from vebi.methods.registry import Method, class_range_errors, model_inputs, register_method
from vebi.models import in_fast_layout, model_device, model_dtype

__all__ = ["GradCAM", "GradCAMPlusPlus", "cam_weights", "default_cam_layer"]

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


def cam_weights(kind: str, activations: Tensor, grads: Tensor) -> Tensor:
    """(B, C) channel weights from a layer's activations A and gradients g = d y_target / d A, (B, C, H, W).

    ``"gradcam"``: alpha_c = mean_(u,v) g_c. ``"gradcampp"`` (Grad-CAM++, eq. 19 of Chattopadhyay et
    al.): alpha_c = sum_(u,v) relu(g) a, a = g^2 / (2 g^2 + (sum_(u,v) A_c) g^3 + 1e-6), a = 0 where g = 0.
    """
    if kind == "gradcam":
        return grads.mean(dim=(2, 3))
    g2 = grads.square()
    alpha = g2 / (2 * g2 + activations.sum(dim=(2, 3), keepdim=True) * (g2 * grads) + 1e-6)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    return (grads.clamp_min(0) * alpha).sum(dim=(2, 3))


def _cam(kind: str, model: nn.Module, images: Tensor, target: Tensor, layer: str | nn.Module | None) -> Tensor:
    """relu(sum_c alpha_c A_c) at ``layer``, bilinearly resized to the images, then post-processed."""
    x, t = model_inputs(model, images, target)
    layer = layer if layer is not None else default_cam_layer(model, images)
    module = _module(model, layer)
    name = layer if isinstance(layer, str) else type(module).__name__
    captured: list[Any] = []

    def run(inputs: Tensor) -> Tensor:
        captured.clear()
        logits = model(inputs)
        score = logits.gather(1, t[:, None]).sum()
        if not captured or not isinstance(captured[0], Tensor) or captured[0].dim() != 4:
            shape = tuple(captured[0].shape) if captured and isinstance(captured[0], Tensor) else None
            raise VebiError(f"Grad-CAM needs a (B, C, H, W) output at layer {name}, got {shape}")
        activations = captured[0]
        if not activations.requires_grad:
            raise VebiError(f"the output of layer {name} does not depend on the input through autograd")
        (grads,) = torch.autograd.grad(score, activations)
        activations = activations.detach()
        cam = (cam_weights(kind, activations, grads)[:, :, None, None] * activations).sum(dim=1).clamp_min(0)
        return F.interpolate(cam[:, None], size=tuple(inputs.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]

    with preserve_model(model), HookHandles() as handles:
        handles.append(module.register_forward_hook(lambda _m, _i, output: captured.append(output)))
        with class_range_errors(model, x, t):
            maps = in_fast_layout(model, run, x)
    return postprocess_map(maps).to(images.device)


@register_method("grad_cam")
@dataclass(frozen=True)
class GradCAM(Method):
    """Grad-CAM (Selvaraju et al. 2017) at ``layer`` (as ``pytorch_grad_cam.GradCAM``).

    h = relu(sum_c alpha_c A_c), alpha_c = mean over (u, v) of d y_target / d A_c(u, v), bilinearly
    resized to the image.
    """

    layer: str | nn.Module | None = None

    def maps(self, model: nn.Module, images: Tensor, target: Tensor) -> Tensor:
        return _cam("gradcam", model, images, target, self.layer)


@register_method("grad_cam_plus_plus")
@dataclass(frozen=True)
class GradCAMPlusPlus(Method):
    """Grad-CAM++ (Chattopadhyay et al. 2018) at ``layer`` (as ``pytorch_grad_cam.GradCAMPlusPlus``):
    second-order weighting of positive gradients, :func:`cam_weights`."""

    layer: str | nn.Module | None = None

    def maps(self, model: nn.Module, images: Tensor, target: Tensor) -> Tensor:
        return _cam("gradcampp", model, images, target, self.layer)
