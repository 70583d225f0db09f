"""Feature ablation: the context manager, many sets per forward pass against one set at a time, and the
per-class protocol on a hand-weighted model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vebi.errors import VebiError
from vebi.core.features import Feature, FeatureSpace
from vebi.core.relevance import Relevance, RelevantFeature
from vebi.evaluate.ablation import (
    MAX_BATCH,
    PASS_BYTES,
    _sets_per_pass,
    _NotACut,
    _ablated_logits,
    ablate,
    ablation_study,
    class_accuracies,
    classifier_evidence,
    layer_matched_draw,
    union_ablation,
)


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
    """Features "0" = the input's 6 channels f; logits = W f + b,
    W = [[1, 0, 0.2, 0, 0, 0], [0, 1, 0, 0.2, 0, 0]], b = (0, 0.05); channels 4 and 5 are always 0.

    class-0 images f = e0 + e3: logits (1, 0.25);  class-1 images f = e1 + e2: logits (0.2, 1.05).
    """
    features = nn.Conv2d(6, 6, 1, bias=False)
    head = nn.Linear(6, 2)
    with torch.no_grad():
        features.weight.copy_(torch.eye(6).view(6, 6, 1, 1))
        head.weight.copy_(torch.tensor([[1.0, 0.0, 0.2, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.2, 0.0, 0.0]]))
        head.bias.copy_(torch.tensor([0.0, 0.05]))
    return nn.Sequential(features, nn.Flatten(), head)


CLASS0 = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
CLASS1 = [0.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    class0, class1 = (torch.tensor(v).view(1, 6, 1, 1) for v in (CLASS0, CLASS1))
    return [(torch.cat([class0, class1, class0]), torch.tensor([0, 1, 0])), (class1, torch.tensor([1]))]


def _relevance() -> Relevance:
    """class a: +0.9 on channel 0, -0.3 on channel 3; class b: +0.8 on channel 1, -0.1 on channel 2."""
    weights = torch.zeros(6, 2, dtype=torch.float64)
    weights[0, 0], weights[3, 0], weights[1, 1], weights[2, 1] = 0.9, -0.3, 0.8, -0.1
    return Relevance(weights, FeatureSpace(("0",), (6,)), ("a", "b"), 1.0)


SETS = [[], [("0", 0)], [("0", 1)], [("0", 0), ("0", 3)], [("0", 1), ("0", 2)]]


@pytest.mark.parametrize("options", [{"batched": False}, {"max_batch": 1}, {"max_batch": 7}, {}])
def test_class_accuracies_hand_computed(options):
    # ch0 ablated: class 0 -> (0, 0.25) wrong; ch1 ablated: class 1 -> (0.2, 0.05) wrong;
    # ch0 + ch3: class 0 -> (0, 0.05) wrong; ch1 + ch2: class 1 -> (0, 0.05) right
    correct, totals = class_accuracies(_classifier(), _data(), SETS, 2, progress=False, **options)
    assert totals.tolist() == [2, 2]
    assert correct.tolist() == [[2, 2], [0, 2], [2, 0], [0, 2], [2, 2]]


class _Residual(nn.Module):
    """conv - bn - relu, a block with a skip connection around its inner relu, global pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.inner = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU())
        self.out = nn.Conv2d(6, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.head(self.relu(self.out(self.inner(h)) + h))


def _random_sets(layers: dict[str, int], count: int, seed: int) -> list[list[tuple[str, int]]]:
    g = torch.Generator().manual_seed(seed)
    names = list(layers)
    sets: list[list[tuple[str, int]]] = [[]]
    for _ in range(count):
        size = int(torch.randint(1, 5, (1,), generator=g))
        chosen = {(names[int(torch.randint(len(names), (1,), generator=g))],) for _ in range(size)}
        sets.append([(name, int(torch.randint(layers[name], (1,), generator=g))) for (name,) in chosen])
    return sets


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_many_sets_per_pass_equal_one_set_at_a_time(dtype):
    torch.manual_seed(0)
    model = _Residual().to(dtype)
    with torch.no_grad():  # non-trivial running statistics, used in eval mode
        model.stem[1].running_mean.uniform_(-0.2, 0.2)
        model.stem[1].running_var.uniform_(0.5, 2.0)
        model.head[2].weight.normal_(0.0, 4.0)  # logits far apart, so that single channels matter
        model.head[2].bias.zero_()
    model.train()
    before = _state(model)
    layers = {"stem.2": 6, "inner.1": 6, "relu": 6}  # inner.1 has a skip around it: the images are repeated
    sets = _random_sets(layers, 14, seed=1)
    x = (torch.rand(5, 3, 8, 8) + 2 * torch.randn(5, 3, 1, 1)).to(dtype)  # images that differ in colour
    with torch.no_grad():
        model.eval()
        single = []
        for keys in sets:
            with ablate(model, keys):
                single.append(model(x))
        single = torch.stack(single)
        modules = dict(model.named_modules())
        for expand_at in ("stem.2", "relu", None):
            chunk = [s for s in sets if all(layer == "relu" for layer, _ in s)] if expand_at == "relu" else sets
            expected = torch.stack([single[sets.index(s)] for s in chunk])
            stacked = _ablated_logits(model, x, chunk, {k: modules[k] for k in layers}, expand_at)
            # the same sums in another order: |error| <= (terms) * eps * sum |terms|; the logits are O(1)
            # sums of a few hundred O(1) products, 1e-4 (float32) / 1e-12 (float64) leaves a wide margin
            tolerance = 1e-4 if dtype == torch.float32 else 1e-12
            assert len(chunk) > 3 and (stacked - expected).abs().max() <= tolerance
        with pytest.raises(_NotACut):  # the skip connection around inner.1 meets the repeated rows
            _ablated_logits(model, x, sets, {k: modules[k] for k in layers}, "inner.1")
    model.train()
    if dtype == torch.float32:  # the counts are compared in float64, where no near-tie can flip a prediction
        assert _same(before, _state(model))
        return
    labels = single[0].argmax(dim=1)  # unablated predictions as labels: every set is scored against them
    data = [(x, labels)]
    reference, totals = class_accuracies(model, data, sets, 4, batched=False, progress=False)
    assert reference.sum() < len(sets) * 5  # some sets change predictions
    margins = single.topk(2, dim=2).values
    assert float((margins[..., 0] - margins[..., 1]).min()) > 1e-9  # no near-ties the tolerance could flip
    for max_batch in (1, 5, 16, None):
        correct, again = class_accuracies(model, data, sets, 4, max_batch=max_batch, progress=False)
        assert torch.equal(correct, reference) and torch.equal(again, totals)
    assert _same(before, _state(model))


def test_a_pass_runs_each_set_only_from_its_own_first_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    sets = [[("1", 0)], [("1", 1), ("3", 2)], [("3", 0)], [("1", 2)], [("3", 1)], [("3", 3)]]
    x = torch.rand(5, 3, 6, 6)
    labels = model(x).argmax(dim=1)
    seen: list[int] = []
    handle = model[2].register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].shape[0]))
    try:
        correct, _ = class_accuracies(model, [(x, labels)], sets, 3, max_batch=64, progress=False)
    finally:
        handle.remove()
    # the three sets that start at "1" go through conv "2" in their own rows; the three that start at
    # "3" share one pass whose rows are repeated only after "3", so "2" sees their 5 images once
    # (and once more in the pass that finds the layers' execution order)
    assert sorted(seen) == [5, 5, 3 * 5]
    reference, _ = class_accuracies(model, [(x, labels)], sets, 3, batched=False, progress=False)
    assert torch.equal(correct, reference)


def test_layer_matched_draw():
    features = [("a", 0), ("b", 3), ("a", 1), ("a", 2)]
    candidates = {"a": [4, 5, 6, 7, 8], "b": [0, 1]}
    draws = [layer_matched_draw(features, candidates, seed, 0) for seed in range(8)]
    for draw in draws:
        assert [layer for layer, _ in draw] == ["a", "b", "a", "a"]  # feature i drawn from feature i's layer
        assert all(c in candidates[layer] for layer, c in draw) and len(set(draw)) == 4
    assert len({tuple(d) for d in draws}) > 1  # the seeds differ
    assert layer_matched_draw(features, candidates, 3, 0) == draws[3]  # seeded
    assert layer_matched_draw(features[:2], candidates, 3, 0) == draws[3][:2]  # nested in k
    assert layer_matched_draw(features, {"a": [4, 5], "b": [0]}, 0, 0) is None  # too few in layer a


def test_classifier_evidence_hand_computed():
    # e_{j,c} = mean over class-j images of f_c * W_{j,c}
    evidence = classifier_evidence(_classifier(), _data(), "0", 2, progress=False)
    assert evidence.tolist() == [[1.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]]


@pytest.mark.parametrize("curves", [False, True])
def test_ablation_study_hand_computed(curves):
    model = _classifier().train()
    before = _state(model)
    result = ablation_study(model, _data(), _relevance(), seeds=range(5), curves=curves, progress=False)
    assert _same(before, _state(model))
    assert result.baseline_class_accuracy == (1.0, 1.0) and result.reference_layer == "0"
    a, b = result.classes
    assert (a.positive.features, a.negative.features, a.reference.features) == ((("0", 0),), (("0", 3),), (("0", 0),))
    assert (b.positive.features, b.negative.features, b.reference.features) == ((("0", 1),), (("0", 2),), (("0", 1),))
    assert a.positive.weights == (0.9,) and a.negative.weights == (-0.3,)
    counts = (0, 1) if curves else (1,)
    # ch0 (a's positive): class a wrong, b right; ch3 (a's negative): nothing changes (logits (1, 0.05))
    # ch1 (b's positive): b wrong; ch2 (b's negative): nothing changes (logits (0, 1.05))
    for c, positive in ((a, 0.0), (b, 0.0)):
        assert c.positive.counts == counts
        assert c.positive.class_accuracy[-1] == positive and c.positive.other_accuracy[-1] == 1.0
        assert c.negative.class_accuracy[-1] == 1.0 and c.reference.class_accuracy[-1] == positive
        assert c.reference.control_class is None
        for s in (c.positive, c.negative):
            # controls: one channel of layer "0" that no class uses (4 or 5, always 0): nothing changes
            assert {f for draw in s.control_features for f in draw} <= {("0", 4), ("0", 5)}
            assert len(s.control_features) == 5
            spread = s.control_class[-1]
            assert (spread.mean, spread.low, spread.high) == (1.0, 1.0, 1.0)
    if curves:
        assert a.positive.class_accuracy == (1.0, 0.0)
    rows = result.summary_rows()
    assert [r["class_name"] for r in rows] == ["a", "b", "mean over classes"]
    assert rows[-1]["positive_class_accuracy"] == 0.0 and rows[-1]["negative_class_accuracy"] == 1.0
    assert len(result.rows()) == 2 * 3 * len(counts)
    again = ablation_study(model, _data(), _relevance(), seeds=range(5), curves=curves, progress=False)
    assert again == result  # seeded


def test_control_draws_vary_with_seed_and_set():
    # a wider layer: 2 relevant channels of 40, so the draws have room to differ
    weights = torch.zeros(40, 2, dtype=torch.float64)
    weights[0, 0], weights[1, 1] = 1.0, 1.0
    relevance = Relevance(weights, FeatureSpace(("0",), (40,)), ("a", "b"), 1.0)
    model = nn.Sequential(nn.Conv2d(3, 40, 1), nn.Flatten(), nn.Linear(40, 2))
    data = [(torch.rand(4, 3, 1, 1), torch.tensor([0, 1, 0, 1]))]
    result = ablation_study(model, data, relevance, seeds=range(6), progress=False)
    a, b = result.classes
    draws = a.positive.control_features
    assert len(set(draws)) > 1 and draws != b.positive.control_features
    assert all(f not in (("0", 0), ("0", 1)) for draw in draws for f in draw)


def test_union_ablation_hand_computed():
    result = union_ablation(_classifier(), _data(), _relevance(), seeds=(0, 1), progress=False)
    assert set(result.features) == {("0", 0), ("0", 1), ("0", 2), ("0", 3)}
    # everything ablated: logits (0, 0.05) -> class 1 for every image
    assert result.ablated_class_accuracy == (0.0, 1.0) and result.ablated_mca == 0.5
    # 4 layer-matched channels are needed, but only 2 are relevant to no class
    assert result.random_mca is None and result.baseline_mca == 1.0 and len(result.rows()) == 3


def test_experiment_errors():
    model = _classifier()
    with pytest.raises(VebiError, match="no images"):
        ablation_study(model, _data()[:1][:0], _relevance(), progress=False)
    only_class0 = [(torch.tensor(CLASS0).view(1, 6, 1, 1), torch.tensor([0]))]
    with pytest.raises(VebiError, match="no images"):
        union_ablation(model, only_class0, _relevance(), progress=False)
    with pytest.raises(VebiError, match="seed"):
        ablation_study(model, _data(), _relevance(), seeds=(), progress=False)
    with pytest.raises(VebiError, match="labels"):
        class_accuracies(model, [(torch.zeros(1, 6, 1, 1), torch.tensor([5]))], [[]], 2, progress=False)
    with pytest.raises(VebiError, match="max_batch"):
        class_accuracies(model, _data(), [[]], 2, max_batch=0, progress=False)


def test_the_default_pass_keeps_its_largest_activation_within_pass_bytes(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("VEBI_MEMORY_BUDGET", "64GiB")  # a machine where free memory does not bind
    for per_image in (4 << 20, 8 << 20, 300 << 20):  # a 224 px ImageNet model's largest maps, and a huge one
        sets = _sets_per_pass(cpu, 32, per_image, None)
        assert sets >= 1 and (sets == 1 or sets * 32 * per_image <= PASS_BYTES)
    assert _sets_per_pass(cpu, 32, 4 << 20, None) * 32 * (4 << 20) > PASS_BYTES // 2  # not far below it either
    assert _sets_per_pass(cpu, 32, 1 << 10, None) == MAX_BATCH // 32  # small maps: the row bound
    assert _sets_per_pass(cpu, 32, 8 << 20, 4096) == 128  # an explicit max_batch is the caller's


def test_printed_union_line_says_why_it_has_no_random_control():
    from vebi.evaluate.ablation import Spread, UnionAblationResult
    from vebi.evaluate.output import format_ablation

    def union(random: Spread | None) -> str:
        result = UnionAblationResult(
            class_names=("a", "b"), seeds=(0,), features=(("0", 0), ("0", 1)),
            baseline_class_accuracy=(1.0, 0.5), baseline_mca=0.75, ablated_class_accuracy=(0.0, 0.5),
            ablated_mca=0.25, random_class_accuracy=None if random is None else (random, random), random_mca=random)
        (line,) = format_ablation(None, result)
        return line

    assert union(Spread.of([0.5, 0.7])).endswith("mCA 0.750 -> 0.250 (layer-matched random sets of that size: "
                                                 "0.600 [0.505, 0.695])")
    assert "fewer channels outside the union than in it" in union(None)
