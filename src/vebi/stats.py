"""Streaming sufficient statistics of the response vectors, mergeable across batches and processes.

For responses x_i (rows of X, N x m) and one-hot labels l_i (rows of L, N x C):
  G = X^T X (m x m, float64),  B = X^T L (m x C, float64),  N,  n_c (per-class counts),
  s = X^T 1 (per-feature sums),  and per feature its top-K images (x value, image index, (y, x)
  of the feature map's maximum). All are sums or order statistics, so ``merge`` of two halves
  equals one pass over both (ties in the top-K broken by the smaller image index).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vebi.errors import VebiError
from vebi.features import FeatureSpace

LABEL_MODES: tuple[str, ...] = ("true", "predicted")


@dataclass
class FeatureStats:
    """Accumulator of the statistics above; ``update`` per batch, ``merge`` across shards."""

    space: FeatureSpace
    class_names: tuple[str, ...]
    response: str = "energy"
    labels: str = "true"
    top_k: int = 100
    map_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    input_size: tuple[int, int] | None = None
    device: torch.device | str = "cpu"
    count: int = 0
    correct: int = 0
    scored: int = 0
    gram: torch.Tensor = field(init=False)
    cross: torch.Tensor = field(init=False)
    class_counts: torch.Tensor = field(init=False)
    feature_sum: torch.Tensor = field(init=False)
    top_values: torch.Tensor = field(init=False)
    top_indices: torch.Tensor = field(init=False)
    top_yx: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        if self.labels not in LABEL_MODES:
            raise VebiError(f"labels must be one of {', '.join(LABEL_MODES)}, not {self.labels!r}")
        if self.top_k < 1:
            raise VebiError(f"top_k must be at least 1, not {self.top_k}")
        if not self.class_names:
            raise VebiError("at least one class is needed")
        m, c, k, dev = self.space.size, len(self.class_names), self.top_k, torch.device(self.device)
        self.device = dev
        self.gram = torch.zeros(m, m, dtype=torch.float64, device=dev)
        self.cross = torch.zeros(m, c, dtype=torch.float64, device=dev)
        self.class_counts = torch.zeros(c, dtype=torch.int64, device=dev)
        self.feature_sum = torch.zeros(m, dtype=torch.float64, device=dev)
        self.top_values = torch.full((m, k), float("-inf"), dtype=torch.float32, device=dev)
        self.top_indices = torch.full((m, k), -1, dtype=torch.int64, device=dev)
        self.top_yx = torch.zeros(m, k, 2, dtype=torch.int64, device=dev)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def update(self, x: torch.Tensor, labels: torch.Tensor, image_indices: torch.Tensor,
               yx: torch.Tensor, predictions: torch.Tensor | None = None) -> None:
        """Add a batch: x (B, m) responses, labels (B,) class ids, image_indices (B,), yx (B, m, 2).

        ``labels`` are the classes the regression targets (ground truth or predictions, as the
        caller chose); ``predictions``, when given, only count ``correct`` against ``labels``.
        """
        b, m = x.shape
        if m != self.space.size:
            raise VebiError(f"response vectors have {m} features, the statistics expect {self.space.size}")
        labels = labels.to(self.device, torch.int64)
        if b and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise VebiError(f"label {int(labels.max())} is outside the {self.num_classes} classes")
        x64 = x.to(self.device, torch.float64)
        self.gram.addmm_(x64.T, x64)
        self.cross.index_add_(1, labels, x64.T)
        self.class_counts += torch.bincount(labels, minlength=self.num_classes)
        self.feature_sum += x64.sum(dim=0)
        self.count += b
        if predictions is not None:
            self.correct += int((predictions.to(self.device) == labels).sum())
            self.scored += b
        self.top_values, self.top_indices, self.top_yx = merge_topk(
            (self.top_values, self.top_indices, self.top_yx),
            (x.to(self.device, torch.float32).T, image_indices.to(self.device, torch.int64).expand(m, b),
             yx.to(self.device, torch.int64).transpose(0, 1)),
            self.top_k,
        )

    def merge(self, other: FeatureStats) -> FeatureStats:
        """A new accumulator equal to one pass over both shards' images."""
        self._check_compatible(other)
        out = FeatureStats(self.space, self.class_names, self.response, self.labels, self.top_k,
                           {**other.map_sizes, **self.map_sizes}, self.input_size or other.input_size, self.device)
        out.count = self.count + other.count
        out.correct = self.correct + other.correct
        out.scored = self.scored + other.scored
        out.gram = self.gram + other.gram.to(self.device)
        out.cross = self.cross + other.cross.to(self.device)
        out.class_counts = self.class_counts + other.class_counts.to(self.device)
        out.feature_sum = self.feature_sum + other.feature_sum.to(self.device)
        out.top_values, out.top_indices, out.top_yx = merge_topk(
            (self.top_values, self.top_indices, self.top_yx),
            (other.top_values.to(self.device), other.top_indices.to(self.device), other.top_yx.to(self.device)),
            self.top_k,
        )
        return out

    def to(self, device: torch.device | str) -> FeatureStats:
        """A copy on another device."""
        out = FeatureStats(self.space, self.class_names, self.response, self.labels, self.top_k,
                           dict(self.map_sizes), self.input_size, device)
        out.count, out.correct, out.scored = self.count, self.correct, self.scored
        for name in ("gram", "cross", "class_counts", "feature_sum", "top_values", "top_indices", "top_yx"):
            setattr(out, name, getattr(self, name).to(out.device))
        return out

    def mean_response(self) -> torch.Tensor:
        """Mean response per feature, (m,) float64."""
        return self.feature_sum / max(self.count, 1)

    @property
    def accuracy(self) -> float | None:
        """Share of scored images whose prediction equals their true label (None when none was scored)."""
        return self.correct / self.scored if self.scored and self.labels == "true" else None

    def _check_compatible(self, other: FeatureStats) -> None:
        for name in ("space", "class_names", "response", "labels", "top_k"):
            if getattr(self, name) != getattr(other, name):
                raise VebiError(f"cannot merge statistics with different {name}: "
                                f"{getattr(self, name)!r} vs {getattr(other, name)!r}")


TopK = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def merge_topk(a: TopK, b: TopK, k: int) -> TopK:
    """Keep, per row, the k largest values of a and b together; ties go to the smaller image index.

    Each TopK is (values (m, n), indices (m, n), yx (m, n, 2)); empty slots carry index -1 and
    value -inf and sort last. Two stable sorts make the order independent of arrival order.
    """
    values = torch.cat((a[0], b[0]), dim=1)
    indices = torch.cat((a[1], b[1]), dim=1)
    yx = torch.cat((a[2], b[2]), dim=1)
    key = torch.where(indices < 0, torch.iinfo(torch.int64).max, indices)
    order = torch.argsort(key, dim=1, stable=True)
    values, indices = values.gather(1, order), indices.gather(1, order)
    yx = yx.gather(1, order[..., None].expand(-1, -1, 2))
    order = torch.argsort(values, dim=1, descending=True, stable=True)[:, :k]
    return values.gather(1, order), indices.gather(1, order), yx.gather(1, order[..., None].expand(-1, -1, 2))
