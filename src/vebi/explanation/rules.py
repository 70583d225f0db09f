"""Backward rules (*what* changes) and where they apply (*where*).

* :class:`OpCall` -- one intercepted operation ("relu", "conv2d", "max_pool2d") with its
  arguments by name, whatever the call's spelling (module, ``F.relu``, ``Tensor.relu_``, ...);
* rules, each replacing the backward of one kind of operation: :class:`GuidedReLU`,
  :class:`DeconvReLU`, :class:`GradientReLU` (rectifiers: ReLU and ReLU6, and the smooth
  activations SiLU, GELU, Hardswish, Mish), :class:`ArgmaxPool`
  (``max_pool2d``); the stride fix for strided ``conv2d`` is in :mod:`vebi.explanation.stride_fix`;
* :class:`RuleMap` -- module types and module names (globs) to rules, plus whether functional
  calls (``F.relu`` inside a block's ``forward``) get the rule of their operation's module type.

*How* the rules run is :mod:`vebi.explanation.backward`.
"""

from __future__ import annotations

import fnmatch
import functools
import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vebi.errors import VebiError

__all__ = ["ArgmaxPool", "DeconvReLU", "GradientReLU", "GuidedReLU", "OpCall", "Rule", "RuleMap", "SupportWatch",
           "mutated_tensor", "unruled_nonlinearities"]

# --------------------------------------------------------------------------------------------
# Operations the engine recognises, normalised to one call record
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OpCall:
    """One intercepted call: ``op`` in {"relu", "conv2d", "max_pool2d"} or a smooth activation
    ({"silu", "gelu", "hardswish", "mish"}) with its arguments.

    ``params`` holds the operation's arguments by name (for "relu": ``lo``/``hi`` clip
    bounds, ReLU6 being ``hi = 6``; for "gelu": ``approximate``); ``original()`` runs the call unchanged.
    """

    op: str
    x: Tensor
    params: Mapping[str, Any]
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    watch: SupportWatch | None = None

    def original(self) -> Any:
        return self.func(*self.args, **self.kwargs)


class SupportWatch:
    """Rectifier outputs whose forward support is read from the output itself at backward time.

    The support [lo < x_in < hi] equals [lo < y < hi] on the output y = clip(x_in, lo, hi), so a
    rectifier keeps only y, as PyTorch's own ReLU does, unless y is changed in place later in the
    forward pass (``out = relu_(a); out += b``). The engine calls :meth:`before_inplace` with every
    tensor an operation is about to change in place; the support of every watched output sharing
    its memory is copied then, and only then.
    """

    def __init__(self) -> None:
        self._watched: dict[int, list[tuple[Tensor, Any]]] = {}

    def add(self, out: Tensor, ctx: Any) -> None:
        self._watched.setdefault(out.untyped_storage().data_ptr(), []).append((out, ctx))

    def before_inplace(self, target: Tensor) -> None:
        for out, ctx in self._watched.pop(target.untyped_storage().data_ptr(), ()):
            lo, hi = ctx.bounds
            ctx.passed = _support(out, lo, hi)


def _support(y: Tensor, lo: float, hi: float) -> Tensor:
    passed = y > lo
    if hi != math.inf:
        passed &= y < hi
    return passed


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


def _smooth_call(args: tuple, kwargs: Mapping) -> dict:
    p = _bind(("input", "inplace"), {"inplace": False}, args, kwargs)
    return {"x": p["input"], "inplace": bool(p["inplace"])}


def _gelu_call(args: tuple, kwargs: Mapping) -> dict:
    p = _bind(("input", "approximate"), {"approximate": "none"}, args, kwargs)
    return {"x": p["input"], "approximate": p["approximate"], "inplace": False}


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


OPERATIONS: dict[Any, tuple[str, Callable[[tuple, Mapping], dict | None]]] = {
    F.relu: ("relu", _relu_call(False)),
    torch.relu: ("relu", _relu_call(False)),
    torch.relu_: ("relu", _relu_call(True)),
    Tensor.relu: ("relu", _relu_call(False)),
    Tensor.relu_: ("relu", _relu_call(True)),
    F.relu6: ("relu", _relu_call(False, hi=6.0)),
    F.hardtanh: ("relu", _hardtanh_call(False)),
    F.hardtanh_: ("relu", _hardtanh_call(True)),
    F.silu: ("silu", _smooth_call),
    F.gelu: ("gelu", _gelu_call),
    F.hardswish: ("hardswish", _smooth_call),
    F.mish: ("mish", _smooth_call),
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
    "silu": (nn.SiLU,),
    "gelu": (nn.GELU,),
    "hardswish": (nn.Hardswish,),
    "mish": (nn.Mish,),
}

# smooth activation phi -> (s, x_in, params) -> s * phi'(x_in), PyTorch's own backward formula
_LOCAL_GRADIENT: dict[str, Callable[[Tensor, Tensor, Mapping[str, Any]], Tensor]] = {
    "silu": lambda s, x, p: torch.ops.aten.silu_backward(s, x),
    "gelu": lambda s, x, p: torch.ops.aten.gelu_backward(s, x, approximate=p["approximate"]),
    "hardswish": lambda s, x, p: torch.ops.aten.hardswish_backward(s, x),
    "mish": lambda s, x, p: torch.ops.aten.mish_backward(s, x),
}
SMOOTH_OPS = frozenset(_LOCAL_GRADIENT)

# nonlinearity modules no rule handles (Hardtanh only when it is not a rectifier); sigmoid gates
# of squeeze-and-excitation blocks are left out of :func:`unruled_nonlinearities` (see there)
_UNRULED: tuple[type[nn.Module], ...] = (
    nn.Tanh, nn.Sigmoid, nn.Hardsigmoid, nn.LogSigmoid, nn.ELU, nn.SELU, nn.CELU, nn.LeakyReLU, nn.PReLU,
    nn.RReLU, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Hardshrink, nn.Softshrink, nn.Threshold, nn.Hardtanh,
)
_RULED: tuple[type[nn.Module], ...] = tuple(t for op in ("relu", *sorted(SMOOTH_OPS)) for t in _NATIVE[op])


def unruled_nonlinearities(model: nn.Module, ran: Callable[[str], bool], handled: Callable[[str], bool]) -> list[str]:
    """Names of nonlinearity modules that ran (``ran(name)``) with no rule for them (``handled(name)`` false).

    Sigmoid / Hardsigmoid gates inside torchvision's ``SqueezeExcitation`` are not counted: they
    scale channels (the signal through the product keeps the gate as a positive factor), they do
    not rectify the signal's path.
    """
    from torchvision.ops import SqueezeExcitation

    gates = {f"{n}.scale_activation" for n, m in model.named_modules() if isinstance(m, SqueezeExcitation)}
    return [n for n, m in model.named_modules()
            if isinstance(m, _UNRULED) and not isinstance(m, _RULED) and n not in gates and ran(n) and not handled(n)]


_INPLACE_DUNDERS = frozenset({
    "__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__", "__ipow__",
    "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__", "__imatmul__"})


@functools.lru_cache(maxsize=None)
def _inplace_position(func: Any) -> int | None:
    """Position of a Python function's ``inplace`` parameter (``F.dropout(x, p, training, inplace)``), if any."""
    try:
        names = list(inspect.signature(func).parameters)
    except (TypeError, ValueError):  # built-ins without a signature
        return None
    return names.index("inplace") if "inplace" in names else None


def mutated_tensor(func: Any, args: tuple, kwargs: Mapping[str, Any]) -> Tensor | None:
    """The tensor a torch function call is about to change in place (``out=``, an ``inplace`` argument
    that is true, a trailing-underscore name, an in-place operator), else None."""
    out = kwargs.get("out")
    if isinstance(out, Tensor):
        return out
    if not args or not isinstance(args[0], Tensor):
        return None
    name = getattr(func, "__name__", "")
    if name in _INPLACE_DUNDERS or (name.endswith("_") and not name.endswith("__")):
        return args[0]
    if "inplace" in kwargs:
        return args[0] if kwargs["inplace"] else None
    position = _inplace_position(func)
    return args[0] if position is not None and len(args) > position and args[position] else None


def as_pair(v: Any) -> tuple[int, int]:
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
    """Common part of the rectifier rules, for rectifiers and smooth activations.

    ``grad(g, gated)`` gets the incoming signal g and, when ``needs_support``, gated =
    g * [lo < x_in < hi] (g on the forward's support; a fresh tensor the rule may modify).
    ``smooth(g, local)`` does the same for a smooth activation phi, with ``local(s) = s * phi'(x_in)``.
    """

    ops = frozenset({"relu"}) | SMOOTH_OPS
    needs_support: ClassVar[bool] = True

    @abstractmethod
    def grad(self, g: Tensor, gated: Tensor | None) -> Tensor: ...

    @abstractmethod
    def smooth(self, g: Tensor, local: Callable[[Tensor], Tensor]) -> Tensor: ...

    def apply(self, call: OpCall) -> Any:
        if call.op in SMOOTH_OPS:
            return _SmoothFunction.apply(call.x, self, call)
        return _RectifierFunction.apply(call.x, self, call)


@dataclass(frozen=True)
class GradientReLU(_Rectifier):
    """Plain gradient: grad_in = g * [lo < x_in < hi] (lo = 0; hi = inf for ReLU, 6 for ReLU6);
    for a smooth activation phi, grad_in = g * phi'(x_in)."""

    def grad(self, g: Tensor, gated: Tensor | None) -> Tensor:
        return gated

    def smooth(self, g: Tensor, local: Callable[[Tensor], Tensor]) -> Tensor:
        return local(g)


@dataclass(frozen=True)
class GuidedReLU(_Rectifier):
    """Guided backprop: grad_in = g * [lo < x_in < hi] * [g > 0].

    Smooth activations phi (SiLU, GELU, Hardswish, Mish): grad_in = phi'(x_in) * g * [g > 0], the
    local gradient times the signal's gate. For a rectifier phi'(x_in) is the gate
    [lo < x_in < hi], so this is the same rule; gating by [x_in > 0] instead would treat every
    smooth unit as a ReLU and drop the signal where the forward passes some (SiLU(-1) = -0.27,
    slope 0.07; slope 1/2 at 0). phi' dips slightly below 0 for negative x_in (SiLU and Mish
    to about -0.1, GELU -0.13, Hardswish -1/2 just above -3), where the sign is kept as in the
    forward's own derivative.
    """

    def grad(self, g: Tensor, gated: Tensor | None) -> Tensor:
        return gated.clamp_(min=0)

    def smooth(self, g: Tensor, local: Callable[[Tensor], Tensor]) -> Tensor:
        return local(g.clamp(min=0))


@dataclass(frozen=True)
class DeconvReLU(_Rectifier):
    """Deconvnet: grad_in = max(g, 0), whatever the forward input was (also for smooth activations)."""

    needs_support: ClassVar[bool] = False

    def grad(self, g: Tensor, gated: Tensor | None) -> Tensor:
        return g.clamp(min=0)

    def smooth(self, g: Tensor, local: Callable[[Tensor], Tensor]) -> Tensor:
        return g.clamp(min=0)


class _RectifierFunction(torch.autograd.Function):
    """The support [lo < x_in < hi] is read from the saved output y = clip(x_in, lo, hi), which
    has the same support (as PyTorch's own ReLU does); a boolean copy of it is made when y is about
    to change in place (``out = relu_(a); out += b``): by the call's :class:`SupportWatch`, or here
    when the call has none."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, rule: _Rectifier, call: OpCall) -> Tensor:
        lo, hi = call.params["lo"], call.params["hi"]
        ctx.rule, ctx.bounds, ctx.passed = rule, (lo, hi), None
        if rule.needs_support and call.watch is None:
            ctx.passed = _support(x, lo, hi)  # not an input or output: kept on ctx, not saved
        out = call.original()  # the very same forward values, in place when the call was
        if call.params["inplace"]:
            ctx.mark_dirty(x)
        if rule.needs_support:
            ctx.save_for_backward(out)
            if call.watch is not None:
                call.watch.add(out, ctx)
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, None, None]:
        if not ctx.rule.needs_support:
            return ctx.rule.grad(g, None), None, None
        lo, hi = ctx.bounds
        try:
            (out,) = ctx.saved_tensors
        except RuntimeError:  # out was modified in place after the call: use the boolean copy
            if ctx.passed is None:
                raise VebiError("a rectifier's output was changed in place after the forward pass under "
                                "backward rules; its support is lost") from None
            gated = g * ctx.passed
        else:  # ~3x faster than multiplying by a boolean mask
            gated = (torch.ops.aten.threshold_backward(g, out, lo) if hi == math.inf
                     else torch.ops.aten.hardtanh_backward(g, out, lo, hi))
        return ctx.rule.grad(g, gated), None, None


class _SmoothFunction(torch.autograd.Function):
    """Forward: the call itself; backward: the rule's ``smooth`` with phi' at the saved input
    (copied first when the call overwrites it in place)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, rule: _Rectifier, call: OpCall) -> Tensor:
        ctx.rule, ctx.op, ctx.params = rule, call.op, call.params
        inplace = call.params["inplace"]
        x_in = x.detach().clone() if inplace and rule.needs_support else x
        out = call.original()
        if inplace:
            ctx.mark_dirty(x)
        if rule.needs_support:
            ctx.save_for_backward(x_in)
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, None, None]:
        if not ctx.rule.needs_support:
            return ctx.rule.smooth(g, None), None, None
        (x_in,) = ctx.saved_tensors
        local = _LOCAL_GRADIENT[ctx.op]
        return ctx.rule.smooth(g, lambda s: local(s, x_in, ctx.params)), None, None


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
