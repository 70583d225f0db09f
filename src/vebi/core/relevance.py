"""Relevant features per class: the non-zero weights of the mu-LASSO solution W (m x C)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from vebi.errors import VebiError, VebiWarning
from vebi.core.features import FeatureSpace
from vebi.core.stats import FeatureStats


@dataclass(frozen=True)
class RelevantFeature:
    """Feature (layer, channel) with weight w_{f,j} != 0 for some class j."""

    index: int
    layer: str
    channel: int
    weight: float

    @property
    def sign(self) -> int:
        return 1 if self.weight > 0 else -1


@dataclass(frozen=True)
class Relevance:
    """W = [w_1 .. w_C], w_j = argmin ||X w - l_j||^2 s.t. ||w||_1 <= mu, over the features of ``space``.

    ``outputs[j]`` is the model output of column j (None: column j is output j), see
    :class:`vebi.classes.ClassMap`; targets given to the explanation methods are model outputs.
    """

    weights: torch.Tensor
    space: FeatureSpace
    class_names: tuple[str, ...]
    mu: float
    response: str = "energy"
    tolerance: float = 0.0
    outputs: tuple[int, ...] | None = None
    features_per_class: int | None = None  # the target mu was chosen for (None: mu was given)

    def __post_init__(self) -> None:
        if tuple(self.weights.shape) != (self.space.size, len(self.class_names)):
            raise VebiError(f"weights of shape {tuple(self.weights.shape)} do not fit "
                            f"{self.space.size} features x {len(self.class_names)} classes")
        if self.outputs is not None and len(self.outputs) != len(self.class_names):
            raise VebiError(f"{len(self.outputs)} model outputs for {len(self.class_names)} classes")

    def columns(self, outputs: torch.Tensor) -> torch.Tensor:
        """Model outputs -> columns of W (-1 where an output is none of the run's classes)."""
        if self.outputs is None:
            return torch.where(outputs.long() < self.num_classes, outputs.long(), -1)
        return positions(outputs, self.outputs)

    def output(self, column: int) -> int:
        """The model output of column ``column``."""
        return column if self.outputs is None else self.outputs[column]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_index(self, cls: int | str) -> int:
        if isinstance(cls, str):
            if cls not in self.class_names:
                raise VebiError(f"unknown class {cls!r}; classes are {', '.join(self.class_names)}")
            return self.class_names.index(cls)
        if not 0 <= cls < self.num_classes:
            raise VebiError(f"class index {cls} is outside 0..{self.num_classes - 1}")
        return cls

    def relevant(self, cls: int | str) -> tuple[RelevantFeature, ...]:
        """Features with |w_{f,j}| > tolerance, sorted by |weight| descending (ties: lower index)."""
        j = self.class_index(cls)
        w = self.weights[:, j].detach().cpu()
        nonzero = torch.nonzero(w.abs() > self.tolerance).flatten().tolist()
        nonzero.sort(key=lambda i: (-abs(float(w[i])), i))
        out = []
        for i in nonzero:
            f = self.space.feature(i)
            out.append(RelevantFeature(i, f.layer, f.channel, float(w[i])))
        return tuple(out)

    def relevant_counts(self) -> list[int]:
        return [len(self.relevant(j)) for j in range(self.num_classes)]

    def union(self) -> tuple[int, ...]:
        """Indices of the features relevant to at least one class."""
        mask = (self.weights.abs() > self.tolerance).any(dim=1)
        return tuple(torch.nonzero(mask).flatten().tolist())


def positions(values: torch.Tensor, table: tuple[int, ...]) -> torch.Tensor:
    """Position of each value in ``table`` (-1 where absent), on the values' device; nothing is read back."""
    entries = torch.tensor(table, dtype=torch.int64, device=values.device)
    same = values.long()[None, :] == entries[:, None]
    return torch.where(same.any(dim=0), same.int().argmax(dim=0), -1)


def fit_relevance(stats: FeatureStats, mu: float = 10.0, *, features_per_class: int | None = None,
                  tolerance: float = 1e-10, progress: bool = False, **solver_options) -> Relevance:
    """Solve the mu-LASSO for every class from (G, B) of ``stats`` (no pass over the images).

    With ``features_per_class`` = N, ``mu`` is ignored and found instead: the L1 budget whose fit
    has, averaged over the classes, the count of relevant features nearest N (a bracket by factors
    of 4, then bisection on log mu; about 10-15 solves). Weights with |w| <= ``tolerance`` are
    treated as zero when listing relevant features.
    """
    from vebi.core.lasso import solve_mu_lasso

    if not (0 < mu < float("inf")):
        raise VebiError(f"mu must be a positive finite number, not {mu}")
    if features_per_class is not None and (isinstance(features_per_class, bool)
                                           or not isinstance(features_per_class, int) or features_per_class < 1):
        raise VebiError(f"features per class must be a whole number >= 1, not {features_per_class!r}")
    if stats.count == 0:
        raise VebiError("the statistics hold no images")
    empty = [n for n, c in zip(stats.class_names, stats.class_counts.tolist(), strict=True) if c == 0]
    if empty and stats.labels == "true":
        raise VebiError(f"class(es) with no images: {', '.join(empty)}")

    def solve(budget: float) -> torch.Tensor:
        return solve_mu_lasso(stats.gram, stats.cross, budget, **solver_options).detach().to("cpu", torch.float64)

    if features_per_class is None:
        weights = solve(float(mu))
    else:
        mu, weights = _mu_for_count(solve, features_per_class, tolerance, progress)
    return Relevance(weights, stats.space, stats.class_names, float(mu), stats.response, tolerance,
                     features_per_class=features_per_class)


_MU_RANGE = (1e-6, 1e6)


def _mu_for_count(solve, target: int, tolerance: float, progress: bool) -> tuple[float, torch.Tensor]:
    """(mu, W) whose mean count of |w| > tolerance per class is nearest ``target`` (ties: smaller mu).

    The count grows with mu (almost always: a feature may leave the path as another joins), so a
    bracket [lo, hi] with count(lo) < target <= count(hi) is narrowed by bisection on log mu.
    """
    tried: dict[float, tuple[float, torch.Tensor]] = {}
    bar = tqdm(desc=f"mu for {target} features per class", unit="fit", disable=not progress)

    def count(mu: float) -> float:
        if mu not in tried:
            W = solve(mu)
            tried[mu] = (float((W.abs() > tolerance).sum(0).double().mean()), W)
            bar.update()
            bar.set_postfix(mu=f"{mu:.4g}", features=f"{tried[mu][0]:.1f}")
        return tried[mu][0]

    try:
        lo = hi = 1.0
        if count(1.0) < target:
            while count(hi) < target and hi < _MU_RANGE[1]:
                lo, hi = hi, hi * 4
        else:
            while count(lo) >= target and lo > _MU_RANGE[0]:
                lo, hi = lo / 4, lo
        if count(lo) < target <= count(hi):
            for _ in range(12):
                mid = math.sqrt(lo * hi)
                if count(mid) < target:
                    lo = mid
                else:
                    hi = mid
                if round(count(mid)) == target or hi / lo < 1.001:
                    break
    finally:
        bar.close()
    mu = min(tried, key=lambda k: (abs(tried[k][0] - target), k))
    found = tried[mu][0]
    if abs(found - target) > max(0.5, 0.25 * target):
        warnings.warn(f"no mu gives about {target} relevant features per class: the nearest, mu = {mu:.4g}, "
                      f"gives {found:.1f} on average", VebiWarning, stacklevel=3)
    return mu, tried[mu][1]
