"""Localisation metrics and deletion/insertion curves against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vebi.errors import VebiError
from vebi.evaluate.faithfulness import DeletionInsertion, baseline_images, curve_auc, perturbation_curves
from vebi.evaluate.metrics import (
    DEFAULT_THRESHOLDS,
    IoUSweep,
    Localization,
    MassInMask,
    PointingGame,
    estimate,
    iou_curve,
    mass_in_mask,
    normalize_heatmaps,
    pointing_hits,
)

# heatmap [[0, 1], [2, 3]] normalises to [[0, 1/3], [2/3, 1]]; mask = bottom row
RAMP = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
BOTTOM = torch.tensor([[[0, 0], [1, 1]]], dtype=torch.bool)
EMPTY = torch.zeros(1, 2, 2, dtype=torch.bool)
CONSTANT = torch.full((1, 2, 2), 7.0)
THRESHOLDS = (0.25, 0.5, 0.75)


def test_default_thresholds_are_the_documented_sweep():
    assert len(DEFAULT_THRESHOLDS) == 19
    assert DEFAULT_THRESHOLDS[0] == 0.05 and DEFAULT_THRESHOLDS[-1] == 0.95
    assert DEFAULT_THRESHOLDS[9] == 0.5


def test_normalisation_min_max_and_constant_map_is_zero():
    h = normalize_heatmaps(RAMP)
    assert torch.allclose(h, torch.tensor([[[0.0, 1 / 3], [2 / 3, 1.0]]], dtype=torch.float64))
    assert torch.equal(normalize_heatmaps(CONSTANT), torch.zeros(1, 2, 2, dtype=torch.float64))
    assert torch.equal(normalize_heatmaps(RAMP[:, None]), h)  # (B, 1, H, W) accepted


def test_iou_curve_hand_computed():
    # t=0.25: P = {1/3, 2/3, 1}: |P & M| = 2, |P | M| = 3; t=0.5: P = M; t=0.75: P = {1}: 1/2
    iou = iou_curve(RAMP, BOTTOM, THRESHOLDS)
    assert torch.allclose(iou, torch.tensor([[2 / 3, 1.0, 0.5]], dtype=torch.float64))


def test_iou_threshold_is_inclusive():
    h = torch.tensor([[[0.0, 0.5], [1.0, 0.25]]])
    m = torch.tensor([[[0, 1], [0, 0]]], dtype=torch.bool)
    # P_0.5 = {0.5, 1}: |P & M| = 1, |P | M| = 2
    assert iou_curve(h, m, (0.5,)).item() == 0.5


def test_iou_by_counting_equals_thresholding_each_map():
    """The one-pass count (levels and suffix sums) against the definition, threshold by threshold,
    with pixels exactly at thresholds, an unsorted and repeated threshold list and an empty mask."""
    g = torch.Generator().manual_seed(0)
    h = torch.rand(6, 9, 11, generator=g, dtype=torch.float64) ** 2
    h[0, :3] = 0.5  # exactly at a threshold
    h[1] = (h[1] > 0.3).double()  # a map of two values
    h[:, 0, 0], h[:, -1, -1] = 0.0, 1.0  # already min-max'd, so the definition below reads the same maps
    m = torch.rand(6, 9, 11, generator=g) > 0.6
    m[2] = False
    thresholds = (0.9, 0.05, 0.5, 0.5, 0.25, 0.95)
    want = torch.empty(6, len(thresholds), dtype=torch.float64)
    for i, t in enumerate(thresholds):
        p = h >= t
        inter, union = (p & m).sum(dim=(1, 2)).double(), (p | m).sum(dim=(1, 2)).double()
        want[:, i] = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    assert torch.equal(iou_curve(h, m, thresholds), want)


def test_iou_empty_mask_and_constant_map():
    assert torch.equal(iou_curve(CONSTANT, BOTTOM, THRESHOLDS), torch.zeros(1, 3, dtype=torch.float64))
    assert torch.equal(iou_curve(RAMP, EMPTY, THRESHOLDS), torch.zeros(1, 3, dtype=torch.float64))
    both_empty = iou_curve(CONSTANT, EMPTY, THRESHOLDS)
    assert torch.equal(both_empty, torch.ones(1, 3, dtype=torch.float64))
    assert torch.equal(iou_curve(CONSTANT, EMPTY, THRESHOLDS, empty_iou=0.0), torch.zeros(1, 3, dtype=torch.float64))


def test_mask_formats_agree():
    as_float = BOTTOM.float()
    as_uint8 = (BOTTOM.to(torch.uint8) * 255)[:, None]  # (B, 1, H, W), 0/255
    soft = torch.tensor([[[0.2, 0.49], [0.5, 0.9]]])  # floats binarise at >= 0.5
    expected = iou_curve(RAMP, BOTTOM, THRESHOLDS)
    for m in (as_float, as_uint8, soft):
        assert torch.equal(iou_curve(RAMP, m, THRESHOLDS), expected)


def test_pointing_game_hand_computed():
    assert pointing_hits(RAMP, BOTTOM).tolist() == [1.0]
    assert pointing_hits(RAMP, ~BOTTOM).tolist() == [0.0]
    assert pointing_hits(CONSTANT, torch.ones(1, 2, 2, dtype=torch.bool)).tolist() == [0.0]  # points nowhere
    assert pointing_hits(RAMP, EMPTY).tolist() == [0.0]
    ties = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # first maximum in row-major order is (0, 0)
    assert pointing_hits(ties, torch.tensor([[[0, 0], [0, 1]]])).tolist() == [0.0]
    assert pointing_hits(ties, torch.tensor([[[1, 0], [0, 0]]])).tolist() == [1.0]


def test_mass_in_mask_hand_computed():
    # normalised mass 0 + 1/3 + 2/3 + 1 = 2, inside 2/3 + 1 = 5/3
    assert mass_in_mask(RAMP, BOTTOM).item() == pytest.approx(5 / 6)
    assert mass_in_mask(CONSTANT, BOTTOM).item() == 0.0
    assert mass_in_mask(RAMP, EMPTY).item() == 0.0
    assert mass_in_mask(RAMP, torch.ones(1, 2, 2)).item() == pytest.approx(1.0)


def test_estimate_student_t_interval():
    e = estimate(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    std = math.sqrt(5 / 3)
    half = 3.182446305284263 * std / 2  # t_{0.975, 3} from tables
    assert e.mean == 2.5 and e.n == 4
    assert e.std == pytest.approx(std)
    assert e.low == pytest.approx(2.5 - half) and e.high == pytest.approx(2.5 + half)
    narrow = estimate(torch.tensor([1.0, 2.0, 3.0, 4.0]), 0.9)  # t_{0.95, 3} = 2.353363...
    assert narrow.high == pytest.approx(2.5 + 2.353363434801823 * std / 2)
    single = estimate(torch.tensor([0.25]))
    assert (single.mean, single.low, single.high, single.std, single.n) == (0.25, None, None, None, 1)
    with pytest.raises(VebiError):
        estimate(torch.zeros(0))


def test_localization_compute_hand_computed():
    metric = Localization(THRESHOLDS)
    metric.update(torch.cat([RAMP, CONSTANT]), torch.cat([BOTTOM, BOTTOM]))
    result = metric.compute()
    # per-threshold means: (2/3 + 0)/2, (1 + 0)/2, (1/2 + 0)/2 -> best threshold 0.5
    assert [e.mean for e in result.iou.curve] == pytest.approx([1 / 3, 0.5, 0.25])
    assert result.iou.best_threshold == 0.5 and result.iou.best.mean == pytest.approx(0.5)
    half = 12.706204736174698 * math.sqrt(0.5) / math.sqrt(2)  # t_{0.975, 1}, values (1, 0)
    assert result.iou.best.low == pytest.approx(0.5 - half)
    per_image_means = [(2 / 3 + 1 + 0.5) / 3, 0.0]
    assert result.iou.mean_over_thresholds.mean == pytest.approx(sum(per_image_means) / 2)
    assert result.pointing.mean == 0.5
    assert result.mass_in_mask.mean == pytest.approx(5 / 12)
    assert result.images == 2 and result.empty_masks == 0
    row = result.summary_row()
    assert row["iou_mean"] == result.iou.mean_over_thresholds.mean and row["best_threshold"] == 0.5
    assert len(result.iou.curve_rows()) == 3
    assert result.to_dict()["iou"]["thresholds"] == list(THRESHOLDS)


def test_streaming_equals_one_shot_and_merge():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(10, 6, 5, generator=g)
    maps[3] = 0.5  # a constant map
    masks = torch.rand(10, 1, 6, 5, generator=g) > 0.6
    masks[4] = False  # an empty mask
    whole = Localization()
    whole.update(maps, masks)
    streamed = Localization()
    for lo, hi in ((0, 3), (3, 4), (4, 10)):
        streamed.update(maps[lo:hi], masks[lo:hi])
    first, second = Localization(), Localization()
    first.update(maps[:6], masks[:6])
    second.update(maps[6:], masks[6:])
    merged = first.merge(second)
    expected = whole.compute().to_dict()
    assert streamed.compute().to_dict() == expected
    assert merged.compute().to_dict() == expected
    assert first.count == 6 and second.count == 4  # merge leaves its inputs alone
    assert whole.compute().empty_masks == 1
    for single in (IoUSweep(), PointingGame(), MassInMask()):
        single.update(maps, masks)
    assert not torch.isnan(whole.iou.per_image()).any()


def test_metric_errors():
    with pytest.raises(VebiError, match="do not match"):
        iou_curve(RAMP, torch.zeros(1, 3, 3), THRESHOLDS)
    with pytest.raises(VebiError, match="NaN"):
        pointing_hits(torch.tensor([[[float("nan"), 0.0]]]), torch.ones(1, 1, 2))
    with pytest.raises(VebiError):
        IoUSweep((0.5, 0.25))
    with pytest.raises(VebiError, match="merge"):
        IoUSweep((0.5,)).merge(IoUSweep((0.25,)))
    with pytest.raises(VebiError, match="no images"):
        Localization().compute()


# ----------------------------------------------------------------------------- deletion / insertion


class SumLogit(nn.Module):
    """logits = (sum of all pixels, 0): p_0 = sigmoid(sum)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale * x.flatten(1).sum(dim=1)
        return torch.stack((s, torch.zeros_like(s)), dim=1)


IMAGE = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
ORDER_MAP = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])  # removes 1, 2, 3, 4 in this order


def _sig(values):
    return torch.sigmoid(torch.tensor(values, dtype=torch.float64))


def test_deletion_insertion_hand_computed():
    model = SumLogit()
    deletion, insertion = perturbation_curves(model, IMAGE, ORDER_MAP, torch.tensor([0]), steps=4,
                                              insertion_baseline="zero")
    assert torch.allclose(deletion[0], _sig([10.0, 9.0, 7.0, 4.0, 0.0]))
    assert torch.allclose(insertion[0], _sig([0.0, 1.0, 3.0, 6.0, 10.0]))
    # steps = 2 changes floor(k * 4 / 2) = 0, 2, 4 pixels; "mean" puts 2.5 in removed pixels
    deletion, insertion = perturbation_curves(model, IMAGE, ORDER_MAP, torch.tensor([0]), steps=2,
                                              deletion_baseline="mean", insertion_baseline="mean")
    assert torch.allclose(deletion[0], _sig([10.0, 2.5 + 2.5 + 3 + 4, 10.0]))
    assert torch.allclose(insertion[0], _sig([10.0, 1 + 2 + 2.5 + 2.5, 10.0]))


def test_auc_trapezoid():
    curves = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert curve_auc(curves).tolist() == [0.5, 0.25]


def test_blur_baseline_keeps_a_constant_image_and_shapes():
    flat = torch.full((2, 3, 9, 7), 0.3)
    assert torch.allclose(baseline_images(flat, "blur"), flat)
    blurred = baseline_images(torch.rand(2, 3, 9, 7, generator=torch.Generator().manual_seed(1)), "blur", sigma=1.0)
    assert blurred.shape == (2, 3, 9, 7)
    with pytest.raises(VebiError, match="baseline"):
        baseline_images(flat, "noise")


def test_deletion_insertion_streaming_and_model_state():
    g = torch.Generator().manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.rand(5, 3, 8, 8, generator=g)
    maps = torch.rand(5, 8, 8, generator=g)
    target = torch.tensor([0, 1, 2, 0, 1])
    assert (DeletionInsertion().deletion_baseline, DeletionInsertion().insertion_baseline) == ("zero", "zero")
    whole = DeletionInsertion(steps=4, deletion_baseline="blur", insertion_baseline="blur")
    whole.update(model, images, maps, target)
    a = DeletionInsertion(steps=4, deletion_baseline="blur", insertion_baseline="blur")
    b = DeletionInsertion(steps=4, deletion_baseline="blur", insertion_baseline="blur")
    a.update(model, images[:2], maps[:2], target[:2])
    b.update(model, images[2:], maps[2:], target[2:])
    merged = a.merge(b)
    assert torch.allclose(merged.curves()[0], whole.curves()[0], atol=1e-6)
    assert torch.allclose(merged.curves()[1], whole.curves()[1], atol=1e-6)
    result = whole.compute()
    assert result.fractions == (0.0, 0.25, 0.5, 0.75, 1.0) and len(result.curve_rows()) == 5
    # both curves end where the other starts: fully deleted = baseline, fully inserted = image
    deletion, insertion = whole.curves()
    assert torch.allclose(deletion[:, -1], insertion[:, 0]) and torch.allclose(deletion[:, 0], insertion[:, -1])
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(VebiError, match="do not match"):
        whole.update(model, images, maps[:, :4], target)
    with pytest.raises(VebiError, match="merge"):
        whole.merge(DeletionInsertion(steps=4))


class CountingSumLogit(SumLogit):
    """SumLogit that records the rows of every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(x.shape[0])
        return super().forward(x)


@pytest.mark.parametrize(("deletion_baseline", "insertion_baseline", "distinct"), [
    ("zero", "zero", 2 * 6),  # x and the one baseline shared by both curves' endpoints: 2K images
    ("zero", "mean", 2 * 6 + 1),  # two baselines: one more
])
def test_curves_score_each_distinct_image_once_in_few_passes(deletion_baseline, insertion_baseline, distinct):
    images = IMAGE.repeat(3, 1, 1, 1) * torch.tensor([1.0, -1.0, 0.5]).view(3, 1, 1, 1)
    maps = ORDER_MAP.repeat(3, 1, 1)
    target = torch.tensor([0, 1, 0])
    model = CountingSumLogit()
    deletion, insertion = perturbation_curves(model, images, maps, target, steps=6,
                                              deletion_baseline=deletion_baseline,
                                              insertion_baseline=insertion_baseline)
    # one pass for the endpoints (x and the baselines), one for the 2 (K - 1) perturbed images
    assert sum(model.rows) == 3 * distinct and max(model.rows) <= 64 and len(model.rows) == 2
    # endpoints scored once for many maps: each map then costs only its perturbed images
    ends = DeletionInsertion(6, deletion_baseline=deletion_baseline,
                             insertion_baseline=insertion_baseline).endpoints(model, images, target)
    assert ends.shape == (3, 3) and model.rows[-1] == 3 * (3 if insertion_baseline != deletion_baseline else 2)
    model.rows.clear()
    again = perturbation_curves(model, images, maps, target, steps=6, deletion_baseline=deletion_baseline,
                                insertion_baseline=insertion_baseline, endpoints=ends)
    assert model.rows == [3 * 2 * 5]
    assert torch.equal(again[0], deletion) and torch.equal(again[1], insertion)
    with pytest.raises(VebiError, match="endpoints"):
        perturbation_curves(model, images, maps, target, steps=6, endpoints=ends[:, :2])
    # the same curves as scoring every (curve, step) image on its own
    base_del = baseline_images(images, deletion_baseline)
    base_ins = baseline_images(images, insertion_baseline)
    rank = torch.tensor([0, 1, 2, 3]).view(1, 1, 2, 2)
    for k in range(7):
        changed = rank < (k * 4) // 6
        logits = SumLogit()(torch.where(changed, base_del, images))
        assert torch.allclose(deletion[:, k], logits.softmax(1).gather(1, target[:, None])[:, 0].double())
        logits = SumLogit()(torch.where(changed, images, base_ins))
        assert torch.allclose(insertion[:, k], logits.softmax(1).gather(1, target[:, None])[:, 0].double())
