"""Feature ablation: the context manager and the accuracy experiments on a hand-weighted model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vebi.errors import VebiError
from vebi.evaluate.ablation import ablate, ablation_curves, class_accuracies, union_ablation
from vebi.core.features import Feature
from vebi.core.relevance import RelevantFeature


def _state(model: nn.Module) -> dict:
    return {
        "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "hooks": [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()],
    }


def _same(a: dict, b: dict) -> bool:
    return (a["training"] == b["training"] and a["hooks"] == b["hooks"]
            and all(torch.equal(a["params"][k], b["params"][k]) for k in a["params"]))


def _scaling_model() -> nn.Module:
    """Output (B, 3) = mean of the input * (1, 2, 3) for positive inputs."""
    conv = nn.Conv2d(1, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1, 1))
    return nn.Sequential(conv, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_ablate_zeroes_exactly_the_chosen_channels():
    model = _scaling_model()
    x = torch.full((2, 1, 3, 3), 2.0)
    assert torch.equal(model(x), torch.tensor([[2.0, 4.0, 6.0]] * 2))
    with ablate(model, [("0", 1)]):
        assert torch.equal(model(x), torch.tensor([[2.0, 0.0, 6.0]] * 2))
    with ablate(model, [Feature(0, "1", 0), RelevantFeature(2, "0", 2, -0.5)]):  # two layers at once
        assert torch.equal(model(x), torch.tensor([[0.0, 4.0, 0.0]] * 2))
    assert torch.equal(model(x), torch.tensor([[2.0, 4.0, 6.0]] * 2))


def test_ablate_leaves_model_unchanged_also_after_an_exception():
    model = _scaling_model().train()
    before = _state(model)
    with ablate(model, [("0", 0)]):
        model(torch.ones(1, 1, 2, 2))
    assert _same(before, _state(model))
    with pytest.raises(RuntimeError, match="boom"), ablate(model, [("0", 0), ("1", 2)]):
        raise RuntimeError("boom")
    assert _same(before, _state(model))
    with pytest.raises(VebiError, match="channel 5"), ablate(model, [("0", 5)]):
        model(torch.ones(1, 1, 2, 2))
    assert _same(before, _state(model))


def test_ablate_rejects_bad_features():
    model = _scaling_model()
    with pytest.raises(VebiError, match="no layer named"), ablate(model, [("conv", 0)]):
        pass
    with pytest.raises(VebiError, match="channel"), ablate(model, [("0", -1)]):
        pass
    with pytest.raises(VebiError, match="pair"), ablate(model, ["0"]):
        pass
    assert all(not m._forward_hooks for m in model.modules())


def _classifier() -> nn.Module:
    """Features "0" = the input's 4 channels f; logits = W f + b,
    W = [[1, 0, 0.2, 0], [0, 1, 0, 0.2]], b = (0, 0.05).

    class-0 images f = e0 + e3: logits (1, 0.25);  class-1 images f = e1 + e2: logits (0.2, 1.05).
    """
    features = nn.Conv2d(4, 4, 1, bias=False)
    head = nn.Linear(4, 2)
    with torch.no_grad():
        features.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
        head.weight.copy_(torch.tensor([[1.0, 0.0, 0.2, 0.0], [0.0, 1.0, 0.0, 0.2]]))
        head.bias.copy_(torch.tensor([0.0, 0.05]))
    return nn.Sequential(features, nn.Flatten(), head)


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    class0 = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 4, 1, 1)
    class1 = torch.tensor([0.0, 1.0, 1.0, 0.0]).view(1, 4, 1, 1)
    return [(torch.cat([class0, class1, class0]), torch.tensor([0, 1, 0])), (class1, torch.tensor([1]))]


POOL = [("0", c) for c in range(4)]
RANKED = [[("0", 0), ("0", 3)], [("0", 1), ("0", 2)]]


def test_class_accuracies_hand_computed():
    # ch0 ablated: class 0 -> (0, 0.25) wrong; ch1 ablated: class 1 -> (0.2, 0.05) wrong;
    # ch0 + ch3: class 0 -> (0, 0.05) wrong; ch1 + ch2: class 1 -> (0, 0.05) right
    correct, totals = class_accuracies(
        _classifier(), _data(), [[], [("0", 0)], [("0", 1)], RANKED[0], RANKED[1]], 2, progress=False
    )
    assert totals.tolist() == [2, 2]
    assert correct.tolist() == [[2, 2], [0, 2], [2, 0], [0, 2], [2, 2]]


def test_ablation_curves_hand_computed():
    model = _classifier().train()
    before = _state(model)
    mean_response = torch.tensor([0.1, 0.9, 0.5, 0.2])  # top-mean order: ch1, ch2, ch3, ch0
    result = ablation_curves(model, _data(), RANKED, POOL, mean_response=mean_response, seeds=(0, 1, 2, 3),
                             class_names=("a", "b"), progress=False)
    assert _same(before, _state(model))
    assert result.baseline_class_accuracy == (1.0, 1.0) and result.baseline_mca == 1.0
    c0, c1 = result.classes
    assert c0.counts == (0, 1, 2) and c0.features == (("0", 0), ("0", 3))
    assert c0.relevant_class_accuracy == (1.0, 0.0, 0.0) and c0.relevant_mca == (1.0, 0.5, 0.5)
    assert c1.relevant_class_accuracy == (1.0, 0.0, 1.0) and c1.relevant_mca == (1.0, 0.5, 1.0)
    # top-mean k=1 (ch1): class 0 right, class 1 wrong; k=2 (ch1, ch2): both right
    assert c0.top_mean_class_accuracy == (1.0, 1.0, 1.0) and c0.top_mean_mca == (1.0, 0.5, 1.0)
    assert c1.top_mean_class_accuracy == (1.0, 0.0, 1.0)
    # the random draws are reported; re-evaluating them directly gives the reported mean and spread
    for curve in (c0, c1):
        assert len(curve.random_features) == 4 and all(len(r) == 2 for r in curve.random_features)
        for k in (1, 2):
            sets = [r[:k] for r in curve.random_features]
            correct, totals = class_accuracies(model, _data(), sets, 2, progress=False)
            acc = (correct.double() / totals.double())[:, curve.class_index]
            assert curve.random_class_accuracy_mean[k] == pytest.approx(float(acc.mean()))
            assert curve.random_class_accuracy_std[k] == pytest.approx(float(acc.std()))
    again = ablation_curves(model, _data(), RANKED, POOL, mean_response=mean_response, seeds=(0, 1, 2, 3),
                            class_names=("a", "b"), progress=False)
    assert again == result  # seeded: same numbers and the same random draws
    assert len(result.rows()) == 6 and result.to_dict()["classes"][1]["relevant_mca"] == [1.0, 0.5, 1.0]


def test_union_ablation_hand_computed():
    result = union_ablation(_classifier(), _data(), RANKED, POOL, seeds=(0, 1), progress=False)
    assert set(result.features) == set(POOL)
    # everything ablated: logits (0, 0.05) -> class 1 for every image
    assert result.ablated_class_accuracy == (0.0, 1.0) and result.ablated_mca == 0.5
    # a random set of 4 out of 4 features is the same set
    assert result.random_mca_mean == 0.5 and result.random_mca_std == 0.0
    assert result.baseline_mca == 1.0 and len(result.rows()) == 2


def test_experiment_errors():
    model = _classifier()
    with pytest.raises(VebiError, match="no images"):
        ablation_curves(model, _data()[:1][:0], RANKED, POOL, progress=False)
    only_class0 = [(torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 4, 1, 1), torch.tensor([0]))]
    with pytest.raises(VebiError, match="no images"):
        union_ablation(model, only_class0, RANKED, POOL, progress=False)
    with pytest.raises(VebiError, match="mean_response"):
        ablation_curves(model, _data(), RANKED, POOL, mean_response=torch.zeros(3), progress=False)
    with pytest.raises(VebiError, match="labels"):
        class_accuracies(model, [(torch.zeros(1, 4, 1, 1), torch.tensor([5]))], [[]], 2, progress=False)
