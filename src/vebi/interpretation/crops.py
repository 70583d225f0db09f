"""Interpretation images: the average receptive-field crop of each relevant feature's top images.

For a relevant feature f of layer l with top images i_1..i_K (from the statistics), let
(y_k, x_k) be the location of the maximum of f's map in image i_k. The crop c_k is the
receptive field of unit (y_k, x_k) of layer l, so the unit's field is centred in the crop;
every crop of f has the field's size and is resized to ``size`` x ``size``. The
interpretation of f is

    a_f = sum_k w_k c_k / sum_k w_k,    w_k = 1, or w_k = max(x_{f,i_k}, 0) when ``weighted``.

Clipping: the parts of a field outside the image are padded with ``fill`` (by default the
per-channel mean of the images read), so the unit stays at the crop's centre. Each needed
image is read once from the dataset by index, however many features share it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms.functional import to_tensor
from tqdm.auto import tqdm

from vebi.errors import VebiError
from vebi.interpretation.receptive import ReceptiveField, receptive_fields
from vebi.core.relevance import Relevance
from vebi.core.stats import FeatureStats

__all__ = ["FeatureInterpretation", "Interpretation", "interpret"]

_FLUSH_ELEMENTS = 1 << 20  # crop elements gathered by one indexing operation
_CANVAS_ELEMENTS = 1 << 20  # elements of the canvas holding a chunk of images


@dataclass(frozen=True)
class FeatureInterpretation:
    """One relevant feature of a class and its interpretation image.

    ``average`` is (C, S, S) float32; ``crops`` (n, C, min(h, S), min(w, S)) float32 are the
    crops of its first n top images (rank order) at the field's own resolution, shrunk to at
    most S; ``image_indices`` the dataset indices of all averaged crops (rank order);
    ``receptive_field`` the field's (h, w) in input pixels.
    """

    index: int
    layer: str
    channel: int
    weight: float
    receptive_field: tuple[int, int]
    average: torch.Tensor
    crops: torch.Tensor
    image_indices: tuple[int, ...]

    @property
    def count(self) -> int:
        """Number of crops averaged."""
        return len(self.image_indices)


@dataclass(frozen=True)
class Interpretation:
    """The interpretations of one class's relevant features, in order of |weight| (largest first)."""

    class_index: int
    class_name: str
    features: tuple[FeatureInterpretation, ...]


def interpret(
    relevance: Relevance,
    stats: FeatureStats,
    dataset: Any,
    *,
    model: nn.Module | None = None,
    fields: Mapping[str, ReceptiveField] | None = None,
    top_k: int = 100,
    size: int = 64,
    weighted: bool = False,
    classes: Iterable[int | str] | None = None,
    max_features: int | None = None,
    keep_crops: int = 8,
    fill: float | Sequence[float] | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[Interpretation, ...]:
    """Average receptive-field crops of every relevant feature of ``classes`` (default: all).

    ``dataset[i]`` must return the image the statistics numbered i (a (C, H, W) tensor in
    display range, or a PIL image, alone or first in a tuple), at the statistics' input size.
    Receptive fields come from ``fields`` (by layer) or are traced from ``model``.
    ``max_features`` keeps only the first features of each class; ``keep_crops`` individual
    crops are kept per feature. ``num_workers`` > 0 reads images in DataLoader workers.
    """
    _check_inputs(relevance, stats, top_k, size, keep_crops, max_features)
    class_ids = [relevance.class_index(c) for c in (range(relevance.num_classes) if classes is None else classes)]
    per_class = {j: relevance.relevant(j)[:max_features] for j in class_ids}
    slots = sorted({f.index for feats in per_class.values() for f in feats})
    layers = sorted({stats.space.feature(i).layer for i in slots})
    if not slots:
        return tuple(Interpretation(j, relevance.class_names[j], ()) for j in class_ids)
    fields = _fields(model, fields, layers, stats.input_size)

    plan = _Plan(stats, slots, fields, min(top_k, stats.top_k), weighted)
    sums, kept, image_mean = _accumulate(plan, dataset, keep_crops, num_workers, progress)
    fill_value = _fill(fill, image_mean)
    features = _finish(plan, sums, kept, size, fill_value)

    slot_of = {index: s for s, index in enumerate(slots)}
    images_of = plan.images_by_slot()
    return tuple(
        Interpretation(j, relevance.class_names[j], tuple(
            FeatureInterpretation(f.index, f.layer, f.channel, f.weight, fields[f.layer].size,
                                  *features[slot_of[f.index]], images_of[slot_of[f.index]])
            for f in per_class[j]))
        for j in class_ids)


# --------------------------------------------------------------------------- checks


def _check_inputs(relevance: Relevance, stats: FeatureStats, top_k: int, size: int, keep_crops: int,
                  max_features: int | None) -> None:
    if relevance.space != stats.space:
        raise VebiError("the relevance was fitted on other layers than the statistics hold")
    if tuple(relevance.class_names) != tuple(stats.class_names):
        raise VebiError("the relevance and the statistics have different class names")
    if stats.input_size is None:
        raise VebiError("the statistics do not record the input image size")
    if top_k < 1 or size < 1 or keep_crops < 0 or (max_features is not None and max_features < 1):
        raise VebiError("top_k, size and max_features must be at least 1, keep_crops at least 0")


def _fields(model: nn.Module | None, fields: Mapping[str, ReceptiveField] | None, layers: Sequence[str],
            input_size: tuple[int, int]) -> dict[str, ReceptiveField]:
    if fields is None:
        if model is None:
            raise VebiError("interpret needs the model or the receptive fields of its layers")
        return receptive_fields(model, layers, input_size=input_size)
    missing = [layer for layer in layers if layer not in fields]
    if missing:
        raise VebiError(f"no receptive field given for layer(s) {', '.join(missing)}")
    return dict(fields)


# --------------------------------------------------------------------------- the crops to cut


class _Plan:
    """Every (feature slot, rank) crop: its image, its unclipped box and its averaging weight.

    Arrays are sorted by image (then slot, rank) so each image's crops are contiguous.
    """

    def __init__(self, stats: FeatureStats, slots: Sequence[int], fields: Mapping[str, ReceptiveField],
                 top_k: int, weighted: bool) -> None:
        self.input_size = (int(stats.input_size[0]), int(stats.input_size[1]))  # type: ignore[index]
        index = torch.as_tensor(list(slots), dtype=torch.int64)
        images = stats.top_indices[index, :top_k].cpu()
        yx = stats.top_yx[index, :top_k].cpu()
        values = stats.top_values[index, :top_k].cpu().double()
        valid = images >= 0
        slot, rank = torch.nonzero(valid, as_tuple=True)
        self.slot, self.rank = slot.numpy(), rank.numpy()
        self.image = images[valid].numpy()
        y, x = yx[valid][:, 0].numpy(), yx[valid][:, 1].numpy()
        layer_of = [stats.space.feature(i).layer for i in slots]
        self.layers = sorted(set(layer_of))
        group_of_slot = np.array([self.layers.index(layer) for layer in layer_of], dtype=np.int64)
        self.group = group_of_slot[self.slot]
        rf = [fields[layer] for layer in self.layers]
        start = np.array([f.start for f in rf]).reshape(-1, 2)[self.group]
        stride = np.array([f.stride for f in rf]).reshape(-1, 2)[self.group]
        self.sizes = [f.size for f in rf]
        self.top = start[:, 0] + y * stride[:, 0]
        self.left = start[:, 1] + x * stride[:, 1]
        self.weighted = weighted
        self.weights = self._weights(values[valid].numpy(), weighted)
        self.group_slots = [np.nonzero(group_of_slot == g)[0] for g in range(len(self.layers))]
        local_of_slot = np.zeros(len(slots), dtype=np.int64)
        for members in self.group_slots:
            local_of_slot[members] = np.arange(len(members))
        self.local = local_of_slot[self.slot]
        self.slot_counts = np.bincount(self.slot, minlength=len(slots))
        self.weight_sums = np.bincount(self.slot, weights=self.weights, minlength=len(slots))
        order = np.lexsort((self.rank, self.slot, self.image))
        for name in ("slot", "rank", "image", "group", "local", "top", "left", "weights"):
            setattr(self, name, getattr(self, name)[order])

    def images_by_slot(self) -> list[tuple[int, ...]]:
        """Per slot, the dataset indices of its crops in rank order."""
        order = np.lexsort((self.rank, self.slot))
        bounds = np.cumsum(self.slot_counts)[:-1]
        return [tuple(int(i) for i in part) for part in np.split(self.image[order], bounds)]

    def _weights(self, values: np.ndarray, weighted: bool) -> np.ndarray:
        if not weighted:
            return np.ones(len(values))
        weights = np.clip(values, 0.0, None)
        nothing = np.bincount(self.slot, weights=weights)[self.slot] <= 0
        weights[nothing] = 1.0  # a feature without any positive response: plain average
        return weights

    def _inside_ranges(self, rows: np.ndarray, h: int, w: int) -> tuple[np.ndarray, ...]:
        """Half-open ranges, in crop coordinates, of each row's box that lie inside the image."""
        y0, x0 = np.clip(-self.top[rows], 0, h), np.clip(-self.left[rows], 0, w)
        y1, x1 = np.clip(self.input_size[0] - self.top[rows], 0, h), np.clip(self.input_size[1] - self.left[rows], 0, w)
        return y0, x0, np.maximum(y1, y0), np.maximum(x1, x0)

    def inside(self, rows: np.ndarray, h: int, w: int) -> torch.Tensor:
        """(n, h, w) float: 1 where the box of each row lies inside the image."""
        y0, x0, y1, x1 = (torch.as_tensor(a)[:, None] for a in self._inside_ranges(rows, h, w))
        ys, xs = torch.arange(h), torch.arange(w)
        return (((ys >= y0) & (ys < y1))[:, :, None] & ((xs >= x0) & (xs < x1))[:, None, :]).float()

    def coverage(self, rows: np.ndarray, slots: int, h: int, w: int) -> torch.Tensor:
        """(slots, h, w): per slot, the weighted count of its crops with each pixel inside the image.

        Each crop adds its weight on a rectangle: four corner updates of a difference array,
        then cumulative sums along both axes.
        """
        y0, x0, y1, x1 = self._inside_ranges(rows, h, w)
        weights, local = self.weights[rows], self.local[rows]
        corners = np.zeros((slots, h + 1, w + 1))
        for ys, xs, sign in ((y0, x0, 1), (y0, x1, -1), (y1, x0, -1), (y1, x1, 1)):
            np.add.at(corners, (local, ys, xs), sign * weights)
        return torch.as_tensor(corners.cumsum(axis=1).cumsum(axis=2)[:, :h, :w], dtype=torch.float32)

    def margins(self) -> tuple[int, int, int, int]:
        """Padding (top, left, bottom, right) that puts every box inside the padded image."""
        if len(self.top) == 0:
            return 0, 0, 0, 0
        heights = np.array([s[0] for s in self.sizes])[self.group]
        widths = np.array([s[1] for s in self.sizes])[self.group]
        return (max(0, int(-self.top.min())), max(0, int(-self.left.min())),
                max(0, int((self.top + heights).max()) - self.input_size[0]),
                max(0, int((self.left + widths).max()) - self.input_size[1]))


# --------------------------------------------------------------------------- reading and cropping


def _accumulate(plan: _Plan, dataset: Any, keep_crops: int, num_workers: int,
                progress: bool) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Per layer group: weighted sums of the zero-padded crops per slot and the kept crops, at field size.

    Images are written, a chunk at a time, into a zero canvas with margins wide enough for every
    box; the crops of a chunk are gathered with one indexing operation per layer and summed per
    slot. Returns the sums (n_g, C, h, w), the kept crops (n_g, keep, C, h, w) and the images'
    per-channel mean.
    """
    height, width = plan.input_size
    unique, starts = np.unique(plan.image, return_index=True)
    if not len(unique):
        raise VebiError("the statistics hold no top images for the chosen features")
    if unique[-1] >= len(dataset):
        raise VebiError(f"the statistics refer to image {int(unique[-1])} but the dataset has {len(dataset)} images")
    ends = np.append(starts[1:], len(plan.image))
    pad_top, pad_left, pad_bottom, pad_right = plan.margins()
    canvas_shape = (height + pad_top + pad_bottom, width + pad_left + pad_right)
    inside = (slice(None), slice(pad_top, pad_top + height), slice(pad_left, pad_left + width))
    sums: list[torch.Tensor] = []
    kept: list[torch.Tensor] = []
    canvas = torch.zeros(0)
    pixel_sum = torch.zeros(0, dtype=torch.float64)
    chunk: list[int] = []  # positions in ``unique`` of the images now in the canvas

    def process() -> None:
        rows = np.concatenate([np.arange(starts[n], ends[n]) for n in chunk])
        position = np.repeat(np.arange(len(chunk)), [ends[n] - starts[n] for n in chunk])
        for group, (h, w) in enumerate(plan.sizes):
            mine = plan.group[rows] == group
            # every h x w window of every image in the canvas, as a view: (B, Y, X, C, h, w)
            windows = canvas.unfold(2, h, 1).unfold(3, w, 1).permute(0, 2, 3, 1, 4, 5)
            per_piece = max(1, _FLUSH_ELEMENTS // (h * w * canvas.shape[1]))
            for first in range(0, int(mine.sum()), per_piece):
                piece = rows[mine][first:first + per_piece]
                crops = windows[torch.as_tensor(position[mine][first:first + per_piece]),
                                torch.as_tensor(plan.top[piece] + pad_top),
                                torch.as_tensor(plan.left[piece] + pad_left)]
                local = torch.as_tensor(plan.local[piece])
                keep = torch.as_tensor(plan.rank[piece] < keep_crops)
                if keep.any():
                    kept[group][local[keep], torch.as_tensor(plan.rank[piece])[keep]] = crops[keep]
                if plan.weighted:
                    crops *= torch.as_tensor(plan.weights[piece], dtype=crops.dtype)[:, None, None, None]
                sums[group].index_add_(0, local, crops)
        chunk.clear()

    for n, (index, item) in enumerate(tqdm(_read(dataset, unique, num_workers), total=len(unique), desc="interpret",
                                           unit="image", disable=not progress)):
        image = _as_image(item, index)
        if tuple(image.shape[-2:]) != (height, width):
            raise VebiError(f"dataset image {index} is {image.shape[-2]}x{image.shape[-1]} but the statistics "
                            f"were collected at {height}x{width}; read the data at the same size")
        channels = image.shape[0]
        if not len(canvas):
            per_chunk = max(1, _CANVAS_ELEMENTS // (canvas_shape[0] * canvas_shape[1] * channels))
            canvas = torch.zeros(min(per_chunk, len(unique)), channels, *canvas_shape)
            pixel_sum = torch.zeros(channels, dtype=torch.float64)
            for group, (h, w) in enumerate(plan.sizes):
                count = len(plan.group_slots[group])
                sums.append(torch.zeros(count, channels, h, w))
                kept.append(torch.zeros(count, keep_crops, channels, h, w))
        elif channels != canvas.shape[1]:
            raise VebiError(f"dataset image {index} has {channels} channels, earlier ones {canvas.shape[1]}")
        canvas[len(chunk)][inside] = image
        pixel_sum += image.sum(dim=(1, 2)).double()
        chunk.append(n)
        if len(chunk) == len(canvas):
            process()
    if chunk:
        process()
    return sums, kept, (pixel_sum / (len(unique) * height * width)).float()


def _finish(plan: _Plan, sums: list[torch.Tensor], kept: list[torch.Tensor], size: int,
            fill: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(average (C, S, S), kept crops (n, C, min(h, S), min(w, S))) per slot.

    A zero-padded crop plus ``fill`` times (1 - m), m its box's inside-the-image indicator, is
    the crop padded with ``fill``; so the average is  sums / sum w + fill (1 - sum w m / sum w).
    Padding is done at field size, then every image is resized once.
    """
    out: list[tuple[torch.Tensor, torch.Tensor]] = [None] * len(plan.slot_counts)  # type: ignore[list-item]
    for group, slots in enumerate(plan.group_slots):
        h, w = plan.sizes[group]
        rows = np.nonzero(plan.group == group)[0]
        local = torch.as_tensor(plan.local[rows])
        weight_sum = torch.as_tensor(plan.weight_sums[slots], dtype=torch.float32).clamp_min(1e-30)[:, None, None]
        coverage = plan.coverage(rows, len(slots), h, w) / weight_sum
        averages = _resize(sums[group] / weight_sum[:, None] + fill[None, :, None, None] * (1.0 - coverage[:, None]),
                           (size, size))
        n, keep, channels = kept[group].shape[:3]
        kept_masks = torch.zeros(n, keep, h, w)
        with_rank = plan.rank[rows] < keep
        kept_masks[local[with_rank], torch.as_tensor(plan.rank[rows][with_rank])] = plan.inside(rows[with_rank], h, w)
        padded = kept[group] + fill[None, None, :, None, None] * (1.0 - kept_masks[:, :, None])
        shrunk = (min(h, size), min(w, size))
        crops = _resize(padded.reshape(n * keep, channels, h, w), shrunk).reshape(n, keep, channels, *shrunk)
        for position, slot in enumerate(slots):
            count = min(keep, int(plan.slot_counts[slot]))
            out[slot] = (averages[position].clone(), crops[position, :count].clone())
    return out


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (N, C, h, w) to (N, C, *size), antialiased (when shrinking)."""
    if tuple(images.shape[-2:]) == tuple(size) or images.shape[0] == 0:
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def _read(dataset: Any, indices: np.ndarray, num_workers: int) -> Iterable[tuple[int, Any]]:
    """(index, item) for each index, in order: directly, or through DataLoader workers."""
    if num_workers <= 0:
        for index in indices:
            yield int(index), dataset[int(index)]
        return
    subset = torch.utils.data.Subset(dataset, [int(i) for i in indices])
    loader = torch.utils.data.DataLoader(subset, batch_size=None, num_workers=num_workers, shuffle=False)
    yield from zip((int(i) for i in indices), loader, strict=True)


def _as_image(item: Any, index: int) -> torch.Tensor:
    image = item[0] if isinstance(item, (tuple, list)) else item
    if isinstance(image, Image.Image):
        image = to_tensor(image)
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        raise VebiError(f"dataset item {index} is not an image (a (C, H, W) tensor or a PIL image)")
    return image.detach().to("cpu", torch.float32)


def _fill(fill: float | Sequence[float] | None, mean: torch.Tensor) -> torch.Tensor:
    if fill is None:
        return mean
    values = torch.as_tensor(fill, dtype=torch.float32).flatten()
    if values.numel() == 1:
        return values.expand(mean.numel()).clone()
    if values.numel() != mean.numel():
        raise VebiError(f"fill has {values.numel()} values but the images have {mean.numel()} channels")
    return values
