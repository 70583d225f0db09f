"""Deletion and insertion curves: a faithfulness check of heatmaps that needs no masks.

For image x (C, H, W), heatmap h (H, W), class j and N = H * W pixels, rank the pixels by h in
descending order (ties: row-major order, so a constant map is removed from the top-left). At step
k = 0..K (K = ``steps``) the first n_k = floor(k * N / K) ranked pixels (all channels) are

- deletion: replaced by a baseline image b_del, starting from x  (a faithful map drops fast);
- insertion: copied from x into a baseline b_ins, starting from b_ins (a faithful map rises fast);

and the score is the softmax probability p_j of the perturbed image. The area under each curve is
the trapezoid rule over the fraction removed/added in [0, 1]:
AUC = (sum_k p_k - (p_0 + p_K) / 2) / K. Lower deletion AUC and higher insertion AUC are better.

Baseline images: ``"zero"`` (all zeros in model-input space: black for [0, 1] inputs, the dataset
mean colour for mean/std-normalised inputs), ``"mean"`` (each channel's mean over the image),
``"blur"`` (Gaussian blur of x with standard deviation ``sigma`` pixels, default max(H, W) / 20,
kernel 2 * ceil(3 sigma) + 1 capped at the image size, reflect padding). Default ``"zero"`` for
both curves. (RISE, Petsiuk et al. 2018, inserts into a blurred image; but a blur keeps the
colours, so where colour decides the class, as in an8Flower, the blurred image may already be
classified confidently: on a toy of coloured squares the insertion AUC from a blur was 1.000 for
every map, random ones included.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.transforms.functional import gaussian_blur

from vebi.hooks import preserve_model
from vebi.errors import VebiError
from vebi.evaluate.metrics import Estimate, estimate
from vebi.models import in_fast_layout, model_device, model_dtype

BASELINES: tuple[str, ...] = ("blur", "mean", "zero")
MIN_ROWS = 64  # images per forward pass of the curves, at least (more for large batches: 2B)

__all__ = [
    "BASELINES",
    "DeletionInsertion",
    "FaithfulnessResult",
    "baseline_images",
    "curve_auc",
    "endpoint_scores",
    "perturbation_curves",
]


def baseline_images(images: Tensor, kind: str = "zero", *, sigma: float | None = None) -> Tensor:
    """The baseline image b for each image of a (B, C, H, W) batch (see the module docstring)."""
    if kind == "zero":
        return torch.zeros_like(images)
    if kind == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images).clone()
    if kind == "blur":
        height, width = images.shape[-2:]
        s = float(sigma) if sigma is not None else max(height, width) / 20
        if not s > 0:
            raise VebiError(f"blur sigma must be positive, got {sigma}")
        radius = min(math.ceil(3 * s), height - 1, width - 1)
        if radius < 1:
            return images.clone()
        return gaussian_blur(images, [2 * radius + 1, 2 * radius + 1], [s, s])
    raise VebiError(f"unknown deletion/insertion baseline {kind!r}; choose one of {', '.join(BASELINES)}")


def curve_auc(curves: Tensor) -> Tensor:
    """Trapezoid area under (B, K + 1) curves sampled at fractions 0, 1/K, ..., 1; (B,)."""
    k = curves.shape[1] - 1
    if k < 1:
        raise VebiError("a curve needs at least two points")
    return (curves.sum(dim=1) - (curves[:, 0] + curves[:, -1]) / 2) / k


def _check_target(target: Tensor, b: int) -> None:
    if target.shape != (b,) or target.is_floating_point():
        raise VebiError(f"target must be an integer tensor of shape ({b},), got {tuple(target.shape)}")


def _probabilities(model: nn.Module, batch: Tensor, target: Tensor) -> Tensor:
    """Softmax probability of class ``target[b]`` in rows b, B + b, 2B + b, ... of ``batch`` (R blocks of
    B = len(target) images): (R, B) float64 on the CPU."""
    logits = in_fast_layout(model, model, batch)
    if int(target.max()) >= logits.shape[1]:
        raise VebiError(f"target class {int(target.max())} is out of range for a model with {logits.shape[1]} outputs")
    b = target.shape[0]
    probs = logits.float().softmax(dim=1).to(torch.float64).view(-1, b, logits.shape[1])
    return probs.gather(2, target.view(1, b, 1).expand(probs.shape[0], b, 1))[..., 0].cpu()


def _inputs(model: nn.Module, images: Tensor, deletion_baseline: str, insertion_baseline: str,
            sigma: float | None) -> tuple[Tensor, Tensor, Tensor]:
    """x on the model's device and dtype, the deletion baseline and the insertion baseline (the same
    tensor when both are one kind)."""
    device, dtype = model_device(model, images.device), model_dtype(model, images.dtype)
    x = images.detach().to(device=device, dtype=dtype)
    removed = baseline_images(x, deletion_baseline, sigma=sigma)
    start = removed if insertion_baseline == deletion_baseline else baseline_images(x, insertion_baseline, sigma=sigma)
    return x, removed, start


def endpoint_scores(
    model: nn.Module,
    images: Tensor,
    target: Tensor,
    *,
    deletion_baseline: str = "zero",
    insertion_baseline: str = "zero",
    sigma: float | None = None,
) -> Tensor:
    """The curves' points that do not depend on the heatmap, (3, B) float64 on the CPU: the score of x
    (deletion at step 0, insertion at K), of the deletion baseline (deletion at K) and of the insertion
    baseline (insertion at 0). Every heatmap of a batch shares them, so an evaluation of many methods
    scores them once (``endpoints`` of :func:`perturbation_curves`). One forward pass."""
    if images.dim() != 4:
        raise VebiError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    b = images.shape[0]
    _check_target(target, b)
    x, removed, start = _inputs(model, images, deletion_baseline, insertion_baseline, sigma)
    return _endpoints(model, x, removed, start, target.to(device=x.device, dtype=torch.long))


def _endpoints(model: nn.Module, x: Tensor, removed: Tensor, start: Tensor, t: Tensor) -> Tensor:
    with preserve_model(model, freeze=False, no_inplace=False), torch.no_grad():
        scores = _probabilities(model, torch.cat([x, removed] if start is removed else [x, removed, start]), t)
    return torch.cat([scores, scores[1:]]) if start is removed else scores


def perturbation_curves(
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    target: Tensor,
    *,
    steps: int = 20,
    deletion_baseline: str = "zero",
    insertion_baseline: str = "zero",
    sigma: float | None = None,
    endpoints: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Deletion and insertion curves, each (B, steps + 1) float64 on the CPU.

    The model runs in eval mode without gradients (its state is restored afterwards). The points at
    fractions 0 and 1 are :func:`endpoint_scores` (computed here unless ``endpoints`` gives them), so
    2 (K - 1) perturbed images per input are scored, several steps in one forward pass of at most
    max(2B, ``MIN_ROWS``) images.
    """
    if images.dim() != 4:
        raise VebiError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    b, _, height, width = images.shape
    h = heatmaps.detach()
    if h.dim() == 4 and h.shape[1] == 1:
        h = h[:, 0]
    if tuple(h.shape) != (b, height, width):
        raise VebiError(f"heatmaps of shape {tuple(heatmaps.shape)} do not match images of shape {tuple(images.shape)}")
    if not torch.isfinite(h).all():
        raise VebiError("heatmaps contain NaN or infinite values")
    _check_target(target, b)
    if steps < 1:
        raise VebiError(f"steps must be >= 1, got {steps}")
    if endpoints is not None and tuple(endpoints.shape) != (3, b):
        raise VebiError(f"endpoints must be (3, {b}) scores, got {tuple(endpoints.shape)}")
    x, removed, start = _inputs(model, images, deletion_baseline, insertion_baseline, sigma)
    device = x.device
    pixels = height * width
    order = torch.sort(h.to(device).flatten(1), dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(pixels, device=device).expand(b, pixels).contiguous())
    rank = rank.view(b, 1, height, width)
    t = target.to(device=device, dtype=torch.long)

    curves = torch.empty(2, b, steps + 1, dtype=torch.float64)
    ends = (_endpoints(model, x, removed, start, t) if endpoints is None else endpoints).to(torch.float64).cpu()
    curves[0, :, 0] = curves[1, :, steps] = ends[0]
    curves[0, :, steps], curves[1, :, 0] = ends[1], ends[2]
    # the perturbed images, (curve, step) each: made a pass at a time
    jobs = [(curve, k) for k in range(1, steps) for curve in (0, 1)]
    per_pass = max(1, max(2 * b, MIN_ROWS) // b)

    def make(curve: int, k: int) -> Tensor:
        changed = rank < (k * pixels) // steps
        return torch.where(changed, removed, x) if curve == 0 else torch.where(changed, x, start)

    with preserve_model(model, freeze=False, no_inplace=False), torch.no_grad():
        for first in range(0, len(jobs), per_pass):
            group = jobs[first:first + per_pass]
            scores = _probabilities(model, torch.cat([make(*job) for job in group]), t)
            for (curve, k), score in zip(group, scores, strict=True):
                curves[curve, :, k] = score
    deletion, insertion = curves[0], curves[1]
    return deletion, insertion


@dataclass(frozen=True)
class FaithfulnessResult:
    """Mean deletion and insertion curves (per step) and their AUCs over images."""

    steps: int
    deletion_baseline: str
    insertion_baseline: str
    fractions: tuple[float, ...]
    deletion_curve: tuple[Estimate, ...]
    insertion_curve: tuple[Estimate, ...]
    deletion_auc: Estimate
    insertion_auc: Estimate

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "deletion_baseline": self.deletion_baseline,
            "insertion_baseline": self.insertion_baseline,
            "fractions": list(self.fractions),
            "deletion_curve": [e.to_dict() for e in self.deletion_curve],
            "insertion_curve": [e.to_dict() for e in self.insertion_curve],
            "deletion_auc": self.deletion_auc.to_dict(),
            "insertion_auc": self.insertion_auc.to_dict(),
        }

    def curve_rows(self) -> list[dict[str, Any]]:
        """One flat row per step (for CSV)."""
        return [
            {"fraction": f, "deletion": d.mean, "deletion_low": d.low, "deletion_high": d.high,
             "insertion": i.mean, "insertion_low": i.low, "insertion_high": i.high}
            for f, d, i in zip(self.fractions, self.deletion_curve, self.insertion_curve, strict=True)
        ]


class DeletionInsertion:
    """Streaming deletion/insertion curves: ``update(model, images, heatmaps, target)`` per batch."""

    def __init__(self, steps: int = 20, *, deletion_baseline: str = "zero", insertion_baseline: str = "zero",
                 sigma: float | None = None) -> None:
        if steps < 1:
            raise VebiError(f"steps must be >= 1, got {steps}")
        for kind in (deletion_baseline, insertion_baseline):
            if kind not in BASELINES:
                raise VebiError(f"unknown deletion/insertion baseline {kind!r}; choose one of {', '.join(BASELINES)}")
        self.steps, self.sigma = int(steps), sigma
        self.deletion_baseline, self.insertion_baseline = deletion_baseline, insertion_baseline
        self._deletion: list[Tensor] = []
        self._insertion: list[Tensor] = []

    @property
    def count(self) -> int:
        return sum(c.shape[0] for c in self._deletion)

    def curves(self) -> tuple[Tensor, Tensor]:
        """All per-image (deletion, insertion) curves so far, each (N, steps + 1)."""
        empty = torch.zeros(0, self.steps + 1, dtype=torch.float64)
        return (torch.cat(self._deletion) if self._deletion else empty,
                torch.cat(self._insertion) if self._insertion else empty)

    def endpoints(self, model: nn.Module, images: Tensor, target: Tensor) -> Tensor:
        """:func:`endpoint_scores` with this accumulator's baselines, for ``update`` of every map of a batch."""
        return endpoint_scores(model, images, target, deletion_baseline=self.deletion_baseline,
                               insertion_baseline=self.insertion_baseline, sigma=self.sigma)

    def update(self, model: nn.Module, images: Tensor, heatmaps: Tensor, target: Tensor, *,
               endpoints: Tensor | None = None) -> None:
        """Score a batch; ``endpoints``: :meth:`endpoints` of this batch, if already computed."""
        deletion, insertion = perturbation_curves(
            model, images, heatmaps, target, steps=self.steps, deletion_baseline=self.deletion_baseline,
            insertion_baseline=self.insertion_baseline, sigma=self.sigma, endpoints=endpoints,
        )
        self._deletion.append(deletion)
        self._insertion.append(insertion)

    def merge(self, other: DeletionInsertion) -> DeletionInsertion:
        """A new accumulator with this one's images followed by ``other``'s."""
        if other._setup() != self._setup():
            raise VebiError("cannot merge deletion/insertion curves with different steps, baselines or sigma")
        merged = DeletionInsertion(self.steps, deletion_baseline=self.deletion_baseline,
                                   insertion_baseline=self.insertion_baseline, sigma=self.sigma)
        merged._deletion = [*self._deletion, *other._deletion]
        merged._insertion = [*self._insertion, *other._insertion]
        return merged

    def _setup(self) -> tuple[Any, ...]:
        return self.steps, self.deletion_baseline, self.insertion_baseline, self.sigma

    def compute(self, confidence: float = 0.95) -> FaithfulnessResult:
        deletion, insertion = self.curves()
        if deletion.shape[0] == 0:
            raise VebiError("no images were scored")
        fractions: Sequence[float] = [k / self.steps for k in range(self.steps + 1)]
        return FaithfulnessResult(
            self.steps,
            self.deletion_baseline,
            self.insertion_baseline,
            tuple(fractions),
            tuple(estimate(deletion[:, k], confidence) for k in range(self.steps + 1)),
            tuple(estimate(insertion[:, k], confidence) for k in range(self.steps + 1)),
            estimate(curve_auc(deletion), confidence),
            estimate(curve_auc(insertion), confidence),
        )
