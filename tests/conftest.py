"""Shared test settings: one torch thread per xdist worker, seeded tiny models and image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

torch.set_num_threads(1)

# Modules whose assertions compare floating-point results: `make test` runs them a second time with
# ATEN_CPU_CAPABILITY=default (other CPU kernels, another accumulation order), so a tolerance that
# holds only on the machine it was tuned on fails in CI rather than on a user's machine.
NUMERIC_MODULES = frozenset({
    "test_ablation", "test_backprop", "test_baselines", "test_collect", "test_explain", "test_interpret",
    "test_lasso", "test_metrics", "test_receptive", "test_responses", "test_stats", "test_stats_device",
    "test_stats_state",
})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in NUMERIC_MODULES:
            item.add_marker(pytest.mark.numeric)


def torchvision_model(name: str, num_classes: int) -> nn.Module:
    """``torchvision.models.<name>(weights=None, num_classes=...)``; VGG with a 64-wide classifier.

    VGG's classifier (25088 -> 4096 -> 4096 -> classes, 120 M weights) made its tests cost about 30 s of
    the suite (kaiming init, float64 copies, matrix products) while the tests are about the module
    structure, which stays: the same Linear-ReLU-Dropout modules under the same names, only narrower.
    The wide classifier is not even initialised (2 s per model): VGG is built on the meta device, then
    its features get real tensors with VGG's own initialisation of convolutions (He, fan-out) and norms.
    """
    import torchvision

    if not name.startswith("vgg"):
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    with torch.device("meta"):
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    model.features.to_empty(device="cpu")
    for m in model.features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()
    c = model.classifier
    c[0], c[3], c[6] = nn.Linear(c[0].in_features, 64), nn.Linear(64, 64), nn.Linear(64, num_classes)
    return model


def tiny_cnn(num_classes: int = 3, in_channels: int = 3, seed: int = 0) -> nn.Module:
    """Conv-ReLU-Pool-Conv-ReLU-GAP-Linear, seeded."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, num_classes),
    )


@pytest.fixture
def make_folder(tmp_path: Path):
    """Write a small class-per-folder PNG dataset: make_folder(classes=3, per_class=4, size=16, mode='RGB')."""

    def make(classes: int = 3, per_class: int = 4, size: int = 16, mode: str = "RGB", seed: int = 0,
             root: Path | None = None) -> Path:
        rng = np.random.default_rng(seed)
        root = root or tmp_path / "data"
        for c in range(classes):
            d = root / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).convert(mode).save(d / f"img{i}.png")
        return root

    return make
