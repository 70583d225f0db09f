"""Scoped forward hooks and model-state guards: everything attached is removed in ``finally``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from vebi.layers import get_module


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[nn.Module]:
    """Restore every module's ``training`` flag and every parameter's ``requires_grad`` on exit."""
    training = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield model
    finally:
        for m, flag in training:
            m.training = flag
        for p, flag in grads:
            p.requires_grad_(flag)


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
