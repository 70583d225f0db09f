"""Streaming sufficient statistics of the response vectors, mergeable across batches and processes.

For responses x_i (rows of X, N x m) and one-hot labels l_i (rows of L, N x C):
  G = X^T X (m x m),  B = X^T L (m x C),  n_c (per-class counts),  s = X^T 1 (per-feature sums),
  N (images),  scored and hits (images with a prediction, and those predicted right),
  and per feature its top-K images (x value, image index, (y, x) of the feature map's maximum).

Each state is declared once, as a class attribute of ``FeatureStats`` with its reduction:
``Reduce.SUM`` (a + b) or ``Reduce.TOPK`` (the K largest of both lists, ties to the smaller image
index). ``STATES`` lists them in that order; merging, device moves, the all-reduce in
``vebi.core.distributed`` and the files of ``vebi.io`` all iterate it, so merging two halves equals
one pass over both, and a saved file holds everything. The frozen ``StatsConfig`` describes what
is collected and never changes during a pass.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Generic, Self, TypeVar, overload

import torch

from vebi.errors import VebiError
from vebi.core.features import FeatureSpace

LABEL_MODES: tuple[str, ...] = ("true", "predicted")
_GRAM_DTYPES: dict[str, torch.dtype] = {"float64": torch.float64, "float32": torch.float32}
_DESCRIPTIVE = ("map_sizes", "input_size")

TopK = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class StatsConfig:
    """What is collected: feature space, classes, response pooling, label source, K, map and input sizes.

    ``gram_dtype`` is float64, or float32 for half the memory of G (B and s stay float64).
    """

    space: FeatureSpace
    class_names: tuple[str, ...]
    response: str = "energy"
    labels: str = "true"
    top_k: int = 100
    map_sizes: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    input_size: tuple[int, int] | None = None
    gram_dtype: torch.dtype = torch.float64

    def __post_init__(self) -> None:
        if self.labels not in LABEL_MODES:
            raise VebiError(f"labels must be one of {', '.join(LABEL_MODES)}, not {self.labels!r}")
        if self.top_k < 1:
            raise VebiError(f"top_k must be at least 1, not {self.top_k}")
        if not self.class_names:
            raise VebiError("at least one class is needed")
        if self.gram_dtype not in _GRAM_DTYPES.values():
            raise VebiError(f"the Gram matrix is kept in float64 or float32, not {self.gram_dtype}")
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        object.__setattr__(self, "top_k", int(self.top_k))
        object.__setattr__(self, "map_sizes", {str(k): (int(v[0]), int(v[1])) for k, v in self.map_sizes.items()})
        if self.input_size is not None:
            object.__setattr__(self, "input_size", (int(self.input_size[0]), int(self.input_size[1])))

    @property
    def num_features(self) -> int:
        return self.space.size

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def joined(self, other: StatsConfig) -> StatsConfig:
        """The config of two merged shards; every field but map and input sizes must agree."""
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if f.name not in _DESCRIPTIVE and mine != theirs:
                raise VebiError(f"cannot merge statistics with different {f.name}: {mine!r} vs {theirs!r}")
        return replace(self, map_sizes={**other.map_sizes, **self.map_sizes},
                       input_size=self.input_size or other.input_size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``from_dict`` reads it back to an equal config."""
        return {"space": self.space.to_dict(), "class_names": list(self.class_names), "response": self.response,
                "labels": self.labels, "top_k": self.top_k,
                "map_sizes": {k: list(v) for k, v in self.map_sizes.items()},
                "input_size": list(self.input_size) if self.input_size else None,
                "gram_dtype": str(self.gram_dtype).removeprefix("torch.")}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StatsConfig:
        try:
            gram_dtype = _GRAM_DTYPES.get(data["gram_dtype"])
            if gram_dtype is None:
                raise VebiError(f"the Gram matrix is kept in float64 or float32, not {data['gram_dtype']!r}")
            return cls(FeatureSpace.from_dict(data["space"]), tuple(data["class_names"]), data["response"],
                       data["labels"], int(data["top_k"]), data["map_sizes"], data["input_size"], gram_dtype)
        except (KeyError, TypeError) as exc:
            raise VebiError(f"the statistics' configuration lacks or misstates {exc}") from None


class Reduce(enum.Enum):
    """How the states of two shards combine into the states of one pass over both."""

    SUM = "sum"
    TOPK = "topk"

    def combine(self, a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], top_k: int) -> tuple[torch.Tensor, ...]:
        """SUM: each state a + b. TOPK: the states (values, indices, yx) together, by ``merge_topk``."""
        if self is Reduce.SUM:
            return tuple(x + y for x, y in zip(a, b, strict=True))
        return merge_topk((a[0], a[1], a[2]), (b[0], b[1], b[2]), top_k)


T = TypeVar("T")


class _Attribute(abc.ABC, Generic[T]):
    """A descriptor of ``FeatureStats`` named by the class attribute it is assigned to."""

    name: str

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Self: ...

    @overload
    def __get__(self, obj: FeatureStats, owner: type | None = None) -> T: ...

    def __get__(self, obj: FeatureStats | None, owner: type | None = None) -> Self | T:
        return self if obj is None else self._read(obj)

    @abc.abstractmethod
    def _read(self, obj: FeatureStats) -> T: ...

    @abc.abstractmethod
    def __set__(self, obj: FeatureStats, value: T) -> None: ...


class _FromConfig(_Attribute[T]):
    """The config's attribute of the same name, read-only."""

    def _read(self, obj: FeatureStats) -> T:
        return getattr(obj.config, self.name)

    def __set__(self, obj: FeatureStats, value: T) -> None:
        raise AttributeError(f"{self.name} belongs to the frozen config; build new statistics to change it")


V = TypeVar("V", torch.Tensor, int)


class State(_Attribute[V]):
    """One declared state of ``FeatureStats``: its reduction, and its shape, dtype and fill for a config."""

    def __init__(self, reduce: Reduce, shape: Callable[[StatsConfig], tuple[int, ...]],
                 dtype: torch.dtype | Callable[[StatsConfig], torch.dtype], fill: float = 0.0) -> None:
        self.reduce, self._shape, self._dtype, self.fill = reduce, shape, dtype, fill

    def _read(self, obj: FeatureStats) -> V:
        return obj.__dict__[self.name]

    def __set__(self, obj: FeatureStats, value: V) -> None:
        obj.__dict__[self.name] = value

    def shape(self, config: StatsConfig) -> tuple[int, ...]:
        return self._shape(config)

    def dtype(self, config: StatsConfig) -> torch.dtype:
        return self._dtype if isinstance(self._dtype, torch.dtype) else self._dtype(config)

    @abc.abstractmethod
    def empty(self, config: StatsConfig, device: torch.device) -> V:
        """The value before any image."""

    @abc.abstractmethod
    def as_tensor(self, value: V) -> torch.Tensor:
        """The value as a tensor (for files and collectives)."""

    @abc.abstractmethod
    def from_tensor(self, tensor: torch.Tensor, device: torch.device) -> V:
        """The value held for ``tensor`` by statistics on ``device``."""


class DeviceState(State[torch.Tensor]):
    """A tensor on the statistics' device."""

    def empty(self, config: StatsConfig, device: torch.device) -> torch.Tensor:
        return torch.full(self.shape(config), self.fill, dtype=self.dtype(config), device=device)

    def as_tensor(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def from_tensor(self, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        return tensor.to(device)


class HostCount(State[int]):
    """A sum kept as a Python int on the host (known without waiting for the device), saved as 0-d int64."""

    def __init__(self) -> None:
        super().__init__(Reduce.SUM, lambda c: (), torch.int64)

    def empty(self, config: StatsConfig, device: torch.device) -> int:
        return 0

    def as_tensor(self, value: int) -> torch.Tensor:
        return torch.tensor(value, dtype=torch.int64)

    def from_tensor(self, tensor: torch.Tensor, device: torch.device) -> int:
        return int(tensor)


class FeatureStats:
    """Accumulator of the statistics above: ``update`` per batch, ``merge`` across shards.

    The first class attributes declare the states with their reductions (``STATES``, in this
    order); the next ones read the frozen ``config``.
    """

    gram = DeviceState(Reduce.SUM, lambda c: (c.num_features, c.num_features), lambda c: c.gram_dtype)
    cross = DeviceState(Reduce.SUM, lambda c: (c.num_features, c.num_classes), torch.float64)
    class_counts = DeviceState(Reduce.SUM, lambda c: (c.num_classes,), torch.int64)
    feature_sum = DeviceState(Reduce.SUM, lambda c: (c.num_features,), torch.float64)
    hits = DeviceState(Reduce.SUM, lambda c: (), torch.int64)
    count = HostCount()
    scored = HostCount()
    top_values = DeviceState(Reduce.TOPK, lambda c: (c.num_features, c.top_k), torch.float32, float("-inf"))
    top_indices = DeviceState(Reduce.TOPK, lambda c: (c.num_features, c.top_k), torch.int64, -1)
    top_yx = DeviceState(Reduce.TOPK, lambda c: (c.num_features, c.top_k, 2), torch.int64)

    space = _FromConfig[FeatureSpace]()
    class_names = _FromConfig[tuple[str, ...]]()
    num_classes = _FromConfig[int]()
    response = _FromConfig[str]()
    labels = _FromConfig[str]()
    top_k = _FromConfig[int]()
    map_sizes = _FromConfig[Mapping[str, tuple[int, int]]]()
    input_size = _FromConfig[tuple[int, int] | None]()

    def __init__(self, config: StatsConfig, device: torch.device | str = "cpu") -> None:
        """Empty statistics (no image yet) on ``device``."""
        self.config, self.device = config, torch.device(device)
        for state in STATES:
            state.__set__(self, state.empty(config, self.device))

    @classmethod
    def from_state_dict(cls, config: StatsConfig, state: Mapping[str, torch.Tensor],
                        device: torch.device | str = "cpu") -> FeatureStats:
        """Statistics holding ``state`` (as ``state_dict`` gives it), checked against the declaration."""
        missing = [s.name for s in STATES if s.name not in state]
        if missing:
            raise VebiError(f"the statistics lack {', '.join(missing)}")
        unknown = sorted(set(state) - {s.name for s in STATES})
        if unknown:
            raise VebiError(f"the statistics hold undeclared states {', '.join(unknown)}")
        out = cls.__new__(cls)
        out.config, out.device = config, torch.device(device)
        for s in STATES:
            t, shape, dtype = state[s.name], s.shape(config), s.dtype(config)
            if tuple(t.shape) != shape or t.dtype != dtype:
                raise VebiError(f"state {s.name} is {tuple(t.shape)} {t.dtype}, "
                                f"the configuration gives {shape} {dtype}")
            s.__set__(out, s.from_tensor(t, out.device))
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every declared state by name, as tensors (not copies; host counts as 0-d CPU tensors)."""
        return {s.name: s.as_tensor(s.__get__(self)) for s in STATES}

    def __repr__(self) -> str:
        c = self.config
        return (f"FeatureStats({self.count} images, {c.num_features} features, {c.num_classes} classes, "
                f"response={c.response!r}, labels={c.labels!r}, top_k={c.top_k}, device={self.device})")

    @property
    def correct(self) -> int:
        """Images whose prediction equals their label (reading it waits for the device)."""
        return int(self.hits)

    @property
    def accuracy(self) -> float | None:
        """Share of scored images whose prediction equals their true label (None when none was scored)."""
        return self.correct / self.scored if self.scored and self.labels == "true" else None

    def mean_response(self) -> torch.Tensor:
        """Mean response per feature s / N, (m,) float64."""
        return self.feature_sum / max(self.count, 1)

    def update(self, x: torch.Tensor, labels: torch.Tensor, image_indices: torch.Tensor,
               yx: torch.Tensor, predictions: torch.Tensor | None = None) -> None:
        """Add a batch: x (B, m) responses, labels (B,) class ids, image_indices (B,), yx (B, m, 2).

        ``labels`` are the classes the regression targets (ground truth or predictions, as the
        caller chose); ``predictions``, when given, only count ``correct`` against ``labels``.
        Labels given on the CPU are range-checked there; labels already on an accelerator (the
        model's own predictions) are trusted, so that no value is read back from the device.
        """
        b, m = x.shape
        if m != self.config.num_features:
            raise VebiError(f"response vectors have {m} features, the statistics expect {self.config.num_features}")
        if labels.device.type == "cpu":
            _check_labels(labels, self.num_classes)
        # everything below is queued on the device: no value is read back per batch
        labels = labels.to(self.device, torch.int64, non_blocking=True)
        xg = x.to(self.device, self.config.gram_dtype)
        self.gram.addmm_(xg.T, xg)
        x64 = xg if xg.dtype == torch.float64 else x.to(self.device, torch.float64)
        self.cross.index_add_(1, labels, x64.T)
        self.class_counts.index_add_(0, labels, torch.ones_like(labels))
        self.feature_sum += x64.sum(dim=0)
        self.count += b
        if predictions is not None:
            self.hits += (predictions.to(self.device) == labels).sum()
            self.scored += b
        self._update_topk((x.to(self.device, torch.float32).T,
                           image_indices.to(self.device, torch.int64, non_blocking=True).expand(m, b),
                           yx.to(self.device, torch.int64).transpose(0, 1)))

    def _update_topk(self, new: TopK) -> None:
        old = (self.top_values, self.top_indices, self.top_yx)
        if self.device.type == "cpu":
            # only features where some image reaches the current k-th value can change; finding
            # them has a data-dependent size, which would make an accelerator wait, so CPU only
            rows = (new[0] >= self.top_values[:, -1:]).any(dim=1).nonzero().squeeze(1)
            if len(rows) < len(self.top_values):
                part = merge_topk(tuple(t[rows] for t in old), tuple(t[rows] for t in new), self.top_k)
                for t, p in zip(old, part, strict=True):
                    t[rows] = p
                return
        self.top_values, self.top_indices, self.top_yx = merge_topk(old, new, self.top_k)

    def merge(self, other: FeatureStats) -> FeatureStats:
        """New statistics equal to one pass over both shards' images, on this one's device."""
        config = self.config.joined(other.config)
        return FeatureStats.from_state_dict(config, combine(self.state_dict(), other.to(self.device).state_dict(),
                                                            config.top_k), self.device)

    def to(self, device: torch.device | str) -> FeatureStats:
        """The statistics on another device (tensors already there are shared, as ``Tensor.to`` does)."""
        return FeatureStats.from_state_dict(self.config, self.state_dict(), device)


STATES: tuple[State[Any], ...] = tuple(v for v in vars(FeatureStats).values() if isinstance(v, State))


def combine(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], top_k: int) -> dict[str, torch.Tensor]:
    """The state dict of one pass over two shards, from theirs: each reduction over its declared states."""
    out: dict[str, torch.Tensor] = {}
    for reduce in Reduce:
        names = [s.name for s in STATES if s.reduce is reduce]
        out.update(zip(names, reduce.combine([a[n] for n in names], [b[n] for n in names], top_k), strict=True))
    return out


def _check_labels(labels: torch.Tensor, num_classes: int) -> None:
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise VebiError(f"label {int(bad)} is outside the {num_classes} classes")


def merge_topk(a: TopK, b: TopK, k: int) -> TopK:
    """Keep, per row, the k largest values of a and b together; ties go to the smaller image index.

    Each TopK is (values (m, n), indices (m, n), yx (m, n, 2)); empty slots carry index -1 and
    value -inf and sort last. One ``topk`` over the key (value, -index), packed into an int64,
    makes the order independent of arrival order (image indices below 2^32 - 1).
    """
    values = torch.cat((a[0], b[0]), dim=1)
    indices = torch.cat((a[1], b[1]), dim=1)
    order = _order_key(values, indices).topk(min(k, values.shape[1]), dim=1).indices
    yx = torch.cat((a[2], b[2]), dim=1).gather(1, order[..., None].expand(-1, -1, 2))
    return values.gather(1, order), indices.gather(1, order), yx


def _order_key(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """int64 that sorts like (value, -index): the float32 bits made monotone, then 2^32 - 1 - index."""
    bits = values.float().view(torch.int32)
    monotone = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)
    return (monotone << 32) | torch.where(indices < 0, 0, 0xFFFFFFFF - indices)
