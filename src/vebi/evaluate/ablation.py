"""Feature ablation: zero chosen (layer, channel) features in the forward pass and measure accuracy.

``ablate(model, features)`` replaces, while active, the output A_l of each named layer by A_l with
the chosen channels set to 0 (forward hooks; removed on exit, also after an exception). A module
called more than once per forward pass (e.g. a ResNet block's shared ReLU) is ablated at every
call; name the enclosing block instead.

Protocol (:func:`ablation_study`; accuracies on the images of ``data``, model in eval mode). For
class j with weights w_j (``Relevance.relevant(j)``, |w| order):

- **positive set** P_j = {f : w_{f,j} > 0} (evidence for j) and **negative set** N_j = {f : w_{f,j} < 0}
  (evidence against j), ablated separately, each as a whole (k = n) or, with ``curves``, its
  first k features for k = 0..n;
- **controls** for each of them: per seed, as many channels as the set has *in each layer*, drawn
  uniformly without replacement from the channels of that layer that are relevant to *no* class
  (layer-matched, equal count; the draw for the first k features is the first k of the draw);
  mean and 2.5-97.5 percentile interval over the seeds;
- **reference set** R_j: the |P_j| channels of the last feature layer L (``space.layers[-1]``)
  with the highest classifier evidence for j, e_{j,c} = mean over the class-j images of
  sum_{u,v} A_{L,c}(u, v) * dz_j / dA_{L,c}(u, v) (z_j the class-j logit): the first-order estimate
  of how much z_j falls when channel c is zeroed; for L followed by global pooling and a linear
  classifier it is the pooled response times the classifier weight. It may overlap P_j.
- for every set: class j's accuracy and the mean accuracy of the other classes (specificity).

Many feature sets share one forward pass (:func:`class_accuracies`): the sets are grouped by the
first of their layers in execution order and taken S at a time from a group (a set that starts at
a later layer would otherwise be recomputed from the earlier one); the batch runs once up to that
layer, whose output is repeated S times (set-major, S*B rows) and each set's channels are zeroed
in its own rows by a (S*B, C, 1, ...) mask at every ablated layer. In eval mode the rows are
independent, so each row equals the one-set-at-a-time result up to float summation order. If the
layer's output is not the only path onward (a skip connection around it makes the shapes
disagree), the images themselves are repeated instead. S*B is bounded by ``max_batch`` (default:
from the free memory and the largest activation per image: at most 1024 rows and 512 MiB
for that activation).
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vebi.core.relevance import Relevance
from vebi.errors import VebiError
from vebi.hooks import HookHandles, preserve_model
from vebi.layers import named_layers
from vebi.models import in_fast_layout, model_device, model_dtype

FeatureKey = tuple[str, int]
KINDS = ("positive", "negative", "reference")
MAX_BATCH = 1024
# bytes of one pass's largest activation: MobileNetV2 at 224 px ran no faster in larger passes, which
# only took more memory, paged in anew each pass by glibc's malloc (benchmarks/bench_allocator.py)
PASS_BYTES = 512 << 20

__all__ = [
    "KINDS",
    "AblationResult",
    "ClassAblation",
    "SetAblation",
    "Spread",
    "UnionAblationResult",
    "ablate",
    "ablation_study",
    "class_accuracies",
    "classifier_evidence",
    "feature_keys",
    "layer_matched_draw",
    "union_ablation",
]


def feature_keys(features: Iterable[Any]) -> list[FeatureKey]:
    """(layer, channel) pairs from pairs or objects with ``.layer`` and ``.channel`` (Feature,
    RelevantFeature), order kept."""
    keys = []
    for f in features:
        if hasattr(f, "layer") and hasattr(f, "channel"):
            layer, channel = f.layer, f.channel
        elif isinstance(f, (tuple, list)) and len(f) == 2:
            layer, channel = f
        else:
            raise VebiError(f"a feature must be a (layer, channel) pair or have .layer and .channel, got {f!r}")
        if not isinstance(layer, str) or isinstance(channel, bool) or int(channel) != channel or channel < 0:
            raise VebiError(f"bad feature ({layer!r}, {channel!r}): need a layer name and a channel index >= 0")
        keys.append((layer, int(channel)))
    return keys


def _check_output(layer: str, output: Any, channels: Iterable[int]) -> None:
    if not isinstance(output, Tensor) or output.dim() < 2:
        raise VebiError(f"cannot ablate channels of layer {layer!r}: its output is not a (B, C, ...) tensor")
    top = max(channels, default=-1)
    if top >= output.shape[1]:
        raise VebiError(f"layer {layer!r} has {output.shape[1]} channels; channel {top} does not exist")


@contextlib.contextmanager
def ablate(model: nn.Module, features: Iterable[Any]) -> Iterator[nn.Module]:
    """Zero the given (layer, channel) features of ``model`` in every forward pass inside the block.

    Each layer's output (B, C, ...) is replaced by a copy with the chosen channels (dim 1) set to
    exactly 0. Nothing else changes; the hooks are removed on exit, also after an exception.
    """
    by_layer: dict[str, list[int]] = {}
    for layer, channel in feature_keys(features):
        by_layer.setdefault(layer, []).append(channel)
    modules = named_layers(model, by_layer)

    def make_hook(layer: str, channels: list[int]) -> Any:
        index_cache: dict[torch.device, Tensor] = {}

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            _check_output(layer, output, channels)
            if output.device not in index_cache:
                index_cache[output.device] = torch.tensor(sorted(set(channels)), device=output.device)
            return output.index_fill(1, index_cache[output.device], 0)

        return hook

    with HookHandles() as handles:
        for layer, channels in by_layer.items():
            handles.append(modules[layer].register_forward_hook(make_hook(layer, channels)))
        yield model


# ----------------------------------------------------------------------------- many sets per forward pass


class _NotACut(Exception):
    """The expanded layer output met an unexpanded tensor further on: repeat the images instead."""


def _unpack(batch: Any) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise VebiError("each batch must be (images, labels) or (images, labels, image_indices)")
    return batch[0], torch.as_tensor(batch[1])


def _execution_order(model: nn.Module, layers: Sequence[str], x: Tensor) -> tuple[dict[str, int], int]:
    """Position of each layer's first call in one forward pass of ``x``, and the largest output of any
    module in bytes per image (for the memory bound)."""
    order: dict[str, int] = {}
    largest = [0]
    wanted = set(layers)

    def make(name: str) -> Any:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            t = out[0] if isinstance(out, (tuple, list)) and out else out
            if isinstance(t, Tensor) and t.dim() > 0 and t.shape[0] > 0:
                largest[0] = max(largest[0], t.numel() // t.shape[0] * t.element_size())
            if name in wanted:
                order.setdefault(name, len(order))
        return hook

    with HookHandles() as handles:
        for name, module in model.named_modules():
            if name in wanted or not any(True for _ in module.children()):
                handles.append(module.register_forward_hook(make(name)))
        model(x)
    missing = [name for name in layers if name not in order]
    if missing:
        raise VebiError(f"layer(s) {', '.join(missing)} are not called in the model's forward pass")
    return order, largest[0]


def _sets_per_pass(device: torch.device, batch: int, per_image: int, max_batch: int | None) -> int:
    if max_batch is None:
        from vebi.core.memory import budget

        free, _ = budget(device)
        # a no-grad forward holds a few activations at once; keep it within a quarter of the budget, and
        # its largest activation within PASS_BYTES
        per_image = max(per_image, 1)
        max_batch = min(MAX_BATCH, max(1, free // 4 // (4 * per_image)), max(1, PASS_BYTES // per_image))
    return max(1, int(max_batch) // max(batch, 1))


def _ablated_logits(model: nn.Module, x: Tensor, sets: Sequence[Sequence[FeatureKey]],
                    modules: Mapping[str, nn.Module], expand_at: str | None) -> Tensor:
    """Logits (S, B, K) of ``x`` with each of the S sets ablated; rows repeated at ``expand_at``'s
    output (None: at the input)."""
    s_count, b = len(sets), x.shape[0]
    by_layer: dict[str, list[tuple[int, int]]] = {}
    for s, keys in enumerate(sets):
        for layer, channel in keys:
            by_layer.setdefault(layer, []).append((s, channel))
    expanded = [expand_at is None]

    def make_hook(layer: str, members: list[tuple[int, int]]) -> Any:
        masks: dict[tuple[torch.device, int, int], Tensor] = {}

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            _check_output(layer, output, (c for _, c in members))
            if not expanded[0] and layer == expand_at and output.shape[0] == b:
                output = torch.cat([output] * s_count)  # keeps the memory layout, unlike repeat
                expanded[0] = True
            if output.shape[0] != s_count * b:
                raise _NotACut
            key = (output.device, output.shape[1], output.dim())
            if key not in masks:
                drop = torch.zeros(s_count, output.shape[1], dtype=torch.bool)
                for s, channel in members:
                    drop[s, channel] = True
                drop = drop.repeat_interleave(b, dim=0).to(output.device)
                masks[key] = drop.view(*drop.shape, *([1] * (output.dim() - 2)))
            return torch.where(masks[key], 0, output)  # keeps the memory layout, unlike masked_fill

        return hook

    def run(inputs: Tensor) -> Any:
        expanded[0] = expand_at is None  # afresh when a first try in channels-last order is run again
        with HookHandles() as handles:
            for layer, members in by_layer.items():
                handles.append(modules[layer].register_forward_hook(make_hook(layer, members)))
            return model(inputs if expand_at is not None else torch.cat([inputs] * s_count))

    logits = in_fast_layout(model, run, x)
    if not expanded[0] or logits.dim() != 2 or logits.shape[0] != s_count * b:
        if expand_at is not None:
            raise _NotACut
        raise VebiError(f"the model returns {tuple(logits.shape)} scores for a batch of {s_count * b} images; "
                        "ablation needs (B, classes) logits")
    return logits.view(s_count, b, -1)


def class_accuracies(
    model: nn.Module,
    data: Iterable[Any],
    feature_sets: Sequence[Iterable[Any]],
    num_classes: int,
    *,
    batched: bool = True,
    max_batch: int | None = None,
    outputs: Sequence[int] | None = None,
    progress: bool = True,
) -> tuple[Tensor, Tensor]:
    """Correct predictions per feature set and class, (S, C) int64, and images per class, (C,).

    One pass over ``data``. ``batched``: many sets per forward pass (module docstring), at most
    ``max_batch`` images per pass; otherwise one forward pass per set and batch (:func:`ablate`).
    ``outputs[c]``: the model output of class c (default: output c); a prediction of any other
    output is wrong.
    """
    sets = [feature_keys(s) for s in feature_sets]
    if max_batch is not None and max_batch < 1:
        raise VebiError(f"max_batch must be at least 1, got {max_batch}")
    device, dtype = model_device(model), model_dtype(model)
    correct = torch.zeros(len(sets), num_classes, dtype=torch.int64)
    totals = torch.zeros(num_classes, dtype=torch.int64)
    layers = list(dict.fromkeys(layer for keys in sets for layer, _ in keys))
    modules = named_layers(model, layers)
    order: dict[str, int] | None = None
    not_cuts: set[str] = set()
    total_batches = len(data) if hasattr(data, "__len__") else None  # type: ignore[arg-type]
    with preserve_model(model, freeze=False, no_inplace=False), torch.no_grad():
        for batch in tqdm(data, total=total_batches, desc="ablation", unit="batch", disable=not progress):
            images, labels = _unpack(batch)
            labels = labels.to(torch.int64).cpu()
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
                found = f"{int(labels.min())}..{int(labels.max())}"
                raise VebiError(f"labels must be in 0..{num_classes - 1}, found {found}")
            totals += torch.bincount(labels, minlength=num_classes)
            x = images.to(device=device, dtype=dtype)
            one_hot = torch.nn.functional.one_hot(labels, num_classes).to(torch.float64)
            if not batched:
                for s, keys in enumerate(sets):
                    with ablate(model, keys):
                        hits = _as_classes(model(x).argmax(dim=1).cpu(), outputs) == labels
                    correct[s] += (hits.to(torch.float64) @ one_hot).round().to(torch.int64)
                continue
            if order is None:
                order, per_image = _execution_order(model, layers, x)
                first = [min((order[layer] for layer, _ in keys), default=len(order)) for keys in sets]
                per_pass = _sets_per_pass(device, x.shape[0], per_image, max_batch)
                # a pass never mixes first layers: a set that starts later would run from the earlier cut
                groups = [list(g) for _, g in itertools.groupby(sorted(range(len(sets)), key=first.__getitem__),
                                                               key=first.__getitem__)]
                chunks = [g[i:i + per_pass] for g in groups for i in range(0, len(g), per_pass)]
            for chunk in chunks:
                chunk_sets = [sets[s] for s in chunk]
                used = [layer for keys in chunk_sets for layer, _ in keys]
                expand_at = min(used, key=order.__getitem__) if used else None
                if expand_at in not_cuts:
                    expand_at = None
                try:
                    logits = _ablated_logits(model, x, chunk_sets, modules, expand_at)
                except (_NotACut, RuntimeError):
                    if expand_at is None:
                        raise
                    not_cuts.add(expand_at)
                    logits = _ablated_logits(model, x, chunk_sets, modules, None)
                hits = (_as_classes(logits.argmax(dim=2).cpu(), outputs) == labels).to(torch.float64)
                correct[chunk] += (hits @ one_hot).round().to(torch.int64)
    return correct, totals


# ----------------------------------------------------------------------------- the sets and their controls


def _accuracy(correct: Tensor, totals: Tensor) -> tuple[float, ...]:
    if bool((totals == 0).any()):
        missing = torch.nonzero(totals == 0).flatten().tolist()
        raise VebiError(f"class(es) {missing} have no images in the evaluation data")
    return tuple((correct.to(torch.float64) / totals.to(torch.float64)).tolist())


def _others(accuracy: Sequence[float], j: int) -> float:
    """Mean accuracy of the classes other than j."""
    return statistics.fmean(a for c, a in enumerate(accuracy) if c != j)


def _generator(*stream: int) -> torch.Generator:
    state = np.random.SeedSequence([int(s) for s in stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


def layer_matched_draw(features: Sequence[FeatureKey], candidates: Mapping[str, Sequence[int]],
                       *stream: int) -> list[FeatureKey] | None:
    """A random set with as many channels per layer as ``features``, from ``candidates[layer]``.

    Feature i of the result is in the same layer as ``features[i]``, so the first k of the draw match
    the first k of ``features``. Seeded by ``stream`` (e.g. seed, class, kind); None when a layer has
    fewer candidates than the set needs there.
    """
    per_layer: dict[str, list[int]] = {}
    out = []
    for layer, _ in features:
        if layer not in per_layer:
            pool = list(candidates.get(layer, ()))
            position = list(candidates).index(layer) if layer in candidates else -1
            per_layer[layer] = [pool[i] for i in torch.randperm(len(pool), generator=_generator(*stream,
                                                                                                 position)).tolist()]
        if not per_layer[layer]:
            return None
        out.append((layer, per_layer[layer].pop(0)))
    return out


def _as_classes(predictions: Tensor, outputs: Sequence[int] | None) -> Tensor:
    """Model outputs -> run classes (``outputs[c]`` is class c's output; -1 for any other output)."""
    from vebi.core.relevance import positions

    if outputs is None:
        return predictions
    return positions(predictions.flatten(), tuple(outputs)).view(predictions.shape)


def classifier_evidence(model: nn.Module, data: Iterable[Any], layer: str, num_classes: int, *,
                        outputs: Sequence[int] | None = None, progress: bool = True) -> Tensor:
    """e (C, channels of ``layer``), float64: e_{j,c} = mean over the class-j images of
    sum_{u,v} A_c(u, v) * dz_j / dA_c(u, v), A = the layer's output (its first call), z_j the class-j logit
    (the logit of model output ``outputs[j]`` when given)."""
    modules = named_layers(model, [layer])
    device, dtype = model_device(model), model_dtype(model)
    sums: Tensor | None = None
    counts = torch.zeros(num_classes, dtype=torch.float64)
    captured: list[Tensor] = []

    def hook(_m: nn.Module, _i: Any, output: Any) -> Any:
        if captured:
            return None
        _check_output(layer, output, ())
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf.clone()

    with preserve_model(model), torch.enable_grad(), HookHandles() as handles:
        handles.append(modules[layer].register_forward_hook(hook))
        for batch in tqdm(data, desc="classifier evidence", unit="batch", disable=not progress):
            images, labels = _unpack(batch)
            labels = labels.to(torch.int64).cpu()
            captured.clear()
            logits = model(images.to(device=device, dtype=dtype))
            columns = labels if outputs is None else torch.tensor(outputs, dtype=torch.int64)[labels]
            score = logits.gather(1, columns.to(logits.device).view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(score, captured[0])
            evidence = (captured[0].detach() * grad).flatten(2).sum(2).to("cpu", torch.float64)
            if sums is None:
                sums = torch.zeros(num_classes, evidence.shape[1], dtype=torch.float64)
            sums.index_add_(0, labels, evidence)
            counts += torch.bincount(labels, minlength=num_classes).to(torch.float64)
    if sums is None:
        raise VebiError("no images to measure the classifier evidence on")
    return sums / counts.clamp(min=1).unsqueeze(1)


class _Plan:
    """Distinct feature sets to evaluate, deduplicated by their (unordered) content."""

    def __init__(self) -> None:
        self.sets: list[list[FeatureKey]] = []
        self._index: dict[Hashable, int] = {}

    def add(self, keys: Sequence[FeatureKey]) -> int:
        key = frozenset(keys)
        if key not in self._index:
            self._index[key] = len(self.sets)
            self.sets.append(list(keys))
        return self._index[key]


@dataclass(frozen=True)
class Spread:
    """Mean and 2.5-97.5 percentile interval (linear interpolation) of values over seeds."""

    mean: float
    low: float
    high: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        low, high = np.percentile(np.asarray(values, dtype=np.float64), [2.5, 97.5]).tolist()
        return cls(statistics.fmean(values), float(low), float(high), tuple(values))

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "values": list(self.values)}


def _layer_counts(features: Sequence[FeatureKey]) -> str:
    counts: dict[str, int] = {}
    for layer, _ in features:
        counts[layer] = counts.get(layer, 0) + 1
    return " ".join(f"{layer}:{n}" for layer, n in counts.items())


@dataclass(frozen=True)
class SetAblation:
    """One feature set of one class, ablated k = counts[i] features at a time (its first k).

    class_accuracy / other_accuracy: the class's own accuracy and the mean accuracy of the other
    classes; control_*: the same for the layer-matched random sets (one per seed, ``control_features``),
    None for the reference set or where a layer has too few channels relevant to no class.
    """

    kind: str
    features: tuple[FeatureKey, ...]
    weights: tuple[float, ...]
    counts: tuple[int, ...]
    class_accuracy: tuple[float, ...]
    other_accuracy: tuple[float, ...]
    control_class: tuple[Spread, ...] | None
    control_other: tuple[Spread, ...] | None
    control_features: tuple[tuple[FeatureKey, ...], ...] | None

    def to_dict(self) -> dict[str, Any]:
        def spreads(values: tuple[Spread, ...] | None) -> list | None:
            return None if values is None else [s.to_dict() for s in values]

        return {
            "kind": self.kind, "features": [list(f) for f in self.features], "weights": list(self.weights),
            "layer_counts": _layer_counts(self.features), "counts": list(self.counts),
            "class_accuracy": list(self.class_accuracy), "other_accuracy": list(self.other_accuracy),
            "control_class": spreads(self.control_class), "control_other": spreads(self.control_other),
            "control_features": None if self.control_features is None
            else [[list(f) for f in draw] for draw in self.control_features],
        }


@dataclass(frozen=True)
class ClassAblation:
    """Class j's positive, negative and reference sets with their accuracies (see the module docstring)."""

    class_index: int
    class_name: str
    baseline_class_accuracy: float
    baseline_other_accuracy: float
    positive: SetAblation
    negative: SetAblation
    reference: SetAblation

    def sets(self) -> tuple[SetAblation, ...]:
        return self.positive, self.negative, self.reference

    def to_dict(self) -> dict[str, Any]:
        return {"class_index": self.class_index, "class_name": self.class_name,
                "baseline_class_accuracy": self.baseline_class_accuracy,
                "baseline_other_accuracy": self.baseline_other_accuracy,
                **{s.kind: s.to_dict() for s in self.sets()}}

    def summary_row(self) -> dict[str, Any]:
        """k = n of every set: own and other classes' accuracy, control mean and interval."""
        row: dict[str, Any] = {"class_index": self.class_index, "class_name": self.class_name,
                               "baseline_class_accuracy": self.baseline_class_accuracy,
                               "baseline_other_accuracy": self.baseline_other_accuracy}
        for s in self.sets():
            p = s.kind
            row[f"{p}_features"] = s.counts[-1]
            row[f"{p}_layers"] = _layer_counts(s.features)
            row[f"{p}_class_accuracy"] = s.class_accuracy[-1]
            row[f"{p}_other_accuracy"] = s.other_accuracy[-1]
            if s.kind != "reference":
                control, other = s.control_class, s.control_other
                row[f"{p}_control_class_accuracy"] = None if control is None else control[-1].mean
                row[f"{p}_control_class_low"] = None if control is None else control[-1].low
                row[f"{p}_control_class_high"] = None if control is None else control[-1].high
                row[f"{p}_control_other_accuracy"] = None if other is None else other[-1].mean
        return row

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per set and count k (for CSV)."""
        out = []
        for s in self.sets():
            for i, k in enumerate(s.counts):
                control, other = s.control_class, s.control_other
                out.append({
                    "class_index": self.class_index, "class_name": self.class_name, "set": s.kind, "ablated": k,
                    "layers": _layer_counts(s.features[:k]),
                    "class_accuracy": s.class_accuracy[i], "other_accuracy": s.other_accuracy[i],
                    "control_class_accuracy": None if control is None else control[i].mean,
                    "control_class_low": None if control is None else control[i].low,
                    "control_class_high": None if control is None else control[i].high,
                    "control_other_accuracy": None if other is None else other[i].mean,
                })
        return out


@dataclass(frozen=True)
class AblationResult:
    """Per-class ablation of the positive, negative and reference sets and the unablated accuracies."""

    class_names: tuple[str, ...]
    seeds: tuple[int, ...]
    curves: bool
    reference_layer: str
    baseline_class_accuracy: tuple[float, ...]
    baseline_mca: float
    classes: tuple[ClassAblation, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_names": list(self.class_names), "seeds": list(self.seeds), "curves": self.curves,
            "reference_layer": self.reference_layer, "baseline_class_accuracy": list(self.baseline_class_accuracy),
            "baseline_mca": self.baseline_mca, "classes": [c.to_dict() for c in self.classes],
            "summary": self.summary_rows(),
        }

    def rows(self) -> list[dict[str, Any]]:
        return [row for c in self.classes for row in c.rows()]

    def summary_rows(self) -> list[dict[str, Any]]:
        """One row per class (k = n) and a last row with each numeric column's mean over the classes."""
        rows = [c.summary_row() for c in self.classes]
        mean: dict[str, Any] = {"class_index": "", "class_name": "mean over classes"}
        for key in rows[0] if rows else ():
            if key in mean or key.endswith("_layers"):
                continue
            values = [r[key] for r in rows if r[key] is not None]
            mean[key] = statistics.fmean(values) if values else None
        return [*rows, mean]


def _draw_sets(plan: _Plan, features: Sequence[FeatureKey], counts: Sequence[int],
               candidates: Mapping[str, Sequence[int]], seeds: Sequence[int], *stream: int
               ) -> tuple[list[list[int]], tuple[tuple[FeatureKey, ...], ...]] | None:
    draws = [layer_matched_draw(features, candidates, seed, *stream) for seed in seeds]
    if any(d is None for d in draws):
        return None
    return [[plan.add(d[:k]) for k in counts] for d in draws], tuple(tuple(d) for d in draws)


def ablation_study(
    model: nn.Module,
    data: Iterable[Any],
    relevance: Relevance,
    *,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    max_features: int | None = None,
    curves: bool = False,
    max_batch: int | None = None,
    outputs: Sequence[int] | None = None,
    progress: bool = True,
) -> AblationResult:
    """The per-class ablation protocol of the module docstring on ``data``.

    ``relevance``: a :class:`~vebi.core.relevance.Relevance` (weights, feature space, class names);
    ``max_features``: keep at most this many features of each set (the first in |w| order);
    ``outputs``: the model output of each class (see :func:`class_accuracies`);
    ``curves``: every k = 0..n instead of only k = n. ``data`` is iterated twice (classifier
    evidence, then accuracies), so it must be re-iterable (a DataLoader or a list).
    """
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise VebiError("at least one seed is needed for the random control sets")
    if max_features is not None and max_features < 0:
        raise VebiError(f"max_features must be >= 0, got {max_features}")
    names = tuple(relevance.class_names)
    space = relevance.space
    relevant = [relevance.relevant(j) for j in range(len(names))]
    excluded = {(f.layer, f.channel) for features in relevant for f in features}
    candidates = {layer: [c for c in range(n) if (layer, c) not in excluded]
                  for layer, n in zip(space.layers, space.channels, strict=True)}
    last = space.layers[-1]
    evidence = classifier_evidence(model, data, last, len(names), outputs=outputs, progress=progress)

    plan = _Plan()
    baseline = plan.add([])
    layout = []
    for j, features in enumerate(relevant):
        chosen = {
            "positive": [f for f in features if f.weight > 0][:max_features],
            "negative": [f for f in features if f.weight < 0][:max_features],
        }
        order = torch.sort(evidence[j], descending=True, stable=True).indices.tolist()
        reference = [(last, c) for c in order[:len(chosen["positive"])]]
        entries = []
        for kind_index, kind in enumerate(KINDS):
            keys = reference if kind == "reference" else feature_keys(chosen[kind])
            weights = (tuple(float(evidence[j, c]) for _, c in keys) if kind == "reference"
                       else tuple(f.weight for f in chosen[kind]))
            counts = list(range(len(keys) + 1)) if curves else [len(keys)]
            own = [plan.add(keys[:k]) for k in counts]
            controls = None if kind == "reference" else _draw_sets(plan, keys, counts, candidates, seeds, j,
                                                                    kind_index)
            entries.append((kind, keys, weights, counts, own, controls))
        layout.append(entries)

    correct, totals = class_accuracies(model, data, plan.sets, len(names), max_batch=max_batch, outputs=outputs,
                                       progress=progress)
    accuracy = [_accuracy(correct[s], totals) for s in range(len(plan.sets))]

    classes = []
    for j, entries in enumerate(layout):
        results = {}
        for kind, keys, weights, counts, own, controls in entries:
            control_class = control_other = control_features = None
            if controls is not None:
                ids, control_features = controls
                control_class = tuple(Spread.of([accuracy[d[i]][j] for d in ids]) for i in range(len(counts)))
                control_other = tuple(Spread.of([_others(accuracy[d[i]], j) for d in ids])
                                      for i in range(len(counts)))
            results[kind] = SetAblation(
                kind=kind, features=tuple(keys), weights=weights, counts=tuple(counts),
                class_accuracy=tuple(accuracy[s][j] for s in own),
                other_accuracy=tuple(_others(accuracy[s], j) for s in own),
                control_class=control_class, control_other=control_other, control_features=control_features)
        classes.append(ClassAblation(j, names[j], accuracy[baseline][j], _others(accuracy[baseline], j),
                                     results["positive"], results["negative"], results["reference"]))
    base = accuracy[baseline]
    return AblationResult(names, seeds, curves, last, base, statistics.fmean(base), tuple(classes))


# ----------------------------------------------------------------------------- all classes at once


@dataclass(frozen=True)
class UnionAblationResult:
    """Accuracy with the union of all relevant features ablated, against layer-matched random sets
    of channels relevant to no class (None where a layer has too few of them)."""

    class_names: tuple[str, ...]
    seeds: tuple[int, ...]
    features: tuple[FeatureKey, ...]
    baseline_class_accuracy: tuple[float, ...]
    baseline_mca: float
    ablated_class_accuracy: tuple[float, ...]
    ablated_mca: float
    random_class_accuracy: tuple[Spread, ...] | None
    random_mca: Spread | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_names": list(self.class_names),
            "seeds": list(self.seeds),
            "features": [list(f) for f in self.features],
            "layer_counts": _layer_counts(self.features),
            "baseline_class_accuracy": list(self.baseline_class_accuracy),
            "baseline_mca": self.baseline_mca,
            "ablated_class_accuracy": list(self.ablated_class_accuracy),
            "ablated_mca": self.ablated_mca,
            "random_class_accuracy": None if self.random_class_accuracy is None
            else [s.to_dict() for s in self.random_class_accuracy],
            "random_mca": None if self.random_mca is None else self.random_mca.to_dict(),
        }

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per class and a last one for the mCA (for CSV)."""
        randoms = [*(self.random_class_accuracy or [None] * len(self.class_names)), self.random_mca]
        names = [*self.class_names, "mCA (all classes)"]
        before = [*self.baseline_class_accuracy, self.baseline_mca]
        after = [*self.ablated_class_accuracy, self.ablated_mca]
        return [{"class_index": j if j < len(self.class_names) else "", "class_name": names[j],
                 "features_ablated": len(self.features), "baseline_accuracy": before[j],
                 "ablated_accuracy": after[j], "random_accuracy_mean": None if r is None else r.mean,
                 "random_accuracy_low": None if r is None else r.low,
                 "random_accuracy_high": None if r is None else r.high}
                for j, r in enumerate(randoms)]


def union_ablation(
    model: nn.Module,
    data: Iterable[Any],
    relevance: Relevance,
    *,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    max_batch: int | None = None,
    outputs: Sequence[int] | None = None,
    progress: bool = True,
) -> UnionAblationResult:
    """Ablate the union of every class's relevant features at once, against layer-matched random sets."""
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise VebiError("at least one seed is needed for the random control sets")
    names = tuple(relevance.class_names)
    union = [(f.layer, f.channel) for f in (relevance.space.feature(i) for i in relevance.union())]
    candidates = {layer: [c for c in range(n) if (layer, c) not in set(union)]
                  for layer, n in zip(relevance.space.layers, relevance.space.channels, strict=True)}
    plan = _Plan()
    baseline, ablated = plan.add([]), plan.add(union)
    draws = _draw_sets(plan, union, [len(union)], candidates, seeds, len(names), len(KINDS))
    correct, totals = class_accuracies(model, data, plan.sets, len(names), max_batch=max_batch, outputs=outputs,
                                       progress=progress)
    accuracy = [_accuracy(correct[s], totals) for s in range(len(plan.sets))]
    random_class = random_mca = None
    if draws is not None:
        ids = [d[0] for d in draws[0]]
        random_class = tuple(Spread.of([accuracy[s][j] for s in ids]) for j in range(len(names)))
        random_mca = Spread.of([statistics.fmean(accuracy[s]) for s in ids])
    return UnionAblationResult(
        class_names=names, seeds=seeds, features=tuple(union),
        baseline_class_accuracy=accuracy[baseline], baseline_mca=statistics.fmean(accuracy[baseline]),
        ablated_class_accuracy=accuracy[ablated], ablated_mca=statistics.fmean(accuracy[ablated]),
        random_class_accuracy=random_class, random_mca=random_mca,
    )
