"""Building the user's model from a command-line spec.

Specs: ``torchvision:NAME`` (``weights=None`` unless ``--weights``), ``package.module:factory`` or
``path/to/file.py:factory``. ``weights`` is a local state-dict file (loaded with
``weights_only=True``) or, for torchvision models, a weights name such as ``IMAGENET1K_V1`` that
must already be in torch's cache (nothing is ever downloaded). A ``file.py`` is imported with its
folder first on ``sys.path`` (removed again afterwards), so it can import modules beside it.

:func:`torchvision_weights` finds the torchvision weights enum of a run's model (named, or the one
whose file or output count a state dict matches); its categories name the outputs and its
transforms give the preprocessing (:func:`weights_preprocessing`).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import itertools
import json
import sys
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from vebi.errors import VebiError

T = TypeVar("T")


def model_device(model: nn.Module, fallback: torch.device | str = "cpu") -> torch.device:
    """Device of the model's first parameter or buffer (``fallback`` for a model with neither)."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)  # without listing them all
    return torch.device(fallback) if first is None else first.device


def model_dtype(model: nn.Module, fallback: torch.dtype = torch.float32) -> torch.dtype:
    """Dtype of the model's first floating parameter or buffer (``fallback`` for a model with neither)."""
    return next((t.dtype for t in itertools.chain(model.parameters(), model.buffers()) if t.is_floating_point()),
                fallback)


def fast_layout(images: Tensor) -> Tensor:
    """A CPU image batch (B, C, H, W) in channels-last memory order, anything else as it is: the same
    values, on which CPU convolutions run 20-40 % faster (an8net, MobileNetV2, ResNet-50); outputs
    differ only in float summation order."""
    if images.dim() == 4 and images.device.type == "cpu":
        return images.contiguous(memory_format=torch.channels_last)
    return images


_PLAIN_LAYOUT: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def in_fast_layout(model: nn.Module, run: Callable[[Tensor], T], images: Tensor) -> T:
    """``run(images)`` with the images in channels-last order on a CPU (:func:`fast_layout`), or as given
    for a model that cannot take that order (a ``.view`` of its maps raises): that call is run again
    with the given layout, and the model keeps it from then on. A leaf that requires grad stays a leaf."""
    if _PLAIN_LAYOUT.get(model, False):
        return run(images)
    fast = fast_layout(images)
    if fast is images:
        return run(images)
    if images.is_leaf and images.requires_grad:
        fast = fast.detach().requires_grad_(True)
    try:
        return run(fast)
    except RuntimeError as exc:
        if "view size is not compatible" not in str(exc):
            raise
    _PLAIN_LAYOUT[model] = True
    return run(images)


def parse_model_args(items: list[str] | None) -> dict[str, Any]:
    """``["num_classes=6", "stride=4"]`` -> keyword arguments (values parsed as JSON when possible)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise VebiError(f"model argument {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _factory(spec: str):
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise VebiError(f"model spec {spec!r} must be torchvision:NAME, package.module:factory or file.py:factory")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise VebiError(f"model file {path} not found")
        mod_name = f"_vebi_user_model_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        if module_spec is None or module_spec.loader is None:
            raise VebiError(f"cannot import {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        folder = str(path.resolve().parent)
        sys.path.insert(0, folder)
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            raise VebiError(f"importing {path} failed: {type(exc).__name__}: {exc}") from None
        finally:
            if folder in sys.path:
                sys.path.remove(folder)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise VebiError(f"cannot import module {target!r} ({exc})") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise VebiError(f"{target} has no callable {attr!r}")
    return factory


def _torchvision_model(name: str, weights: str | None, kwargs: dict[str, Any]) -> tuple[nn.Module, bool]:
    from torchvision import models

    if name not in models.list_models():
        import difflib

        close = difflib.get_close_matches(name, models.list_models(), n=4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise VebiError(f"torchvision has no model {name!r}{hint}")
    cached = None
    if weights is not None and not Path(weights).exists() and not weights.endswith((".pt", ".pth", ".bin")):
        enum = _weights_enum(name, weights)
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
        if not cached.is_file():
            raise VebiError(f"torchvision weights {weights} of {name} are not in torch's cache and vebi never "
                            f"downloads; put {Path(enum.url).name} (from {enum.url}) into {cached.parent}, or pass "
                            "--weights path/to/file.pth")
        kwargs.setdefault("num_classes", len(enum.meta["categories"]))
    try:
        model = models.get_model(name, weights=None, **kwargs)
    except TypeError as exc:
        raise VebiError(f"torchvision:{name} does not accept {kwargs}: {exc}") from None
    if cached is not None:
        load_weights(model, cached)
    return model, cached is not None


def _weights_enum(name: str, weights: str) -> Any:
    from torchvision import models

    try:
        enum = models.get_model_weights(name)
    except (KeyError, ValueError):
        raise VebiError(f"torchvision has no weights for {name}") from None
    choice = weights.split(".")[-1]
    if choice not in enum.__members__:
        raise VebiError(f"{name} has no weights {weights!r}; it has {', '.join(enum.__members__)}")
    return enum[choice]


def torchvision_weights(spec: str, weights: str | None, outputs: Callable[[], int]) -> Any | None:
    """The torchvision weights enum behind a model: the named one, else (a state-dict file) the
    one whose file name it has or, failing that, the first with ``outputs()`` categories."""
    from torchvision import models

    if not spec.startswith("torchvision:") or weights is None:
        return None
    name = spec.split(":", 1)[1]
    if not Path(weights).exists() and not weights.endswith((".pt", ".pth", ".bin")):
        return _weights_enum(name, weights)
    try:
        enum = models.get_model_weights(name)
    except (KeyError, ValueError):
        return None
    count = outputs()
    fitting = [w for w in enum if len(w.meta.get("categories") or ()) == count]
    same_file = [w for w in fitting if Path(w.url).name == Path(weights).name]
    return (same_file or fitting or [None])[0]


def output_count(model: nn.Module, size: int = 224) -> int:
    """Number of outputs of an image classifier (one forward pass of a blank image)."""
    from vebi.layers import first_conv_in_channels

    with torch.no_grad():
        x = torch.zeros(1, first_conv_in_channels(model), size, size, device=model_device(model),
                        dtype=model_dtype(model))
        return int(model(x).shape[-1])


def weights_preprocessing(enum: Any) -> dict[str, Any]:
    """The resize / crop / normalisation of a torchvision weights enum's own transforms."""
    t = enum.transforms()
    return {"size": int(t.crop_size[0]), "resize": int(t.resize_size[0]), "mean": [float(v) for v in t.mean],
            "std": [float(v) for v in t.std], "interpolation": t.interpolation.value,
            "preprocessing": f"{type(enum).__name__}.{enum.name}.transforms()"}


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint file (plain, or under 'state_dict' / 'model')."""
    p = Path(path)
    if not p.is_file():
        raise VebiError(f"weights file {p} not found")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).splitlines() or ["the file is empty or cut short"])[0]
        raise VebiError(f"cannot read weights file {p}: {type(exc).__name__}: {first}") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise VebiError(f"{p} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state-dict file into ``model``; a mismatch names the file and the first differences."""
    state = load_state_dict_file(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
        if wrong:
            parts.append(f"shape {'; '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''}")
        raise VebiError(f"checkpoint {path} does not fit {type(model).__name__}: {'; '.join(parts)}")
    model.load_state_dict(state)


def load_model(spec: str, weights: str | None = None, model_args: dict[str, Any] | None = None) -> nn.Module:
    """The model named by ``spec`` in eval mode, with ``weights`` loaded when given."""
    kwargs = dict(model_args or {})
    if spec.startswith("torchvision:"):
        model, loaded = _torchvision_model(spec.split(":", 1)[1], weights, kwargs)
    else:
        factory = _factory(spec)
        params = inspect.signature(factory).parameters
        accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        unknown = [k for k in kwargs if k not in params and not accepts_any]
        if unknown:
            raise VebiError(f"{spec} does not take argument(s) {', '.join(unknown)}")
        try:
            model = factory(**kwargs)
        except Exception as exc:
            raise VebiError(f"{spec} failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(model, nn.Module):
            raise VebiError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
        loaded = False
    if weights is not None and not loaded:
        load_weights(model, weights)
    return model.eval()
