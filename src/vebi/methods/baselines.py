"""Baseline explanation methods behind one protocol, computed by their reference libraries.

Every method is an ``ExplainFn``::

    explain(model, images (B, C, H, W), target (B,) int) -> heatmaps (B, H, W) float32 in [0, 1]

at image resolution, on the images' device, for class ``target[b]`` of image ``b``.

Shared post-processing (also used by vebi's own method):

- gradient-space maps a (B, C, H, W): h = ||max(a, 0)||_2 over C (positive part, then L2 over colour
  channels), then per-image min-max;
- layer-space maps (CAMs, activation maps) h (B, H, W): max(h, 0), then per-image min-max;
- min-max: h <- (h - min h) / (max h - min h); a constant map (max == min) becomes all zeros, never NaN.

Every method runs inside :func:`vebi.hooks.preserve_model`: in eval mode, with the parameters' ``requires_grad``
off, in-place activations switched off (Captum's ReLU overrides and Grad-CAM's stored activations
need the ReLU input kept intact), and hooks the libraries leave behind removed; all of it is restored
afterwards, also after an exception. The caller's ``images`` are never modified.

``METHODS`` maps a method name to a *builder* ``builder(relevance=None, **options) -> ExplainFn``; use
:func:`build_method`. Methods that need a relevance (``activation_map``, vebi's own) raise
``VebiError`` without one. Other modules add methods with :func:`register_method`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vebi.errors import VebiError
from vebi.hooks import preserve_model
from vebi.layers import get_module
from vebi.models import model_device, model_dtype

if TYPE_CHECKING:
    from vebi.core.relevance import Relevance

ExplainFn = Callable[[nn.Module, Tensor, Tensor], Tensor]
MethodBuilder = Callable[..., ExplainFn]

__all__ = [
    "ExplainFn",
    "METHODS",
    "MethodBuilder",
    "activation_map",
    "build_method",
    "deconvnet",
    "default_cam_layer",
    "grad_cam",
    "grad_cam_plus_plus",
    "guided_backprop",
    "integrated_gradients",
    "method_names",
    "minmax",
    "postprocess_gradient",
    "postprocess_map",
    "register_method",
]



# ----------------------------------------------------------------------------- post-processing


def minmax(maps: Tensor) -> Tensor:
    """Per-image min-max of (B, H, W) maps to [0, 1]; a constant map becomes zeros (no NaN)."""
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    out = torch.where(span > 0, (flat - low) / safe, torch.zeros_like(flat))
    return out.reshape(maps.shape)


def postprocess_map(maps: Tensor) -> Tensor:
    """Layer-space maps (B, H, W): positive part, then per-image min-max to [0, 1]."""
    return minmax(maps.float().clamp_min(0))


def postprocess_gradient(attributions: Tensor) -> Tensor:
    """Input-space maps (B, C, H, W): positive part, L2 norm over C, per-image min-max to [0, 1]."""
    # square-sum-sqrt: linalg.vector_norm over dim 1 of a (B, C, H, W) tensor is ~10x slower on CPU
    return minmax(attributions.float().clamp_min(0).square().sum(dim=1).sqrt())


# ----------------------------------------------------------------------------- model scope


def _check_inputs(images: Tensor, target: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise VebiError(f"images must be a float tensor (B, C, H, W), got {shape}")
    if not isinstance(target, Tensor) or target.shape != (images.shape[0],) or target.is_floating_point():
        shape = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise VebiError(f"target must be an integer tensor of shape ({images.shape[0]},), got {shape}")
    if target.numel() and int(target.min()) < 0:
        raise VebiError(f"target holds a negative class index ({int(target.min())})")


def _inputs(model: nn.Module, images: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """A private copy of the images on the model's device (requires grad) and the target there."""
    _check_inputs(images, target)
    device = model_device(model, images.device)
    x = images.detach().to(device, model_dtype(model, images.dtype), copy=True).requires_grad_(True)
    return x, target.detach().to(device, torch.long)


@contextlib.contextmanager
def _class_range_errors(model: nn.Module, x: Tensor, target: Tensor) -> Iterator[None]:
    """Turn a library's indexing error from an out-of-range target into a ``VebiError``."""
    try:
        yield
    except (IndexError, RuntimeError):
        with torch.no_grad():
            classes = model(x[:1].detach()).shape[1]
        if target.numel() and int(target.max()) >= classes:
            raise VebiError(
                f"target class {int(target.max())} is out of range for a model with {classes} outputs"
            ) from None
        raise


# ----------------------------------------------------------------------------- Captum methods


def _captum(kind: str, model: nn.Module, images: Tensor, target: Tensor, **options: Any) -> Tensor:
    from captum.attr import Deconvolution, GuidedBackprop, IntegratedGradients

    x, t = _inputs(model, images, target)
    cls = {"guided": GuidedBackprop, "deconv": Deconvolution, "ig": IntegratedGradients}[kind]
    with preserve_model(model), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        with _class_range_errors(model, x, t):
            attributions = cls(model).attribute(x, target=t, **options)
    return postprocess_gradient(attributions.detach()).to(images.device)


def guided_backprop(model: nn.Module, images: Tensor, target: Tensor) -> Tensor:
    """Guided backpropagation (Springenberg et al. 2015) via ``captum.attr.GuidedBackprop``.

    Gradient of logit ``target`` w.r.t. the input where each ``nn.ReLU`` passes g * [x > 0] * [g > 0].
    Captum only overrides ``nn.ReLU`` modules (functional ReLUs and ReLU6 pass plain gradients).
    """
    return _captum("guided", model, images, target)


def deconvnet(model: nn.Module, images: Tensor, target: Tensor) -> Tensor:
    """Deconvnet (Zeiler & Fergus 2014) via ``captum.attr.Deconvolution``: each ReLU passes max(g, 0)."""
    return _captum("deconv", model, images, target)


def integrated_gradients(
    model: nn.Module,
    images: Tensor,
    target: Tensor,
    *,
    steps: int = 50,
    baseline: float = 0.0,
    internal_batch_size: int | None = None,
) -> Tensor:
    """Integrated gradients (Sundararajan et al. 2017) via ``captum.attr.IntegratedGradients``.

    a = (x - x0) * integral_0^1 dF_target(x0 + s (x - x0)) / dx ds, Gauss-Legendre with ``steps`` nodes;
    the baseline x0 is the constant ``baseline`` in model-input space (0 = the dataset mean for
    mean/std-normalised inputs). ``internal_batch_size`` bounds the images per forward pass
    (default max(B, 256)); it changes only how the B * steps images are grouped.
    """
    if steps < 1:
        raise VebiError(f"integrated gradients needs steps >= 1, got {steps}")
    chunk = internal_batch_size if internal_batch_size is not None else max(images.shape[0], 256)
    return _captum(
        "ig", model, images, target, baselines=float(baseline), n_steps=int(steps), internal_batch_size=chunk
    )


# ----------------------------------------------------------------------------- Grad-CAM family

_RESAMPLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample)


def default_cam_layer(model: nn.Module, images: Tensor) -> str:
    """Name of the default CAM layer: the last module to finish in a forward pass whose output is a
    (B, C, H, W) map with H * W > 1, excluding the model itself, modules called more than once and
    resampling modules (adaptive pooling, upsampling). For ResNets this is ``layer4``, for VGG
    ``features`` (the standard Grad-CAM choices), for a plain conv stack its last activation.
    """
    finished: list[str] = []
    calls: dict[str, int] = {}
    handles = []

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, Tensor) and output.dim() == 4 and output.shape[2] * output.shape[3] > 1:
                finished.append(name)

        return record

    for name, module in model.named_modules():
        if name and not isinstance(module, _RESAMPLING):
            handles.append(module.register_forward_hook(hook(name)))
    try:
        x = images[:1].detach().to(model_device(model, images.device), model_dtype(model, images.dtype))
        with preserve_model(model), torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
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


def _cam(
    kind: str, model: nn.Module, images: Tensor, target: Tensor, layer: str | nn.Module | None
) -> Tensor:
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x, t = _inputs(model, images, target)
    module = _module(model, layer if layer is not None else default_cam_layer(model, images))
    with preserve_model(model):
        cam = (GradCAM if kind == "gradcam" else GradCAMPlusPlus)(model=model, target_layers=[module])
        try:
            with _class_range_errors(model, x, t):
                maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in t])
        finally:
            cam.activations_and_grads.release()
    return postprocess_map(torch.from_numpy(maps)).to(images.device)


def grad_cam(model: nn.Module, images: Tensor, target: Tensor, *, layer: str | nn.Module | None = None) -> Tensor:
    """Grad-CAM (Selvaraju et al. 2017) via ``pytorch_grad_cam.GradCAM`` at ``layer``.

    h = relu(sum_c alpha_c A_c), alpha_c = mean over (u, v) of d y_target / d A_c(u, v), bilinearly
    resized to the image; ``layer=None`` uses :func:`default_cam_layer`.
    """
    return _cam("gradcam", model, images, target, layer)


def grad_cam_plus_plus(
    model: nn.Module, images: Tensor, target: Tensor, *, layer: str | nn.Module | None = None
) -> Tensor:
    """Grad-CAM++ (Chattopadhyay et al. 2018) via ``pytorch_grad_cam.GradCAMPlusPlus`` at ``layer``
    (second-order weighting of positive gradients); ``layer=None`` uses :func:`default_cam_layer`.
    """
    return _cam("gradcampp", model, images, target, layer)


# ----------------------------------------------------------------------------- activation maps


def activation_map(relevance: Relevance, *, top_k: int = 3) -> ExplainFn:
    """Upsampled activation maps of the method's top features (the paper's "upsampled activation
    map" baseline), built from a :class:`vebi.core.relevance.Relevance`.

    For image b and class j = target[b]: responses x (as in collection, ``relevance.response``),
    contributions r = x o w_j; the k = ``top_k`` features with the largest r > 0 are kept. Each one's
    activation map A_{l,f} is bilinearly resized to (H, W) and post-processed (positive part,
    min-max); the result is their pixel-wise maximum. No feature with r > 0 gives an all-zero map.
    """
    if top_k < 1:
        raise VebiError(f"top_k must be >= 1, got {top_k}")

    def explain(model: nn.Module, images: Tensor, target: Tensor) -> Tensor:
        from vebi.hooks import capture_outputs
        from vebi.core.responses import as_maps, responses

        _check_inputs(images, target)
        if target.numel() and int(target.max()) >= len(relevance.class_names):
            raise VebiError(
                f"target class {int(target.max())} is out of range for a relevance over "
                f"{len(relevance.class_names)} classes"
            )
        space = relevance.space
        device = model_device(model, images.device)
        x = images.detach().to(device, model_dtype(model, images.dtype))
        with preserve_model(model), torch.no_grad(), capture_outputs(model, list(space.layers)) as acts:
            model(x)
            activations = dict(acts)
        resp = responses(activations, space, kind=relevance.response).to(torch.float64)
        weights = relevance.weights.to(device=resp.device, dtype=torch.float64)
        contributions = resp * weights[:, target.to(resp.device)].T
        values, indices = contributions.topk(min(top_k, space.size), dim=1)
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

    return explain


# ----------------------------------------------------------------------------- registry


def _needs_nothing(fn: Callable[..., Tensor]) -> MethodBuilder:
    def build(relevance: Relevance | None = None, **options: Any) -> ExplainFn:
        inspect.signature(fn).bind(None, None, None, **options)  # TypeError on an unknown option
        return functools.partial(fn, **options) if options else fn

    build.__doc__ = fn.__doc__
    return build


def _build_activation_map(relevance: Relevance | None = None, **options: Any) -> ExplainFn:
    if relevance is None:
        raise VebiError("method 'activation_map' needs a relevance (a fitted run)")
    return activation_map(relevance, **options)


METHODS: dict[str, MethodBuilder] = {
    "activation_map": _build_activation_map,
    "guided_backprop": _needs_nothing(guided_backprop),
    "deconvnet": _needs_nothing(deconvnet),
    "integrated_gradients": _needs_nothing(integrated_gradients),
    "grad_cam": _needs_nothing(grad_cam),
    "grad_cam_plus_plus": _needs_nothing(grad_cam_plus_plus),
}


def register_method(name: str, builder: MethodBuilder) -> None:
    """Add (or replace) a method: ``builder(relevance=None, **options) -> ExplainFn``."""
    METHODS[name] = builder


def method_names() -> tuple[str, ...]:
    """Every registered method, vebi's own included (importing :mod:`vebi.explanation.explainer` registers it)."""
    import vebi.explanation.explainer  # noqa: F401

    return tuple(METHODS)


def build_method(name: str, relevance: Relevance | None = None, **options: Any) -> ExplainFn:
    """The ``ExplainFn`` of method ``name`` (one of :func:`method_names`) with its ``options``."""
    if name not in method_names():
        raise VebiError(f"unknown explanation method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    try:
        return METHODS[name](relevance=relevance, **options)
    except TypeError as exc:
        raise VebiError(f"bad options for method {name!r}: {exc}") from exc
