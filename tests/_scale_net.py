"""A tiny float64 CNN for the multi-process and resume tests (float64 so that a different batch
composition gives bit-identical responses); $VEBI_TEST_DELAY seconds of sleep per forward pass
let a test kill a run in the middle."""

import os
import time

import torch
from torch import nn


class _Slow(nn.Sequential):
    def forward(self, x):
        time.sleep(float(os.environ.get("VEBI_TEST_DELAY", "0")))
        return super().forward(x)


def net(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return _Slow(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1),
                 nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, num_classes)).double()
