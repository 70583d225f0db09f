"""The one pass over the data: forward each batch with scoped hooks and stream the statistics."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from vebi.core import distributed, memory
from vebi.io.checkpoint import Checkpointer
from vebi.errors import VebiError
from vebi.core.features import FeatureSpace
from vebi.hooks import forward_hooks, preserve_model
from vebi.layers import LayerSpec, named_layers, resolve_layers
from vebi.models import model_device
from vebi.core.relevance import positions
from vebi.core.responses import argmax_yx, as_maps, check_response, normalise, pool
from vebi.core.stats import LABEL_MODES, FeatureStats, StatsConfig


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
    outputs: Sequence[int] | None = None,
    progress: bool = True,
    total: int | None = None,
    gram_dtype: torch.dtype = torch.float64,
    memory_budget: str | int | None = None,
    resume: FeatureStats | None = None,
    on_batch: Callable[[FeatureStats], None] | None = None,
) -> FeatureStats:
    """One pass of ``model`` (in eval mode, no grad) over ``data``, accumulating ``FeatureStats``.

    ``data`` yields (images, labels) or (images, labels, image_indices); without indices the
    images are numbered 0, 1, ... in iteration order, so a loader must not shuffle. Statistics
    live on the model's device and nothing is read back from it per batch. ``labels="predicted"``
    regresses on the model's own predictions. ``outputs[c]`` is the model output of class c
    (:class:`vebi.classes.ClassMap`; default: output c): a prediction of another output counts as
    wrong, and predicted labels are the highest-scoring of the classes' outputs. ``class_names`` defaults to the dataset's
    ``classes`` or to the number of model outputs. Before the statistics are allocated (after the
    first forward pass, which gives m) their memory is checked against ``memory_budget`` (bytes or
    '8GiB'; default $VEBI_MEMORY_BUDGET or the free memory), see ``vebi.core.memory``. ``resume``
    continues earlier statistics with the images of ``data``; ``on_batch(stats)`` runs after every
    batch (checkpoints). The model's training flags, requires_grad and hooks are as before afterwards.
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
    stats = resume
    running = resume.count if resume is not None else 0
    if total is None and hasattr(data, "__len__"):
        total = len(data)  # type: ignore[arg-type]
    bar = tqdm(data, total=total, desc="collect", unit="batch", disable=not progress)
    with (preserve_model(model, freeze=False, no_inplace=False), forward_hooks(named_layers(model, names), reader),
          torch.no_grad()):
        for batch in bar:
            images, targets, indices = _unpack(batch, running)
            running += images.shape[0]
            reader.clear()
            logits = forward_scores(model, images.to(device=device, dtype=dtype, non_blocking=True))
            missing = [n for n in names if n not in reader.pooled]
            if missing:
                raise VebiError(f"layer(s) {', '.join(missing)} did not run in the forward pass")
            space = FeatureSpace(tuple(names), tuple(reader.pooled[n].shape[1] for n in names))
            if stats is None:
                if class_names is None:
                    class_names = [str(i) for i in range(logits.shape[1])]
                _check_memory(space.size, len(class_names), top_k, images.shape[0], gram_dtype, device,
                              memory_budget, on_batch is not None, bar)
                config = StatsConfig(space, tuple(class_names), response, labels, top_k, dict(reader.shapes),
                                     (images.shape[2], images.shape[3]), gram_dtype)
                stats = FeatureStats(config, device)
            elif stats.space != space:
                raise VebiError(f"the statistics to continue have features {stats.space.to_dict()}, "
                                f"this model gives {space.to_dict()}")
            predictions = logits.argmax(dim=1)
            if outputs is not None:
                if max(outputs) >= logits.shape[1]:
                    bad = [stats.class_names[c] for c, o in enumerate(outputs) if o >= logits.shape[1]]
                    raise VebiError(f"class(es) {', '.join(bad[:5])} map to model outputs beyond its "
                                    f"{logits.shape[1]} outputs")
                predictions = positions(predictions, tuple(outputs))
            elif logits.shape[1] != stats.num_classes:
                predictions = None
            if labels == "predicted":
                if predictions is None:
                    raise VebiError(f"the model has {logits.shape[1]} outputs but there are "
                                    f"{stats.num_classes} classes; predicted labels need a class map (--classes)")
                target = predictions if outputs is None else logits[:, list(outputs)].argmax(dim=1)
            else:
                target = targets  # range-checked on the host by update() before it moves
            x = normalise([reader.pooled[n] for n in names])
            yx = torch.cat([reader.yx[n] for n in names], dim=1)
            stats.update(x, target, indices, yx, predictions)
            if on_batch is not None:
                on_batch(stats)
    if stats is None:
        raise VebiError("the data yielded no images")
    return stats


def forward_scores(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``model(images)``, checked to be class scores (B, C); an error inside the model's forward, or
    output of another shape, becomes a VebiError naming it."""
    try:
        out = model(images)
    except VebiError:
        raise
    except Exception as exc:  # the user's model: any error of its forward is a problem of that model
        first = (str(exc).strip().splitlines() or [""])[0]
        raise VebiError(f"the model's forward pass failed on a batch of shape {tuple(images.shape)}: "
                        f"{type(exc).__name__}: {first}") from None
    if not isinstance(out, torch.Tensor):
        raise VebiError(f"the model returned {type(out).__name__}, not a tensor of class scores (batch, classes)")
    if out.dim() != 2 or out.shape[0] != images.shape[0]:
        raise VebiError(f"the model's output has shape {tuple(out.shape)} for {images.shape[0]} images; vebi "
                        "needs class scores of shape (batch, classes)")
    return out


def _check_finite_model(model: nn.Module) -> None:
    bad = [name for name, t in (*model.named_parameters(), *model.named_buffers())
           if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise VebiError(f"the model has NaN or infinite values in {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")


def _check_finite_stats(stats: FeatureStats) -> None:
    """NaN or infinite responses (an overflow in the model) reach G = sum x^T x and B = sum x^T L; checked once
    at the end, so that the loop reads nothing back from the device."""
    if not (torch.isfinite(stats.gram).all() and torch.isfinite(stats.cross).all()):
        raise VebiError("the model gives NaN or infinite responses at the collected layers; no statistics were saved")


def _check_memory(m: int, classes: int, top_k: int, batch_size: int, gram_dtype: torch.dtype,
                  device: torch.device, budget: str | int | None, checkpoint: bool, bar: Any) -> None:
    est = memory.estimate(m, classes, top_k, batch_size, gram_dtype=gram_dtype,
                          world_size=distributed.current().world_size, checkpoint=checkpoint)
    memory.check(est, device, budget)
    if est.total >= 2**30 and not bar.disable:
        bar.write(f"statistics of {m} features take about {memory.format_size(est.total)} "
                  f"(G {memory.format_size(est.gram)})", file=sys.stderr)


class _Indexed(torch.utils.data.Dataset):
    """(image, label, dataset index) of the items of a dataset (whatever else it yields)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        item = self.dataset[i]
        return item[0], item[1], i


def collect_dataset(
    model: nn.Module,
    dataset: Any,
    *,
    batch_size: int = 32,
    workers: int = 0,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 0,
    checkpoint_key: dict[str, Any] | None = None,
    on_result: Callable[[FeatureStats], None] | None = None,
    progress: bool = True,
    **options: Any,
) -> FeatureStats:
    """``collect`` over a map-style dataset, sharded across torch.distributed ranks and resumable.

    Rank r of W (see ``vebi.core.distributed``) takes images r, r + W, ...; every rank returns the
    statistics of the whole dataset. With ``checkpoint`` (a folder) and ``checkpoint_every`` = n,
    each rank replaces ``checkpoint/rank{r}-of-{W}.safetensors`` every n batches, and a later
    call with the same arguments continues from there. ``checkpoint_key`` adds what identifies
    the run (model, data) to the check on resume. ``on_result(stats)`` runs on rank 0 (to save
    the result) before the checkpoints are removed. ``options`` go to ``collect``. The result
    equals one uninterrupted single-process pass up to the order of floating-point sums.
    """
    if len(dataset) == 0:
        raise VebiError("the dataset holds no images")
    if workers < 0:
        raise VebiError(f"workers must be at least 0, not {workers}")
    _check_finite_model(model)
    where = distributed.current()
    mine = distributed.shard(len(dataset), where)
    saver, resume = None, None
    if checkpoint is not None and checkpoint_every:
        key = {**(checkpoint_key or {}), "images": len(dataset), "batch_size": batch_size,
               "rank": where.rank, "world_size": where.world_size,
               **{k: v for k, v in options.items() if k in ("layers", "response", "labels", "top_k")},
               "gram_dtype": str(options.get("gram_dtype", torch.float64))}
        name = f"rank{where.rank}-of-{where.world_size}.safetensors"
        others = sorted(p.name for p in Path(checkpoint).glob("rank*-of-*.safetensors")
                        if not p.name.endswith(f"-of-{where.world_size}.safetensors"))
        if others:
            raise VebiError(f"{checkpoint} holds checkpoints of another number of processes ({others[0]}); "
                            f"resume with as many processes as before, or delete {checkpoint}")
        saver = Checkpointer(Path(checkpoint) / name, checkpoint_every, key)
        found = saver.load(model_device(model))
        if found is not None:
            resume = found.stats
            if progress:
                tqdm.write(f"resuming from {saver.path}: {resume.count} of {len(mine)} images done", file=sys.stderr)
    rest = torch.utils.data.Subset(_Indexed(dataset), mine[(resume.count if resume else 0):])
    loader = torch.utils.data.DataLoader(rest, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         pin_memory=model_device(model).type == "cuda")
    stats = resume if not len(rest) else collect(model, loader, progress=progress, resume=resume, on_batch=saver,
                                                 **options)
    stats = distributed.reduce_stats(stats)
    _check_finite_stats(stats)
    if on_result is not None and where.is_main:
        on_result(stats)
    if saver is not None:
        distributed.barrier()  # the result is written before any checkpoint goes
        saver.remove()
    return stats
