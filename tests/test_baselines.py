"""Baseline methods: hand-computed values on tiny models, the shared protocol on torchvision models,
and the caller's model and images untouched afterwards."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from vebi.explanation.postprocess import minmax, postprocess_gradient
from vebi.methods import METHODS, build_method, method_names
from vebi.methods.cam import GradCAM, GradCAMPlusPlus, default_cam_layer
from vebi.methods.gradients import Deconvnet, GuidedBackprop, IntegratedGradients
from vebi.methods.relevant_features import ActivationMap
from vebi.errors import VebiError
from vebi.core.features import FeatureSpace
from vebi.core.relevance import Relevance
from conftest import torchvision_model

# ----------------------------------------------------------------------------- helpers

guided_backprop, deconvnet = GuidedBackprop(), Deconvnet()


def integrated_gradients(model, images, target, **options):
    return IntegratedGradients(**options)(model, images, target)


def grad_cam(model, images, target, **options):
    return GradCAM(**options)(model, images, target)


def grad_cam_plus_plus(model, images, target, **options):
    return GradCAMPlusPlus(**options)(model, images, target)


def activation_map(relevance, **options):
    return ActivationMap(relevance, **options)



def _snapshot(model: nn.Module) -> dict:
    # tensors by identity and in-place version counter: exact, and no copy of VGG's 130M weights
    return {
        "state": {k: (id(v), v._version) for k, v in (*model.named_parameters(), *model.named_buffers())},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
        "hooks": [
            tuple(len(getattr(m, name)) for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                                                       "_backward_pre_hooks"))
            for m in model.modules()
        ],
    }


def _assert_unchanged(before: dict, model: nn.Module) -> None:
    after = _snapshot(model)
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    assert all(a is b for a, b in zip(before["grads"], after["grads"], strict=True))
    assert before["inplace"] == after["inplace"]
    assert before["hooks"] == after["hooks"]
    assert before["state"] == after["state"]


def _disturb(model: nn.Module) -> nn.Module:
    """Mixed state a method must give back: train mode with one eval child, a frozen and a
    gradient-holding parameter."""
    model.train()
    children = list(model.children())
    children[-1].eval()
    params = list(model.parameters())
    params[0].requires_grad_(False)
    params[-1].grad = torch.ones_like(params[-1])
    return model


# ----------------------------------------------------------------------------- post-processing


def test_minmax_and_gradient_postprocessing_hand_computed():
    maps = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[4.0, 4.0], [4.0, 4.0]]])
    assert torch.allclose(minmax(maps)[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.equal(minmax(maps)[1], torch.zeros(2, 2))  # constant -> zeros, no NaN
    # pixel 0: channels (3, -1, 4) -> positive part (3, 0, 4) -> L2 5; pixel 1: (-2, 0, 0) -> 0
    attributions = torch.tensor([[3.0, -2.0], [-1.0, 0.0], [4.0, 0.0]]).view(1, 3, 1, 2)
    assert torch.equal(postprocess_gradient(attributions), torch.tensor([[[1.0, 0.0]]]))


# ----------------------------------------------------------------------------- hand-computed methods


def _pixel_model() -> nn.Module:
    """f = relu(2 x) per pixel (1 channel, 2 x 2), logits = V f, V = [[1, -1, 2, 0.5], [-1, 1, 1, 0]]."""
    conv = nn.Conv2d(1, 1, 1, bias=False)
    head = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(2.0)
        head.weight.copy_(torch.tensor([[1.0, -1.0, 2.0, 0.5], [-1.0, 1.0, 1.0, 0.0]]))
    return nn.Sequential(conv, nn.ReLU(inplace=True), nn.Flatten(), head)


X_PIXELS = torch.tensor([[[[1.0, 2.0], [-1.0, 3.0]]]])


def test_guided_backprop_and_deconvnet_hand_computed():
    model = _pixel_model()
    target = torch.tensor([0])
    # guided: 2 * relu(v) * [x > 0] = (2, 0, 0, 1) -> min-max (1, 0, 0, 0.5)
    assert torch.allclose(guided_backprop(model, X_PIXELS, target), torch.tensor([[[1.0, 0.0], [0.0, 0.5]]]))
    # deconvnet ignores the forward sign: 2 * relu(v) = (2, 0, 4, 1) -> (0.5, 0, 1, 0.25)
    assert torch.allclose(deconvnet(model, X_PIXELS, target), torch.tensor([[[0.5, 0.0], [1.0, 0.25]]]))


def test_integrated_gradients_hand_computed():
    # a linear model: IG from a zero baseline is exactly x * v
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, -1.0, 2.0, 0.5], [0.0, 0.0, 0.0, 1.0]]))
    # x * v = (1, -2, -2, 1.5) -> positive part (1, 0, 0, 1.5) -> (2/3, 0, 0, 1)
    out = integrated_gradients(model, X_PIXELS, torch.tensor([0]), steps=3)
    assert torch.allclose(out, torch.tensor([[[2 / 3, 0.0], [0.0, 1.0]]]), atol=1e-6)


def _cam_model() -> nn.Module:
    """A = relu(conv(x)) with channel weights (1, -1), logits = U avgpool(A), U = [[1, 0.5], [0, 1]]."""
    conv = nn.Conv2d(1, 2, 1, bias=False)
    head = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        head.weight.copy_(torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


X_CAM = torch.tensor([[[[1.0, -2.0], [3.0, 0.0]]]])  # A_0 = [[1, 0], [3, 0]], A_1 = [[0, 2], [0, 0]]


def test_default_cam_layer():
    assert default_cam_layer(_cam_model(), X_CAM) == "1"  # the ReLU; the adaptive pool is skipped
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 64, 64, generator=g)
    assert default_cam_layer(torchvision.models.resnet18(weights=None, num_classes=3), x) == "layer4"
    with pytest.raises(VebiError, match="spatial"):
        default_cam_layer(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), X_CAM)


def test_grad_cam_hand_computed():
    model = _cam_model()
    x = torch.cat([X_CAM, X_CAM])
    out = grad_cam(model, x, torch.tensor([0, 1]))
    # class 0: alpha = (1, 0.5) / 4 -> (A_0 + A_1 / 2) / 4 = [[1, 1], [3, 0]] / 4 -> [[1/3, 1/3], [1, 0]]
    assert torch.allclose(out[0], torch.tensor([[1 / 3, 1 / 3], [1.0, 0.0]]), atol=1e-5)
    # class 1: alpha = (0, 1) / 4 -> A_1 / 4 -> [[0, 1], [0, 0]]
    assert torch.allclose(out[1], torch.tensor([[0.0, 1.0], [0.0, 0.0]]), atol=1e-5)
    # Grad-CAM++ weights only positive gradients, so class 1 again sees channel 1 alone
    assert torch.allclose(grad_cam_plus_plus(model, X_CAM, torch.tensor([1]))[0],
                          torch.tensor([[0.0, 1.0], [0.0, 0.0]]), atol=1e-5)


def _relevance() -> Relevance:
    weights = torch.tensor([[1.0, 0.5], [0.0, 2.0]], dtype=torch.float64)  # (m = 2 features, C = 2)
    return Relevance(weights, FeatureSpace(("1",), (2,)), ("a", "b"), mu=1.0, response="energy")


def test_activation_map_hand_computed():
    model = _cam_model()
    x = torch.cat([X_CAM, X_CAM])
    # energies (10, 4) -> x proportional to (10, 4); r_a = (10, 0) -> A_0 only; r_b = (5, 8) -> both
    out = activation_map(_relevance())(model, x, torch.tensor([0, 1]))
    assert torch.allclose(out[0], torch.tensor([[1 / 3, 0.0], [1.0, 0.0]]))
    assert torch.allclose(out[1], torch.tensor([[1 / 3, 1.0], [1.0, 0.0]]))  # pixel-wise max
    top1 = activation_map(_relevance(), num_features=1)(model, X_CAM, torch.tensor([1]))
    assert torch.allclose(top1[0], torch.tensor([[0.0, 1.0], [0.0, 0.0]]))  # r = 8 > 5: A_1
    # upsampled to the image: a 4 x 4 image whose features are 2 x 2
    strided = nn.Sequential(nn.Conv2d(1, 2, 1, stride=2, bias=False), nn.ReLU())
    with torch.no_grad():
        strided[0].weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
    big = activation_map(_relevance())(strided, torch.rand(3, 1, 4, 4) + 0.1, torch.tensor([0, 0, 0]))
    assert big.shape == (3, 4, 4) and float(big.min()) >= 0 and float(big.max()) == 1.0
    with pytest.raises(VebiError, match="none of the relevance"):
        activation_map(_relevance())(model, X_CAM, torch.tensor([2]))


# ----------------------------------------------------------------------------- protocol on real models


def _tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )


MODELS = {
    "tiny": (_tiny_cnn, 32),
    "resnet18": (lambda: torchvision_model("resnet18", 4), 64),
    "vgg11": (lambda: torchvision_model("vgg11", 4), 64),
}
OPTIONS = {"integrated_gradients": {"steps": 2}}  # the protocol, not the integral


@pytest.fixture(scope="module", params=sorted(MODELS))
def model_and_images(request):
    torch.manual_seed(0)
    factory, size = MODELS[request.param]
    model = factory()
    images = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    return model, images


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet", "integrated_gradients", "grad_cam",
                                    "grad_cam_plus_plus"])
def test_protocol_on_models(model_and_images, method):
    model, images = model_and_images
    explain = build_method(method, **OPTIONS.get(method, {}))
    _disturb(model)
    before = _snapshot(model)
    images_before = images.clone()
    target = torch.tensor([0, 1, 2, 3])
    batch = explain(model, images, target)
    assert batch.shape == (4, *images.shape[-2:]) and batch.dtype == torch.float32
    assert torch.isfinite(batch).all() and float(batch.min()) >= 0 and float(batch.max()) <= 1
    peaks = batch.amax(dim=(1, 2))
    assert bool(((peaks == 1) | (batch.flatten(1).amin(dim=1) == peaks) & (peaks == 0)).all())  # min-max'd or zeros
    _assert_unchanged(before, model)
    assert torch.equal(images, images_before) and not images.requires_grad
    # batch independence in float64 (see tests/test_explain.py): equal up to the maps' float32 rounding
    model64, images64 = copy.deepcopy(model).double(), images.double()
    batch64 = explain(model64, images64, target)
    singles = torch.cat([explain(model64, images64[i:i + 1], target[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(batch64, singles, rtol=0, atol=1e-6)
    with pytest.raises(VebiError, match="out of range"):
        explain(model, images[:1], torch.tensor([7]))
    _assert_unchanged(before, model)


def test_activation_map_on_resnet_batches_agree():
    model = torchvision.models.resnet18(weights=None, num_classes=4)
    space = FeatureSpace(("layer3.1", "layer4.1"), (256, 512))
    weights = torch.randn(space.size, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rel = Relevance(weights, space, ("a", "b", "c", "d"), mu=1.0)
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    explain = build_method("activation_map", relevance=rel)
    _disturb(model)
    before = _snapshot(model)
    target = torch.tensor([3, 2, 1, 0])
    batch = explain(model, images, target)
    assert batch.shape == (4, 64, 64) and float(batch.min()) >= 0 and float(batch.max()) <= 1
    model64, images64 = copy.deepcopy(model).double(), images.double()
    batch64 = explain(model64, images64, target)
    singles = torch.cat([explain(model64, images64[i:i + 1], target[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(batch64, singles, rtol=0, atol=1e-6)
    _assert_unchanged(before, model)


def test_registry():
    assert {"activation_map", "guided_backprop", "deconvnet", "integrated_gradients", "grad_cam",
            "grad_cam_plus_plus", "vebi"} <= set(method_names()) == set(METHODS)
    with pytest.raises(VebiError, match="unknown explanation method"):
        build_method("lime")
    with pytest.raises(VebiError, match="needs a relevance"):
        build_method("activation_map")
    with pytest.raises(VebiError, match="has no option"):
        build_method("grad_cam", stride=2)
    model = _cam_model()
    by_name = build_method("grad_cam", layer="1")(model, X_CAM, torch.tensor([0]))
    by_module = build_method("grad_cam", layer=model[1])(model, X_CAM, torch.tensor([0]))
    assert torch.equal(by_name, by_module)
    with pytest.raises(VebiError, match="no layer named"):
        build_method("grad_cam", layer="conv9")(model, X_CAM, torch.tensor([0]))


def test_bad_inputs():
    model = _cam_model()
    with pytest.raises(VebiError, match="images"):
        guided_backprop(model, X_CAM[0], torch.tensor([0]))
    with pytest.raises(VebiError, match="target"):
        guided_backprop(model, X_CAM, torch.tensor([0.0]))
    with pytest.raises(VebiError, match="target"):
        grad_cam(model, X_CAM, torch.tensor([0, 1]))
    assert torch.equal(grad_cam(model, torch.zeros(1, 1, 2, 2), torch.tensor([0])), torch.zeros(1, 2, 2))  # no NaN
    with pytest.raises(VebiError, match=r"needs a \(B, C, H, W\) output at layer 3, got \(1, 2\)"):
        grad_cam(model, X_CAM, torch.tensor([0]), layer="3")  # the Flatten
    with pytest.raises(VebiError, match=r"layer Linear, got \(1, 2\)"):
        grad_cam(model, X_CAM, torch.tensor([0]), layer=model[4])


# ----------------------------------------------------------------------------- memory layout


class _ViewNet(nn.Module):
    """Conv - ReLU - pool - ``.view`` - linear: a ``.view`` of channels-last maps raises, ``flatten`` does not."""

    def __init__(self, view: bool) -> None:
        super().__init__()
        self.view, self.calls = view, 0
        self.conv, self.relu, self.pool, self.fc = nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Linear(6 * 6 * 6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        y = self.pool(self.relu(self.conv(x)))
        return self.fc(y.view(y.shape[0], -1) if self.view else y.flatten(1))


def test_a_model_that_views_its_maps_gets_the_plain_layout_and_the_same_results():
    from vebi.evaluate.ablation import class_accuracies
    from vebi.evaluate.faithfulness import perturbation_curves

    torch.manual_seed(0)
    viewing, flattening = _ViewNet(view=True).eval(), _ViewNet(view=False).eval()
    flattening.load_state_dict(viewing.state_dict())
    images, target = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2])
    for name, options in (("guided_backprop", {}), ("grad_cam", {"layer": "conv"}),
                          ("integrated_gradients", {"steps": 2})):
        method = build_method(name, **options)
        torch.testing.assert_close(method(viewing, images, target), method(flattening, images, target),
                                   rtol=0, atol=1e-5)
    heat = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2))
    for got, want in zip(perturbation_curves(viewing, images, heat, target, steps=2),
                         perturbation_curves(flattening, images, heat, target, steps=2), strict=True):
        torch.testing.assert_close(got, want)
    sets = [[("conv", 0)], [("conv", 1), ("conv", 2)]]
    data = [(images, target)]
    for got, want in zip(class_accuracies(viewing, data, sets, 4, progress=False),
                         class_accuracies(flattening, data, sets, 4, progress=False), strict=True):
        assert torch.equal(got, want)
    # the first channels-last try failed once; from then on the model runs in its own layout
    viewing.calls = 0
    build_method("guided_backprop")(viewing, images, target)
    assert viewing.calls == 1


# ----------------------------------------------------------------------------- pytorch-grad-cam as reference

def _layer_terms(model: nn.Module, layer: str, x: torch.Tensor, target: torch.Tensor):
    """The layer's float32 activations and gradients d y_target / d A, as both implementations see them."""
    from vebi.hooks import preserve_model
    from vebi.models import in_fast_layout

    module = dict(model.named_modules())[layer]
    captured = []
    with preserve_model(model):
        handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            def run(inputs):
                logits = model(inputs)
                return torch.autograd.grad(logits.gather(1, target[:, None]).sum(), captured[-1])[0]

            grads = in_fast_layout(model, run, x.clone().requires_grad_(True))
        finally:
            handle.remove()
    return captured[-1].detach(), grads


@pytest.mark.numeric
@pytest.mark.parametrize("kind", ["gradcam", "gradcampp"])
@pytest.mark.parametrize("name, layer, size", [("resnet18", "layer4", 96), ("vgg11", "features.17", 64),
                                               ("an8net", "features.relu5", 112)])
def test_cam_maps_equal_pytorch_grad_cams_to_float32_rounding(kind, name, layer, size):
    """Error bound: both sides sum C products per pixel and H*W terms per weight in float32, each sum off
    by at most gamma_n = n u / (1 - n u) of its sum of |terms| (u = 2^-24), and Grad-CAM++'s per-term
    ratio by a few u; the min-max to [0, 1] then divides the error by the map's range (at most 4x: the
    value, its minimum and the range move), and the bilinear resize adds a few u."""
    from pytorch_grad_cam import GradCAM as TheirGradCAM, GradCAMPlusPlus as TheirGradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from vebi.an8flower.net import An8Net
    from vebi.hooks import preserve_model
    from vebi.methods.cam import cam_weights
    from vebi.models import in_fast_layout

    torch.manual_seed(3)
    model = (An8Net(num_classes=5) if name == "an8net" else torchvision_model(name, 5)).eval()
    x = torch.rand(3, 3, size, size)
    target = torch.tensor([0, 3, 4])
    ours = (grad_cam if kind == "gradcam" else grad_cam_plus_plus)(model, x, target, layer=layer)

    module = dict(model.named_modules())[layer]
    with preserve_model(model):
        cam = (TheirGradCAM if kind == "gradcam" else TheirGradCAMPlusPlus)(model=model, target_layers=[module])
        try:
            theirs = in_fast_layout(model, lambda inputs: cam(
                input_tensor=inputs, targets=[ClassifierOutputTarget(int(c)) for c in target]), x.clone().requires_grad_(True))
        finally:
            cam.activations_and_grads.release()
    theirs = minmax(torch.from_numpy(theirs).clamp_min(0))

    a, g = (t.double() for t in _layer_terms(model, layer, x, target))
    c, hw = a.shape[1], a.shape[2] * a.shape[3]
    u = 2.0**-24
    gamma = lambda n: n * u / (1 - n * u)  # noqa: E731
    weights = cam_weights(kind, a, g)
    if kind == "gradcam":
        weight_error = gamma(hw) * g.abs().mean(dim=(2, 3))
    else:
        g2 = g.square()
        ratio = g2 / (2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g2 * g + 1e-6)
        weight_error = (gamma(hw) + 8 * u) * (g.clamp_min(0) * ratio.abs()).sum(dim=(2, 3))
    a_abs = a.abs()
    layer_error = 2 * ((weight_error[:, :, None, None] * a_abs).sum(1)
                       + gamma(c) * (weights.abs()[:, :, None, None] * a_abs).sum(1)).flatten(1).amax(1)
    exact = (weights[:, :, None, None] * a).sum(1).clamp_min(0).flatten(1)
    span = exact.amax(1) - exact.amin(1)
    compared = span > 100 * layer_error  # a map that is all zero up to rounding has no shape to compare
    assert int(compared.sum()) >= 2
    tolerance = 4 * layer_error / span + 8 * u
    difference = (ours.double() - theirs.double()).flatten(1).abs().amax(1)
    assert bool((difference <= tolerance)[compared].all()), (difference, tolerance)
    assert bool((ours.flatten(1).amax(1) == 1)[compared].all())
