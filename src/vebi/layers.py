"""Layers by name: finding them (names or patterns), the default set per architecture, listing
them, and capturing their outputs.

Default layers: one feature per filter of each block's output, not every internal activation:
- ResNet / ResNeXt / Wide-ResNet: every residual block (``layerK.i``), post-ReLU (the block's
  ReLU module is called twice, so it cannot be hooked on its own);
- MobileNetV2 / MobileNetV3: every entry of ``features`` (stem, inverted residual blocks, final
  1x1 conv); the block outputs are the linear bottlenecks;
- EfficientNet (v1 and v2): the stem, every MBConv / FusedMBConv block, the final 1x1 conv;
- MNASNet: the stem's two outputs, every inverted residual block, the final 1x1 conv;
- RegNet: every residual bottleneck block (``trunk_output.blockK.blockK-i``);
- ConvNeXt: the four stage outputs (``features.1/3/5/7``);
- DenseNet: every dense block (the concatenated features) and every transition;
- GoogLeNet / Inception v3: every inception ("mixed") block; never the auxiliary classifiers,
  which run only in training mode;
- anything else (plain ``nn.Sequential`` CNNs, VGG, AlexNet, SqueezeNet, ShuffleNet, ...): every
  activation module that directly follows a convolution or a normalisation layer in its parent
  container; if there is none, every ``nn.Conv2d``.
Squeeze-and-excitation gates (1 x 1 maps) are never defaults: they are inside the blocks.
Vision transformers (ViT, Swin, MaxViT) have no default: see :func:`default_layers`.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from vebi.errors import VebiError
from vebi.hooks import forward_hooks, preserve_model

ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU,
    nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish, nn.Softplus, nn.Tanh, nn.Sigmoid,
)
_PRECEDING = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm)

LayerSpec = None | str | nn.Module | Sequence[str | nn.Module]


@dataclass(frozen=True)
class LayerInfo:
    """One named module: its type, whether it is in the default set, and its output shape if known."""

    name: str
    type_name: str
    default: bool
    output_shape: tuple[int, ...] | None = None


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The sub-module with this dotted ``named_modules()`` name; VebiError listing close names otherwise."""
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else "; run `vebi layers MODEL` to list the names"
    raise VebiError(f"no layer named {name!r} in {type(model).__name__}{hint}")


def _instances(model: nn.Module, types: tuple[type[nn.Module], ...]) -> list[str]:
    """Names of the modules of these types, in ``named_modules()`` order."""
    return [n for n, m in model.named_modules() if n and isinstance(m, types)]


def _transformer_refusal(model: nn.Module) -> str | None:
    from torchvision.models import MaxVit, SwinTransformer, VisionTransformer

    name = type(model).__name__
    if isinstance(model, VisionTransformer):
        return (f"{name} has no convolutional feature maps: after its patch embedding (conv_proj) every "
                "layer outputs (B, tokens, C) sequences, and attention has no backward rule")
    if isinstance(model, SwinTransformer):
        return (f"{name} has no convolutional feature maps: its stages output channels-last (B, H, W, C) "
                "token grids, which vebi would read as (B, C, H, W), and attention has no backward rule")
    if isinstance(model, MaxVit):
        return (f"{name} is a transformer hybrid: its blocks output (B, C, H, W) maps, but their window and "
                "grid attention has no backward rule, so guided maps through them would be plain gradients")
    return None


def default_layers(model: nn.Module) -> list[str]:
    """The documented default layer set (see the module docstring).

    VebiError for vision transformers (ViT, Swin, MaxViT), naming why; layers may still be
    chosen explicitly there, at the user's risk.
    """
    from torchvision.models import (
        ConvNeXt,
        DenseNet,
        EfficientNet,
        GoogLeNet,
        Inception3,
        MNASNet,
        MobileNetV2,
        MobileNetV3,
        RegNet,
        ResNet,
    )
    from torchvision.models.convnext import CNBlock
    from torchvision.models.densenet import _DenseBlock, _Transition
    from torchvision.models.efficientnet import FusedMBConv, MBConv
    from torchvision.models.googlenet import Inception
    from torchvision.models.inception import (
        InceptionA,
        InceptionB,
        InceptionC,
        InceptionD,
        InceptionE,
    )
    from torchvision.models.mnasnet import _InvertedResidual
    from torchvision.models.regnet import ResBottleneckBlock

    refusal = _transformer_refusal(model)
    if refusal is not None:
        raise VebiError(f"{refusal}; vebi explains CNNs (pass layers= explicitly to try anyway)")
    if isinstance(model, ResNet):
        return [f"{stage}.{i}" for stage in ("layer1", "layer2", "layer3", "layer4")
                for i in range(len(getattr(model, stage)))]
    if isinstance(model, (MobileNetV2, MobileNetV3)):
        return [f"features.{i}" for i in range(len(model.features))]
    if isinstance(model, MNASNet):  # stem (first conv, depthwise-separable block), blocks, final 1x1 conv
        return ["layers.2", "layers.7", *_instances(model, (_InvertedResidual,)), f"layers.{len(model.layers) - 1}"]
    if isinstance(model, EfficientNet):
        last = len(model.features) - 1
        return ["features.0", *_instances(model, (MBConv, FusedMBConv)), f"features.{last}"]
    if isinstance(model, RegNet):
        return _instances(model, (ResBottleneckBlock,))
    if isinstance(model, ConvNeXt):
        return [f"features.{i}" for i, stage in enumerate(model.features)
                if any(isinstance(block, CNBlock) for block in stage.children())]
    if isinstance(model, DenseNet):
        return _instances(model, (_DenseBlock, _Transition))
    if isinstance(model, GoogLeNet):
        return _instances(model, (Inception,))
    if isinstance(model, Inception3):
        return _instances(model, (InceptionA, InceptionB, InceptionC, InceptionD, InceptionE))
    names: list[str] = []
    for parent_name, parent in model.named_modules():
        previous: nn.Module | None = None
        for child_name, child in parent.named_children():
            if isinstance(child, ACTIVATIONS) and isinstance(previous, _PRECEDING):
                names.append(f"{parent_name}.{child_name}" if parent_name else child_name)
            previous = child
    if not names:
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not names:
        raise VebiError(f"{type(model).__name__} has no convolution layers; choose layers explicitly")
    return names


def resolve_layers(model: nn.Module, spec: LayerSpec = None) -> list[str]:
    """Layer names for ``spec``: None (defaults), a module, a dotted name, a glob pattern, or a list of those.

    Patterns (``features.*``) expand to every matching name in ``named_modules()`` order; every
    entry must match something. Order follows the model, duplicates are dropped.
    """
    if spec is None:
        return default_layers(model)
    items = [spec] if isinstance(spec, (str, nn.Module)) else list(spec)
    if not items:
        raise VebiError("no layers given")
    all_names = [n for n, _ in model.named_modules() if n]
    by_id = {id(m): n for n, m in model.named_modules() if n}
    chosen: set[str] = set()
    for item in items:
        if isinstance(item, nn.Module):
            if id(item) not in by_id:
                raise VebiError(f"the given {type(item).__name__} module is not part of {type(model).__name__}")
            chosen.add(by_id[id(item)])
        elif any(ch in item for ch in "*?["):
            matched = fnmatch.filter(all_names, item)
            if not matched:
                raise VebiError(f"layer pattern {item!r} matches no layer of {type(model).__name__}")
            chosen.update(matched)
        else:
            get_module(model, item)
            chosen.add(item)
    return [n for n in all_names if n in chosen]


def first_conv_in_channels(model: nn.Module) -> int:
    """Input channels the model takes (of its first convolution; 3 when there is none)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Conv3d)):
            return m.in_channels
    return 3


def named_layers(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """``{name: module}`` for the given dotted names (VebiError naming close matches for a wrong one)."""
    modules = dict(model.named_modules())
    return {name: modules[name] if name and name in modules else get_module(model, name) for name in names}


@contextlib.contextmanager
def capture_outputs(model: nn.Module, layers: Sequence[str], keep_graph: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Collect the outputs of ``layers`` of the next forward passes into the yielded dict (last pass wins).

    Outputs are cloned (a later in-place op, e.g. ``ReLU(inplace=True)`` after a hooked conv, would
    otherwise change them) and detached unless ``keep_graph``.
    """
    store: dict[str, torch.Tensor] = {}

    def keep(name: str, out: torch.Tensor) -> None:
        store[name] = out.clone() if keep_graph else out.detach().clone()

    with forward_hooks(named_layers(model, layers), keep):
        yield store


def list_layers(model: nn.Module, example_input: torch.Tensor | None = None) -> list[LayerInfo]:
    """Every named module with its type and default flag; output shapes when an example input is given."""
    try:
        defaults = set(default_layers(model))
    except VebiError:  # a model without defaults (a vision transformer) still lists its layers
        defaults = set()
    shapes: dict[str, tuple[int, ...]] = {}
    if example_input is not None:
        def record(name: str, out: object) -> None:
            if isinstance(out, torch.Tensor):
                shapes.setdefault(name, tuple(out.shape[1:]))

        named = {n: m for n, m in model.named_modules() if n}
        with preserve_model(model, freeze=False, no_inplace=False), forward_hooks(named, record), torch.no_grad():
            model(example_input)
    return [LayerInfo(n, type(m).__name__, n in defaults, shapes.get(n))
            for n, m in model.named_modules() if n]
