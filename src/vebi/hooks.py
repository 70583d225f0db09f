"""Scoped forward hooks and model-state guards: everything attached is removed in ``finally``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from vebi.layers import get_module

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


@contextlib.contextmanager
def preserve_model(
    model: nn.Module, *, eval_mode: bool = True, freeze: bool = True, no_inplace: bool = True
) -> Iterator[nn.Module]:
    """Run a block on ``model`` and give it back exactly as it was.

    Inside: eval mode (``eval_mode``), parameters with ``requires_grad=False`` (``freeze``; input
    gradients still flow), ``inplace=False`` on every module that has that flag (``no_inplace``).
    On exit, also after an exception: every module's training flag, every parameter's
    ``requires_grad`` and ``.grad`` (the same tensor objects), the in-place flags, and the module hook
    dictionaries are restored; hooks registered inside the block and not removed are removed.
    """
    modules = list(model.modules())
    params = list(model.parameters())
    training = [m.training for m in modules]
    requires = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    inplace = [(m, m.inplace) for m in modules if isinstance(getattr(m, "inplace", None), bool)]
    hook_keys = [{name: set(getattr(m, name, {}).keys()) for name in _HOOK_DICTS} for m in modules]
    full_backward = [getattr(m, "_is_full_backward_hook", None) for m in modules]
    try:
        if eval_mode:
            model.eval()
        if freeze:
            for p in params:
                p.requires_grad_(False)
        if no_inplace:
            for m, _ in inplace:
                m.inplace = False
        yield model
    finally:
        for m, keys, flag, full in zip(modules, hook_keys, training, full_backward):
            for name, before in keys.items():
                hooks = getattr(m, name, None)
                if hooks is not None:
                    for key in [k for k in hooks if k not in before]:
                        del hooks[key]
            m.training = flag
            if hasattr(m, "_is_full_backward_hook"):
                m._is_full_backward_hook = full
        for p, flag, grad in zip(params, requires, grads):
            p.requires_grad_(flag)
            p.grad = grad
        for m, flag in inplace:
            m.inplace = flag


@contextlib.contextmanager
def forward_hooks(model: nn.Module, callbacks: Mapping[str, Callable[[str, torch.Tensor], None]]) -> Iterator[None]:
    """Call ``callbacks[name](name, output)`` whenever the named layer produces an output."""
    handles = []
    try:
        for name, fn in callbacks.items():
            module = get_module(model, name)

            def hook(_m: nn.Module, _inp: object, out: object, _name: str = name, _fn=fn) -> None:
                if isinstance(out, (tuple, list)):
                    out = out[0]
                _fn(_name, out)

            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def capture_outputs(model: nn.Module, layers: Sequence[str], keep_graph: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Collect the outputs of ``layers`` of the next forward passes into the yielded dict (last pass wins).

    Outputs are cloned (a later in-place op, e.g. ``ReLU(inplace=True)`` after a hooked conv, would
    otherwise change them) and detached unless ``keep_graph``.
    """
    store: dict[str, torch.Tensor] = {}

    def keep(name: str, out: torch.Tensor) -> None:
        store[name] = out.clone() if keep_graph else out.detach().clone()

    with forward_hooks(model, {n: keep for n in layers}):
        yield store
