"""``vebi`` commands import torchvision without importing TorchDynamo.

Importing torchvision runs ``from torch._dynamo.utils import is_compile_supported`` (in
``torchvision.ops.roi_align``), which imports all of TorchDynamo, ``torch.compile``'s tracer: 1.4-2.2 s
of every command that loads a model (``benchmarks/bench_cli_start.py``), for a function vebi never
calls. While :func:`deferred_dynamo` is active, the first import of torchvision runs with a stand-in
``torch._dynamo.utils`` in ``sys.modules``; its ``is_compile_supported`` imports the real module when
called, and reading any other name from it does the same. The stand-in is removed as soon as
torchvision's ``__init__`` has run, so any later import gets the real TorchDynamo. Python code that
imports vebi is not affected; only the console entry point uses this.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.util
import sys
import types
from collections.abc import Iterator
from typing import Any

UTILS = "torch._dynamo.utils"


class _StandIn(types.ModuleType):
    """``torch._dynamo.utils`` until a name is read from it that it does not hold."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):  # the import system's and inspect's probes
            raise AttributeError(name)
        return getattr(_real_utils(), name)


def _real_utils() -> types.ModuleType:
    if isinstance(sys.modules.get(UTILS), _StandIn):
        del sys.modules[UTILS]
    return importlib.import_module(UTILS)


def _is_compile_supported(device_type: str) -> bool:
    return _real_utils().is_compile_supported(device_type)


@contextlib.contextmanager
def _stand_in() -> Iterator[None]:
    """The stand-in in ``sys.modules`` while the block runs, unless TorchDynamo is imported already."""
    if any(name == "torch._dynamo" or name.startswith("torch._dynamo.") for name in sys.modules):
        yield
        return
    utils = _StandIn(UTILS)
    utils.is_compile_supported = _is_compile_supported
    sys.modules[UTILS] = utils
    try:
        yield
    finally:
        if sys.modules.get(UTILS) is utils:
            del sys.modules[UTILS]


class _Loader(importlib.abc.Loader):
    """torchvision's own loader, its module executed with the stand-in in place."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__loader__ = module.__spec__.loader = self.loader  # the package keeps its own loader
        with _stand_in():
            self.loader.exec_module(module)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds torchvision once, the way Python would, and hands it to :class:`_Loader`."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "torchvision":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


@contextlib.contextmanager
def deferred_dynamo() -> Iterator[None]:
    """While the block runs, torchvision's first import does not import TorchDynamo (module docstring)."""
    if "torchvision" in sys.modules:
        yield
        return
    finder = _Finder()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(finder)
