"""A PNG panel of one explanation: the image with its prediction, the method's map, and per
feature its heatmap above its interpretation (when the run has one).

Drawn with Pillow on a fixed grid (cells of :data:`CELL` pixels, a title above each): a
matplotlib figure of the same panel spent most of ``vebi explain``'s time laying out axes that
show no axis.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from vebi.explanation.result import Explanation
from vebi.interpretation.drawing import colored, save_pil, to_pil

__all__ = ["CELL", "HEATMAP_COLORMAP", "cell_box", "panel_image", "write_panel"]

CELL = 200  # side of each picture in pixels
HEATMAP_COLORMAP = "jet"
_GAP, _MARGIN, _TITLE, _FONT = 40, 20, 34, 12  # pixels: between cells, around them, above each, text size


def cell_box(row: int, column: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the picture cell at ``row``, ``column`` of a panel."""
    left = _MARGIN + column * (CELL + _GAP)
    top = _TITLE + row * (CELL + _TITLE + _GAP // 2)
    return left, top, left + CELL, top + CELL


def panel_image(image: Tensor, explanation: Explanation) -> Image.Image:
    """The panel of ``explanation`` for ``image`` (C, H, W) in [0, 1] as an RGB picture."""
    e = explanation
    links = [f.interpretation for f in e.features]
    rows, columns = (2 if any(links) else 1), 2 + len(e.features)
    right, bottom = cell_box(rows - 1, columns - 1)[2:]
    panel = Image.new("RGB", (right + _MARGIN, bottom + _MARGIN), "white")
    draw = ImageDraw.Draw(panel)

    def put(row: int, column: int, picture: Image.Image, title: str, resample: Image.Resampling) -> None:
        box = cell_box(row, column)
        scale = CELL / max(picture.size)  # the longer side fills the cell
        if scale != 1:
            picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                                     resample)
        panel.paste(picture, (box[0] + (CELL - picture.width) // 2, box[1]))  # under its title
        _title(draw, title, (box[0] + box[2]) // 2, box[1] - 4)

    title = f"{e.predicted_name or e.predicted} ({e.score:.2f})"
    if e.target != e.predicted:
        title += f"\nexplaining {e.target_name}"
    put(0, 0, to_pil(image).convert("RGB"), title, Image.Resampling.LANCZOS)
    put(0, 1, _heatmap(e.combined), f"{e.method}: combined" if e.features else e.method, Image.Resampling.BILINEAR)
    for i, f in enumerate(e.features):
        put(0, 2 + i, _heatmap(f.heatmap), f"{f.layer} c{f.channel}\nr={f.contribution:.3g} ({f.share:.0%})",
            Image.Resampling.BILINEAR)
        if links[i]:
            with Image.open(links[i]) as interp:
                put(1, 2 + i, interp.convert("RGB"), "interpretation", Image.Resampling.LANCZOS)
    return panel


def write_panel(path: str | Path, image: Tensor, explanation: Explanation) -> None:
    """Write the panel of ``explanation`` for ``image`` (C, H, W) in [0, 1] to ``path`` atomically."""
    save_pil(Path(path), panel_image(image, explanation))


def _heatmap(values: Tensor) -> Image.Image:
    """(H, W) in [0, 1] through :data:`HEATMAP_COLORMAP`."""
    return colored(np.clip(values.detach().float().cpu().numpy(), 0, 1), HEATMAP_COLORMAP)


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _title(draw: ImageDraw.ImageDraw, text: str, centre: int, bottom: int) -> None:
    """``text`` centred above ``bottom``; a line wider than a cell and its gap gets a smaller font,
    then loses its middle."""
    width = CELL + _GAP - 4
    lines = text.split("\n")
    size = _FONT
    while size > 8 and max(draw.textlength(line, font=_font(size)) for line in lines) > width:
        size -= 1
    font = _font(size)
    fitted = []
    for line in lines:
        cut = len(line)
        while cut > 4 and draw.textlength(_elide(line, cut), font=font) > width:
            cut -= 1
        fitted.append(_elide(line, cut))
    draw.multiline_text((centre, bottom), "\n".join(fitted), font=font, fill="black", anchor="md", align="center",
                        spacing=2)


def _elide(line: str, keep: int) -> str:
    """``line`` with its middle replaced by an ellipsis so that ``keep`` characters are left."""
    if keep >= len(line):
        return line
    head = (keep - 1) // 2
    return line[:head] + "\u2026" + line[len(line) - (keep - 1 - head):]
