"""Localisation scores of heatmaps against ground-truth masks, accumulated batch by batch.

Preprocessing, shared by every score (stated once, applied to every heatmap):

- heatmap h (B, H, W) or (B, 1, H, W), finite: per-image min-max to [0, 1]
  (h - min h) / (max h - min h); a constant map becomes all zeros;
- mask (B, H, W) or (B, 1, H, W) at the heatmap's resolution: ``bool`` as is, integer dtypes
  ``!= 0``, floating dtypes ``>= 0.5``.

Scores per image (M the mask, |.| pixel counts):

- IoU at threshold t: P_t = {h >= t}, IoU_t = |P_t & M| / |P_t | M|; when P_t and M are both empty
  the union is empty and IoU_t = ``empty_iou`` (default 1: nothing predicted, nothing there);
- pointing game: 1 if the first maximum of h (row-major) lies in M, else 0; a constant map points
  nowhere (0), and an empty mask is never hit;
- mass in mask: sum(h * M) / sum(h); an all-zero map has no mass and scores 0.

Each metric keeps the per-image values (so ``merge`` and a single pass agree exactly) and reports
:class:`Estimate`: mean over images and a two-sided Student-t confidence interval of that mean.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from vebi.explanation.postprocess import minmax
from vebi.errors import VebiError

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))

__all__ = [
    "DEFAULT_THRESHOLDS",
    "Estimate",
    "IoUResult",
    "IoUSweep",
    "Localization",
    "LocalizationResult",
    "MassInMask",
    "PointingGame",
    "binarize_masks",
    "estimate",
    "iou_curve",
    "mass_in_mask",
    "normalize_heatmaps",
    "pointing_hits",
]


# ----------------------------------------------------------------------------- per-image functions


def _maps(x: Tensor, what: str) -> Tensor:
    """(B, H, W) or (B, 1, H, W) -> detached (B, H, W); a clear error naming ``what`` otherwise."""
    if not isinstance(x, Tensor):
        raise VebiError(f"{what} must be a tensor, got {type(x).__name__}")
    x = x.detach()
    if x.dim() == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() != 3:
        raise VebiError(f"{what} must be (B, H, W) or (B, 1, H, W), got {tuple(x.shape)}")
    return x


def normalize_heatmaps(heatmaps: Tensor) -> Tensor:
    """(B, H, W) or (B, 1, H, W) finite maps -> (B, H, W) float64, per-image min-max (constant -> 0)."""
    h = _maps(heatmaps, "heatmaps").to(torch.float64)
    if not torch.isfinite(h).all():
        raise VebiError("heatmaps contain NaN or infinite values")
    return minmax(h)


def binarize_masks(masks: Tensor, size: tuple[int, ...] | None = None) -> Tensor:
    """(B, H, W) or (B, 1, H, W) masks -> bool (B, H, W): bool as is, integers != 0, floats >= 0.5.

    ``size`` (B, H, W), when given, must match.
    """
    m = _maps(masks, "masks")
    if size is not None and tuple(m.shape) != tuple(size):
        raise VebiError(f"masks of shape {tuple(m.shape)} do not match heatmaps of shape {tuple(size)}")
    if m.dtype == torch.bool:
        return m
    if m.is_floating_point():
        return m >= 0.5
    return m != 0


def iou_curve(heatmaps: Tensor, masks: Tensor, thresholds: Sequence[float], *, empty_iou: float = 1.0) -> Tensor:
    """IoU_t per image and threshold, (B, T) float64 (see the module docstring for the definition)."""
    return _iou(*_prepared(heatmaps, masks), thresholds, empty_iou)


def pointing_hits(heatmaps: Tensor, masks: Tensor) -> Tensor:
    """1.0 where the first maximum of the map lies inside the mask, else 0.0; (B,) float64."""
    return _pointing(*_prepared(heatmaps, masks))


def mass_in_mask(heatmaps: Tensor, masks: Tensor) -> Tensor:
    """sum(h * M) / sum(h) of the normalised map (0 for an all-zero map); (B,) float64."""
    return _mass(*_prepared(heatmaps, masks))


def _prepared(heatmaps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Normalised maps (B, H, W) float64 and boolean masks of the same size on their device."""
    h = normalize_heatmaps(heatmaps)
    return h, binarize_masks(masks, tuple(h.shape)).to(h.device)


def _iou(h: Tensor, m: Tensor, thresholds: Sequence[float], empty_iou: float) -> Tensor:
    """:func:`iou_curve` of normalised maps h and boolean masks m.

    One pass instead of one per threshold: level(x) = #{t_i <= h(x)}, so [h(x) >= t_i] = [level(x) > i],
    and |P_i| and |P_i & M| are suffix sums of the per-image histograms of the levels (integer counts,
    the same as thresholding each map T times)."""
    ts, order = torch.tensor([float(t) for t in thresholds], dtype=torch.float64, device=h.device).sort()
    b, count = h.shape[0], ts.numel()
    level = torch.bucketize(h.reshape(b, -1), ts, right=True)
    level += torch.arange(b, device=h.device)[:, None] * (count + 1)
    bins = b * (count + 1)
    flat_m = m.reshape(b, -1)

    def above(levels: Tensor) -> Tensor:  # (B, T): per image, how many of ``levels`` exceed i
        return torch.bincount(levels, minlength=bins).view(b, count + 1).flip(1).cumsum(1).flip(1)[:, 1:]

    predicted, inter = above(level.flatten()), above(level[flat_m])
    union = predicted + flat_m.sum(dim=1, keepdim=True) - inter
    inter, union = inter.to(torch.float64), union.to(torch.float64)
    out = torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(union, float(empty_iou)))
    return out[:, order.argsort()]


def _pointing(h: Tensor, m: Tensor) -> Tensor:
    flat = h.flatten(1)
    peak = flat.argmax(dim=1)
    inside = m.flatten(1).gather(1, peak[:, None])[:, 0]
    informative = flat.amax(dim=1) > 0
    return (inside & informative).to(torch.float64)


def _mass(h: Tensor, m: Tensor) -> Tensor:
    total = h.sum(dim=(1, 2))
    inside = (h * m).sum(dim=(1, 2))
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(total))


# ----------------------------------------------------------------------------- estimates


@dataclass(frozen=True)
class Estimate:
    """Mean of n per-image values with a ``confidence`` Student-t interval of the mean.

    low/high = mean -/+ t_{(1+confidence)/2, n-1} * std / sqrt(n), std with n - 1 degrees of freedom;
    with n < 2 the spread is unknown and ``std``, ``low``, ``high`` are None.
    """

    mean: float
    low: float | None
    high: float | None
    std: float | None
    n: int
    confidence: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.lru_cache(maxsize=256)
def _t_quantile(q: float, df: int) -> float:
    """Student-t quantile: ``scipy.special.stdtrit``, which ``scipy.stats.t.ppf`` calls (scipy.stats
    takes ~1 s to import, and ``ppf`` ~0.3 ms a call where an evaluation asks for a few sizes a
    thousand times)."""
    from scipy.special import stdtrit

    return float(stdtrit(df, q))


def estimate(values: Tensor, confidence: float = 0.95) -> Estimate:
    """:class:`Estimate` of a 1-D tensor of per-image values (at least one value)."""
    v = values.detach().to("cpu", torch.float64).flatten()
    n = int(v.numel())
    if n == 0:
        raise VebiError("no images were scored")
    if not 0 < confidence < 1:
        raise VebiError(f"confidence must be in (0, 1), got {confidence}")
    mean = float(v.mean())
    if n < 2:
        return Estimate(mean, None, None, None, n, confidence)
    std = float(v.std(correction=1))
    half = _t_quantile((1 + confidence) / 2, n - 1) * std / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, std, n, confidence)


# ----------------------------------------------------------------------------- streaming metrics

_M = TypeVar("_M", bound="_PerImage")


class _PerImage:
    """Keeps per-image score rows (on the CPU) across ``update`` calls."""

    def __init__(self) -> None:
        self._rows: list[Tensor] = []
        self._empty_masks = 0

    @property
    def count(self) -> int:
        """Images seen so far."""
        return sum(r.shape[0] for r in self._rows)

    @property
    def empty_masks(self) -> int:
        """Images seen so far whose mask is empty."""
        return self._empty_masks

    def per_image(self) -> Tensor:
        """All per-image values so far, in update order (float64, CPU)."""
        if not self._rows:
            return torch.zeros((0, *self._row_shape()), dtype=torch.float64)
        return torch.cat(self._rows)

    def _row_shape(self) -> tuple[int, ...]:
        return ()

    def _score(self, h: Tensor, m: Tensor) -> Tensor:
        """Per-image values of normalised maps h (B, H, W) float64 and boolean masks m on h's device."""
        raise VebiError(f"{type(self).__name__} cannot score")

    def _same_setup(self, other: _PerImage) -> bool:
        return type(self) is type(other)

    def update(self, heatmaps: Tensor, masks: Tensor) -> None:
        """Score a batch: heatmaps (B, H, W) or (B, 1, H, W), masks of the same size."""
        self._update(*_prepared(heatmaps, masks))

    def _update(self, h: Tensor, m: Tensor) -> None:
        self._rows.append(self._score(h, m).detach().to("cpu", torch.float64))
        self._empty_masks += int((~m.flatten(1).any(dim=1)).sum())

    def merge(self: _M, other: _M) -> _M:
        """A new metric holding this one's images followed by ``other``'s (both left unchanged)."""
        if not self._same_setup(other):
            raise VebiError(f"cannot merge {type(self).__name__} with a differently configured {type(other).__name__}")
        merged = self._empty_copy()
        merged._rows = [*self._rows, *other._rows]
        merged._empty_masks = self._empty_masks + other._empty_masks
        return merged

    def _empty_copy(self: _M) -> _M:
        return type(self)()


@dataclass(frozen=True)
class IoUResult:
    """IoU over a threshold sweep: the per-threshold curve, the mean over thresholds (per image,
    then over images) and the threshold with the highest mean IoU (first one on ties; chosen on
    the same images, so optimistic)."""

    thresholds: tuple[float, ...]
    curve: tuple[Estimate, ...]
    mean_over_thresholds: Estimate
    best_threshold: float
    best: Estimate
    empty_iou: float
    empty_masks: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "thresholds": list(self.thresholds),
            "curve": [e.to_dict() for e in self.curve],
            "mean_over_thresholds": self.mean_over_thresholds.to_dict(),
            "best_threshold": self.best_threshold,
            "best": self.best.to_dict(),
            "empty_iou": self.empty_iou,
            "empty_masks": self.empty_masks,
        }

    def curve_rows(self) -> list[dict[str, Any]]:
        """One flat row per threshold (for CSV)."""
        return [{"threshold": t, **e.to_dict()} for t, e in zip(self.thresholds, self.curve, strict=True)]


class IoUSweep(_PerImage):
    """Streaming IoU at each threshold of a sweep (default 0.05, 0.10, ..., 0.95)."""

    def __init__(self, thresholds: Sequence[float] | None = None, *, empty_iou: float = 1.0) -> None:
        super().__init__()
        ts = tuple(float(t) for t in (DEFAULT_THRESHOLDS if thresholds is None else thresholds))
        if not ts or any(not 0 <= t <= 1 for t in ts) or list(ts) != sorted(set(ts)):
            raise VebiError(f"thresholds must be distinct increasing values in [0, 1], got {list(ts)}")
        if not 0 <= empty_iou <= 1:
            raise VebiError(f"empty_iou must be in [0, 1], got {empty_iou}")
        self.thresholds = ts
        self.empty_iou = float(empty_iou)

    def _row_shape(self) -> tuple[int, ...]:
        return (len(self.thresholds),)

    def _score(self, h: Tensor, m: Tensor) -> Tensor:
        return _iou(h, m, self.thresholds, self.empty_iou)

    def _same_setup(self, other: _PerImage) -> bool:
        return (
            isinstance(other, IoUSweep) and other.thresholds == self.thresholds and other.empty_iou == self.empty_iou
        )

    def _empty_copy(self) -> IoUSweep:
        return IoUSweep(self.thresholds, empty_iou=self.empty_iou)

    def compute(self, confidence: float = 0.95) -> IoUResult:
        values = self.per_image()
        curve = tuple(estimate(values[:, i], confidence) for i in range(len(self.thresholds)))
        best = max(range(len(curve)), key=lambda i: (curve[i].mean, -i))
        return IoUResult(
            self.thresholds,
            curve,
            estimate(values.mean(dim=1), confidence),
            self.thresholds[best],
            curve[best],
            self.empty_iou,
            self.empty_masks,
        )


class PointingGame(_PerImage):
    """Streaming pointing game: share of images whose map's maximum lies inside the mask."""

    def _score(self, h: Tensor, m: Tensor) -> Tensor:
        return _pointing(h, m)

    def compute(self, confidence: float = 0.95) -> Estimate:
        return estimate(self.per_image(), confidence)


class MassInMask(_PerImage):
    """Streaming share of the (normalised) heatmap's mass that falls inside the mask."""

    def _score(self, h: Tensor, m: Tensor) -> Tensor:
        return _mass(h, m)

    def compute(self, confidence: float = 0.95) -> Estimate:
        return estimate(self.per_image(), confidence)


@dataclass(frozen=True)
class LocalizationResult:
    """All mask-based scores of one method on one set of images."""

    iou: IoUResult
    pointing: Estimate
    mass_in_mask: Estimate
    images: int
    empty_masks: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "iou": self.iou.to_dict(),
            "pointing": self.pointing.to_dict(),
            "mass_in_mask": self.mass_in_mask.to_dict(),
            "images": self.images,
            "empty_masks": self.empty_masks,
        }

    def summary_row(self) -> dict[str, Any]:
        """One flat row of headline numbers (for a CSV or printed table)."""
        iou, best = self.iou.mean_over_thresholds, self.iou.best
        return {
            "images": self.images,
            "iou_mean": iou.mean,
            "iou_low": iou.low,
            "iou_high": iou.high,
            "best_threshold": self.iou.best_threshold,
            "best_iou": best.mean,
            "best_iou_low": best.low,
            "best_iou_high": best.high,
            "pointing": self.pointing.mean,
            "pointing_low": self.pointing.low,
            "pointing_high": self.pointing.high,
            "mass_in_mask": self.mass_in_mask.mean,
            "mass_in_mask_low": self.mass_in_mask.low,
            "mass_in_mask_high": self.mass_in_mask.high,
            "empty_masks": self.empty_masks,
        }


class Localization:
    """IoU sweep, pointing game and mass in mask together: one ``update`` per batch."""

    def __init__(self, thresholds: Sequence[float] | None = None, *, empty_iou: float = 1.0) -> None:
        self.iou = IoUSweep(thresholds, empty_iou=empty_iou)
        self.pointing = PointingGame()
        self.mass = MassInMask()

    @property
    def count(self) -> int:
        return self.iou.count

    def update(self, heatmaps: Tensor, masks: Tensor) -> None:
        """Score a batch: heatmaps (B, H, W) or (B, 1, H, W), masks of the same size."""
        h, m = _prepared(heatmaps, masks)
        for metric in (self.iou, self.pointing, self.mass):
            metric._update(h, m)

    def merge(self, other: Localization) -> Localization:
        """A new accumulator with this one's images followed by ``other``'s."""
        merged = Localization.__new__(Localization)
        merged.iou = self.iou.merge(other.iou)
        merged.pointing = self.pointing.merge(other.pointing)
        merged.mass = self.mass.merge(other.mass)
        return merged

    def compute(self, confidence: float = 0.95) -> LocalizationResult:
        return LocalizationResult(
            self.iou.compute(confidence),
            self.pointing.compute(confidence),
            self.mass.compute(confidence),
            self.iou.count,
            self.iou.empty_masks,
        )
