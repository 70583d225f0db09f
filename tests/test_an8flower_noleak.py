"""No evidence of the class outside the designated parts: exactly (pixel comparison) and statistically."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_dilation
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import StratifiedKFold, cross_val_score

from vebi.an8flower import DOUBLE_12C, PART_LABELS, PARTS, SINGLE_6C, sample_params
from vebi.an8flower.render import render
from vebi.an8flower.scene import render_threads

SIZE = 32
NEIGHBOURS = np.ones((3, 3), bool)  # a pixel and its 8 neighbours


@pytest.fixture(autouse=True)
def one_render_thread():
    with render_threads(1):  # hundreds of tiny renders: a second thread would mostly wait
        yield


def test_changing_the_class_changes_only_pixels_at_the_designated_part():
    """Same seed, every class: pixels differ only where the centre is visible or within the 1-pixel
    footprint of the box pixel filter around it (anti-aliased edge pixels partly show the centre)."""
    for seed in range(3):
        renders = [render(sample_params(SINGLE_6C, c, np.random.default_rng([21, seed])), 48, 9) for c in range(6)]
        mask = renders[0].mask(SINGLE_6C.designated)
        for r in renders[1:]:
            np.testing.assert_array_equal(r.labels, renders[0].labels)  # the geometry does not depend on the class
        changed = np.zeros_like(mask)
        for r in renders[1:]:
            changed |= np.any(r.image != renders[0].image, axis=-1)
        assert changed[mask].mean() > 0.9  # the class is visible ...
        assert not (changed & ~binary_dilation(mask, NEIGHBOURS)).any()  # ... and nowhere else


def features(image: np.ndarray, labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Colour histogram of the kept pixels, an 8 x 8 colour thumbnail with the rest zeroed, and each
    part's mean colour and kept area: the evidence a leak through colours, layout or geometry would use."""
    img = image.astype(np.float64) / 255.0
    q = (img * 3.999).astype(np.int64)
    codes = q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]
    hist = np.bincount(codes[keep], minlength=64) / max(int(keep.sum()), 1)
    cell = SIZE // 8
    thumb = (img * keep[..., None]).reshape(8, cell, 8, cell, 3).mean(axis=(1, 3)).ravel()
    per_part = []
    for part in PARTS:
        m = (labels == PART_LABELS[part]) & keep
        per_part += [*(img[m].mean(0) if m.any() else np.zeros(3)), m.mean()]
    return np.concatenate([hist, thumb, per_part])


def cv_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    return float(cross_val_score(RandomForestClassifier(100, random_state=0), x, y, cv=folds).mean())


@pytest.mark.parametrize("variant,per_class", [(SINGLE_6C, 30), (DOUBLE_12C, 15)])
def test_classifier_without_designated_pixels_is_at_chance(variant, per_class):
    """A random forest on everything but the designated parts' pixels (dilated by the 1-pixel filter
    footprint) is at chance; the same forest with those pixels finds the class (the test can fail)."""
    classes = len(variant.classes)
    n = classes * per_class
    renders = [render(sample_params(variant, i % classes, np.random.default_rng([7, i])), SIZE, 4) for i in range(n)]
    y = np.arange(n) % classes
    hidden = np.stack([features(r.image, r.labels, ~binary_dilation(r.mask(variant.designated), NEIGHBOURS)) for r in renders])
    everything = np.stack([features(r.image, r.labels, np.ones(r.labels.shape, bool)) for r in renders])
    chance = 1.0 / classes
    sd = np.sqrt(chance * (1 - chance) / n)
    assert cv_accuracy(hidden, y) < chance + 4 * sd
    assert cv_accuracy(everything, y) > 0.6
