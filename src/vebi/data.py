"""Image folders (one sub-folder per class) as datasets, with clear errors for bad files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision import datasets, transforms

from vebi.errors import VebiError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_image(path: str | Path, channels: int = 3) -> Image.Image:
    """Open an image as RGB (channels=3) or L (channels=1); palette / RGBA / grey are converted."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")
            return img.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise VebiError(f"cannot read image {path}: {exc}") from None


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


class ImageFolderWithIndex(datasets.ImageFolder):
    """``ImageFolder`` whose items are (image, label, index) so statistics keep stable image ids."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image, label = super().__getitem__(index)
        return image, label, index


def image_folder(path: str | Path, size: int | None = None, channels: int = 3, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, with_index: bool = True, resize: int | None = None,
                 interpolation: str = "bilinear") -> datasets.ImageFolder:
    """The images under ``path`` (class per sub-folder), converted to ``channels``; VebiError on problems."""
    root = Path(path)
    if not root.exists():
        raise VebiError(f"data folder {root} not found")
    if not root.is_dir():
        raise VebiError(f"{root} is not a folder (expected one sub-folder per class)")
    cls = ImageFolderWithIndex if with_index else datasets.ImageFolder
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
    with Image.open(first) as img:
        want = img.size
    for p, _ in dataset.samples[1:]:
        try:
            with Image.open(p) as img:
                got = img.size
        except (UnidentifiedImageError, OSError) as exc:
            raise VebiError(f"cannot read image {p}: {exc}") from None
        if got != want:
            raise VebiError(f"images differ in size ({first}: {want}, {p}: {got}); pass --size to resize")
