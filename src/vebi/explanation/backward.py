"""How backward rules run: a scoped forward pass whose recorded graph carries the rules.

:func:`backward_rules` is a context manager active during the forward pass. It intercepts the
operations themselves (a ``TorchFunctionMode``), so in-place activations, reused modules,
functional calls and residual ``+=`` all keep their forward semantics and values; the recorded
autograd graph then carries the modified backward of :mod:`vebi.explanation.rules`. Nothing of
the model is changed: only temporary forward hooks (to know the current module) are added, and
they are removed in a ``finally``.

:func:`forward_with_rules` runs one forward pass and returns a :class:`RuleForward` whose
``backward`` seeds any captured layer with any signal and returns the input-space signal.
Presets: :func:`guided_rules` (guided ReLU; with ``stride_fix=True`` the method's backward),
:func:`deconvnet_rules`, :func:`gradient_rules`; the guided and deconvnet rules cover ReLU, ReLU6
and the smooth activations SiLU, GELU, Hardswish and Mish (modules and functional calls).
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.overrides import TorchFunctionMode

from vebi.errors import VebiError
from vebi.explanation.rules import (
    OPERATIONS, ArgmaxPool, DeconvReLU, GuidedReLU, OpCall, Rule, RuleMap, SupportWatch, mutated_tensor,
    unruled_nonlinearities)
from vebi.explanation.stride_fix import StrideFixConv, check_upsample
from vebi.hooks import HookHandles, preserve_model
from vebi.layers import named_layers

__all__ = [
    "RuleForward",
    "RuleTrace",
    "backward_rules",
    "channel_seed",
    "deconvnet_rules",
    "forward_with_rules",
    "gradient_rules",
    "guided_rules",
]


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------

GUIDED = GuidedReLU()
DECONV = DeconvReLU()
ARGMAX_POOL = ArgmaxPool()


def _preset(rectifier: Rule | None, stride_fix: bool, pool_fix: bool, functional: bool, upsample: str) -> RuleMap:
    check_upsample(upsample)
    types: dict[type[nn.Module], Rule] = {}
    if rectifier is not None:
        for activation in (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish):
            types[activation] = rectifier
    if stride_fix:
        types[nn.Conv2d] = StrideFixConv(upsample)
    if pool_fix:
        types[nn.MaxPool2d] = ARGMAX_POOL
    return RuleMap(types=types, functional=functional)


def guided_rules(*, stride_fix: bool = False, pool_fix: bool = False, functional: bool = True,
                 upsample: str = "linear") -> RuleMap:
    """Guided rule on every ReLU/ReLU6/SiLU/GELU/Hardswish/Mish; ``stride_fix=True`` gives the method's backward pass
    (``upsample``: the stride fix's ``"linear"`` or ``"nearest"`` upsampling)."""
    return _preset(GUIDED, stride_fix, pool_fix, functional, upsample)


def deconvnet_rules(*, stride_fix: bool = False, pool_fix: bool = False, functional: bool = True,
                    upsample: str = "linear") -> RuleMap:
    """Deconvnet rule (max(g, 0)) on every ReLU/ReLU6/SiLU/GELU/Hardswish/Mish."""
    return _preset(DECONV, stride_fix, pool_fix, functional, upsample)


def gradient_rules(*, stride_fix: bool = False, pool_fix: bool = False, upsample: str = "linear") -> RuleMap:
    """Plain gradient, optionally with the stride fix and/or the pooling variant."""
    return _preset(None, stride_fix, pool_fix, False, upsample)


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
        self.watch = SupportWatch()
        self.captured: dict[int, list[str]] = {}  # storage -> names of captured outputs not yet copied

    def capture(self, name: str, output: Tensor) -> None:
        """Keep ``output`` as the capture of ``name``; it is copied only if something changes it in place."""
        self.trace.outputs[name] = output
        self.captured.setdefault(output.untyped_storage().data_ptr(), []).append(name)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Mapping | None = None) -> Any:
        kwargs = kwargs or {}
        target = mutated_tensor(func, args, kwargs)
        if target is not None:
            self.watch.before_inplace(target)
            for name in self.captured.pop(target.untyped_storage().data_ptr(), ()):
                # the clone is recorded on the graph before the change, so seeds still enter it there
                self.trace.outputs[name] = self.trace.outputs[name].clone()
        entry = OPERATIONS.get(func) if self.stack else None
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
        call = OpCall(op, params.pop("x"), params, func, tuple(args), dict(kwargs), self.watch)
        if not rule.applies(call):
            return func(*args, **kwargs)
        self.trace.applied[(name, op, type(rule).__name__)] += 1
        return rule.apply(call)


@contextlib.contextmanager
def backward_rules(model: nn.Module, rules: RuleMap, capture: Sequence[str] = ()) -> Iterator[RuleTrace]:
    """Record forward passes of ``model`` so that their backward follows ``rules``.

    Yields a :class:`RuleTrace`; the outputs of the layers named in ``capture`` land in
    ``trace.outputs`` (attached to the graph; copied just before an operation would change them
    in place, so they keep the layer's values). Forward values are exactly those of the plain
    model. All hooks are removed on exit, also after an exception.
    """
    trace = RuleTrace()
    stack: list[tuple[str, nn.Module]] = []
    mode = _RuleMode(rules, stack, trace)

    names = {id(module): name for name, module in model.named_modules()}

    def pre_hook(module: nn.Module, _inputs: Any) -> None:
        name = names.get(id(module))
        if name is not None:
            stack.append((name, module))
            trace.calls[name] += 1

    def post_hook(module: nn.Module, _inputs: Any, _output: Any) -> None:
        name = names.get(id(module))
        if name is not None and stack and stack[-1][0] == name:
            stack.pop()

    def capture_hook(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, Tensor):
                mode.capture(name, output)
        return hook

    # The current module comes from two global hooks filtered by the model's modules (cheaper than two
    # hooks on every module: MobileNetV2's forward under rules 80.6 -> 74.6 ms, plain 64.5 ms); captures
    # from hooks on the captured layers, which run after the model's own hooks there.
    with HookHandles() as handles:
        handles.append(register_module_forward_pre_hook(pre_hook))
        handles.append(register_module_forward_hook(post_hook, always_call=True))
        for name, module in named_layers(model, capture).items():
            handles.append(module.register_forward_hook(capture_hook(name)))
        with mode:
            yield trace
    if not rules.functional:
        missed = sorted({name for (name, op) in trace.functional if op == "relu"})
        if missed:
            warnings.warn(
                f"functional rectifiers in {', '.join(missed)} kept the plain gradient "
                "(pass functional=True to apply the rule there)", stacklevel=3)
    rules_in_use = [*rules.types.values(), *(rule for _, rule in rules.names)]
    if any(isinstance(rule, (GuidedReLU, DeconvReLU)) for rule in rules_in_use):
        applied = {name for (name, _op, _rule) in trace.applied}
        unruled = unruled_nonlinearities(model, lambda n: trace.calls[n] > 0, lambda n: n in applied)
        if unruled:
            kinds = ", ".join(f"{n} ({type(model.get_submodule(n)).__name__})" for n in unruled[:5])
            more = f" and {len(unruled) - 5} more" if len(unruled) > 5 else ""
            warnings.warn(f"no backward rule for the nonlinearities {kinds}{more}: the signal passes them "
                          "with their plain gradient", stacklevel=3)
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
        for layer in layers:
            if seeds[layer].shape != self.activations[layer].shape:
                raise VebiError(f"the seed of {layer} has shape {tuple(seeds[layer].shape)}, its output "
                                f"{tuple(self.activations[layer].shape)}")
        if not layers:
            return torch.zeros_like(self.inputs)
        with torch.enable_grad():
            # d/dA_l sum_l <A_l, s_l> = s_l exactly (1.0 * s_l). Given as grad_outputs instead, the seeds make
            # autograd import torch.fx's symbolic shapes and sympy to compare sizes: 0.7 s of the first call.
            root = (self.activations[layers[0]] * seeds[layers[0]]).sum()
            for layer in layers[1:]:
                root = root + (self.activations[layer] * seeds[layer]).sum()
            (grad,) = torch.autograd.grad(root, [self.inputs], retain_graph=True, allow_unused=True)
        return torch.zeros_like(self.inputs) if grad is None else grad


def forward_with_rules(model: nn.Module, images: Tensor, rules: RuleMap, layers: Sequence[str] = (), *,
                       guard: bool = True) -> RuleForward:
    """Run ``model(images)`` once under ``rules``, capturing ``layers`` for seeded backward passes.

    The pass runs in eval mode (batch norm uses, and does not update, its running statistics);
    the model's training flags and everything else are restored afterwards, also after an error.
    ``guard=False`` leaves that to a caller that already holds :func:`vebi.hooks.preserve_model`
    (with eval mode) on ``model``.
    """
    inputs = images.detach().clone().requires_grad_(True)
    held = preserve_model(model, freeze=False, no_inplace=False) if guard else contextlib.nullcontext()
    with held, torch.enable_grad(), backward_rules(model, rules, capture=layers) as trace:
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

