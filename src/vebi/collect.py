"""The one pass over the data: forward each batch with scoped hooks and stream the statistics."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from vebi.errors import VebiError
from vebi.features import FeatureSpace
from vebi.hooks import forward_hooks, preserved_state
from vebi.layers import LayerSpec, resolve_layers
from vebi.responses import argmax_yx, as_maps, check_response, normalise, pool
from vebi.stats import LABEL_MODES, FeatureStats


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a parameter-free model)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def _unpack(batch: Any, running: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise VebiError("each batch must be (images, labels) or (images, labels, image_indices)")
    images, labels = batch[0], torch.as_tensor(batch[1])
    if len(batch) == 3:
        indices = torch.as_tensor(batch[2], dtype=torch.int64)
    else:
        indices = torch.arange(running, running + images.shape[0], dtype=torch.int64)
    return images, labels, indices


class _LayerReader:
    """Hook callback: pools each hooked output right away (nothing large is kept)."""

    def __init__(self, response: str) -> None:
        self.response = response
        self.pooled: dict[str, torch.Tensor] = {}
        self.yx: dict[str, torch.Tensor] = {}
        self.shapes: dict[str, tuple[int, int]] = {}

    def __call__(self, name: str, out: torch.Tensor) -> None:
        if name in self.pooled:
            raise VebiError(f"layer {name!r} ran twice in one forward pass (a reused module); "
                            "choose the enclosing block instead")
        maps = as_maps(out)
        self.pooled[name] = pool(maps, self.response)
        self.yx[name] = argmax_yx(maps)
        self.shapes[name] = (maps.shape[2], maps.shape[3])

    def clear(self) -> None:
        self.pooled.clear()
        self.yx.clear()


def collect(
    model: nn.Module,
    data: Iterable[Any],
    *,
    layers: LayerSpec = None,
    response: str = "energy",
    labels: str = "true",
    top_k: int = 100,
    class_names: Sequence[str] | None = None,
    progress: bool = True,
    total: int | None = None,
) -> FeatureStats:
    """One pass of ``model`` (in eval mode, no grad) over ``data``, accumulating ``FeatureStats``.

    ``data`` yields (images, labels) or (images, labels, image_indices); without indices the
    images are numbered 0, 1, ... in iteration order, so a loader must not shuffle. Statistics
    live on the model's device. ``labels="predicted"`` regresses on the model's own predictions.
    ``class_names`` defaults to the dataset's ``classes`` or to the number of model outputs.
    The model's training flags, requires_grad and hooks are as before afterwards.
    """
    check_response(response)
    if labels not in LABEL_MODES:
        raise VebiError(f"labels must be one of {', '.join(LABEL_MODES)}, not {labels!r}")
    names = resolve_layers(model, layers)
    device = model_device(model)
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    if class_names is None:
        class_names = getattr(getattr(data, "dataset", data), "classes", None)
    reader = _LayerReader(response)
    stats: FeatureStats | None = None
    running = 0
    if total is None and hasattr(data, "__len__"):
        total = len(data)  # type: ignore[arg-type]
    with preserved_state(model), forward_hooks(model, {n: reader for n in names}), torch.no_grad():
        model.eval()
        for batch in tqdm(data, total=total, desc="collect", unit="batch", disable=not progress):
            images, targets, indices = _unpack(batch, running)
            running += images.shape[0]
            reader.clear()
            logits = model(images.to(device=device, dtype=dtype))
            missing = [n for n in names if n not in reader.pooled]
            if missing:
                raise VebiError(f"layer(s) {', '.join(missing)} did not run in the forward pass")
            if stats is None:
                if class_names is None:
                    class_names = [str(i) for i in range(logits.shape[1])]
                space = FeatureSpace(tuple(names), tuple(reader.pooled[n].shape[1] for n in names))
                stats = FeatureStats(space, tuple(class_names), response, labels, top_k,
                                     dict(reader.shapes), (images.shape[2], images.shape[3]), device)
            predictions = logits.argmax(dim=1)
            if labels == "predicted":
                if logits.shape[1] != stats.num_classes:
                    raise VebiError(f"the model has {logits.shape[1]} outputs but there are "
                                    f"{stats.num_classes} classes; predicted labels need one output per class")
                target = predictions
            else:
                target = targets.to(device)
            x = normalise([reader.pooled[n] for n in names])
            yx = torch.cat([reader.yx[n] for n in names], dim=1)
            stats.update(x, target, indices, yx, predictions if logits.shape[1] == stats.num_classes else None)
    if stats is None:
        raise VebiError("the data yielded no images")
    return stats
