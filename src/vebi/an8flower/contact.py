"""Contact sheet of a generated dataset: a row per class, each example next to its ground-truth mask."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import binary_erosion

from vebi.an8flower.dataset import load_mask, read_manifest
from vebi.io.atomic import atomic_path
from vebi.errors import VebiError

LABEL_WIDTH = 150
GAP = 4


def mask_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with everything outside ``mask`` dimmed to grey and the mask's outline in white."""
    grey = image.mean(axis=-1, keepdims=True) * 0.3 + 20.0
    out = np.where(mask[..., None], image.astype(np.float64), grey)
    outline = mask & ~binary_erosion(mask)
    out[outline] = 255.0
    return np.clip(out, 0, 255).astype(np.uint8)


def contact_sheet(
    root: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    per_class: int = 4,
    split: str = "test",
) -> Path:
    """Write a PNG with ``per_class`` examples of every class (image, then image with its mask)."""
    root = Path(root)
    data = read_manifest(root)
    if split not in ("train", "test"):
        raise VebiError(f"split must be 'train' or 'test', got '{split}'")
    if per_class < 1:
        raise VebiError(f"per_class must be at least 1, got {per_class}")
    size = int(data["config"]["size"])
    classes = data["classes"]
    chosen: dict[str, list[dict]] = {c: [] for c in classes}
    for record in data["images"]:
        if record["split"] == split and len(chosen[record["class"]]) < per_class:
            if (root / record["image"]).is_file() and (root / record["mask"]).is_file():
                chosen[record["class"]].append(record)
    if not any(chosen.values()):
        raise VebiError(f"{root} has no rendered '{split}' images yet")
    tile = size + GAP
    sheet = Image.new("RGB", (LABEL_WIDTH + per_class * 2 * tile, len(classes) * tile + GAP), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row, name in enumerate(classes):
        y = GAP + row * tile
        draw.text((6, y + size // 2 - 6), name, fill=(0, 0, 0))
        for col, record in enumerate(chosen[name]):
            image = np.asarray(Image.open(root / record["image"]).convert("RGB"))
            mask = load_mask(root / record["mask"])
            x = LABEL_WIDTH + col * 2 * tile
            sheet.paste(Image.fromarray(image), (x, y))
            sheet.paste(Image.fromarray(mask_overlay(image, mask)), (x + tile, y))
    output = Path(output)
    with atomic_path(output) as tmp:
        sheet.save(tmp, format="PNG")
    return output
