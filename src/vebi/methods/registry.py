"""One registry of explanation methods; every method, vebi's own included, answers the same contract.

A method is a frozen dataclass whose fields are its options, registered at its definition::

    @register_method("grad_cam")
    @dataclass(frozen=True)
    class GradCAM(Method):
        layer: str | None = None
        def maps(self, model, images, target): ...

- ``maps(model, images (B, C, H, W), target (B,) int) -> (B, H, W)`` float32 in [0, 1], at image
  resolution, on the images' device, for model output ``target[b]`` of image ``b`` (what the
  benchmark compares); every method explains the same output for the same target;
- ``explain(model, images, target=None, classes=None) -> tuple[Explanation, ...]`` (what a user
  reads): prediction, explained output, scores and the map; methods with features add them;
  ``classes`` (:class:`vebi.classes.ClassMap`) names the outputs and reads named targets;
- ``evaluation_maps`` / ``output_names``: the maps a method contributes to the evaluation (by
  default its own map; vebi adds its single-feature maps).

Methods that need a fitted relevance declare ``needs_relevance`` and a ``relevance`` field.
:func:`build_method` makes one by name and checks its options; the evaluation and the CLI only
build methods by name and call them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from vebi.errors import VebiError
from vebi.hooks import preserve_model
from vebi.models import model_device, model_dtype

if TYPE_CHECKING:
    from vebi.classes import ClassMap
    from vebi.core.relevance import Relevance
    from vebi.explanation.result import Explanation

__all__ = ["METHODS", "Method", "build_method", "method_names", "method_options", "register_method"]

M = TypeVar("M", bound="type[Method]")


@dataclasses.dataclass(frozen=True)
class Method(ABC):
    """An explanation method with its options (the dataclass fields); see the module docstring."""

    name: ClassVar[str] = ""
    needs_relevance: ClassVar[bool] = False

    @abstractmethod
    def maps(self, model: nn.Module, images: Tensor, target: Tensor) -> Tensor:
        """(B, H, W) maps in [0, 1] for class ``target[b]`` of image ``b``."""

    def __call__(self, model: nn.Module, images: Tensor, target: Tensor) -> Tensor:
        return self.maps(model, images, target)

    def output_names(self) -> tuple[str, ...]:
        """Names of the maps :meth:`evaluation_maps` returns."""
        return (self.name,)

    def evaluation_maps(self, model: nn.Module, images: Tensor, target: Tensor) -> dict[str, Tensor]:
        """The maps this method contributes to the evaluation, on the CPU."""
        return {self.name: self.maps(model, images, target).cpu()}

    def options(self) -> dict[str, Any]:
        """The option values (JSON-friendly), as recorded in an explanation's settings."""
        return {f.name: _plain(getattr(self, f.name)) for f in option_fields(type(self))}

    def explain(self, model: nn.Module, images: Tensor, target: Any = None,
                classes: ClassMap | None = None) -> tuple[Explanation, ...]:
        """One :class:`Explanation` per image, for ``target`` (None: the prediction; a model output
        or class name for every image, or one per image)."""
        from vebi import __version__
        from vebi.classes import ClassMap
        from vebi.explanation.result import Explanation, resolve_targets

        check_images(images)
        device = model_device(model, images.device)
        with preserve_model(model, freeze=False, no_inplace=False), torch.no_grad():
            logits = model(images.to(device, model_dtype(model, images.dtype)))
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            raise VebiError("the model must return class scores of shape (B, classes)")
        probs = logits.float().softmax(dim=1).cpu()
        predicted = probs.argmax(dim=1)
        classes = classes if classes is not None else ClassMap((), ())
        targets = resolve_targets(target, predicted, classes)
        if targets.numel() and int(targets.max()) >= probs.shape[1]:
            raise VebiError(f"target {int(targets.max())} is out of range for a model with {probs.shape[1]} outputs")
        maps = self.maps(model, images.to(device), targets.to(device)).cpu()
        versions = {"vebi": __version__, "torch": torch.__version__}
        out = []
        for b in range(images.shape[0]):
            p, t = int(predicted[b]), int(targets[b])
            out.append(Explanation(p, classes.name(p), float(probs[b, p]), t, classes.name(t), float(probs[b, t]),
                                   (), maps[b], self.name, self.options(), versions))
        return tuple(out)


METHODS: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: register a :class:`Method` under ``name`` (replacing one of that name)."""

    def register(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, Method) and dataclasses.is_dataclass(cls)):
            raise TypeError(f"{cls!r} is not a dataclass subclass of Method")
        cls.name = name
        METHODS[name] = cls
        return cls

    return register


def method_names() -> tuple[str, ...]:
    """Every registered method, in registration order (vebi's own first)."""
    import vebi.methods  # noqa: F401  (registers the built-in methods)

    return tuple(METHODS)


def option_fields(cls: type[Method]) -> tuple[dataclasses.Field, ...]:
    return tuple(f for f in dataclasses.fields(cls) if f.name != "relevance")


def method_options(name: str) -> dict[str, Any]:
    """Option name -> default of method ``name``."""
    return {f.name: f.default for f in option_fields(_method_class(name))}


def _check_declared(name: str, options: Iterable[str]) -> None:
    known = method_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise VebiError(f"method {name!r} has no option {', '.join(unknown)} (its options: {allowed})")


def check_options(name: str, options: dict[str, Any]) -> None:
    """Raise unless method ``name`` declares every option and each value has its default's type
    (an int where the default is a float is accepted; options defaulting to None take anything)."""
    _check_declared(name, options)
    known = method_options(name)
    for option, value in options.items():
        kinds = (type(known[option]), type(value))
        if known[option] is not None and kinds[0] is not kinds[1] and kinds != (float, int):
            kind = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}.get(
                kinds[0].__name__, f"a {kinds[0].__name__}")
            raise VebiError(f"option {option} of method {name!r} takes {kind}, got {value!r}")


def build_method(name: str, relevance: Relevance | None = None, *, strict: bool = True, **options: Any) -> Method:
    """Method ``name`` with ``options``; ``strict=False`` drops options the method does not declare
    (for settings shared by several methods, e.g. ``top_k``)."""
    cls = _method_class(name)
    if strict:
        _check_declared(name, options)
    known = {f.name for f in option_fields(cls)}
    kwargs = {k: v for k, v in options.items() if k in known}
    if cls.needs_relevance:
        if relevance is None:
            raise VebiError(f"method {name!r} needs a relevance (a fitted run)")
        kwargs["relevance"] = relevance
    return cls(**kwargs)


def _method_class(name: str) -> type[Method]:
    if name not in method_names():
        raise VebiError(f"unknown explanation method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, nn.Module):
        return type(value).__name__
    return str(value)


# ----------------------------------------------------------------------------- shared input handling


def check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise VebiError(f"images must be a float tensor (B, C, H, W), got {shape}")


def check_inputs(images: Tensor, target: Tensor) -> None:
    check_images(images)
    if not isinstance(target, Tensor) or target.shape != (images.shape[0],) or target.is_floating_point():
        shape = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise VebiError(f"target must be an integer tensor of shape ({images.shape[0]},), got {shape}")
    if target.numel() and int(target.min()) < 0:
        raise VebiError(f"target holds a negative class index ({int(target.min())})")


def model_inputs(model: nn.Module, images: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """A private copy of the images on the model's device (requires grad) and the target there."""
    check_inputs(images, target)
    device = model_device(model, images.device)
    x = images.detach().to(device, model_dtype(model, images.dtype), copy=True).requires_grad_(True)
    return x, target.detach().to(device, torch.long)


@contextlib.contextmanager
def class_range_errors(model: nn.Module, x: Tensor, target: Tensor) -> Iterator[None]:
    """Turn a library's indexing error from an out-of-range target into a ``VebiError``."""
    try:
        yield
    except (IndexError, RuntimeError):
        with torch.no_grad():
            classes = model(x[:1].detach()).shape[1]
        if target.numel() and int(target.max()) >= classes:
            raise VebiError(
                f"target class {int(target.max())} is out of range for a model with {classes} outputs"
            ) from None
        raise
