"""Sanity checks of explanation methods: do the maps depend on what the model learned?

**Cascading model-parameter randomisation.** The model's parameterised layers are taken in
forward order and re-initialised one after another from the output down, cumulatively, in a
deep copy (the caller's model is never changed). After each step every method computes its maps
on the same images for the same classes (the trained model's prediction) and they are compared
with the trained model's maps, image by image:

- Spearman rank correlation rho = Pearson correlation of the pixel ranks (ties share their mean
  rank; :func:`scipy.stats.spearmanr`);
- SSIM (:func:`ssim`), the mean structural similarity of the two [0, 1] maps.

A method whose maps stay similar while the weights that produced the prediction are replaced by
noise does not explain the model. A step is a layer with a weight matrix or kernel (>= 2-D
parameter: convolution, linear) together with the parameterised layers without one that run after
it up to the next such layer (batch norm, ...); a step is named by its first layer. Re-initialised:
weights and biases of the first layer ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (torch's default range
for conv and linear layers), drawn on the CPU from a ``torch.Generator`` seeded by ``seed``, so the
same seed gives the same draws on every device; the other layers by their own ``reset_parameters``
(norm layers: scale 1, shift 0, running statistics reset).

**Data randomisation** (:func:`data_randomisation`): the maps of the trained model against those of
a model of the same architecture trained on permuted labels (``vebi train --shuffle-labels``), for
the trained model's predicted classes.

vebi's methods (``vebi``, ``activation_map``) keep the relevance fitted on the trained model: the
same features (layer, channel) with the same class weights, their responses recomputed by the
randomised network. Randomisation thus tests whether vebi's maps follow the network, not whether
the fit would find other features.

Images whose trained map is constant (no ranking to compare) are left out for that method; a
constant map after randomisation against a non-constant trained one counts as rho = 0.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from vebi.errors import VebiError
from vebi.evaluate.metrics import Estimate, estimate
from vebi.hooks import HookHandles, preserve_model
from vebi.methods.registry import Method, check_images
from vebi.models import model_device, model_dtype

__all__ = ["SanityResult", "cascading_randomisation", "data_randomisation", "randomisation_steps",
           "randomise_layers", "ssim"]


# ----------------------------------------------------------------------------- similarity


def ssim(x: Tensor, y: Tensor, *, data_range: float = 1.0, window: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """Mean structural similarity of ``x`` and ``y`` ((B, H, W) or (B, C, H, W)) per image, shape (B,).

    With Gaussian-weighted local statistics (``window`` x ``window``, std ``sigma``, weights summing
    to 1) mu, sigma^2 and the covariance sigma_xy at every position where the window fits inside
    the image, L = ``data_range``, C1 = (k1 L)^2, C2 = (k2 L)^2::

        SSIM = (2 mu_x mu_y + C1) (2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1) (sigma_x^2 + sigma_y^2 + C2))

    averaged over positions (and channels). Computed in float64.
    """
    if x.shape != y.shape or x.dim() not in (3, 4):
        raise VebiError(f"ssim needs two (B, H, W) or (B, C, H, W) tensors of one shape, got {tuple(x.shape)} "
                        f"and {tuple(y.shape)}")
    if x.shape[-1] < window or x.shape[-2] < window:
        raise VebiError(f"ssim needs images of at least {window} x {window} pixels, got {tuple(x.shape[-2:])}")
    a = x.detach().to(torch.float64)
    b = y.detach().to(a.device, torch.float64)
    if a.dim() == 3:
        a, b = a[:, None], b[:, None]
    batch, channels = a.shape[:2]
    a = a.reshape(batch * channels, 1, *a.shape[-2:])
    b = b.reshape(batch * channels, 1, *b.shape[-2:])
    offsets = torch.arange(window, dtype=torch.float64, device=a.device) - (window - 1) / 2
    g = torch.exp(-offsets**2 / (2 * sigma**2))
    g = g / g.sum()
    # the Gaussian window is separable: one pass along rows, one along columns, all five maps at once
    stacked = torch.cat((a, b, a * a, b * b, a * b))
    local = F.conv2d(F.conv2d(stacked, g.view(1, 1, 1, window)), g.view(1, 1, window, 1))
    mu_a, mu_b, aa, bb, ab = local.chunk(5)
    var_a = aa - mu_a**2
    var_b = bb - mu_b**2
    cov = ab - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return index.reshape(batch, -1).mean(dim=1)


def average_ranks(values: Tensor) -> Tensor:
    """Ranks 1..N of each row of (B, N) ``values`` in float64, ties sharing their mean rank (as
    :func:`scipy.stats.rankdata`): a tie group at sorted positions s..e (0-based) ranks (s + e) / 2 + 1."""
    v = values.detach().to(torch.float64)
    ordered, order = v.sort(dim=1, stable=True)
    n = v.shape[1]
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    index = torch.arange(n, device=v.device).expand_as(order)
    first = torch.where(starts, index, 0).cummax(dim=1).values
    last = torch.where(ends, index, n).flip(1).cummin(dim=1).values.flip(1)
    return torch.empty_like(v).scatter_(1, order, (first + last).to(torch.float64) / 2 + 1)


def _spearman(reference: Tensor, other: Tensor, reference_ranks: Tensor | None = None) -> Tensor:
    """Per image rank correlation of two (B, H, W) maps; NaN where ``reference`` is constant, 0 where
    only ``other`` is. The Pearson correlation of the rows' average ranks (:func:`average_ranks`; pass
    ``reference_ranks`` to rank the reference once for many others), all images at once: equal to
    :func:`scipy.stats.spearmanr` image by image."""
    ref = reference.detach().to("cpu", torch.float64).flatten(1)
    oth = other.detach().to("cpu", torch.float64).flatten(1)
    if ref.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64)
    rr = average_ranks(ref) if reference_ranks is None else reference_ranks
    ro = average_ranks(oth)
    rr = rr - rr.mean(dim=1, keepdim=True)
    ro = ro - ro.mean(dim=1, keepdim=True)
    rho = ((rr * ro).sum(dim=1) / ((rr * rr).sum(dim=1) * (ro * ro).sum(dim=1)).sqrt()).clamp(-1.0, 1.0)
    rho[oth.amax(dim=1) <= oth.amin(dim=1)] = 0.0
    rho[ref.amax(dim=1) <= ref.amin(dim=1)] = math.nan
    return rho


# ----------------------------------------------------------------------------- randomisation


def _forward_order(model: nn.Module, images: Tensor) -> list[str]:
    """Names of the modules that own parameters, in the order they finish in a forward pass of one image."""
    owners = {name: m for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
    order: list[str] = []
    with HookHandles() as handles:
        for name, module in owners.items():
            def hook(_m: nn.Module, _i: Any, _o: Any, _name: str = name) -> None:
                if _name not in order:
                    order.append(_name)

            handles.append(module.register_forward_hook(hook))
        x = images[:1].detach().to(model_device(model, images.device), model_dtype(model, images.dtype))
        with preserve_model(model), torch.no_grad():
            model(x)
    return order


def _has_kernel(module: nn.Module) -> bool:
    return any(p.dim() >= 2 for p in module.parameters(recurse=False))


def randomisation_steps(model: nn.Module, images: Tensor) -> tuple[tuple[str, ...], ...]:
    """The layer groups randomised one after another, output first (see the module docstring).

    Each group is a layer with a >= 2-D parameter followed by the parameterised layers without one
    that run after it; modules not run by the forward pass of ``images[:1]`` are left out.
    """
    check_images(images)
    groups: list[list[str]] = []
    for name in _forward_order(model, images):
        if _has_kernel(model.get_submodule(name)) or not groups:
            groups.append([name])
        else:
            groups[-1].append(name)
    if not groups:
        raise VebiError("the model has no parameters to randomise")
    return tuple(tuple(g) for g in reversed(groups))


@torch.no_grad()
def _reinitialise(module: nn.Module, generator: torch.Generator) -> None:
    params = list(module.parameters(recurse=False))
    kernels = [p for p in params if p.dim() >= 2]
    if not kernels:
        if not hasattr(module, "reset_parameters"):
            raise VebiError(f"cannot re-initialise {type(module).__name__}: it has no >= 2-D weight and no "
                            "reset_parameters()")
        module.reset_parameters()
        return
    bound = 1.0 / math.sqrt(max(kernels[0][0].numel(), 1))
    for p in params:
        draw = torch.empty(p.shape, dtype=torch.float64).uniform_(-bound, bound, generator=generator)
        p.copy_(draw.to(p.device, p.dtype))


def randomise_layers(model: nn.Module, names: Sequence[str], generator: torch.Generator) -> None:
    """Re-initialise the named modules of ``model`` in place (in the given order, from ``generator``)."""
    for name in names:
        _reinitialise(model.get_submodule(name), generator)


# ----------------------------------------------------------------------------- result


@dataclass(frozen=True)
class SanityResult:
    """Similarity of each method's maps to its trained-model maps after each randomisation step.

    ``steps[s]``: the name of step s (cumulative: steps 0..s are randomised); ``layers[s]``: the
    modules re-initialised at that step. ``spearman[method][s]`` / ``ssim[method][s]``: mean over
    images with its 95 % interval; ``compared[method]``: images compared (trained map not constant).
    ``kind``: "cascading" or "data"; ``ssim_window``: 11, or the largest odd size that fits smaller maps.
    """

    kind: str
    methods: tuple[str, ...]
    steps: tuple[str, ...]
    layers: tuple[tuple[str, ...], ...]
    spearman: dict[str, tuple[Estimate, ...]]
    ssim: dict[str, tuple[Estimate, ...]]
    compared: dict[str, int]
    images: int
    seed: int
    ssim_window: int = 11

    def rows(self) -> list[dict[str, Any]]:
        """One row per method and step (the CSV table)."""
        rows = []
        for method in self.methods:
            for s, step in enumerate(self.steps):
                rho, sim = self.spearman[method][s], self.ssim[method][s]
                rows.append({"method": method, "step": s + 1, "randomised_down_to": step,
                             "spearman_mean": rho.mean, "spearman_low": rho.low, "spearman_high": rho.high,
                             "ssim_mean": sim.mean, "ssim_low": sim.low, "ssim_high": sim.high,
                             "images": self.compared[method]})
        return rows

    def final(self, method: str) -> tuple[Estimate, Estimate]:
        """(Spearman, SSIM) of ``method`` at the last step (everything randomised)."""
        return self.spearman[method][-1], self.ssim[method][-1]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "methods": list(self.methods), "steps": list(self.steps),
                "layers": [list(g) for g in self.layers], "images": self.images, "seed": self.seed,
                "compared": dict(self.compared), "ssim_window": self.ssim_window,
                "spearman": {m: [e.to_dict() for e in v] for m, v in self.spearman.items()},
                "ssim": {m: [e.to_dict() for e in v] for m, v in self.ssim.items()}}


def _estimate(values: Tensor) -> Estimate:
    kept = values[~torch.isnan(values)]
    return estimate(kept) if kept.numel() else Estimate(math.nan, None, None, None, 0)


def _maps(methods: Sequence[Method], model: nn.Module, images: Tensor, target: Tensor,
          batch_size: int) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for method in methods:
        parts = [method.maps(model, images[i:i + batch_size], target[i:i + batch_size]).detach().float().cpu()
                 for i in range(0, images.shape[0], batch_size)]
        out[method.name] = torch.cat(parts)
    return out


def _predicted(model: nn.Module, images: Tensor) -> Tensor:
    with preserve_model(model, freeze=False, no_inplace=False), torch.no_grad():
        logits = model(images)
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise VebiError("the model must return class scores of shape (B, classes)")
    return logits.argmax(dim=1)


def _prepare(model: nn.Module, images: Tensor, methods: Sequence[Method]) -> Tensor:
    check_images(images)
    if not images.shape[0]:
        raise VebiError("the sanity checks need at least one image")
    names = [m.name for m in methods]
    if not methods or len(set(names)) != len(names):
        raise VebiError(f"the sanity checks need one or more methods, each once; got {names}")
    return images.detach().to(model_device(model, images.device), model_dtype(model, images.dtype))


def _compare(kind: str, trained: dict[str, Tensor], others: Sequence[dict[str, Tensor]], steps: Sequence[str],
             layers: Sequence[Sequence[str]], images: int, seed: int) -> SanityResult:
    spearman: dict[str, tuple[Estimate, ...]] = {}
    similarity: dict[str, tuple[Estimate, ...]] = {}
    compared: dict[str, int] = {}
    side = min(next(iter(trained.values())).shape[-2:])
    window = min(11, side if side % 2 else side - 1)
    for name, reference in trained.items():
        ranks = average_ranks(reference.detach().to("cpu").flatten(1))
        rhos = [_spearman(reference, other[name], ranks) for other in others]
        valid = ~torch.isnan(rhos[0])
        compared[name] = int(valid.sum())
        spearman[name] = tuple(_estimate(r) for r in rhos)
        similarity[name] = tuple(_estimate(ssim(reference[valid], other[name][valid], window=window))
                                 if bool(valid.any())
                                 else _estimate(torch.full((1,), math.nan)) for other in others)
    return SanityResult(kind, tuple(trained), tuple(steps), tuple(tuple(g) for g in layers), spearman, similarity,
                        compared, images, seed, window)


def cascading_randomisation(model: nn.Module, images: Tensor, methods: Sequence[Method], *, seed: int = 0,
                            batch_size: int = 16, progress: bool = False) -> SanityResult:
    """The cascading randomisation test of ``methods`` (built by :func:`vebi.methods.build_method`)
    on ``images`` (B, C, H, W); see the module docstring. ``model`` is left as it was."""
    x = _prepare(model, images, methods)
    target = _predicted(model, x)
    groups = randomisation_steps(model, x)
    trained = _maps(methods, model, x, target, batch_size)
    randomised = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(int(seed))
    others = []
    for group in tqdm(groups, desc="sanity", unit="step", disable=not progress):
        randomise_layers(randomised, group, generator)
        others.append(_maps(methods, randomised, x, target, batch_size))
    return _compare("cascading", trained, others, [g[0] for g in groups], groups, x.shape[0], int(seed))


def data_randomisation(model: nn.Module, random_label_model: nn.Module, images: Tensor, methods: Sequence[Method],
                       *, batch_size: int = 16) -> SanityResult:
    """Maps of ``model`` against those of ``random_label_model`` (same architecture, trained on permuted
    labels), both for ``model``'s predicted classes; one step named "random labels"."""
    x = _prepare(model, images, methods)
    target = _predicted(model, x)
    trained = _maps(methods, model, x, target, batch_size)
    other = _maps(methods, random_label_model, x.to(model_device(random_label_model, x.device)),
                  target.to(model_device(random_label_model, x.device)), batch_size)
    return _compare("data", trained, [other], ["random labels"], [()], x.shape[0], 0)
