"""The PNG panel of an explanation: each picture in its cell, in the heatmap colours, titles inside their column."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from vebi.explanation.panel import CELL, HEATMAP_COLORMAP, cell_box, panel_image, write_panel
from vebi.explanation.result import ExplainedFeature, Explanation


def explanation(heatmaps, combined, interpretations=None, layer="features.relu5", target=1):
    features = tuple(
        ExplainedFeature(rank=i, index=i, layer=layer, channel=i, response=1.0, weight=0.5, contribution=0.5,
                         share=1 / len(heatmaps), heatmap=h,
                         interpretation=None if interpretations is None else str(interpretations[i]))
        for i, h in enumerate(heatmaps))
    return Explanation(predicted=1, predicted_name="one", score=0.9, target=target, target_name="class t",
                       target_score=0.5, features=features, combined=combined)


def colour(value):
    return np.array(colormaps[HEATMAP_COLORMAP](value, bytes=True)[:3], dtype=int)


def centre(panel, row, column, dx=0, dy=0):
    left, top, right, bottom = cell_box(row, column)
    return np.array(panel.getpixel(((left + right) // 2 + dx, (top + bottom) // 2 + dy)), dtype=int)


def test_every_picture_lands_in_its_cell_in_the_heatmap_colours(tmp_path):
    image = torch.zeros(3, 50, 50)
    image[0] = 1.0  # red
    halves = torch.zeros(50, 50)
    halves[:, :25] = 1.0
    interp = tmp_path / "interp.png"
    Image.new("RGB", (16, 16), (0, 128, 255)).save(interp)
    e = explanation([torch.full((50, 50), 0.25), torch.full((50, 50), 0.75)], halves, [interp, interp])
    panel = panel_image(image, e)

    assert panel.size == (cell_box(1, 3)[2] + cell_box(0, 0)[0], cell_box(1, 3)[3] + cell_box(0, 0)[0])
    assert centre(panel, 0, 0).tolist() == [255, 0, 0]
    quarter = CELL // 4
    assert np.abs(centre(panel, 0, 1, dx=-quarter) - colour(1.0)).max() <= 1  # the combined map's left half
    assert np.abs(centre(panel, 0, 1, dx=quarter) - colour(0.0)).max() <= 1
    assert np.abs(centre(panel, 0, 2) - colour(0.25)).max() <= 1
    assert np.abs(centre(panel, 0, 3) - colour(0.75)).max() <= 1
    assert centre(panel, 1, 3).tolist() == [0, 128, 255]
    assert centre(panel, 1, 0).tolist() == [255, 255, 255]  # no interpretation under the image

    write_panel(tmp_path / "p.png", image, e)
    with Image.open(tmp_path / "p.png") as saved:
        assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(panel))


def test_without_interpretations_one_row_and_a_grey_image_is_shown_grey():
    grey = torch.full((1, 40, 40), 0.5)
    panel = panel_image(grey, explanation([torch.zeros(40, 40)], torch.zeros(40, 40)))
    assert panel.height == cell_box(0, 0)[3] + cell_box(0, 0)[0]
    assert centre(panel, 0, 0).tolist() == [128, 128, 128]


def test_a_wide_image_keeps_its_shape_in_the_cell():
    wide = torch.ones(3, 30, 60)
    panel = np.asarray(panel_image(wide, explanation([], torch.zeros(30, 60))))
    left, top, right, bottom = cell_box(0, 0)
    cell = panel[top:bottom, left:right]
    dark_rows = np.flatnonzero((cell < 250).any(axis=(1, 2)))
    assert dark_rows.size == 0  # a white image on white: nothing drawn in the cell
    combined = panel[top:bottom, cell_box(0, 1)[0]:cell_box(0, 1)[2]]
    painted = np.flatnonzero((combined < 250).any(axis=(1, 2)))  # jet(0) is dark blue
    assert painted.size == pytest.approx(CELL // 2, abs=1) and painted[0] == 0  # right under the title


def test_long_titles_stay_within_their_column():
    name = "features.denseblock4.denselayer16.conv2." * 3
    e = explanation([torch.zeros(20, 20)] * 2, torch.zeros(20, 20), layer=name)
    panel = np.asarray(panel_image(torch.zeros(3, 20, 20), e))
    gap = cell_box(0, 1)[0] - cell_box(0, 0)[2]
    for column in (2, 3):
        left, top, right, _ = cell_box(0, column)
        band = panel[:top, left - gap // 2:right + gap // 2]
        inked = np.flatnonzero((band < 200).any(axis=(0, 2)))
        assert inked.size and inked[0] > 0 and inked[-1] < band.shape[1] - 1  # drawn, and not cut at either edge
    title_band = panel[:cell_box(0, 0)[1], cell_box(0, 0)[0]:cell_box(0, 0)[2]]
    assert (title_band < 200).any()  # the image's title: prediction and the explained class
