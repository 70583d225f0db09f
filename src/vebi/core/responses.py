"""Per-feature response functions: pool each channel's map to one number, then normalise.

For layer l with activation A_l (B x C_l x H_l x W_l):
- ``energy``: s_{l,f} = sum_{u,v} A_{l,f}(u,v)^2 (METHOD.md default),
- ``max``: s_{l,f} = max_{u,v} A_{l,f}(u,v),   ``mean``: s_{l,f} = mean_{u,v} A_{l,f}(u,v);
then x_{l,f} = s_{l,f} / sum_f' |s_{l,f'}| (L1 within the layer), layers concatenated, x /= ||x||_2.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from vebi.errors import VebiError
from vebi.core.features import FeatureSpace

RESPONSES: tuple[str, ...] = ("energy", "max", "mean")
_EPS = 1e-12


def check_response(kind: str) -> str:
    if kind not in RESPONSES:
        raise VebiError(f"unknown response function {kind!r}; choose one of {', '.join(RESPONSES)}")
    return kind


def as_maps(activation: torch.Tensor) -> torch.Tensor:
    """View an activation as (B, C, H, W) maps: (B, C) outputs become 1 x 1 maps."""
    if activation.dim() == 4:
        return activation
    if activation.dim() == 2:
        return activation[:, :, None, None]
    if activation.dim() == 3:
        return activation[:, :, None, :]
    raise VebiError(f"cannot use a layer output of shape {tuple(activation.shape)} as feature maps")


def pool(activation: torch.Tensor, kind: str = "energy") -> torch.Tensor:
    """(B, C, H, W) -> (B, C): the raw per-channel score s before normalisation (float32)."""
    a = as_maps(activation).float()
    if kind == "energy":
        return a.square().sum(dim=(2, 3))
    if kind == "max":
        return a.amax(dim=(2, 3))
    if kind == "mean":
        return a.mean(dim=(2, 3))
    raise VebiError(f"unknown response function {kind!r}; choose one of {', '.join(RESPONSES)}")


def argmax_yx(activation: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 2) int64: (y, x) of each channel's maximum (first one on ties)."""
    a = as_maps(activation)
    flat = a.flatten(2).argmax(dim=2)
    width = a.shape[3]
    return torch.stack((flat // width, flat % width), dim=2)


def normalise(pooled: list[torch.Tensor]) -> torch.Tensor:
    """L1-normalise each layer's (B, C_l) block, concatenate, L2-normalise each row."""
    blocks = [p / p.abs().sum(dim=1, keepdim=True).clamp_min(_EPS) for p in pooled]
    x = torch.cat(blocks, dim=1)
    return x / x.norm(dim=1, keepdim=True).clamp_min(_EPS)


def responses(activations: Mapping[str, torch.Tensor], space: FeatureSpace, kind: str = "energy") -> torch.Tensor:
    """Response vectors x (B, m) for the layers of ``space`` from their activations."""
    return normalise([pool(activations[layer], kind) for layer in space.layers])
