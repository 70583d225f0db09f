"""Feature ablation: zero chosen (layer, channel) features in the forward pass and measure accuracy.

``ablate(model, features)`` replaces, while active, the output A_l of each named layer by A_l with
the chosen channels set to 0 (forward hooks; removed on exit, also after an exception). A module
called more than once per forward pass (e.g. a ResNet block's shared ReLU) is ablated at every
call; name the enclosing block instead.

Experiments (all accuracies on the images of ``data``, the model in eval mode, no gradients):

- :func:`ablation_curves`: for each class j with relevant features f_1..f_n (given in |weight|
  order), ablate the first k of them for k = 0..n and record class j's accuracy and the mean
  per-class accuracy mCA = (1/C) sum_c acc_c; the same for k random features (uniform without
  replacement from the whole feature pool, nested in k, one draw per seed and class; mean and
  sample std over seeds) and for the k features of highest mean response (from a mean-response
  vector over the pool, class-independent).
- :func:`union_ablation`: ablate the union of all classes' relevant features, against random sets
  of the same size (per seed).

All ablation settings are evaluated in one pass over ``data`` (each batch is forwarded once per
distinct feature set), so the cost is one data pass and (number of distinct sets) forward passes
per batch.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vebi.hooks import HookHandles, preserve_model
from vebi.errors import VebiError
from vebi.layers import named_layers
from vebi.models import model_device, model_dtype

FeatureKey = tuple[str, int]

__all__ = [
    "AblationResult",
    "ClassAblation",
    "UnionAblationResult",
    "ablate",
    "ablation_curves",
    "class_accuracies",
    "feature_keys",
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
            if not isinstance(output, Tensor) or output.dim() < 2:
                raise VebiError(f"cannot ablate channels of layer {layer!r}: its output is not a (B, C, ...) tensor")
            if max(channels) >= output.shape[1]:
                raise VebiError(
                    f"layer {layer!r} has {output.shape[1]} channels; channel {max(channels)} does not exist"
                )
            if output.device not in index_cache:
                index_cache[output.device] = torch.tensor(sorted(set(channels)), device=output.device)
            return output.index_fill(1, index_cache[output.device], 0)

        return hook

    with HookHandles() as handles:
        for layer, channels in by_layer.items():
            handles.append(modules[layer].register_forward_hook(make_hook(layer, channels)))
        yield model


# ----------------------------------------------------------------------------- accuracy under ablation


def _unpack(batch: Any) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise VebiError("each batch must be (images, labels) or (images, labels, image_indices)")
    return batch[0], torch.as_tensor(batch[1])


def class_accuracies(
    model: nn.Module,
    data: Iterable[Any],
    feature_sets: Sequence[Iterable[Any]],
    num_classes: int,
    *,
    outputs: Sequence[int] | None = None,
    progress: bool = True,
) -> tuple[Tensor, Tensor]:
    """Correct predictions per feature set and class, (S, C) int64, and images per class, (C,).

    One pass over ``data``; each batch is forwarded once per feature set with that set ablated.
    ``outputs[c]``: the model output of class c (default: output c); a prediction of any other
    output is wrong.
    """
    from vebi.core.relevance import positions

    sets = [feature_keys(s) for s in feature_sets]
    device, dtype = model_device(model), model_dtype(model)
    correct = torch.zeros(len(sets), num_classes, dtype=torch.int64)
    totals = torch.zeros(num_classes, dtype=torch.int64)
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
            for s, keys in enumerate(sets):
                with ablate(model, keys):
                    predictions = model(x).argmax(dim=1).cpu()
                if outputs is not None:
                    predictions = positions(predictions, tuple(outputs))
                hits = labels[predictions == labels]
                correct[s] += torch.bincount(hits, minlength=num_classes)
    return correct, totals


def _accuracy(correct: Tensor, totals: Tensor) -> tuple[tuple[float, ...], float]:
    if bool((totals == 0).any()):
        missing = torch.nonzero(totals == 0).flatten().tolist()
        raise VebiError(f"class(es) {missing} have no images in the evaluation data")
    per_class = (correct.to(torch.float64) / totals.to(torch.float64)).tolist()
    return tuple(per_class), float(sum(per_class) / len(per_class))


def _seeded_permutation(size: int, seed: int, stream: int) -> list[int]:
    state = np.random.SeedSequence([int(seed), int(stream)]).generate_state(1, dtype=np.uint64)[0]
    generator = torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)
    return torch.randperm(size, generator=generator).tolist()


def _spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (n - 1 degrees of freedom; 0.0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


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
class ClassAblation:
    """Class j's accuracy and mCA with k = counts[i] features ablated, for the three feature choices.

    random_* are mean and sample std over seeds, ``random_features[s]`` the features drawn with
    ``seeds[s]`` (the first k of them are ablated at count k); top_mean_* are None without a
    mean-response vector.
    """

    class_index: int
    class_name: str
    features: tuple[FeatureKey, ...]
    counts: tuple[int, ...]
    relevant_class_accuracy: tuple[float, ...]
    relevant_mca: tuple[float, ...]
    random_class_accuracy_mean: tuple[float, ...]
    random_class_accuracy_std: tuple[float, ...]
    random_mca_mean: tuple[float, ...]
    random_mca_std: tuple[float, ...]
    random_features: tuple[tuple[FeatureKey, ...], ...]
    top_mean_class_accuracy: tuple[float, ...] | None
    top_mean_mca: tuple[float, ...] | None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "class_index": self.class_index,
            "class_name": self.class_name,
            "features": [list(f) for f in self.features],
            "random_features": [[list(f) for f in draw] for draw in self.random_features],
        }
        for name in ("counts", "relevant_class_accuracy", "relevant_mca", "random_class_accuracy_mean",
                     "random_class_accuracy_std", "random_mca_mean", "random_mca_std",
                     "top_mean_class_accuracy", "top_mean_mca"):
            value = getattr(self, name)
            out[name] = None if value is None else list(value)
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per count k (for CSV)."""
        out = []
        top_class, top_mca = self.top_mean_class_accuracy, self.top_mean_mca
        for i, k in enumerate(self.counts):
            out.append({
                "class_index": self.class_index,
                "class_name": self.class_name,
                "ablated": k,
                "relevant_class_accuracy": self.relevant_class_accuracy[i],
                "relevant_mca": self.relevant_mca[i],
                "random_class_accuracy_mean": self.random_class_accuracy_mean[i],
                "random_class_accuracy_std": self.random_class_accuracy_std[i],
                "random_mca_mean": self.random_mca_mean[i],
                "random_mca_std": self.random_mca_std[i],
                "top_mean_class_accuracy": None if top_class is None else top_class[i],
                "top_mean_mca": None if top_mca is None else top_mca[i],
            })
        return out


@dataclass(frozen=True)
class AblationResult:
    """Per-class ablation curves and the unablated accuracies they start from."""

    class_names: tuple[str, ...]
    seeds: tuple[int, ...]
    baseline_class_accuracy: tuple[float, ...]
    baseline_mca: float
    classes: tuple[ClassAblation, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_names": list(self.class_names),
            "seeds": list(self.seeds),
            "baseline_class_accuracy": list(self.baseline_class_accuracy),
            "baseline_mca": self.baseline_mca,
            "classes": [c.to_dict() for c in self.classes],
        }

    def rows(self) -> list[dict[str, Any]]:
        return [row for c in self.classes for row in c.rows()]


@dataclass(frozen=True)
class UnionAblationResult:
    """Accuracy with the union of all relevant features ablated, against random sets of that size."""

    class_names: tuple[str, ...]
    seeds: tuple[int, ...]
    features: tuple[FeatureKey, ...]
    baseline_class_accuracy: tuple[float, ...]
    baseline_mca: float
    ablated_class_accuracy: tuple[float, ...]
    ablated_mca: float
    random_class_accuracy_mean: tuple[float, ...]
    random_class_accuracy_std: tuple[float, ...]
    random_mca_mean: float
    random_mca_std: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_names": list(self.class_names),
            "seeds": list(self.seeds),
            "features": [list(f) for f in self.features],
            "baseline_class_accuracy": list(self.baseline_class_accuracy),
            "baseline_mca": self.baseline_mca,
            "ablated_class_accuracy": list(self.ablated_class_accuracy),
            "ablated_mca": self.ablated_mca,
            "random_class_accuracy_mean": list(self.random_class_accuracy_mean),
            "random_class_accuracy_std": list(self.random_class_accuracy_std),
            "random_mca_mean": self.random_mca_mean,
            "random_mca_std": self.random_mca_std,
        }

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per class (for CSV)."""
        return [
            {
                "class_index": j,
                "class_name": name,
                "baseline_class_accuracy": self.baseline_class_accuracy[j],
                "ablated_class_accuracy": self.ablated_class_accuracy[j],
                "random_class_accuracy_mean": self.random_class_accuracy_mean[j],
                "random_class_accuracy_std": self.random_class_accuracy_std[j],
            }
            for j, name in enumerate(self.class_names)
        ]


def _check_setup(ranked: Sequence[Iterable[Any]], class_names: Sequence[str] | None,
                 seeds: Sequence[int]) -> tuple[list[list[FeatureKey]], tuple[str, ...], tuple[int, ...]]:
    ranked_keys = [feature_keys(r) for r in ranked]
    if not ranked_keys:
        raise VebiError("ranked features are needed for at least one class")
    names = tuple(class_names) if class_names is not None else tuple(str(j) for j in range(len(ranked_keys)))
    if len(names) != len(ranked_keys):
        raise VebiError(f"{len(names)} class names for {len(ranked_keys)} ranked feature lists")
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise VebiError("at least one seed is needed for the random-feature comparison")
    return ranked_keys, names, seeds


def ablation_curves(
    model: nn.Module,
    data: Iterable[Any],
    ranked: Sequence[Iterable[Any]],
    pool: Iterable[Any],
    *,
    mean_response: Tensor | None = None,
    max_features: int | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    class_names: Sequence[str] | None = None,
    outputs: Sequence[int] | None = None,
    progress: bool = True,
) -> AblationResult:
    """Per-class ablation curves (see the module docstring).

    ``ranked[j]``: class j's relevant features in ablation order (e.g. ``relevance.relevant(j)``);
    ``pool``: all candidate features (e.g. ``relevance.space``), the population for random draws;
    ``mean_response``: (len(pool),) mean response per pool feature (e.g. ``stats.mean_response()``);
    ``max_features``: largest k per class (default: all of the class's relevant features);
    ``outputs``: the model output of each class (see :func:`class_accuracies`).
    """
    ranked_keys, names, seeds = _check_setup(ranked, class_names, seeds)
    pool_keys = feature_keys(pool)
    if not pool_keys:
        raise VebiError("the feature pool is empty")
    if max_features is not None and max_features < 0:
        raise VebiError(f"max_features must be >= 0, got {max_features}")
    top_mean_order: list[int] | None = None
    if mean_response is not None:
        mean = torch.as_tensor(mean_response).detach().cpu().flatten().to(torch.float64)
        if mean.numel() != len(pool_keys):
            raise VebiError(f"mean_response has {mean.numel()} entries for a pool of {len(pool_keys)} features")
        top_mean_order = torch.sort(mean, descending=True, stable=True).indices.tolist()

    plan = _Plan()
    baseline = plan.add([])
    layout = []
    for j, keys in enumerate(ranked_keys):
        n = len(keys) if max_features is None else min(len(keys), max_features)
        n = min(n, len(pool_keys))
        counts = list(range(n + 1))
        relevant = [plan.add(keys[:k]) for k in counts]
        draws = [[pool_keys[i] for i in _seeded_permutation(len(pool_keys), seed, j)[:n]] for seed in seeds]
        random = [[plan.add(draw[:k]) for k in counts] for draw in draws]
        top = None if top_mean_order is None else [plan.add([pool_keys[i] for i in top_mean_order[:k]]) for k in counts]
        layout.append((j, keys[:n], counts, relevant, random, draws, top))

    correct, totals = class_accuracies(model, data, plan.sets, len(names), outputs=outputs, progress=progress)
    accuracy = [_accuracy(correct[s], totals) for s in range(len(plan.sets))]

    curves = []
    for j, keys, counts, relevant, random, draws, top in layout:
        random_class = [_spread([accuracy[r[i]][0][j] for r in random]) for i in range(len(counts))]
        random_mca = [_spread([accuracy[r[i]][1] for r in random]) for i in range(len(counts))]
        curves.append(ClassAblation(
            class_index=j,
            class_name=names[j],
            features=tuple(keys),
            counts=tuple(counts),
            relevant_class_accuracy=tuple(accuracy[s][0][j] for s in relevant),
            relevant_mca=tuple(accuracy[s][1] for s in relevant),
            random_class_accuracy_mean=tuple(m for m, _ in random_class),
            random_class_accuracy_std=tuple(s for _, s in random_class),
            random_mca_mean=tuple(m for m, _ in random_mca),
            random_mca_std=tuple(s for _, s in random_mca),
            random_features=tuple(tuple(draw) for draw in draws),
            top_mean_class_accuracy=None if top is None else tuple(accuracy[s][0][j] for s in top),
            top_mean_mca=None if top is None else tuple(accuracy[s][1] for s in top),
        ))
    base_class, base_mca = accuracy[baseline]
    return AblationResult(names, seeds, base_class, base_mca, tuple(curves))


def union_ablation(
    model: nn.Module,
    data: Iterable[Any],
    ranked: Sequence[Iterable[Any]],
    pool: Iterable[Any],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    class_names: Sequence[str] | None = None,
    outputs: Sequence[int] | None = None,
    progress: bool = True,
) -> UnionAblationResult:
    """Ablate the union of all ``ranked`` features at once, against random pool sets of its size."""
    ranked_keys, names, seeds = _check_setup(ranked, class_names, seeds)
    pool_keys = feature_keys(pool)
    union = list(dict.fromkeys(key for keys in ranked_keys for key in keys))
    if len(union) > len(pool_keys):
        raise VebiError(f"the union has {len(union)} features but the pool only {len(pool_keys)}")
    plan = _Plan()
    baseline = plan.add([])
    ablated = plan.add(union)
    stream = len(ranked_keys)  # a random stream distinct from the per-class ones of ablation_curves
    random = [plan.add([pool_keys[i] for i in _seeded_permutation(len(pool_keys), seed, stream)[: len(union)]])
              for seed in seeds]
    correct, totals = class_accuracies(model, data, plan.sets, len(names), outputs=outputs, progress=progress)
    accuracy = [_accuracy(correct[s], totals) for s in range(len(plan.sets))]
    random_class = [_spread([accuracy[r][0][j] for r in random]) for j in range(len(names))]
    random_mca = _spread([accuracy[r][1] for r in random])
    return UnionAblationResult(
        class_names=names,
        seeds=seeds,
        features=tuple(union),
        baseline_class_accuracy=accuracy[baseline][0],
        baseline_mca=accuracy[baseline][1],
        ablated_class_accuracy=accuracy[ablated][0],
        ablated_mca=accuracy[ablated][1],
        random_class_accuracy_mean=tuple(m for m, _ in random_class),
        random_class_accuracy_std=tuple(s for _, s in random_class),
        random_mca_mean=random_mca[0],
        random_mca_std=random_mca[1],
    )
