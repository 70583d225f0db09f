"""Image folders (one sub-folder per class) as datasets, with clear errors for bad files."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision import datasets, transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

from vebi.errors import VebiError, VebiWarning
from vebi.io.folders import data_folder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# the file types of image folders: torchvision's, and GIF (its first frame)
IMAGE_EXTENSIONS = (*IMG_EXTENSIONS, ".gif")
_READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def load_image(path: str | Path, channels: int = 3) -> Image.Image:
    """Open an image as RGB (channels=3) or L (channels=1), turned upright by its EXIF orientation (as
    browsers show it); palette / RGBA / grey are converted, 16-bit grey is scaled by 65535 and float
    images must lie in [0, 1]; a GIF gives its first frame."""
    try:
        with Image.open(path) as img:
            img.load()
            img = _to_8bit(ImageOps.exif_transpose(img), path)
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")
            return img.convert("L" if channels == 1 else "RGB")
    except VebiError:
        raise
    except _READ_ERRORS as exc:
        raise VebiError(f"cannot read image {path}: {exc}") from None


def _to_8bit(img: Image.Image, path: str | Path) -> Image.Image:
    """Integer images of more than 8 bits scaled by their range (16 bits: / 65535), float images
    ([0, 1] expected) by 255; PIL's own conversion would clip them instead."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        scale = 65535.0
    elif img.mode == "I":
        scale = 65535.0 if np.asarray(img).max(initial=0) > 255 else 255.0
    elif img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if not np.isfinite(values).all() or values.min(initial=0) < 0 or values.max(initial=0) > 1:
            raise VebiError(f"{path} holds floating-point pixels outside [0, 1] "
                            f"(range {np.nanmin(values):g} to {np.nanmax(values):g}); save it as 8- or 16-bit")
        scale = 1.0
    else:
        return img
    values = np.asarray(img, dtype=np.float64) / scale
    return Image.fromarray(np.round(np.clip(values, 0, 1) * 255).astype(np.uint8), "L")


def image_transform(size: int | None = None, channels: int = 3, mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None, resize: int | None = None,
                    interpolation: str = "bilinear") -> transforms.Compose:
    """Resize the shorter side to ``resize`` (default ``size``) + centre crop to ``size`` when given,
    to tensor, optional normalisation."""
    steps: list = []
    if size is not None:
        steps += [transforms.Resize(resize or size, transforms.InterpolationMode(interpolation)),
                  transforms.CenterCrop(size)]
    steps.append(transforms.ToTensor())
    if mean is not None and std is not None:
        m = list(mean)[:channels] if channels <= len(mean) else list(mean) * channels
        s = list(std)[:channels] if channels <= len(std) else list(std) * channels
        steps.append(transforms.Normalize(m, s))
    return transforms.Compose(steps)


class ImageFolderChecked(datasets.ImageFolder):
    """``ImageFolder`` that skips hidden files and folders (``.ipynb_checkpoints`` is no class), reads
    GIFs, visits a folder reached twice through symbolic links only once, and warns (one
    :class:`VebiWarning`) how many files it skipped and why."""

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
        return classes, {name: i for i, name in enumerate(classes)}

    @staticmethod
    def make_dataset(directory: str | Path, class_to_idx: dict[str, int], extensions: tuple[str, ...] | None = None,
                     is_valid_file=None, allow_empty: bool = False) -> list[tuple[str, int]]:
        skipped: Counter[str] = Counter()
        seen = {os.path.realpath(directory)} | {os.path.realpath(os.path.join(directory, c)) for c in class_to_idx}
        instances = []
        for name in sorted(class_to_idx):
            walked = []
            for root, dirs, files in os.walk(os.path.join(directory, name), followlinks=True):
                keep = []
                for d in sorted(dirs):
                    real = os.path.realpath(os.path.join(root, d))
                    if d.startswith("."):
                        skipped["hidden folders"] += 1
                    elif real in seen:
                        skipped["folders reached twice through symbolic links"] += 1
                    else:
                        seen.add(real)
                        keep.append(d)
                dirs[:] = keep
                walked.append((root, files))
            found = 0
            for root, files in sorted(walked):
                for fname in sorted(files):
                    if fname.startswith("."):
                        skipped["hidden files"] += 1
                    elif not fname.lower().endswith(IMAGE_EXTENSIONS):
                        skipped["not images"] += 1
                    else:
                        instances.append((os.path.join(root, fname), class_to_idx[name]))
                        found += 1
            if not found and not allow_empty:
                raise FileNotFoundError(f"Found no valid file for the class {name} "
                                        f"(image files: {', '.join(IMAGE_EXTENSIONS)})")
        if skipped:
            warnings.warn(f"skipped {sum(skipped.values())} entries under {directory}: "
                          + ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())), VebiWarning, stacklevel=2)
        return instances


class ImageFolderWithIndex(ImageFolderChecked):
    """``ImageFolder`` whose items are (image, label, index) so statistics keep stable image ids."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image, label = super().__getitem__(index)
        return image, label, index


def image_folder(path: str | Path, size: int | None = None, channels: int = 3, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, with_index: bool = True, resize: int | None = None,
                 interpolation: str = "bilinear") -> datasets.ImageFolder:
    """The images under ``path`` (class per sub-folder), converted to ``channels``; VebiError on problems."""
    root = data_folder(path)
    cls = ImageFolderWithIndex if with_index else ImageFolderChecked
    try:
        return cls(str(root), transform=image_transform(size, channels, mean, std, resize, interpolation),
                   loader=lambda p: load_image(p, channels))
    except FileNotFoundError as exc:
        raise VebiError(f"{root}: {exc}") from None


def check_uniform_size(dataset: datasets.ImageFolder, size: int | None) -> None:
    """Without ``size`` every image must have the first one's size (batches need one shape)."""
    if size is not None or not dataset.samples:
        return
    first = dataset.samples[0][0]
    want = None
    for p, _ in dataset.samples:
        try:
            with Image.open(p) as img:
                got = img.size[::-1] if img.getexif().get(0x0112, 1) in (5, 6, 7, 8) else img.size  # EXIF turn
        except _READ_ERRORS as exc:
            raise VebiError(f"cannot read image {p}: {exc}") from None
        want = want or got
        if got != want:
            raise VebiError(f"images differ in size ({first}: {want}, {p}: {got}); pass --size to resize")
