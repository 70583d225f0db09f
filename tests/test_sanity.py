"""Sanity checks (cascading and data randomisation) and the SSIM they use, on tiny models."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from conftest import tiny_cnn
from vebi.errors import VebiError
from vebi.evaluate.sanity import (
    cascading_randomisation,
    data_randomisation,
    randomisation_steps,
    ssim,
)
from vebi.methods import Method, build_method


@dataclass(frozen=True)
class InputImage(Method):
    """The image itself (channel mean): knows nothing of the model."""

    name = "input_image"

    def maps(self, model, images, target):
        return images.mean(dim=1)


@dataclass(frozen=True)
class Gradient(Method):
    """|d score_target / d image|, channel max: depends on every weight."""

    name = "gradient"

    def maps(self, model, images, target):
        x = images.detach().clone().requires_grad_(True)
        score = model(x).gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(score, x)
        g = grad.abs().amax(dim=1)
        return g / g.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]


def _bn_cnn() -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(5, 3))
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].weight.uniform_(0.5, 1.5)
    return model.eval()


def _images(n: int = 4, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(3))


# ----------------------------------------------------------------------------- SSIM


def test_ssim_of_constant_images_is_the_luminance_term():
    # constant maps: mu = a, b and no variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = 0.01^2
    a, b = 0.2, 0.7
    x, y = torch.full((1, 13, 15), a), torch.full((1, 13, 15), b)
    expected = (2 * a * b + 1e-4) / (a * a + b * b + 1e-4)
    assert float(ssim(x, y)) == pytest.approx(expected, rel=1e-6)


def _ssim_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    """Mean over every 11 x 11 window position of the Gaussian-weighted SSIM, one window at a time."""
    d = np.arange(11) - 5.0
    w = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * 1.5**2))
    w /= w.sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            a, b = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb, cab = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum(), (w * (a - ma) * (b - mb)).sum()
            values.append((2 * ma * mb + c1) * (2 * cab + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


@pytest.mark.parametrize("shape", [(11, 11), (17, 14)])
def test_ssim_matches_the_formula_window_by_window(shape):
    # the statistics of each window position computed by hand (11 x 11: a single position)
    rng = np.random.default_rng(0)
    x, y = rng.random(shape), rng.random(shape)
    got = ssim(torch.from_numpy(x)[None], torch.from_numpy(y)[None])
    assert float(got) == pytest.approx(_ssim_by_hand(x, y), rel=1e-9, abs=1e-12)


def test_ssim_identities():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 20, 24, generator=g)
    noise = torch.randn(3, 20, 24, generator=g)
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64), atol=1e-12)
    y = (x + 0.1 * noise).clamp(0, 1)
    assert torch.allclose(ssim(x, y), ssim(y, x), atol=1e-12)
    values = [float(ssim(x, (x + s * noise).clamp(0, 1)).mean()) for s in (0.0, 0.05, 0.2, 0.8)]
    assert values[0] == pytest.approx(1.0) and values == sorted(values, reverse=True) and values[-1] < 0.5
    assert ssim(x[:, None].expand(3, 2, 20, 24), y[:, None].expand(3, 2, 20, 24)).shape == (3,)
    with pytest.raises(VebiError, match="at least 11 x 11"):
        ssim(torch.zeros(1, 10, 30), torch.zeros(1, 10, 30))
    with pytest.raises(VebiError, match="one shape"):
        ssim(torch.zeros(1, 12, 12), torch.zeros(1, 12, 13))


# ----------------------------------------------------------------------------- randomisation


def test_steps_go_from_the_output_down_and_keep_batch_norm_with_its_conv():
    assert randomisation_steps(_bn_cnn(), _images(1)) == (("7",), ("3",), ("0", "1"))
    assert randomisation_steps(tiny_cnn(), _images(1)) == (("7",), ("3",), ("0",))


def test_input_method_is_unaffected_and_gradient_changes():
    model = _bn_cnn()
    result = cascading_randomisation(model, _images(), [InputImage(), Gradient()], seed=0)
    assert result.steps == ("7", "3", "0") and result.layers[-1] == ("0", "1")
    for s in range(3):
        rho, sim = result.spearman["input_image"][s], result.ssim["input_image"][s]
        assert rho.mean == pytest.approx(1.0, abs=1e-12) and sim.mean == pytest.approx(1.0, abs=1e-12)
    rho, sim = result.final("gradient")
    assert rho.mean < 0.6 and sim.mean < 0.6 and rho.n == 4 and result.compared["gradient"] == 4
    rows = result.rows()
    assert len(rows) == 6 and rows[-1]["method"] == "gradient" and rows[-1]["randomised_down_to"] == "0"
    assert rows[-1]["spearman_mean"] == rho.mean


def test_registry_methods_run_and_the_callers_model_is_untouched():
    model = _bn_cnn()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    methods = [build_method(n, strict=False, layer="4", steps=4) for n in ("integrated_gradients", "grad_cam")]
    result = cascading_randomisation(model, _images(), methods, seed=0)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    rho = result.spearman["integrated_gradients"]
    assert rho[-1].mean < 0.6 and all(-1 <= e.mean <= 1 for e in rho)
    assert set(result.to_dict()["spearman"]) == {"integrated_gradients", "grad_cam"}


def test_same_seed_same_numbers_other_seed_other_numbers():
    model, images = tiny_cnn(), _images()
    runs = [cascading_randomisation(model, images, [Gradient()], seed=s).to_dict() for s in (5, 5, 6)]
    assert runs[0] == runs[1]
    assert runs[0]["spearman"] != runs[2]["spearman"]


def test_data_randomisation_compares_two_models():
    model, images = _bn_cnn(), _images()
    same = data_randomisation(model, _bn_cnn(), images, [Gradient()])
    assert same.steps == ("random labels",) and same.spearman["gradient"][0].mean == pytest.approx(1.0)
    other = data_randomisation(model, tiny_cnn(seed=4), images, [Gradient(), InputImage()])
    assert other.spearman["gradient"][0].mean < 0.9 and other.ssim["input_image"][0].mean == pytest.approx(1.0)


def test_constant_maps_and_bad_input():
    @dataclass(frozen=True)
    class Blank(Method):
        name = "blank"

        def maps(self, model, images, target):
            return torch.zeros_like(images[:, 0])

    result = cascading_randomisation(tiny_cnn(), _images(2), [Blank()], seed=0)
    assert result.compared["blank"] == 0 and math.isnan(result.final("blank")[0].mean)
    with pytest.raises(VebiError, match="each once"):
        cascading_randomisation(tiny_cnn(), _images(2), [Gradient(), Gradient()])
    with pytest.raises(VebiError, match="at least one image"):
        cascading_randomisation(tiny_cnn(), _images(0), [Gradient()])


def test_average_ranks_equal_scipy_rankdata_with_ties():
    from scipy.stats import rankdata

    from vebi.evaluate.sanity import average_ranks

    g = torch.Generator().manual_seed(3)
    values = torch.rand(6, 50, generator=g)
    values[0] = 0.0  # one tie group of all
    values[1] = (values[1] * 4).floor()  # few large groups
    values[2, :40] = 0.0  # a map that is mostly zero, as thresholded heatmaps are
    values[3] = torch.arange(50, 0, -1)  # strictly descending
    values[4, ::7] = float("-inf")
    got = average_ranks(values)
    assert got.dtype == torch.float64
    assert torch.equal(got, torch.from_numpy(rankdata(values.numpy(), axis=1)))


def test_spearman_of_all_images_at_once_equals_scipy_image_by_image():
    from scipy.stats import spearmanr

    from vebi.evaluate.sanity import _spearman

    g = torch.Generator().manual_seed(1)
    ref = torch.rand(5, 9, 8, generator=g)
    other = torch.rand(5, 9, 8, generator=g)
    ref[1] = (ref[1] * 3).round() / 3  # ties share their mean rank
    other[1] = torch.where(other[1] > 0.5, other[1], 0.0)
    ref[2] = 0.25  # constant reference: no ranking to compare
    other[3] = 0.0  # constant other map: rho = 0
    got = _spearman(ref, other)
    assert math.isnan(float(got[2])) and float(got[3]) == 0.0
    for i in (0, 1, 4):
        expected = spearmanr(ref[i].flatten().numpy(), other[i].flatten().numpy()).statistic
        assert float(got[i]) == pytest.approx(expected, abs=1e-12)
