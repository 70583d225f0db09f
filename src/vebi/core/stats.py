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
from vebi.core.features import FeatureSpace

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
    scored: int = 0
    gram_dtype: torch.dtype = torch.float64
    gram: torch.Tensor = field(init=False)
    cross: torch.Tensor = field(init=False)
    class_counts: torch.Tensor = field(init=False)
    feature_sum: torch.Tensor = field(init=False)
    top_values: torch.Tensor = field(init=False)
    top_indices: torch.Tensor = field(init=False)
    top_yx: torch.Tensor = field(init=False)
    hits: torch.Tensor = field(init=False, repr=False)  # 0-d count of correct predictions, on the device

    def __post_init__(self) -> None:
        if self.labels not in LABEL_MODES:
            raise VebiError(f"labels must be one of {', '.join(LABEL_MODES)}, not {self.labels!r}")
        if self.top_k < 1:
            raise VebiError(f"top_k must be at least 1, not {self.top_k}")
        if not self.class_names:
            raise VebiError("at least one class is needed")
        if self.gram_dtype not in (torch.float64, torch.float32):
            raise VebiError(f"the Gram matrix is kept in float64 or float32, not {self.gram_dtype}")
        m, c, k, dev = self.space.size, len(self.class_names), self.top_k, torch.device(self.device)
        self.device = dev
        self.gram = torch.zeros(m, m, dtype=self.gram_dtype, device=dev)
        self.cross = torch.zeros(m, c, dtype=torch.float64, device=dev)
        self.class_counts = torch.zeros(c, dtype=torch.int64, device=dev)
        self.feature_sum = torch.zeros(m, dtype=torch.float64, device=dev)
        self.top_values = torch.full((m, k), float("-inf"), dtype=torch.float32, device=dev)
        self.top_indices = torch.full((m, k), -1, dtype=torch.int64, device=dev)
        self.top_yx = torch.zeros(m, k, 2, dtype=torch.int64, device=dev)
        self.hits = torch.zeros((), dtype=torch.int64, device=dev)

    @property
    def correct(self) -> int:
        """Images whose prediction equals their label (reading it waits for the device)."""
        return int(self.hits)

    @correct.setter
    def correct(self, value: int) -> None:
        self.hits = torch.tensor(int(value), dtype=torch.int64, device=self.device)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def update(self, x: torch.Tensor, labels: torch.Tensor, image_indices: torch.Tensor,
               yx: torch.Tensor, predictions: torch.Tensor | None = None) -> None:
        """Add a batch: x (B, m) responses, labels (B,) class ids, image_indices (B,), yx (B, m, 2).

        ``labels`` are the classes the regression targets (ground truth or predictions, as the
        caller chose); ``predictions``, when given, only count ``correct`` against ``labels``.
        Labels given on the CPU are range-checked there; labels already on an accelerator (the
        model's own predictions) are trusted, so that no value is read back from the device.
        """
        b, m = x.shape
        if m != self.space.size:
            raise VebiError(f"response vectors have {m} features, the statistics expect {self.space.size}")
        if labels.device.type == "cpu":
            _check_labels(labels, self.num_classes)
        # everything below is queued on the device: no value is read back per batch
        labels = labels.to(self.device, torch.int64, non_blocking=True)
        xg = x.to(self.device, self.gram_dtype)
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
        """A new accumulator equal to one pass over both shards' images."""
        self._check_compatible(other)
        out = FeatureStats(self.space, self.class_names, self.response, self.labels, self.top_k,
                           {**other.map_sizes, **self.map_sizes}, self.input_size or other.input_size, self.device,
                           gram_dtype=self.gram.dtype)
        out.count = self.count + other.count
        out.hits = self.hits + other.hits.to(self.device)
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
                           dict(self.map_sizes), self.input_size, device, gram_dtype=self.gram.dtype)
        out.count, out.scored = self.count, self.scored
        for name in ("gram", "cross", "class_counts", "feature_sum", "top_values", "top_indices", "top_yx", "hits"):
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


def _check_labels(labels: torch.Tensor, num_classes: int) -> None:
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise VebiError(f"label {int(bad)} is outside the {num_classes} classes")


TopK = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


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
