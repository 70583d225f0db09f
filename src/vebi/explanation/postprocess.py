"""Post-processing shared by every heatmap: vebi's own maps, the baselines and the metrics.

- gradient-space maps a (B, C, H, W): h = ||max(a, 0)||_2 over C (positive part, then L2 over
  colour channels), then per-image min-max;
- layer-space maps (CAMs, activation maps) h (B, H, W): max(h, 0), then per-image min-max;
- min-max: h <- (h - min h) / (max h - min h); a constant map (max == min) becomes all zeros, never NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["minmax", "postprocess_gradient", "postprocess_map"]


def minmax(maps: Tensor) -> Tensor:
    """Per-image min-max of (B, H, W) maps to [0, 1]; a constant map becomes zeros (no NaN)."""
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    out = torch.where(span > 0, (flat - low) / safe, torch.zeros_like(flat))
    return out.reshape(maps.shape)


def postprocess_map(maps: Tensor) -> Tensor:
    """Layer-space maps (B, H, W): positive part, then per-image min-max to [0, 1]."""
    return minmax(maps.float().clamp_min(0))


def postprocess_gradient(attributions: Tensor) -> Tensor:
    """Input-space maps (B, C, H, W): positive part, L2 norm over C, per-image min-max to [0, 1]."""
    # square-sum-sqrt: linalg.vector_norm over dim 1 of a (B, C, H, W) tensor is ~10x slower on CPU
    return minmax(attributions.float().clamp_min(0).square().sum(dim=1).sqrt())
