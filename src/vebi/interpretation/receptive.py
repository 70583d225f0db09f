"""Theoretical receptive fields of a layer's units, derived from the model's own graph.

The model is traced with ``torch.fx`` (on a thin wrapper, so the caller's model is never
changed) and, per spatial axis, three integers are pushed from the input to the layer:

    unit i of the map sees input pixels  [start + i * stride,  start + i * stride + size)

A window op (convolution or pooling) with kernel k, stride s, padding p (before the first
element) and dilation d maps (size, stride, start) to

    (size + d (k - 1) stride,   stride s,   start - p stride).

Per-location ops (batch norm, activations, dropout, identity) leave the field unchanged.
Where branches meet (addition, multiplication, concatenation of channels) the field is the
union of the branches' fields: the smallest start and the largest end. A global pooling makes
the field the whole input (so a squeeze-and-excitation gate does too, unless
``ignore_global``); flattening ends the spatial map. Normalisation layers count as
per-location affine maps (their batch/instance statistics are not counted); a map whose
channels are moved last (``permute(0, 2, 3, 1)``, as ConvNeXt's blocks do) keeps its field through
layer norms over the channels, linear layers and per-location ops until it is moved back; reflection /
replication padding is treated as zero padding, which gives the same box unless a window is
more than half padding.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
import torchvision.ops
from torch import nn

from vebi.errors import VebiError
from vebi.layers import get_module

__all__ = ["ReceptiveField", "receptive_field", "receptive_fields"]


@dataclass(frozen=True)
class ReceptiveField:
    """The receptive field of every unit of one layer's output map, in input pixels.

    Along each axis (height, width), unit i sees the half-open pixel range
    ``[start + i * stride, start + i * stride + size)``; ``start`` may be negative (padding).
    An axis whose units all see the whole input (after global pooling) has
    ``stride == 0``, ``start == 0`` and ``size`` equal to the input size.
    """

    layer: str
    size: tuple[int, int]
    stride: tuple[int, int]
    start: tuple[int, int]

    def unclipped_box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """Half-open box ``(top, left, bottom, right)`` of unit (y, x), possibly outside the image."""
        top = self.start[0] + y * self.stride[0]
        left = self.start[1] + x * self.stride[1]
        return top, left, top + self.size[0], left + self.size[1]

    def box(self, y: int, x: int, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
        """Half-open box ``(top, left, bottom, right)`` of unit (y, x) clipped to an image of ``(H, W)``.

        A unit whose field lies wholly outside the image gets an empty box (top == bottom or
        left == right).
        """
        height, width = image_size
        top, left, bottom, right = self.unclipped_box(y, x)
        top, bottom = min(max(top, 0), height), min(max(bottom, 0), height)
        left, right = min(max(left, 0), width), min(max(right, 0), width)
        return top, left, bottom, right

    def center(self, y: int, x: int) -> tuple[float, float]:
        """Centre (row, column) of unit (y, x)'s field in input pixel coordinates."""
        top, left, _, _ = self.unclipped_box(y, x)
        return top + (self.size[0] - 1) / 2, left + (self.size[1] - 1) / 2


def receptive_field(
    model: nn.Module, layer: str | nn.Module, *, input_size: tuple[int, int] | None = None,
    ignore_global: bool = False,
) -> ReceptiveField:
    """Receptive field of ``layer`` (a dotted ``named_modules()`` name or the module itself).

    ``input_size`` (H, W) is only needed when a global pooling lies upstream of the layer.
    ``ignore_global``: where a branch that sees the whole input (a squeeze-and-excitation gate,
    global context) joins a branch with a finite field, keep the finite one.
    """
    return receptive_fields(model, [layer], input_size=input_size, ignore_global=ignore_global)[
        _layer_name(model, layer)]


def receptive_fields(
    model: nn.Module, layers: Iterable[str | nn.Module], *, input_size: tuple[int, int] | None = None,
    ignore_global: bool = False,
) -> dict[str, ReceptiveField]:
    """Receptive fields of several layers from one trace of ``model``, keyed by layer name.

    A module called several times in one forward pass is taken at its last call (as a
    forward hook that overwrites its capture would see it).
    """
    names = [_layer_name(model, layer) for layer in layers]
    outputs, graph, root = _trace(model)
    result: dict[str, ReceptiveField] = {}
    for name in names:
        node = outputs.get(name)
        if node is None:
            raise VebiError(f"layer '{name}' is not called in the model's forward pass, or does not return one tensor")
        state = _propagate(graph, root, node, ignore_global)
        if not isinstance(state, tuple):
            what = "does not depend on the input" if state is None else "has no spatial map (flattened)"
            raise VebiError(f"layer '{name}' {what}, so it has no receptive field")
        result[name] = _to_field(name, state, input_size)
    return result


# --------------------------------------------------------------------------- names and tracing


def _layer_name(model: nn.Module, layer: str | nn.Module) -> str:
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name
        raise VebiError(f"module {type(layer).__name__} is not part of the model")
    get_module(model, layer)  # VebiError naming close matches when there is no such layer
    return layer


class _Root(nn.Module):
    """Wrapper traced instead of the model, so fx's tensor constants are set on it, not on the model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> Any:
        return self.model(images)


class _RecordingTracer(fx.Tracer):
    """Default fx tracer that also records, for every module, the graph node of its output."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: dict[str, fx.Node | None] = {}

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        result = super().call_module(m, forward, args, kwargs)
        name = self.path_of_module(m)
        self.outputs[name] = result.node if isinstance(result, fx.Proxy) else None
        return result


def _trace(model: nn.Module) -> tuple[dict[str, fx.Node], fx.Graph, nn.Module]:
    root = _Root(model)
    tracer = _RecordingTracer()
    try:
        graph = tracer.trace(root)
    except Exception as exc:  # fx raises many kinds of errors on untraceable code
        raise VebiError(
            f"cannot trace {type(model).__name__} with torch.fx to find receptive fields ({type(exc).__name__}: {exc})"
        ) from exc
    prefix = "model."
    outputs = {
        name[len(prefix) :]: node
        for name, node in tracer.outputs.items()
        if name.startswith(prefix) and node is not None
    }
    return outputs, graph, root


# --------------------------------------------------------------------------- propagation

# A node's state: None (no dependence on the input), _FLAT (input-dependent, not a map), a
# pair of _Axis (height, width) of a (B, C, H, W) map, or _Last: the same with the channels last.


@dataclass(frozen=True)
class _Axis:
    size: int | None  # None: every unit sees the whole input axis
    stride: int
    start: int

    def window(self, kernel: int, stride: int, pad: int, dilation: int) -> _Axis:
        if self.size is None:
            return self
        size = self.size + dilation * (kernel - 1) * self.stride
        return _Axis(size, self.stride * stride, self.start - pad * self.stride)

    def shift(self, pad: int) -> _Axis:
        return self if self.size is None else _Axis(self.size, self.stride, self.start - pad * self.stride)


@dataclass(frozen=True)
class _Last:
    """A spatial map with its channels moved last, (B, H, W, C): layer norms over the last dimension
    and linear layers act per location there."""

    axes: tuple[_Axis, _Axis]


_TO_LAST, _TO_FIRST = (0, 2, 3, 1), (0, 3, 1, 2)


def _permute(state: Any, dims: Any, where: str) -> Any:
    dims = tuple(int(d) % 4 for d in dims) if isinstance(dims, (tuple, list)) else None
    if isinstance(state, tuple) and dims == _TO_LAST:
        return _Last(state)
    if isinstance(state, _Last):
        if dims == _TO_FIRST:
            return state.axes
        raise VebiError(f"permute at {where} rearranges a channels-last map ({dims}); receptive fields cannot follow it")
    return _FLAT if state is not None else None


def _per_channel(state: Any, normalized: Any, where: str, what: str) -> Any:
    """A layer norm over ``normalized`` trailing dimensions, or a linear layer (``normalized`` None)."""
    if isinstance(state, _Last) and (normalized is None or len(tuple(normalized)) == 1):
        return state
    if isinstance(state, tuple):
        raise VebiError(f"{what} at {where} mixes a spatial axis; receptive fields cannot follow it")
    return state


def _not_last(state: Any, where: str) -> None:
    if isinstance(state, _Last):
        raise VebiError(f"{where} works on a channels-last map; receptive fields cannot follow it")


_WHOLE = _Axis(None, 0, 0)
_FLAT = "flat"
_INPUT = (_Axis(1, 1, 0), _Axis(1, 1, 0))

_POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.CrossMapLRN2d,
    nn.modules.dropout._DropoutNd,
    nn.Threshold, nn.ReLU, nn.RReLU, nn.Hardtanh, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid, nn.Tanh,
    nn.SiLU, nn.Mish, nn.Hardswish, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.Hardshrink, nn.LeakyReLU,
    nn.LogSigmoid, nn.Softplus, nn.Softshrink, nn.PReLU, nn.Softsign, nn.Tanhshrink, nn.Softmax2d,
    nn.ChannelShuffle,
)

_POINTWISE_FUNCTIONS: set[Any] = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.neg,
    operator.pos, operator.abs, operator.pow, operator.iadd, operator.imul, operator.isub,
    torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum, torch.where,
    torch.clamp, torch.clip, torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.exp,
    torch.abs, torch.sqrt, torch.rsqrt, torch.neg, torch.square,
    F.relu, F.relu_, F.relu6, F.hardtanh, F.leaky_relu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.elu, F.selu, F.celu, F.sigmoid, F.tanh, F.softplus, F.prelu, F.threshold,
    F.dropout, F.dropout2d, F.alpha_dropout, F.feature_alpha_dropout, F.batch_norm,
    F.instance_norm, F.group_norm, F.local_response_norm, F.channel_shuffle,
    torchvision.ops.stochastic_depth,  # drops whole samples or rows of the batch
}

_POINTWISE_METHODS = {
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "relu", "relu_", "sigmoid",
    "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clamp_min", "clamp_max", "clip", "neg",
    "exp", "abs", "sqrt", "rsqrt", "pow", "square", "contiguous", "clone", "detach", "float",
    "double", "half", "to", "type", "type_as", "expand_as", "masked_fill", "where",
}

_NON_TENSOR_METHODS = {"size", "dim", "numel", "ndimension", "nelement"}

_BAD_SPATIAL_DIMS = {2, 3, -1, -2}


def _propagate(graph: fx.Graph, root: nn.Module, target: fx.Node, ignore_global: bool) -> Any:
    """Field state of ``target``, computed over its ancestors only (in graph order)."""
    needed: set[fx.Node] = set()
    stack = [target]
    while stack:
        node = stack.pop()
        if node not in needed:
            needed.add(node)
            stack.extend(node.all_input_nodes)
    states: dict[fx.Node, Any] = {}
    seen_input = False
    for node in graph.nodes:
        if node.op == "placeholder":
            states[node] = None if seen_input else _INPUT
            seen_input = True
        elif node in needed:
            states[node] = _node_state(node, states, root, ignore_global)
        if node is target:
            return states[node]
    raise AssertionError("target node not in graph")


def _arg_states(value: Any, states: dict[fx.Node, Any]) -> list[Any]:
    """States of every node inside (nested) arguments."""
    found: list[Any] = []
    fx.node.map_arg(value, lambda n: found.append(states[n]) or n)
    return found


def _union(found: Sequence[Any], where: str, ignore_global: bool) -> Any:
    maps = [s for s in found if isinstance(s, tuple)]
    lasts = [s.axes for s in found if isinstance(s, _Last)]
    if any(s == _FLAT for s in found):
        return _FLAT
    if maps and lasts:
        raise VebiError(f"{where} joins a channels-last map with a channels-first one; receptive fields cannot follow it")
    if not maps and not lasts:
        return None
    joined = tuple(_union_axis([m[i] for m in maps or lasts], where, ignore_global) for i in range(2))
    return _Last(joined) if lasts else joined


def _union_axis(axes: Sequence[_Axis], where: str, ignore_global: bool) -> _Axis:
    local = [a for a in axes if a.size is not None]
    if len(local) < len(axes) and (not ignore_global or not local):
        return _WHOLE
    axes = local
    strides = {a.stride for a in axes}
    if len(strides) > 1:
        raise VebiError(f"branches joined at {where} have different strides {sorted(strides)}; "
                        "their receptive fields are not one box")
    start = min(a.start for a in axes)
    end = max(a.start + a.size for a in axes)  # type: ignore[operator]
    return _Axis(end - start, axes[0].stride, start)


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) not in (1, 2):
            raise VebiError(f"expected a 2-D window parameter, got {value!r}")
        return int(value[0]), int(value[-1])
    return int(value), int(value)


def _window(state: Any, kernel: Any, stride: Any, padding: Any, dilation: Any) -> Any:
    if not isinstance(state, tuple):
        return state
    k, s, p, d = _pair(kernel), _pair(stride if stride not in (None, ()) else kernel), _pair(padding), _pair(dilation)
    return tuple(state[i].window(k[i], s[i], p[i], d[i]) for i in range(2))


def _conv_padding(padding: Any, kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int]:
    """Padding before the first element; for 'same' PyTorch puts the odd pixel at the end."""
    if padding == "valid":
        return 0, 0
    if padding == "same":
        return tuple((d * (k - 1)) // 2 for k, d in zip(kernel, dilation))  # type: ignore[return-value]
    return _pair(padding)


def _pad(state: Any, pad: Sequence[int], mode: str, where: str) -> Any:
    if mode == "circular":
        raise VebiError(f"circular padding at {where} wraps around the image; its receptive field is not one box")
    if not isinstance(state, tuple):
        return state
    # F.pad order: (left, right, top, bottom, ...): last dim first
    left = pad[0] if len(pad) >= 1 else 0
    top = pad[2] if len(pad) >= 3 else 0
    if len(pad) > 4:
        raise VebiError(f"padding at {where} pads more than the two spatial dimensions")
    return state[0].shift(top), state[1].shift(left)


def _global(state: Any, output_size: Any, where: str) -> Any:
    if not isinstance(state, tuple):
        return state
    sizes = (output_size, output_size) if not isinstance(output_size, (tuple, list)) else tuple(output_size)
    axes = []
    for axis, size in zip(state, sizes):
        if size is None:
            axes.append(axis)
        elif int(size) == 1:
            axes.append(_WHOLE)
        else:
            raise VebiError(f"adaptive pooling to size {size} at {where} has no fixed window; "
                            "receptive fields need fixed windows")
    return tuple(axes)


def _reduce(state: Any, dims: Any, keepdim: bool) -> Any:
    if not isinstance(state, tuple):
        return state
    if dims is None:
        return _FLAT
    dims = {int(d) % 4 for d in (dims if isinstance(dims, (tuple, list)) else [dims])}
    if not dims & {2, 3}:
        return state
    if not keepdim:
        return _FLAT
    return tuple(_WHOLE if i + 2 in dims else state[i] for i in range(2))


def _check_dim(dim: Any, where: str) -> None:
    if isinstance(dim, int) and dim in _BAD_SPATIAL_DIMS:
        raise VebiError(f"{where} joins or splits along a spatial dimension ({dim}); "
                        "receptive fields need channel-wise joins")


def _getitem(state: Any, index: Any, where: str) -> Any:
    if not isinstance(state, tuple) or isinstance(index, int):
        return state
    if isinstance(index, slice) and index == slice(None):
        return state
    if isinstance(index, tuple) and all(
        isinstance(i, (int, slice)) for i in index
    ) and all(i == slice(None) for i in index[2:]):
        return state
    raise VebiError(f"indexing at {where} ({index!r}) may crop the spatial map; receptive fields cannot follow it")


def _get_attr(root: nn.Module, target: str) -> Any:
    value: Any = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _node_state(node: fx.Node, states: dict[fx.Node, Any], root: nn.Module, ignore_global: bool) -> Any:
    where = f"'{node.target if node.op != 'call_module' else str(node.target).removeprefix('model.')}'"
    if node.op in ("get_attr", "output"):
        return _union(_arg_states(node.args, states), where, ignore_global) if node.op == "output" else None
    found = _arg_states((node.args, node.kwargs), states)
    if all(s is None for s in found):
        return None
    joined = _union(found, where, ignore_global)
    first = states[node.args[0]] if node.args and isinstance(node.args[0], fx.Node) else joined
    if node.op == "call_module":
        return _module_state(_get_attr(root, str(node.target)), node, first, joined, where)
    if node.op == "call_method":
        return _method_state(str(node.target), node, first, joined, where)
    return _function_state(node.target, node, first, joined, where, root)


def _module_state(module: nn.Module, node: fx.Node, state: Any, joined: Any, where: str) -> Any:
    if isinstance(module, _POINTWISE_MODULES):
        return joined
    if isinstance(module, nn.LayerNorm):
        return _per_channel(state, module.normalized_shape, where, "LayerNorm")
    if isinstance(module, nn.Linear):
        return _per_channel(state, None, where, "Linear layer")
    _not_last(state, where)
    if isinstance(module, (nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.GLU)):
        dim = getattr(module, "dim", None)
        if isinstance(state, tuple) and dim not in (0, 1, -3):
            raise VebiError(f"{type(module).__name__} at {where} works along dimension {dim}; "
                            "receptive fields need a channel dimension")
        return state
    if isinstance(module, nn.Conv2d):
        if module.padding_mode == "circular":
            raise VebiError(f"circular padding at {where} wraps around the image; its receptive field is not one box")
        padding = _conv_padding(module.padding, module.kernel_size, module.dilation)  # type: ignore[arg-type]
        return _window(state, module.kernel_size, module.stride, padding, module.dilation)
    if isinstance(module, nn.MaxPool2d):
        return _window(state, module.kernel_size, module.stride, module.padding, module.dilation)
    if isinstance(module, nn.AvgPool2d):
        return _window(state, module.kernel_size, module.stride, module.padding, 1)
    if isinstance(module, nn.LPPool2d):
        return _window(state, module.kernel_size, module.stride, 0, 1)
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return _global(state, module.output_size, where)
    if isinstance(module, (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)):
        return _pad(state, module.padding, "constant", where)
    if isinstance(module, nn.CircularPad2d):
        return _pad(state, module.padding, "circular", where)
    if isinstance(module, nn.Flatten):
        return state if module.end_dim in (0, 1) else (_FLAT if state is not None else None)
    raise VebiError(f"layer {where} ({type(module).__name__}) is not supported by the receptive-field tracer")


def _method_state(name: str, node: fx.Node, state: Any, joined: Any, where: str) -> Any:
    if name in _NON_TENSOR_METHODS:
        return None
    if name in _POINTWISE_METHODS:
        return joined
    if name == "permute":
        dims = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)) else node.args[1:]
        return _permute(state, node.kwargs.get("dims", dims), where)
    _not_last(state, where)
    if name in ("mean", "sum", "amax", "amin", "max", "min", "std", "var"):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return _reduce(state, dims, bool(node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)))
    if name in ("chunk", "split"):
        _check_dim(node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0), where)
        return state
    if name == "flatten":
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return state if end in (0, 1) else (_FLAT if state is not None else None)
    if name in ("view", "reshape", "squeeze", "unsqueeze", "transpose"):
        return _FLAT if state is not None else None
    raise VebiError(f"tensor method {where} is not supported by the receptive-field tracer")


def _function_state(fn: Any, node: fx.Node, state: Any, joined: Any, where: str, root: nn.Module) -> Any:
    if fn in _POINTWISE_FUNCTIONS:
        return joined
    if fn is getattr:
        return None
    if fn is torch.permute:
        return _permute(state, _call_args(node, ("input", "dims"))["dims"], where)
    if fn is F.layer_norm:
        return _per_channel(state, _call_args(node, ("input", "normalized_shape"))["normalized_shape"], where,
                            "layer_norm")
    if fn is F.linear:
        return _per_channel(state, None, where, "linear")
    _not_last(state, where)
    if fn is operator.getitem:
        return _getitem(state, node.args[1], where)
    if fn in (torch.cat, torch.concat, torch.stack):
        _check_dim(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0), where)
        return joined
    if fn in (torch.chunk, torch.split):
        _check_dim(node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0), where)
        return state
    if fn is F.conv2d:
        kw = _call_args(node, ("input", "weight", "bias", "stride", "padding", "dilation"))
        weight = kw["weight"]
        if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
            raise VebiError(f"conv2d at {where} takes its weight from a computed tensor; its kernel size is unknown")
        kernel = tuple(_get_attr(root, str(weight.target)).shape[-2:])
        dilation = _pair(kw.get("dilation", 1))
        padding = _conv_padding(kw.get("padding", 0), kernel, dilation)  # type: ignore[arg-type]
        return _window(state, kernel, kw.get("stride", 1), padding, dilation)
    if fn in (F.max_pool2d, torch.max_pool2d, F.avg_pool2d):
        names = ("input", "kernel_size", "stride", "padding") + (("dilation",) if fn is not F.avg_pool2d else ())
        kw = _call_args(node, names)
        return _window(state, kw["kernel_size"], kw.get("stride"), kw.get("padding", 0), kw.get("dilation", 1))
    if fn in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
        return _global(state, _call_args(node, ("input", "output_size"))["output_size"], where)
    if fn is F.pad:
        kw = _call_args(node, ("input", "pad", "mode"))
        return _pad(state, kw["pad"], "circular" if kw.get("mode") == "circular" else "constant", where)
    if fn in (torch.mean, torch.sum, torch.amax, torch.amin):
        kw = _call_args(node, ("input", "dim", "keepdim"))
        return _reduce(state, kw.get("dim"), bool(kw.get("keepdim", False)))
    if fn is torch.flatten:
        end = _call_args(node, ("input", "start_dim", "end_dim")).get("end_dim", -1)
        return state if end in (0, 1) else (_FLAT if state is not None else None)
    name = getattr(fn, "__name__", repr(fn))
    raise VebiError(f"function '{name}' is not supported by the receptive-field tracer")


def _call_args(node: fx.Node, names: Sequence[str]) -> dict[str, Any]:
    """A call's arguments by parameter name: the leading positional ones, then the keywords."""
    return {**dict(zip(names, node.args, strict=False)), **node.kwargs}


def _to_field(name: str, state: tuple[_Axis, _Axis], input_size: tuple[int, int] | None) -> ReceptiveField:
    sizes, strides, starts = [], [], []
    for i, axis in enumerate(state):
        if axis.size is None:
            if input_size is None:
                raise VebiError(f"layer '{name}' sees the whole input (global pooling upstream); "
                                "pass input_size to get its box")
            sizes.append(int(input_size[i]))
            strides.append(0)
            starts.append(0)
        else:
            sizes.append(axis.size)
            strides.append(axis.stride)
            starts.append(axis.start)
    return ReceptiveField(name, (sizes[0], sizes[1]), (strides[0], strides[1]), (starts[0], starts[1]))
