"""A run folder as one object: how its model and data are rebuilt, and what its stages saved.

    run = Run.open("runs/mine")
    model = run.model()                    # rebuilt from run.json: spec, weights, factory arguments
    train = run.dataset()                  # the collection's images, preprocessed as collected
    test = run.dataset("photos/test")      # another folder, the same preprocessing
    run.stats, run.relevance               # loaded on first use

``run.json`` (written by :meth:`Run.create`) holds ``model`` {spec, weights, args}, ``data``
{path, size, resize, interpolation, channels, mean, std, preprocessing}, ``layers`` and ``classes``
(the :class:`vebi.classes.ClassMap`: which model output each class folder is, and the outputs' names). Every command, the evaluation and the demo
open runs through this class.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vebi.errors import VebiError

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torchvision import datasets, transforms

    from vebi.classes import ClassMap
    from vebi.core.relevance import Relevance
    from vebi.core.stats import FeatureStats

__all__ = ["Run", "check_trusted", "data_record", "model_record"]

NORMALIZE = ("auto", "imagenet", "none")
# vebi's own model factories: rebuilt from a run folder without asking (any other factory is code
# the run folder names, and runs only when the user trusts it)
OWN_FACTORIES = frozenset({"vebi.an8flower.net:an8net"})


def check_trusted(spec: str, trust: bool = False) -> None:
    """VebiError unless ``spec`` may be rebuilt from a run folder: ``torchvision:NAME`` and vebi's own
    factories always, a ``module:factory`` or ``file.py:factory`` only with ``trust``."""
    if trust or spec.startswith("torchvision:") or spec in OWN_FACTORIES:
        return
    raise VebiError(f"run.json names the model {spec!r}, code that vebi would import and run; "
                    "pass --trust-model (trust=True) if you trust this run folder")


def model_record(spec: str, weights: str | None = None, args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """How to rebuild a model: its spec, weights (a file's absolute path, or a weights name) and arguments."""
    path = Path(weights) if weights else None
    return {"spec": spec, "weights": str(path.resolve()) if path is not None and path.exists() else weights,
            "args": dict(args or {})}


def data_record(model: nn.Module, spec: str, path: str | Path, size: int | None = None,
                normalize: str = "auto", preprocessing: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """How to read images for ``model``: folder, size, channels and normalisation (``auto``: ImageNet
    statistics for torchvision models, none otherwise). ``preprocessing`` (the weights' own, from
    :func:`vebi.models.weights_preprocessing`) sets resize + crop and the normalisation; an explicit
    ``size`` then scales the resize with it (resize = size * weights' resize / weights' crop)."""
    from vebi.data import IMAGENET_MEAN, IMAGENET_STD
    from vebi.layers import first_conv_in_channels

    if normalize not in NORMALIZE:
        raise VebiError(f"normalize must be one of {', '.join(NORMALIZE)}, not {normalize!r}")
    if size is not None and size < 1:
        raise VebiError(f"size must be at least 1 pixel, not {size}")
    if normalize == "auto":
        normalize = "imagenet" if spec.startswith("torchvision:") else "none"
    imagenet = normalize == "imagenet"
    record = {"path": str(Path(path).resolve()), "size": size, "channels": first_conv_in_channels(model),
              "mean": list(IMAGENET_MEAN) if imagenet else None, "std": list(IMAGENET_STD) if imagenet else None}
    if preprocessing:
        crop = size or preprocessing["size"]
        record.update(size=crop, resize=round(crop * preprocessing["resize"] / preprocessing["size"]),
                      interpolation=preprocessing["interpolation"], preprocessing=preprocessing["preprocessing"])
        if imagenet:
            record.update(mean=list(preprocessing["mean"]), std=list(preprocessing["std"]))
    return record


@dataclass(frozen=True)
class Run:
    """A run folder and its ``run.json`` (see the module docstring)."""

    root: Path
    info: Mapping[str, Any] = field(repr=False)

    @classmethod
    def open(cls, root: str | Path) -> Run:
        """The run in ``root``; VebiError when it has no readable ``run.json``."""
        from vebi.io.folders import load_run_info

        return cls(Path(root), load_run_info(root))

    @classmethod
    def create(cls, root: str | Path, model: Mapping[str, Any], data: Mapping[str, Any],
               layers: tuple[str, ...] | list[str], classes: ClassMap | None = None) -> Run:
        """Write ``run.json`` in ``root`` (from :func:`model_record`, :func:`data_record` and the class map)."""
        from vebi.io.artifacts import save_run_info

        info = {"model": dict(model), "data": dict(data), "layers": list(layers)}
        if classes is not None:
            info["classes"] = classes.to_dict()
        save_run_info(root, info)
        return cls.open(root)

    def model(self, *, weights: bool = True, trust: bool = False) -> nn.Module:
        """The run's model, rebuilt from its spec (``weights=False``: the architecture only); a spec
        other than torchvision's or vebi's own needs ``trust`` (see :func:`check_trusted`)."""
        from vebi.models import load_model

        spec = self.info["model"]
        check_trusted(spec["spec"], trust)
        model = load_model(spec["spec"], spec.get("weights") if weights else None, spec.get("args"))
        if weights:
            self.check_model(model)
        return model

    def check_model(self, model: nn.Module) -> None:
        """VebiError unless ``model`` (architecture and weights) is the one the statistics were collected with."""
        from vebi.io.artifacts import model_fingerprint
        from vebi.io.folders import read_json

        path = self.root / "stats.json"
        recorded = read_json(path, "statistics").get("model_fingerprint") if path.is_file() else None
        if recorded is not None and model_fingerprint(model, self.stats.space.layers) != recorded:
            raise VebiError(f"the model rebuilt from {self.root / 'run.json'} ({self.info['model']['spec']}, weights "
                            f"{self.info['model'].get('weights')}) is not the one the statistics were collected with "
                            "(other weights or architecture)")

    def dataset(self, path: str | Path | None = None, *, with_index: bool = True,
                display: bool = False) -> datasets.ImageFolder:
        """An image folder (default: the collected one) read as collected; ``display`` leaves out the
        model's normalisation (images in [0, 1] for people)."""
        from vebi.data import check_uniform_size, image_folder

        data = self.data
        mean, std = (None, None) if display else (data.get("mean"), data.get("std"))
        dataset = image_folder(path or data["path"], data.get("size"), data.get("channels", 3), mean, std,
                               with_index=with_index, resize=data.get("resize"),
                               interpolation=data.get("interpolation", "bilinear"))
        check_uniform_size(dataset, data.get("size"))
        return dataset

    def transform(self, *, display: bool = False) -> transforms.Compose:
        """The run's preprocessing of one PIL image (``display``: without normalisation)."""
        from vebi.data import image_transform

        data = self.data
        mean, std = (None, None) if display else (data.get("mean"), data.get("std"))
        return image_transform(data.get("size"), self.channels, mean, std, data.get("resize"),
                               data.get("interpolation", "bilinear"))

    @property
    def data(self) -> Mapping[str, Any]:
        return self.info["data"]

    @property
    def channels(self) -> int:
        return int(self.data.get("channels", 3))

    @functools.cached_property
    def stats(self) -> FeatureStats:
        from vebi.io.artifacts import load_stats

        stats = load_stats(self.root)
        if list(self.info.get("layers", stats.space.layers)) != list(stats.space.layers):
            raise VebiError(f"{self.root / 'run.json'} names other layers than {self.root / 'stats.json'} holds "
                            "(a collection that did not finish); re-run `vebi collect`")
        return stats

    @functools.cached_property
    def classes(self) -> ClassMap:
        """The run's class map (runs from before it: sorted folders are outputs 0..C-1)."""
        from vebi.classes import ClassMap

        if "classes" in self.info:
            return ClassMap.from_dict(self.info["classes"])
        return ClassMap.identity(self.stats.class_names)

    @functools.cached_property
    def relevance(self) -> Relevance:
        """The fitted relevance, its columns tied to the model outputs of the class map."""
        import dataclasses

        from vebi.io.artifacts import load_relevance

        return dataclasses.replace(load_relevance(self.root), outputs=self.classes.outputs)

    def check_classes(self, dataset: datasets.ImageFolder, path: str | Path) -> None:
        """VebiError unless ``dataset``'s class folders are the run's classes."""
        classes = tuple(self.stats.class_names)
        if tuple(dataset.classes) != classes:
            raise VebiError(f"the class folders of {path} ({', '.join(dataset.classes)}) are not the run's classes "
                            f"({', '.join(classes)})")


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``auto`` (or None): CUDA when available, else the CPU; a device name is checked."""
    import torch

    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(name, torch.device):
        return name
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise VebiError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VebiError("device cuda was asked for but no CUDA device is available")
    return dev
