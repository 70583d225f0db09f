"""Drawing interpretations with Pillow: single images, strips of crops, a class's grid of averages."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from vebi.io.atomic import write_bytes

if TYPE_CHECKING:  # crops imports torchvision (~2 s), which the report, drawing heatmaps, does not need
    from vebi.interpretation.crops import Interpretation

__all__ = ["PNG_LEVEL", "colored", "crop_strip", "save_pil", "slug", "to_pil", "write_grid", "write_png"]

# zlib level of the pictures vebi draws (interpretations, explanation panels, the report's maps):
# Pillow's default 6 took 2-2.5x the time of 3 for files 1-15 % smaller (the report's 224 px maps 1 %,
# the panels 15 %); the pixels are the same. The an8Flower renders keep 6: their files stay as they were
PNG_LEVEL = 3
_GRID_COLUMNS = 8


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "_"


def to_pil(image: torch.Tensor) -> Image.Image:
    """Values clamped to [0, 1]; three or more channels show the first three as RGB, fewer the first as grey."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    if array.shape[0] < 3:
        return Image.fromarray(array[0].numpy())
    return Image.fromarray(array[:3].permute(1, 2, 0).contiguous().numpy())


def colored(values: np.ndarray, colormap: str) -> Image.Image:
    """An (H, W) array in [0, 1] through matplotlib's ``colormap`` as an RGB picture."""
    from matplotlib import colormaps

    return Image.fromarray(np.ascontiguousarray(colormaps[colormap](values, bytes=True)[..., :3]))


def write_png(path: Path, image: torch.Tensor) -> None:
    save_pil(path, to_pil(image))


def save_pil(path: Path, picture: Image.Image) -> None:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=PNG_LEVEL)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, buffer.getvalue())


def crop_strip(crops: torch.Tensor, size: int) -> Image.Image:
    """The crops side by side, each shown at size x size (pixels repeated, not blurred)."""
    tiles = [to_pil(crop).resize((size, size), Image.Resampling.NEAREST) for crop in crops]
    strip = Image.new(tiles[0].mode, (size * len(tiles), size))
    for i, tile in enumerate(tiles):
        strip.paste(tile, (i * size, 0))
    return strip


def write_grid(path: Path, interp: Interpretation) -> None:
    """The class's averages in |weight| order, each captioned with layer, channel and weight."""
    cell = max(64, *(int(f.average.shape[-1]) for f in interp.features)) if interp.features else 64
    caption, pad = 26, 4
    columns = max(1, min(_GRID_COLUMNS, len(interp.features)))
    rows = max(1, -(-len(interp.features) // columns))
    title = 18
    width = columns * (cell + pad) + pad
    picture = Image.new("RGB", (max(width, 200), title + rows * (cell + caption + pad) + pad), "white")
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    draw.text((pad, 3), f"{interp.class_name}: {len(interp.features)} relevant features", fill="black", font=font)
    for i, feat in enumerate(interp.features):
        x = pad + (i % columns) * (cell + pad)
        y = title + (i // columns) * (cell + caption + pad)
        tile = to_pil(feat.average).convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
        picture.paste(tile, (x, y))
        draw.text((x, y + cell + 1), f"{feat.layer} c{feat.channel}", fill="black", font=font)
        draw.text((x, y + cell + 13), f"w={feat.weight:+.3g}", fill="black", font=font)
    save_pil(path, picture)
