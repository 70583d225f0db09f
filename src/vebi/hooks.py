"""Scoped hooks and model-state guards: everything attached is removed, also after an exception.

:class:`HookHandles` is the one way vebi attaches hooks (a list of removable handles that is its
own context manager); :func:`forward_hooks` observes named modules' outputs;
:func:`preserve_model` gives a model back exactly as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from torch import nn

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
        if eval_mode and any(training):
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
            # nn.Module.__setattr__ is slow (a third of this guard's time on MobileNetV2): set what changed
            if m.training != flag:
                m.training = flag
            if getattr(m, "_is_full_backward_hook", None) is not full:
                m._is_full_backward_hook = full
        for p, flag, grad in zip(params, requires, grads):
            if p.requires_grad != flag:
                p.requires_grad_(flag)
            if p.grad is not grad:
                p.grad = grad
        for m, flag in inplace:
            if m.inplace != flag:
                m.inplace = flag


class HookHandles(list):
    """Removable hook handles: ``with HookHandles() as handles: handles.append(m.register_...(...))``.

    Leaving the block (or :meth:`remove`) removes every handle, also after an exception.
    """

    def remove(self) -> None:
        while self:
            self.pop().remove()

    def __enter__(self) -> HookHandles:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


@contextlib.contextmanager
def forward_hooks(modules: Mapping[str, nn.Module], callback: Callable[[str, Any], None]) -> Iterator[None]:
    """Call ``callback(name, output)`` whenever ``modules[name]`` produces an output (the first
    element of a tuple output); the output itself is left as it is."""
    with HookHandles() as handles:
        for name, module in modules.items():
            def hook(_m: nn.Module, _inp: Any, out: Any, _name: str = name) -> None:
                callback(_name, out[0] if isinstance(out, (tuple, list)) else out)

            handles.append(module.register_forward_hook(hook))
        yield
