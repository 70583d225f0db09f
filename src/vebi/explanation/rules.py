"""Backward rules (*what* changes) and where they apply (*where*).

* :class:`OpCall` -- one intercepted operation ("relu", "conv2d", "max_pool2d") with its
  arguments by name, whatever the call's spelling (module, ``F.relu``, ``Tensor.relu_``, ...);
* rules, each replacing the backward of one kind of operation: :class:`GuidedReLU`,
  :class:`DeconvReLU`, :class:`GradientReLU` (rectifiers: ReLU and ReLU6), :class:`ArgmaxPool`
  (``max_pool2d``); the stride fix for strided ``conv2d`` is in :mod:`vebi.explanation.stride_fix`;
* :class:`RuleMap` -- module types and module names (globs) to rules, plus whether functional
  calls (``F.relu`` inside a block's ``forward``) get the rule of their operation's module type.

*How* the rules run is :mod:`vebi.explanation.backward`.
"""

from __future__ import annotations

import fnmatch
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ArgmaxPool", "DeconvReLU", "GradientReLU", "GuidedReLU", "OpCall", "Rule", "RuleMap"]

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


OPERATIONS: dict[Any, tuple[str, Callable[[tuple, Mapping], dict | None]]] = {
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
