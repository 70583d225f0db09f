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

import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.transforms.functional import to_tensor
from tqdm.auto import tqdm

from vebi.atomic import atomic_path, write_bytes, write_text
from vebi.errors import VebiError
from vebi.receptive import ReceptiveField, receptive_fields
from vebi.relevance import Relevance
from vebi.stats import FeatureStats

__all__ = ["FeatureInterpretation", "Interpretation", "grid_file", "interpret", "load_interpretations", "save_interpretations"]

_FLUSH_ELEMENTS = 1 << 23  # crop elements gathered before one batched resize


@dataclass(frozen=True)
class FeatureInterpretation:
    """One relevant feature of a class and its interpretation image.

    ``average`` is (C, S, S) float32; ``crops`` (n, C, S, S) float32 are the crops of its
    first n top images (rank order), ``image_indices`` the dataset indices of all averaged
    crops (rank order), ``receptive_field`` the field's (height, width) in input pixels.
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
    fields = _fields(model, fields, layers, stats.input_size)

    plan = _Plan(stats, slots, fields, min(top_k, stats.top_k), weighted)
    sums, kept, fill_value = _accumulate(plan, dataset, size, keep_crops, fill, num_workers, progress)

    features: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for s, index in enumerate(slots):
        weight_sum = float(plan.weights[plan.slot == s].sum())
        mean = sums[s] / weight_sum if weight_sum > 0 else torch.zeros_like(sums[s])
        average = mean[:-1] + fill_value[:, None, None] * (1.0 - mean[-1:])
        n = min(keep_crops, int((plan.slot == s).sum()))
        crops = kept[s, :n, :-1] + fill_value[None, :, None, None] * (1.0 - kept[s, :n, -1:])
        features[index] = (average, crops)

    result = []
    for j in class_ids:
        items = []
        for rf in per_class[j]:
            s = slots.index(rf.index)
            field = fields[rf.layer]
            average, crops = features[rf.index]
            rows = np.nonzero(plan.slot == s)[0]
            indices = tuple(int(i) for i in plan.image[rows[np.argsort(plan.rank[rows], kind="stable")]])
            items.append(FeatureInterpretation(rf.index, rf.layer, rf.channel, rf.weight, field.size, average, crops, indices))
        result.append(Interpretation(j, relevance.class_names[j], tuple(items)))
    return tuple(result)


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
        return receptive_fields(model, layers, input_size=input_size) if layers else {}
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
        self.group = np.array([self.layers.index(layer_of[s]) for s in self.slot], dtype=np.int64)
        rf = [fields[layer] for layer in self.layers]
        start = np.array([f.start for f in rf]).reshape(-1, 2)[self.group]
        stride = np.array([f.stride for f in rf]).reshape(-1, 2)[self.group]
        self.sizes = [f.size for f in rf]
        self.top = start[:, 0] + y * stride[:, 0]
        self.left = start[:, 1] + x * stride[:, 1]
        self.weights = self._weights(values[valid].numpy(), weighted)
        order = np.lexsort((self.rank, self.slot, self.image))
        for name in ("slot", "rank", "image", "group", "top", "left", "weights"):
            setattr(self, name, getattr(self, name)[order])

    def _weights(self, values: np.ndarray, weighted: bool) -> np.ndarray:
        if not weighted:
            return np.ones(len(values))
        weights = np.clip(values, 0.0, None)
        for s in np.unique(self.slot):
            mine = self.slot == s
            if weights[mine].sum() <= 0:
                weights[mine] = 1.0  # no positive response: plain average
        return weights

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


def _accumulate(plan: _Plan, dataset: Any, size: int, keep_crops: int, fill: float | Sequence[float] | None,
                num_workers: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted sums of the resized crops per slot and the kept crops, both with a validity channel.

    Crops are cut from the image zero-padded with an extra all-ones channel, so after resizing
    channel C holds the share of each pixel that lies inside the image; padding with ``fill``
    is applied at the end (resizing is linear, so this equals padding before resizing).
    """
    height, width = plan.input_size
    unique, starts = np.unique(plan.image, return_index=True)
    if len(unique) and (unique[-1] >= len(dataset)):
        raise VebiError(f"the statistics refer to image {int(unique[-1])} but the dataset has {len(dataset)} images")
    ends = np.append(starts[1:], len(plan.image))
    pad_top, pad_left, pad_bottom, pad_right = plan.margins()
    num_slots = int(plan.slot.max()) + 1 if len(plan.slot) else 0
    sums: torch.Tensor | None = None
    kept: torch.Tensor | None = None
    pixel_sum: torch.Tensor | None = None
    pending: dict[int, list[tuple[torch.Tensor, int]]] = {g: [] for g in range(len(plan.layers))}

    def flush(group: int) -> None:
        entries = pending[group]
        if not entries:
            return
        batch = torch.stack([crop for crop, _ in entries]).double()
        rows = np.array([row for _, row in entries])
        if batch.shape[-2:] != (size, size):
            batch = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        weights = torch.as_tensor(plan.weights[rows], dtype=torch.float64)
        sums.index_add_(0, torch.as_tensor(plan.slot[rows]), batch * weights[:, None, None, None])
        keep = plan.rank[rows] < keep_crops
        if keep.any():
            kept[torch.as_tensor(plan.slot[rows][keep]), torch.as_tensor(plan.rank[rows][keep])] = (
                batch[torch.as_tensor(keep)].float())
        entries.clear()

    loaded = 0
    for n, (index, item) in enumerate(tqdm(_read(dataset, unique, num_workers), total=len(unique), desc="interpret",
                                           unit="image", disable=not progress)):
        image = _as_image(item, index)
        if tuple(image.shape[-2:]) != (height, width):
            raise VebiError(f"dataset image {index} is {image.shape[-2]}x{image.shape[-1]} but the statistics "
                            f"were collected at {height}x{width}; read the data at the same size")
        channels = image.shape[0]
        if sums is None:
            sums = torch.zeros(num_slots, channels + 1, size, size, dtype=torch.float64)
            kept = torch.zeros(num_slots, keep_crops, channels + 1, size, size, dtype=torch.float32)
            pixel_sum = torch.zeros(channels, dtype=torch.float64)
        pixel_sum += image.double().sum(dim=(1, 2))
        loaded += 1
        padded = image.new_zeros(channels + 1, height + pad_top + pad_bottom, width + pad_left + pad_right)
        padded[:channels, pad_top:pad_top + height, pad_left:pad_left + width] = image
        padded[channels, pad_top:pad_top + height, pad_left:pad_left + width] = 1.0
        for row in range(starts[n], ends[n]):
            group = int(plan.group[row])
            h, w = plan.sizes[group]
            top, left = int(plan.top[row]) + pad_top, int(plan.left[row]) + pad_left
            pending[group].append((padded[:, top:top + h, left:left + w], row))
            if len(pending[group]) * (channels + 1) * h * w >= _FLUSH_ELEMENTS:
                flush(group)
    for group in pending:
        flush(group)
    if sums is None:
        return torch.zeros(0, 1, size, size), torch.zeros(0, keep_crops, 1, size, size), torch.zeros(0)
    fill_value = _fill(fill, pixel_sum / max(loaded * height * width, 1), sums.shape[1] - 1)
    return sums.float(), kept, fill_value


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


def _fill(fill: float | Sequence[float] | None, mean: torch.Tensor, channels: int) -> torch.Tensor:
    if fill is None:
        return mean.float()
    values = torch.as_tensor(fill, dtype=torch.float32).flatten()
    if values.numel() == 1:
        return values.expand(channels).clone()
    if values.numel() != channels:
        raise VebiError(f"fill has {values.numel()} values but the images have {channels} channels")
    return values


# --------------------------------------------------------------------------- saving and loading

INTERPRETATION_DIR = "interpretation"
SCHEMA_VERSION = 1
_GRID_COLUMNS = 8


def save_interpretations(interpretations: Sequence[Interpretation], run_dir: str | os.PathLike[str],
                         settings: Mapping[str, Any] | None = None) -> Path:
    """Write ``run_dir/interpretation/`` and return it; the folder is replaced as a whole.

    Per class ``CCC-name.png`` (grid of its features' averages, |weight| order) and folder
    ``CCC-name/`` with ``RRR-layer-cN.png`` (average) and ``RRR-layer-cN-crops.png`` (kept crops
    in a row) per feature; ``interpretation.json`` (metadata, ``settings``) and
    ``interpretation.safetensors`` (the exact tensors, read back by ``load_interpretations``).
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{INTERPRETATION_DIR}.", dir=run))
    try:
        tensors: dict[str, torch.Tensor] = {}
        classes = []
        for interp in interpretations:
            folder = grid_file(interp).removesuffix(".png")
            entries = []
            for rank, feat in enumerate(interp.features):
                stem = f"{folder}/{rank:03d}-{_slug(feat.layer)}-c{feat.channel}"
                _write_png(staging / f"{stem}.png", feat.average)
                key = f"feature{feat.index}"  # a feature relevant to several classes is stored once
                tensors[f"{key}.average"] = feat.average
                tensors[f"{key}.crops"] = feat.crops
                crops_png = None
                if feat.crops.shape[0]:
                    crops_png = f"{stem}-crops.png"
                    _write_png(staging / crops_png, torch.cat(list(feat.crops), dim=2))
                entries.append({
                    "index": feat.index, "layer": feat.layer, "channel": feat.channel, "weight": feat.weight,
                    "receptive_field": list(feat.receptive_field), "count": feat.count,
                    "image_indices": list(feat.image_indices), "average": f"{stem}.png", "crops": crops_png,
                })
            grid = grid_file(interp)
            _write_grid(staging / grid, interp)
            classes.append({"index": interp.class_index, "name": interp.class_name, "grid": grid, "features": entries})
        with atomic_path(staging / "interpretation.safetensors") as tmp:
            save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}, str(tmp))
        write_text(staging / "interpretation.json", json.dumps(
            {"schema": SCHEMA_VERSION, "settings": dict(settings or {}), "classes": classes}, indent=2) + "\n")
        target = run / INTERPRETATION_DIR
        _replace_folder(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def load_interpretations(run_dir: str | os.PathLike[str]) -> tuple[Interpretation, ...]:
    """The interpretations saved by ``save_interpretations`` under ``run_dir``."""
    folder = Path(run_dir) / INTERPRETATION_DIR
    meta_path = folder / "interpretation.json"
    if not meta_path.is_file():
        raise VebiError(f"{meta_path} not found: run `vebi interpret` first")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VebiError(f"{meta_path} is not valid JSON ({exc})") from None
    if meta.get("schema") != SCHEMA_VERSION:
        raise VebiError(f"{meta_path} has schema version {meta.get('schema')}, this vebi reads {SCHEMA_VERSION}")
    try:
        tensors = load_file(str(folder / "interpretation.safetensors"))
    except Exception as exc:  # safetensors raises its own error types
        raise VebiError(f"{folder / 'interpretation.safetensors'} is not readable ({exc})") from None
    result = []
    for cls in meta["classes"]:
        features = []
        for f in cls["features"]:
            key = f"feature{int(f['index'])}"
            if f"{key}.average" not in tensors:
                raise VebiError(f"{folder / 'interpretation.safetensors'} does not match {meta_path}")
            features.append(FeatureInterpretation(
                int(f["index"]), f["layer"], int(f["channel"]), float(f["weight"]),
                (int(f["receptive_field"][0]), int(f["receptive_field"][1])),
                tensors[f"{key}.average"], tensors[f"{key}.crops"], tuple(int(i) for i in f["image_indices"])))
        result.append(Interpretation(int(cls["index"]), cls["name"], tuple(features)))
    return tuple(result)


def grid_file(interpretation: Interpretation) -> str:
    """File name of a class's grid image inside the interpretation folder."""
    return f"{interpretation.class_index:03d}-{_slug(interpretation.class_name)}.png"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "_"


def _to_pil(image: torch.Tensor) -> Image.Image:
    """Values clamped to [0, 1]; three or more channels show the first three as RGB, fewer the first as grey."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    if array.shape[0] < 3:
        return Image.fromarray(array[0].numpy())
    return Image.fromarray(array[:3].permute(1, 2, 0).contiguous().numpy())


def _write_png(path: Path, image: torch.Tensor) -> None:
    _save_pil(path, _to_pil(image))


def _save_pil(path: Path, picture: Image.Image) -> None:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, buffer.getvalue())


def _write_grid(path: Path, interp: Interpretation) -> None:
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
        tile = _to_pil(feat.average).convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
        picture.paste(tile, (x, y))
        draw.text((x, y + cell + 1), f"{feat.layer} c{feat.channel}", fill="black", font=font)
        draw.text((x, y + cell + 13), f"w={feat.weight:+.3g}", fill="black", font=font)
    _save_pil(path, picture)


def _replace_folder(new: Path, target: Path) -> None:
    """Put ``new`` at ``target``; an existing ``target`` is kept until the new one is in place."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, old / target.name)
    try:
        os.replace(new, target)
    except OSError:
        if old is not None:
            os.replace(old / target.name, target)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
