"""The feature space: every (layer, channel) pair of the chosen layers, numbered 0..m-1 in layer order."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

from vebi.errors import VebiError


@dataclass(frozen=True)
class Feature:
    """One filter's output map A_{l,f}: ``index`` is its position in the response vector x."""

    index: int
    layer: str
    channel: int


@dataclass(frozen=True)
class FeatureSpace:
    """Chosen layers and their channel counts; feature i = (layer, channel) with layers concatenated."""

    layers: tuple[str, ...]
    channels: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.layers) != len(self.channels):
            raise VebiError("feature space: one channel count per layer is needed")
        if len(set(self.layers)) != len(self.layers):
            raise VebiError(f"feature space: a layer is listed twice in {list(self.layers)}")

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        """Start index of each layer's block in x (one more entry: the total m)."""
        out = [0]
        for c in self.channels:
            out.append(out[-1] + c)
        return tuple(out)

    @property
    def size(self) -> int:
        """m, the number of features."""
        return self.offsets[-1]

    def __len__(self) -> int:
        return self.size

    def layer_slice(self, layer: str) -> slice:
        i = self._layer_position(layer)
        return slice(self.offsets[i], self.offsets[i + 1])

    def index(self, layer: str, channel: int) -> int:
        i = self._layer_position(layer)
        if not 0 <= channel < self.channels[i]:
            raise VebiError(f"layer {layer!r} has {self.channels[i]} channels; channel {channel} does not exist")
        return self.offsets[i] + channel

    def feature(self, index: int) -> Feature:
        if not 0 <= index < self.size:
            raise VebiError(f"feature index {index} is outside 0..{self.size - 1}")
        import bisect

        i = bisect.bisect_right(self.offsets, index) - 1
        return Feature(index, self.layers[i], index - self.offsets[i])

    def __iter__(self) -> Iterator[Feature]:
        for layer, start, count in zip(self.layers, self.offsets, self.channels, strict=False):
            for c in range(count):
                yield Feature(start + c, layer, c)

    def _layer_position(self, layer: str) -> int:
        try:
            return self.layers.index(layer)
        except ValueError:
            raise VebiError(f"layer {layer!r} is not in this feature space ({', '.join(self.layers)})") from None

    def to_dict(self) -> dict[str, list]:
        return {"layers": list(self.layers), "channels": list(self.channels)}

    @classmethod
    def from_dict(cls, d: dict) -> FeatureSpace:
        return cls(tuple(d["layers"]), tuple(int(c) for c in d["channels"]))
