"""Backward passes with modified rules: guided backprop, deconvnet, and the stride fix.

Three separate parts:

* **what** -- small rule objects, each replacing the backward of one kind of operation:
  :class:`GuidedReLU`, :class:`DeconvReLU`, :class:`GradientReLU` (rectifiers: ReLU and
  ReLU6), :class:`StrideFixConv` (strided ``conv2d``), :class:`ArgmaxPool` (``max_pool2d``);
* **where** -- a :class:`RuleMap` from module types and module names (globs) to rules, plus
  whether functional calls (``F.relu`` inside a block's ``forward``) get the rule of their
  operation's module type;
* **how** -- :func:`backward_rules`, a context manager active during the forward pass. It
  intercepts the operations themselves (a ``TorchFunctionMode``), so in-place activations,
  reused modules, functional calls and residual ``+=`` all keep their forward semantics and
  values; the recorded autograd graph then carries the modified backward. Nothing of the
  model is changed: only temporary forward hooks (to know the current module) are added,
  and they are removed in a ``finally``.

:func:`forward_with_rules` runs one forward pass and returns a :class:`RuleForward` whose
``backward`` seeds any captured layer with any signal and returns the input-space signal.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import warnings
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from vebi.errors import VebiError
from vebi.layers import get_module

__all__ = [
    "ArgmaxPool",
    "DeconvReLU",
    "GradientReLU",
    "GuidedReLU",
    "OpCall",
    "Rule",
    "RuleForward",
    "RuleMap",
    "RuleTrace",
    "StrideFixConv",
    "backward_rules",
    "channel_seed",
    "deconvnet",
    "forward_with_rules",
    "gradient",
    "guided_backprop",
    "stride_fixed_conv_input_grad",
]


# --------------------------------------------------------------------------------------------
# Operations the engine recognises, normalised to one call record
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OpCall:
    """One intercepted call: ``op`` in {"relu", "conv2d", "max_pool2d"} with its arguments.

    ``params`` holds the operation's arguments by name (for "relu": ``lo``/``hi`` clip
    bounds, ReLU6 being ``hi = 6``); ``original()`` runs the call unchanged.
    """

    op: str
    x: Tensor
    params: Mapping[str, Any]
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]

    def original(self) -> Any:
        return self.func(*self.args, **self.kwargs)


def _bind(names: Sequence[str], defaults: Mapping[str, Any], args: tuple, kwargs: Mapping[str, Any]) -> dict:
    bound = dict(defaults)
    bound.update(zip(names, args))
    bound.update(kwargs)
    return bound


def _relu_call(inplace_default: bool, hi: float = math.inf) -> Callable[[tuple, Mapping], dict]:
    def parse(args: tuple, kwargs: Mapping) -> dict:
        p = _bind(("input", "inplace"), {"inplace": inplace_default}, args, kwargs)
        return {"x": p["input"], "lo": 0.0, "hi": hi, "inplace": bool(p["inplace"])}
    return parse


def _hardtanh_call(inplace_default: bool) -> Callable[[tuple, Mapping], dict | None]:
    def parse(args: tuple, kwargs: Mapping) -> dict | None:
        p = _bind(("input", "min_val", "max_val", "inplace"),
                  {"min_val": -1.0, "max_val": 1.0, "inplace": inplace_default}, args, kwargs)
        if float(p["min_val"]) != 0.0:  # only rectifiers (ReLU6 and kin) are rectifier rules' business
            return None
        return {"x": p["input"], "lo": 0.0, "hi": float(p["max_val"]), "inplace": bool(p["inplace"])}
    return parse


def _conv_call(args: tuple, kwargs: Mapping) -> dict:
    p = _bind(("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
              {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}, args, kwargs)
    p["x"] = p.pop("input")
    return p


def _pool_call(return_indices_default: bool) -> Callable[[tuple, Mapping], dict]:
    def parse(args: tuple, kwargs: Mapping) -> dict:
        p = _bind(("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
                  {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False,
                   "return_indices": return_indices_default}, args, kwargs)
        p["x"] = p.pop("input")
        if p["stride"] is None or (isinstance(p["stride"], (list, tuple)) and len(p["stride"]) == 0):
            p["stride"] = p["kernel_size"]
        return p
    return parse


_PARSERS: dict[Any, tuple[str, Callable[[tuple, Mapping], dict | None]]] = {
    F.relu: ("relu", _relu_call(False)),
    torch.relu: ("relu", _relu_call(False)),
    torch.relu_: ("relu", _relu_call(True)),
    Tensor.relu: ("relu", _relu_call(False)),
    Tensor.relu_: ("relu", _relu_call(True)),
    F.relu6: ("relu", _relu_call(False, hi=6.0)),
    F.hardtanh: ("relu", _hardtanh_call(False)),
    F.hardtanh_: ("relu", _hardtanh_call(True)),
    torch.conv2d: ("conv2d", _conv_call),
    F.max_pool2d: ("max_pool2d", _pool_call(False)),
    F.max_pool2d_with_indices: ("max_pool2d", _pool_call(True)),
    torch.max_pool2d: ("max_pool2d", _pool_call(False)),
}

# the module types whose forward performs each operation (a call from elsewhere is "functional")
_NATIVE: dict[str, tuple[type[nn.Module], ...]] = {
    "relu": (nn.ReLU, nn.Hardtanh),
    "conv2d": (nn.Conv2d,),
    "max_pool2d": (nn.MaxPool2d,),
}


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(e) for e in v)
    return (t[0], t[0]) if len(t) == 1 else (t[0], t[1])


# --------------------------------------------------------------------------------------------
# What: rules
# --------------------------------------------------------------------------------------------

class Rule(ABC):
    """A replacement backward for the operations named in ``ops``.

    ``apply(call)`` returns what the call returns in the forward pass (same values), recorded
    so that its backward follows the rule.
    """

    ops: frozenset[str] = frozenset()

    def applies(self, call: OpCall) -> bool:
        """Whether this call's backward changes under the rule (else it runs unchanged)."""
        return True

    @abstractmethod
    def apply(self, call: OpCall) -> Any: ...


class _Rectifier(Rule):
    """Common part of the rectifier rules.

    ``grad(g, gated)`` gets the incoming signal g and, when ``needs_support``, gated =
    g * [lo < x_in < hi] (g on the forward's support; a fresh tensor the rule may modify).
    """

    ops = frozenset({"relu"})
    needs_support: ClassVar[bool] = True

    @abstractmethod
    def grad(self, g: Tensor, gated: Tensor | None) -> Tensor: ...

    def apply(self, call: OpCall) -> Any:
        return _RectifierFunction.apply(call.x, self, call)


@dataclass(frozen=True)
class GradientReLU(_Rectifier):
    """Plain gradient: grad_in = g * [lo < x_in < hi] (lo = 0; hi = inf for ReLU, 6 for ReLU6)."""

    def grad(self, g: Tensor, gated: Tensor | None) -> Tensor:
        return gated


@dataclass(frozen=True)
class GuidedReLU(_Rectifier):
    """Guided backprop: grad_in = g * [lo < x_in < hi] * [g > 0]."""

    def grad(self, g: Tensor, gated: Tensor | None) -> Tensor:
        return gated.clamp_(min=0)


@dataclass(frozen=True)
class DeconvReLU(_Rectifier):
    """Deconvnet: grad_in = max(g, 0), whatever the forward input was."""

    needs_support: ClassVar[bool] = False

    def grad(self, g: Tensor, gated: Tensor | None) -> Tensor:
        return g.clamp(min=0)


class _RectifierFunction(torch.autograd.Function):
    """The support [lo < x_in < hi] is read from the saved output y = clip(x_in, lo, hi), which
    has the same support (as PyTorch's own ReLU does); a boolean copy of it is kept for when
    y is changed in place after the call (``out = relu_(a); out += b``)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, rule: _Rectifier, call: OpCall) -> Tensor:
        lo, hi = call.params["lo"], call.params["hi"]
        ctx.rule, ctx.bounds = rule, (lo, hi)
        if rule.needs_support:
            passed = x > lo
            if hi != math.inf:
                passed &= x < hi
            ctx.passed = passed  # not an input or output: kept on ctx, not saved
        out = call.original()  # the very same forward values, in place when the call was
        if call.params["inplace"]:
            ctx.mark_dirty(x)
        if rule.needs_support:
            ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, None, None]:
        if not ctx.rule.needs_support:
            return ctx.rule.grad(g, None), None, None
        lo, hi = ctx.bounds
        try:
            (out,) = ctx.saved_tensors
        except RuntimeError:  # out was modified in place after the call: use the boolean copy
            gated = g * ctx.passed
        else:  # ~3x faster than multiplying by a boolean mask
            gated = (torch.ops.aten.threshold_backward(g, out, lo) if hi == math.inf
                     else torch.ops.aten.hardtanh_backward(g, out, lo, hi))
        return ctx.rule.grad(g, gated), None, None


def stride_fixed_conv_input_grad(
    g: Tensor, weight: Tensor, input_size: tuple[int, int],
    stride: Any, padding: Any, dilation: Any, groups: int,
) -> Tensor:
    """Backward of a strided conv with the stride fix.

    For input size H, kernel k, padding p, dilation d, stride s: the stride-1 output size is
    H1 = H + 2p - d(k - 1). The signal g (B, C_out, H_out, W_out) is nearest-upsampled to
    (H1, W1) -- stride-1 position i takes strided cell floor(i / s) -- and passed through
    the transposed conv with stride 1 and the same weights, padding, dilation and groups,
    which gives back (B, C_in, H, W).

    Computed without the full-resolution conv: upsampling by s is a stride-s transposed conv
    with an s x s box, so the two steps are one stride-s transposed conv with the kernel
    K = box_s * dilate_d(w) (size d(k - 1) + s). Two equal ways to run it, whichever is faster:

    * few input channels (an image-input layer): the polyphase form -- output phase
      (a, b) of a stride-s transposed conv with K is a stride-1 *forward* conv of g with the
      flipped sub-kernel K[a::s, b::s], so one conv2d with C_in s_h s_w outputs and a pixel
      shuffle give it (a backward-data conv that produces 3 channels is slow on CPUs);
    * otherwise: convolutions commute, so it is the plain transposed conv Y = conv_T_s(g, w)
      followed by an s x s box sum at input resolution, gx[i] = sum_{a < s} Y[i + p - a].

    The upsampled rows/columns beyond H1/W1 (present when s does not divide H1) are then
    subtracted again: two thin bands.
    """
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    (h, w), (kh, kw) = input_size, weight.shape[-2:]
    h1, w1 = h + 2 * ph - dh * (kh - 1), w + 2 * pw - dw * (kw - 1)
    ho, wo = g.shape[-2:]
    if groups == 1 and weight.shape[1] <= _POLYPHASE_MAX_IN:
        gx = _polyphase_transposed_conv(g, stride_fix_kernel(weight, (sh, sw), (dh, dw)), (sh, sw))
        gx = gx.narrow(-2, ph, h).narrow(-1, pw, w)
    else:
        y = F.conv_transpose2d(g, weight, None, (sh, sw), 0, 0, groups, (dh, dw))
        # y_pad[j] = y[j - (s - 1)], long enough for the last window (rows p + s - 1 + h - 1)
        y = F.pad(y, (sw - 1, max(0, pw + w - y.shape[-1]), sh - 1, max(0, ph + h - y.shape[-2])))
        gx = _box_sum(_box_sum(y, sh, ph, h, -2), sw, pw, w, -1)
    extra_h, extra_w = ho * sh - h1, wo * sw - w1
    if extra_h > 0:  # rows h1 .. ho*sh-1 of the upsampled signal: copies of the last row of cells
        band = g[..., -1:, :].expand(*g.shape[:-2], extra_h, wo).repeat_interleave(sw, dim=-1)
        corr = F.conv_transpose2d(band, weight, None, 1, (0, pw), 0, groups, (dh, dw)).narrow(-1, 0, w)
        _subtract_rows(gx, corr, h1 - ph)
    if extra_w > 0:  # columns w1 .. wo*sw-1, rows 0 .. h1-1
        band = g[..., -1:].expand(*g.shape[:-1], extra_w).repeat_interleave(sh, dim=-2).narrow(-2, 0, h1)
        corr = F.conv_transpose2d(band, weight, None, 1, (ph, 0), 0, groups, (dh, dw)).narrow(-2, 0, h)
        _subtract_rows(gx.transpose(-1, -2), corr.transpose(-1, -2), w1 - pw)
    return gx


_POLYPHASE_MAX_IN = 8  # input channels up to which the polyphase route is the faster one (CPU, measured)


def stride_fix_kernel(weight: Tensor, stride: tuple[int, int], dilation: tuple[int, int]) -> Tensor:
    """K = box_s * dilate_d(w): the dilated kernel summed over all s_h x s_w shifts."""
    (sh, sw), (dh, dw) = stride, dilation
    kh, kw = weight.shape[-2:]
    dilated = weight.new_zeros(*weight.shape[:2], dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    dilated[..., ::dh, ::dw] = weight
    # full correlation of every kernel slice with an s_h x s_w box of ones
    box = F.conv_transpose2d(dilated.reshape(-1, 1, *dilated.shape[-2:]), weight.new_ones(1, 1, sh, sw))
    return box.reshape(*weight.shape[:2], *box.shape[-2:])


def _polyphase_transposed_conv(g: Tensor, kernel: Tensor, stride: tuple[int, int]) -> Tensor:
    """conv_T(g, kernel, stride) without padding or cropping, as a forward conv and a pixel shuffle.

    With i = s q + a: Z[i] = sum_m g[q - m] kernel[s m + a], a full convolution of g with the
    phase kernel kernel[a::s]; returns (B, C_in, (H_out + M_h - 1) s_h, (W_out + M_w - 1) s_w),
    M = ceil(L / s) phase taps, which covers the whole transposed-conv output.
    """
    (sh, sw), (co, ci, lh, lw) = stride, kernel.shape
    mh, mw = -(-lh // sh), -(-lw // sw)
    phases = F.pad(kernel, (0, mw * sw - lw, 0, mh * sh - lh)).reshape(co, ci, mh, sh, mw, sw)
    phases = phases.permute(1, 3, 5, 0, 2, 4).flip(-1, -2).reshape(ci * sh * sw, co, mh, mw)
    z = F.conv2d(g, phases, None, 1, (mh - 1, mw - 1))
    b, _, hq, wq = z.shape
    return z.view(b, ci, sh, sw, hq, wq).permute(0, 1, 4, 2, 5, 3).reshape(b, ci, hq * sh, wq * sw)


def _box_sum(x: Tensor, s: int, start: int, n: int, dim: int) -> Tensor:
    """out[i] = sum_{b < s} x[start + i + b] along ``dim``, for i < n."""
    out = x.narrow(dim, start, n).clone()
    for b in range(1, s):
        out += x.narrow(dim, start + b, n)
    return out


def _subtract_rows(target: Tensor, corr: Tensor, offset: int) -> None:
    """target[..., offset + i, :] -= corr[..., i, :] for the rows that fall inside target."""
    lo, hi = max(offset, 0), min(offset + corr.shape[-2], target.shape[-2])
    if hi > lo:
        target[..., lo:hi, :] -= corr[..., lo - offset:hi - offset, :]


@dataclass(frozen=True)
class StrideFixConv(Rule):
    """Stride fix for convolutions with stride > 1 (any padding, dilation, groups).

    Input gradient: see :func:`stride_fixed_conv_input_grad`. Stride-1 convolutions keep the
    plain backward (the transposed conv). Weight and bias receive no gradient through a fixed
    conv: the rule defines an input-space signal, not a training gradient.
    """

    ops = frozenset({"conv2d"})

    def applies(self, call: OpCall) -> bool:
        return _pair(call.params["stride"]) != (1, 1)  # padding="same" needs stride 1 anyway

    def apply(self, call: OpCall) -> Any:
        return _StrideFixFunction.apply(call.x, call.params["weight"], call.params["bias"], call)


class _StrideFixFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, call: OpCall) -> Tensor:
        p = call.params
        padding = 0 if p["padding"] == "valid" else p["padding"]
        ctx.save_for_backward(weight)
        ctx.meta = (tuple(x.shape[-2:]), p["stride"], padding, p["dilation"], int(p["groups"]))
        return call.original()

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, None, None, None]:
        (weight,) = ctx.saved_tensors
        size, stride, padding, dilation, groups = ctx.meta
        gx = stride_fixed_conv_input_grad(g, weight, size, stride, padding, dilation, groups)
        return gx, None, None, None


@dataclass(frozen=True)
class ArgmaxPool(Rule):
    """Pooling variant: each pooled cell's signal is written to the argmax of its window.

    Where windows overlap and share an argmax, the value is overwritten, not summed: the
    cell that comes last in raster order wins (the plain max-pool backward adds them up).
    """

    ops = frozenset({"max_pool2d"})

    def apply(self, call: OpCall) -> Any:
        out, idx = _ArgmaxPoolFunction.apply(call.x, call)
        return (out, idx) if call.params["return_indices"] else out


class _ArgmaxPoolFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, call: OpCall) -> tuple[Tensor, Tensor]:
        p = call.params
        out, idx = F.max_pool2d_with_indices(
            x, p["kernel_size"], p["stride"], p["padding"], p["dilation"], p["ceil_mode"], True)
        ctx.save_for_backward(idx)
        ctx.in_shape = x.shape
        ctx.mark_non_differentiable(idx)
        return out, idx

    @staticmethod
    def backward(ctx: Any, g: Tensor, _g_idx: Tensor | None) -> tuple[Tensor, None]:
        (idx,) = ctx.saved_tensors
        h, w = ctx.in_shape[-2:]
        flat_idx = idx.flatten(-2)
        cells = torch.arange(flat_idx.shape[-1], device=g.device).expand_as(flat_idx)
        winner = torch.full((*flat_idx.shape[:-1], h * w), -1, dtype=torch.long, device=g.device)
        winner = winner.scatter_reduce(-1, flat_idx, cells, reduce="amax", include_self=True)
        routed = g.flatten(-2).gather(-1, winner.clamp(min=0))
        gx = torch.where(winner >= 0, routed, torch.zeros((), dtype=g.dtype, device=g.device))
        return gx.view(ctx.in_shape), None


# --------------------------------------------------------------------------------------------
# Where: a map from module types / names to rules
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RuleMap:
    """Where each rule applies.

    ``names``: (glob pattern over ``named_modules()`` names, rule or None) pairs; the first
    pattern that matches the running module and whose rule handles the operation wins, None
    keeping the plain backward there for every operation. ``types``: module type -> rule (looked up along
    the module's MRO). ``functional``: a recognised operation called from a module that is
    not of its own type (``F.relu`` in a block's ``forward``) gets the rule of that type.
    """

    types: Mapping[type[nn.Module], Rule] = field(default_factory=dict)
    names: tuple[tuple[str, Rule | None], ...] = ()
    functional: bool = True

    def rule_for(self, op: str, name: str, module: nn.Module | None) -> tuple[Rule | None, bool]:
        """The rule for ``op`` called while ``module`` (named ``name``) runs, and whether the call is functional."""
        native = module is not None and isinstance(module, _NATIVE[op])
        for pattern, rule in self.names:
            if (rule is None or op in rule.ops) and fnmatch.fnmatchcase(name, pattern):
                return rule, not native
        if module is not None:
            for cls in type(module).__mro__:
                rule = self.types.get(cls)
                if rule is not None and op in rule.ops:
                    return rule, not native
        if native or not self.functional:
            return None, not native
        for cls in _NATIVE[op]:
            rule = self.types.get(cls)
            if rule is not None and op in rule.ops:
                return rule, True
        return None, True


GUIDED = GuidedReLU()
DECONV = DeconvReLU()
STRIDE_FIX = StrideFixConv()
ARGMAX_POOL = ArgmaxPool()


def _preset(rectifier: Rule | None, stride_fix: bool, pool_fix: bool, functional: bool) -> RuleMap:
    types: dict[type[nn.Module], Rule] = {}
    if rectifier is not None:
        types[nn.ReLU] = rectifier
        types[nn.ReLU6] = rectifier
    if stride_fix:
        types[nn.Conv2d] = STRIDE_FIX
    if pool_fix:
        types[nn.MaxPool2d] = ARGMAX_POOL
    return RuleMap(types=types, functional=functional)


def guided_backprop(*, stride_fix: bool = False, pool_fix: bool = False, functional: bool = True) -> RuleMap:
    """Guided ReLU on every ReLU/ReLU6; ``stride_fix=True`` gives the method's backward pass."""
    return _preset(GUIDED, stride_fix, pool_fix, functional)


def deconvnet(*, stride_fix: bool = False, pool_fix: bool = False, functional: bool = True) -> RuleMap:
    """Deconvnet ReLU (max(g, 0)) on every ReLU/ReLU6."""
    return _preset(DECONV, stride_fix, pool_fix, functional)


def gradient(*, stride_fix: bool = False, pool_fix: bool = False) -> RuleMap:
    """Plain gradient, optionally with the stride fix and/or the pooling variant."""
    return _preset(None, stride_fix, pool_fix, False)


# --------------------------------------------------------------------------------------------
# How: the scoped context
# --------------------------------------------------------------------------------------------

@dataclass
class RuleTrace:
    """What happened during a forward pass under rules (filled while the context is active).

    ``applied``: (module name, op, rule name) -> count; ``functional``: (module name, op) ->
    count of calls made outside a module of the op's own type; ``calls``: module name ->
    number of calls (> 1 means a reused module); ``outputs``: captured layer outputs, still
    attached to the graph.
    """

    applied: Counter = field(default_factory=Counter)
    functional: Counter = field(default_factory=Counter)
    calls: Counter = field(default_factory=Counter)
    outputs: dict[str, Tensor] = field(default_factory=dict)

    @property
    def reused(self) -> tuple[str, ...]:
        return tuple(sorted(n for n, c in self.calls.items() if c > 1))


class _RuleMode(TorchFunctionMode):
    def __init__(self, rules: RuleMap, stack: list[tuple[str, nn.Module]], trace: RuleTrace) -> None:
        super().__init__()
        self.rules, self.stack, self.trace = rules, stack, trace

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Mapping | None = None) -> Any:
        kwargs = kwargs or {}
        entry = _PARSERS.get(func) if self.stack else None
        if entry is None:
            return func(*args, **kwargs)
        op, parse = entry
        params = parse(args, kwargs)
        if params is None or not isinstance(params["x"], Tensor):
            return func(*args, **kwargs)
        name, module = self.stack[-1]
        rule, functional = self.rules.rule_for(op, name, module)
        if functional:
            self.trace.functional[(name, op)] += 1
        if rule is None:
            return func(*args, **kwargs)
        call = OpCall(op, params.pop("x"), params, func, tuple(args), dict(kwargs))
        if not rule.applies(call):
            return func(*args, **kwargs)
        self.trace.applied[(name, op, type(rule).__name__)] += 1
        return rule.apply(call)


def _check_layers(model: nn.Module, layers: Sequence[str]) -> dict[str, nn.Module]:
    for layer in layers:
        get_module(model, layer)  # VebiError naming close matches
    return dict(model.named_modules())


@contextlib.contextmanager
def backward_rules(model: nn.Module, rules: RuleMap, capture: Sequence[str] = ()) -> Iterator[RuleTrace]:
    """Record forward passes of ``model`` so that their backward follows ``rules``.

    Yields a :class:`RuleTrace`; the outputs of the layers named in ``capture`` land in
    ``trace.outputs`` (attached to the graph; a clone is passed on to the next module so that
    a later in-place operation cannot change the captured value). Forward values are exactly
    those of the plain model. All hooks are removed on exit, also after an exception.
    """
    modules = _check_layers(model, capture)
    wanted = set(capture)
    trace = RuleTrace()
    stack: list[tuple[str, nn.Module]] = []
    handles = []

    def pre_hook(name: str, module: nn.Module) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any) -> None:
            stack.append((name, module))
            trace.calls[name] += 1
        return hook

    def post_hook(name: str) -> Callable[..., Any]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            if stack and stack[-1][0] == name:
                stack.pop()
            if name in wanted and isinstance(output, Tensor):
                trace.outputs[name] = output
                return output.clone()
            return None
        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_pre_hook(pre_hook(name, module)))
            handles.append(module.register_forward_hook(post_hook(name), always_call=True))
        with _RuleMode(rules, stack, trace):
            yield trace
    finally:
        for handle in handles:
            handle.remove()
    if not rules.functional:
        missed = sorted({name for (name, op) in trace.functional if op == "relu"})
        if missed:
            warnings.warn(
                f"functional rectifiers in {', '.join(missed)} kept the plain gradient "
                "(pass functional=True to apply the rule there)", stacklevel=3)
    reused_captures = [n for n in capture if trace.calls[n] > 1]
    if reused_captures:
        warnings.warn(f"layers {', '.join(reused_captures)} ran more than once; the last output was captured",
                      stacklevel=3)


# --------------------------------------------------------------------------------------------
# Running seeded backward passes
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RuleForward:
    """One forward pass under rules: ``backward`` may be called any number of times.

    ``inputs`` is a leaf copy of the images (the caller's tensor is not touched), ``output``
    the model's output, ``activations`` the captured layer outputs (attached to the graph).
    """

    inputs: Tensor
    output: Any
    activations: Mapping[str, Tensor]
    trace: RuleTrace

    def backward(self, seeds: Mapping[str, Tensor]) -> Tensor:
        """Input-space signal of ``seeds`` (layer -> d(output of that layer)), summed over layers.

        With one seed per image the row of image b depends on image b's seed only (for
        models without cross-image operations, e.g. batch norm in eval mode).
        """
        layers = list(seeds)
        missing = [layer for layer in layers if layer not in self.activations]
        if missing:
            raise VebiError(f"no captured output for layer(s) {', '.join(missing)}; pass them in layers=")
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(
                [self.activations[layer] for layer in layers], [self.inputs],
                [seeds[layer] for layer in layers], retain_graph=True, allow_unused=True)
        return torch.zeros_like(self.inputs) if grad is None else grad


def forward_with_rules(model: nn.Module, images: Tensor, rules: RuleMap, layers: Sequence[str] = ()) -> RuleForward:
    """Run ``model(images)`` once under ``rules``, capturing ``layers`` for seeded backward passes."""
    inputs = images.detach().clone().requires_grad_(True)
    with torch.enable_grad(), backward_rules(model, rules, capture=layers) as trace:
        output = model(inputs)
    missing = [layer for layer in layers if layer not in trace.outputs]
    if missing:
        raise VebiError(f"layer(s) {', '.join(missing)} did not produce a tensor during the forward pass")
    return RuleForward(inputs, output, dict(trace.outputs), trace)


def channel_seed(activation: Tensor, channels: Tensor) -> Tensor:
    """Seed (B, C, H, W) = the activation map of channel ``channels[b]`` of image b, zeros elsewhere."""
    channels = torch.as_tensor(channels, device=activation.device).long().view(-1)
    if channels.numel() != activation.shape[0]:
        raise VebiError(f"need one channel per image: got {channels.numel()} for a batch of {activation.shape[0]}")
    if channels.numel() and (int(channels.min()) < 0 or int(channels.max()) >= activation.shape[1]):
        raise VebiError(f"channel index out of range 0..{activation.shape[1] - 1}: {channels.tolist()}")
    mask = torch.zeros(activation.shape[:2], dtype=torch.bool, device=activation.device)
    mask[torch.arange(activation.shape[0], device=activation.device), channels] = True
    view = mask.view(*mask.shape, *([1] * (activation.dim() - 2)))
    return torch.where(view, activation.detach(), torch.zeros((), dtype=activation.dtype, device=activation.device))

