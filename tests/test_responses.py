import math

import pytest
import torch
from torch import nn

from vebi.core.collect import collect
from vebi.errors import VebiError
from vebi.core.features import FeatureSpace
from vebi.core.responses import argmax_yx, normalise, pool, responses


def test_pool_kinds_hand_computed():
    a = torch.tensor([[[[1.0, -2.0], [0.0, 3.0]], [[0.5, 0.5], [0.5, 0.5]]]])  # (1, 2, 2, 2)
    assert pool(a, "energy").tolist() == [[14.0, 1.0]]
    assert pool(a, "max").tolist() == [[3.0, 0.5]]
    assert pool(a, "mean").tolist() == [[0.5, 0.5]]
    assert argmax_yx(a).tolist() == [[[1, 1], [0, 0]]]
    with pytest.raises(VebiError, match="unknown response"):
        pool(a, "median")


def test_energy_normalisation_l1_per_layer_then_l2():
    a1 = torch.tensor([[[[1.0]], [[3.0]]]])          # energies 1, 9 -> L1: 0.1, 0.9
    a2 = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]], [[0.0, 2.0]]]])  # energies 4, 0, 4 -> 0.5, 0, 0.5
    space = FeatureSpace(("a", "b"), (2, 3))
    x = responses({"a": a1, "b": a2}, space, "energy")
    raw = torch.tensor([0.1, 0.9, 0.5, 0.0, 0.5])
    expected = raw / math.sqrt(float((raw**2).sum()))
    torch.testing.assert_close(x[0], expected)
    assert x.norm(dim=1).item() == pytest.approx(1.0)


def test_zero_activation_gives_zeros_not_nan():
    x = normalise([torch.zeros(2, 3)])
    assert torch.equal(x, torch.zeros(2, 3))


def test_collect_hand_built_model_matches_hand_computation():
    # one conv with hand weights: channel 0 copies the input, channel 1 doubles it; ReLU
    conv = nn.Conv2d(1, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight[:] = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    img = torch.tensor([[[[1.0, -1.0], [2.0, 0.0]]]])
    model(img)  # materialise the lazy layer
    stats = collect(model, [(img, torch.tensor([1]))], layers="1", progress=False, top_k=1)
    # ReLU map ch0 = [[1,0],[2,0]] energy 5; ch1 = [[2,0],[4,0]] energy 20 -> L1 (0.2, 0.8) -> L2
    raw = torch.tensor([0.2, 0.8], dtype=torch.float64)
    x = raw / raw.norm()
    torch.testing.assert_close(stats.gram, torch.outer(x, x))
    torch.testing.assert_close(stats.cross[:, 1], x)
    assert stats.cross[:, 0].abs().sum() == 0
    assert stats.top_yx[:, 0].tolist() == [[1, 0], [1, 0]]
    assert stats.top_indices[:, 0].tolist() == [0, 0]
