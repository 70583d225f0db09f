"""Procedural backgrounds composited behind the rendered flower: plain, gradient and textures.

Every pattern is defined in normalised image coordinates, so one background looks the same
at any resolution; all randomness comes from the stored parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.ndimage import map_coordinates

KINDS: tuple[str, ...] = ("plain", "gradient", "stripes", "checker", "blobs")


@dataclass(frozen=True)
class Background:
    """A background: its kind, two sRGB colours, an orientation (degrees), a scale and a noise seed."""

    kind: str
    colour_a: tuple[float, float, float]
    colour_b: tuple[float, float, float]
    angle: float
    scale: float  # stripe / checker period as a fraction of the image side
    seed: int  # seeds the low-frequency noise of "blobs"

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> Background:
        return Background(d["kind"], tuple(d["colour_a"]), tuple(d["colour_b"]), d["angle"], d["scale"], d["seed"])


def sample_background(rng: np.random.Generator) -> Background:
    """Draw a background (a fixed number of draws whatever the kind)."""
    kind = KINDS[int(rng.integers(len(KINDS)))]
    colours = rng.uniform(0.05, 0.95, size=(2, 3))
    return Background(
        kind=kind,
        colour_a=tuple(float(c) for c in colours[0]),
        colour_b=tuple(float(c) for c in colours[1]),
        angle=float(rng.uniform(0.0, 180.0)),
        scale=float(rng.uniform(0.12, 0.4)),
        seed=int(rng.integers(2**31)),
    )


def _smooth_square(phase: np.ndarray, pixel: float) -> np.ndarray:
    """A square wave in [0, 1] of period 1 whose edges are ramps about one pixel wide (no aliasing)."""
    tri = np.abs((phase % 1.0) - 0.5) * 2.0  # 1 at the period's start, 0 in the middle
    return np.clip((tri - 0.5) / max(pixel, 1e-6) + 0.5, 0.0, 1.0)


def background_image(bg: Background, size: int) -> np.ndarray:
    """The background as an (size, size, 3) float32 sRGB image in [0, 1]."""
    coords = (np.arange(size, dtype=np.float64) + 0.5) / size - 0.5
    y, x = np.meshgrid(coords, coords, indexing="ij")
    angle = np.radians(bg.angle)
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    if bg.kind == "plain":
        t = np.zeros_like(u)
    elif bg.kind == "gradient":
        t = np.clip(u / np.sqrt(0.5) + 0.5, 0.0, 1.0)
    elif bg.kind == "stripes":
        t = _smooth_square(u / bg.scale, 2.0 / (size * bg.scale))
    elif bg.kind == "checker":
        a = _smooth_square(u / bg.scale, 2.0 / (size * bg.scale))
        b = _smooth_square(v / bg.scale, 2.0 / (size * bg.scale))
        t = a + b - 2 * a * b
    elif bg.kind == "blobs":
        grid = np.random.default_rng(bg.seed).uniform(0.0, 1.0, size=(6, 6))
        field = map_coordinates(grid, [(y + 0.5) * 5.0, (x + 0.5) * 5.0], order=3, mode="nearest")
        t = np.clip((field - 0.5) * 4.0 + 0.5, 0.0, 1.0)
    else:
        raise ValueError(f"unknown background kind {bg.kind!r}")
    a = np.asarray(bg.colour_a)
    b = np.asarray(bg.colour_b)
    return ((1.0 - t)[..., None] * a + t[..., None] * b).astype(np.float32)
