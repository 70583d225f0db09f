"""Backward rules pinned on hand-weighted tiny models, the stride fix against its definition,
scoping (nothing left behind, also after an exception), torchvision models, Captum agreement,
and the grid-artifact reduction of the stride fix on a CNN trained here."""

import math
import random
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.modules import module as module_hooks

from vebi.explanation import backward as bp
from vebi.explanation import rules, stride_fix
from vebi.explanation.postprocess import postprocess_gradient
from vebi.errors import VebiError
from conftest import torchvision_model


def row(*values: float) -> torch.Tensor:
    """A (1, 1, 1, W) image holding ``values``."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


def scaled_conv(scale: float) -> nn.Conv2d:
    conv = nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(scale)
    return conv


def backward_row(model: nn.Module, x: torch.Tensor, rules: rules.RuleMap, layer: str, seed: torch.Tensor) -> list[float]:
    fw = bp.forward_with_rules(model, x, rules, [layer])
    return fw.backward({layer: seed}).flatten().tolist()


# ------------------------------------------------------------------------------ rectifier rules

@pytest.mark.parametrize("inplace", [False, True])
def test_relu_rules_hand_computed(inplace):
    # input grad = 2 * rule(g) since the conv doubles; x_in = [-2, -1, 1, 2], g = [1, -1, 1, -1]
    model = nn.Sequential(scaled_conv(2.0), nn.ReLU(inplace=inplace))
    x, g = row(-1, -0.5, 0.5, 1), row(1, -1, 1, -1)
    assert backward_row(model, x, bp.gradient_rules(), "1", g) == [0, 0, 2, -2]
    assert backward_row(model, x, bp.guided_rules(), "1", g) == [0, 0, 2, 0]
    assert backward_row(model, x, bp.deconvnet_rules(), "1", g) == [2, 0, 2, 0]
    explicit = rules.RuleMap(types={nn.ReLU: rules.GradientReLU()})
    assert backward_row(model, x, explicit, "1", g) == [0, 0, 2, -2]


def test_relu6_rules_gate_on_both_bounds():
    # x_in = [-1, 3, 7, 5]: only 0 < x < 6 passes; g = [1, 1, 1, -1]
    model = nn.Sequential(scaled_conv(1.0), nn.ReLU6(inplace=True))
    x, g = row(-1, 3, 7, 5), row(1, 1, 1, -1)
    assert backward_row(model, x, bp.gradient_rules(), "1", g) == [0, 1, 0, -1]
    assert backward_row(model, x, bp.guided_rules(), "1", g) == [0, 1, 0, 0]
    assert backward_row(model, x, bp.deconvnet_rules(), "1", g) == [1, 1, 1, 0]


def test_rules_by_module_name_override_rules_by_type():
    shift = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        shift.weight.fill_(1.0)
        shift.bias.fill_(-3.0)
    model = nn.Sequential(scaled_conv(1.0), nn.ReLU(), shift, nn.ReLU(), nn.Conv2d(1, 1, 1, stride=2))
    # x = [-1, 2, 5]: first ReLU gate [0, 1, 1]; second ReLU sees [-3, -1, 2], gate [0, 0, 1]
    x, g = row(-1, 2, 5), row(1, 1, -1)
    deconv = {nn.ReLU: rules.DeconvReLU()}
    assert backward_row(model, x, rules.RuleMap(types=deconv), "3", g) == [1, 1, 0]
    # first plain: relu(g) = [1, 1, 0], then gate [0, 1, 1]
    assert backward_row(model, x, rules.RuleMap(types=deconv, names=(("1", None),)), "3", g) == [0, 1, 0]
    # second plain: g * [0, 0, 1] = [0, 0, -1], then relu
    assert backward_row(model, x, rules.RuleMap(types=deconv, names=(("3", None),)), "3", g) == [0, 0, 0]
    assert backward_row(model, x, rules.RuleMap(types=deconv, names=(("[13]", None),)), "3", g) == [0, 0, -1]
    # a name pattern whose rule does not handle convolutions leaves the type rule for them in place
    fix_kept = rules.RuleMap(types={nn.Conv2d: stride_fix.StrideFixConv()}, names=(("*", rules.GuidedReLU()),))
    fw = bp.forward_with_rules(model, x, fix_kept, ["4"])
    assert fw.trace.applied[("4", "conv2d", "StrideFixConv")] == 1
    assert fw.trace.applied[("1", "relu", "GuidedReLU")] == 1


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _silu_slope(x: float) -> float:
    return _sigmoid(x) * (1.0 + x * (1.0 - _sigmoid(x)))


def _gelu_slope(x: float) -> float:  # Phi(x) + x * phi(x)
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0))) + x * math.exp(-x * x / 2.0) / math.sqrt(2.0 * math.pi)


def _gelu_tanh_slope(x: float) -> float:
    c = math.sqrt(2.0 / math.pi)
    t = math.tanh(c * (x + 0.044715 * x**3))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * x * x)


def _mish_slope(x: float) -> float:
    t = math.tanh(math.log1p(math.exp(x)))
    return t + x * (1.0 - t * t) * _sigmoid(x)


def _hardswish_slope(x: float) -> float:
    return 0.0 if x < -3 else 1.0 if x > 3 else (2 * x + 3) / 6


SMOOTH = [
    ("silu", nn.SiLU(), _silu_slope),
    ("silu_inplace", nn.SiLU(inplace=True), _silu_slope),
    ("gelu", nn.GELU(), _gelu_slope),
    ("gelu_tanh", nn.GELU(approximate="tanh"), _gelu_tanh_slope),
    ("hardswish_inplace", nn.Hardswish(inplace=True), _hardswish_slope),
    ("mish", nn.Mish(), _mish_slope),
]


@pytest.mark.parametrize(("activation", "slope"), [s[1:] for s in SMOOTH], ids=[s[0] for s in SMOOTH])
def test_smooth_activation_rules_hand_computed(activation, slope):
    # the conv doubles: x_in = 2 x; input grad = 2 * rule(g) at x_in
    model = nn.Sequential(scaled_conv(2.0), activation)
    xs, gs = (-2.5, -1.0, -0.25, 0.0, 0.75, 2.0), (1.0, -1.0, 2.0, 1.0, -1.0, 3.0)
    x_in = [2 * v for v in xs]
    x, g = row(*xs), row(*gs)
    gradient = [2 * gi * slope(xi) for gi, xi in zip(gs, x_in)]
    guided = [2 * max(gi, 0.0) * slope(xi) for gi, xi in zip(gs, x_in)]
    deconv = [2 * max(gi, 0.0) for gi in gs]
    tol = {"rel": 1e-5, "abs": 1e-6}  # float32 evaluation of the slopes
    as_gradient = rules.RuleMap(types={type(activation): rules.GradientReLU()})
    assert backward_row(model, x, as_gradient, "1", g) == pytest.approx(gradient, **tol)
    assert backward_row(model, x, bp.gradient_rules(), "1", g) == pytest.approx(gradient, **tol)
    assert backward_row(model, x, bp.guided_rules(), "1", g) == pytest.approx(guided, **tol)
    assert backward_row(model, x, bp.deconvnet_rules(), "1", g) == pytest.approx(deconv, **tol)
    # some slopes are negative (x_in < 0): the guided rule keeps the local derivative's sign
    assert min(guided) < 0 or isinstance(activation, nn.Hardswish) and guided[0] == 0


class FunctionalSmooth(nn.Module):
    """conv -> F.silu(inplace) -> F.gelu -> F.hardswish -> F.mish, each a functional call."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = scaled_conv(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.mish(F.hardswish(F.gelu(F.silu(self.conv(x), inplace=True))))


def test_functional_smooth_activations_get_the_rule_of_their_module_type():
    model = nn.Sequential(FunctionalSmooth())
    x = row(-1.5, -0.5, 0.5, 1.5)
    fw = bp.forward_with_rules(model, x, bp.guided_rules(), ["0"])
    assert {op for (_, op) in fw.trace.functional} == {"silu", "gelu", "hardswish", "mish"}
    assert sum(fw.trace.applied.values()) == 4
    # with g = 1 > 0 everywhere and no negative seed, guided = plain gradient = chain of slopes
    guided = fw.backward({"0": row(1, 1, 1, 1)}).flatten().tolist()
    expected = []
    for v in (-1.5, -0.5, 0.5, 1.5):
        a = v * _sigmoid(v)
        b = 0.5 * a * (1.0 + math.erf(a / math.sqrt(2.0)))
        c = b * min(max(b + 3, 0), 6) / 6
        expected.append(_silu_slope(v) * _gelu_slope(a) * _hardswish_slope(b) * _mish_slope(c))
    assert guided == pytest.approx(expected, rel=1e-5, abs=1e-7)
    # deconvnet: max(g, 0) through all four, whatever the inputs
    deconv = bp.forward_with_rules(model, x, bp.deconvnet_rules(), ["0"])
    assert deconv.backward({"0": row(1, -1, 2, 1)}).flatten().tolist() == [1, 0, 2, 1]


def test_nonlinearities_without_a_rule_are_named_once_per_forward():
    from torchvision.ops import SqueezeExcitation

    model = nn.Sequential(scaled_conv(1.0), nn.Tanh(), SqueezeExcitation(1, 1), nn.ELU(), nn.LeakyReLU(), nn.ReLU6())
    x = row(-1, 2)
    for preset in (bp.guided_rules(), bp.deconvnet_rules()):
        with pytest.warns(UserWarning, match=r"nonlinearities 1 \(Tanh\), 3 \(ELU\), 4 \(LeakyReLU\): ") as record:
            bp.forward_with_rules(model, x, preset, ["5"])
        assert len([w for w in record if "no backward rule" in str(w.message)]) == 1  # the SE gate is not named
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bp.forward_with_rules(model, x, bp.gradient_rules(), ["5"])  # plain gradient asked: nothing to say
        bp.forward_with_rules(nn.Sequential(scaled_conv(1.0), nn.SiLU(), nn.Hardtanh(0.0, 6.0)), x,
                              bp.guided_rules(), ["1"])


class FunctionalBlock(nn.Module):
    """conv -> F.relu(inplace) -> conv (weight 1) -> torch.relu: two functional rectifiers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.out = scaled_conv(1.0), scaled_conv(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.out(F.relu(self.conv(x), inplace=True)))


def test_functional_rectifiers_are_handled_or_reported():
    model = nn.Sequential(FunctionalBlock())
    x, g = row(-1, 2, 3), row(1, -1, 2)
    fw = bp.forward_with_rules(model, x, bp.guided_rules(), ["0.out"])
    # seeding the inner conv's output: functional ReLU at x_in = [-1, 2, 3] then guided gate on g
    assert fw.backward({"0.out": g}).flatten().tolist() == [0, 0, 2]
    assert fw.trace.functional[("0", "relu")] == 2
    with pytest.warns(UserWarning, match="functional rectifiers in 0 kept the plain gradient"):
        plain = bp.forward_with_rules(model, x, bp.guided_rules(functional=False), ["0.out"])
    assert plain.backward({"0.out": g}).flatten().tolist() == [0, -1, 2]


class Reuse(nn.Module):
    """relu(conv2(relu(conv1(x)))) with one ReLU module called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2, self.relu = scaled_conv(1.0), scaled_conv(-1.0), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.relu(self.conv1(x))))


def test_reused_relu_module_gets_the_rule_at_every_call():
    model = nn.Sequential(Reuse())
    # x = [2, -3]: first relu [2, 0]; negated [-2, 0]; second relu [0, 0]
    x = row(2, -3)
    fw = bp.forward_with_rules(model, x, bp.guided_rules(), ["0", "0.conv2"])
    assert fw.trace.reused == ("0.relu",)
    assert fw.trace.applied[("0.relu", "relu", "GuidedReLU")] == 2
    # the second gate [x > 0] on [-2, 0] blocks everything
    assert fw.backward({"0": row(1, 1)}).flatten().tolist() == [0, 0]
    # seed [-1, -1] before the second ReLU: through conv2 (-1) -> [1, 1]; first gate passes x = 2 only
    assert fw.backward({"0.conv2": row(-1, -1)}).flatten().tolist() == [1, 0]


class Residual(nn.Module):
    """out = relu(conv(x)); out += x; relu(out) -- a residual ``+=`` on an in-place ReLU output."""

    def __init__(self, scale: float = -1.0) -> None:
        super().__init__()
        self.conv, self.relu = scaled_conv(scale), nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.conv(x))
        out += x
        return self.relu(out)


def test_inplace_residual_addition_keeps_forward_values_and_routes_signals():
    model = nn.Sequential(Residual())
    x = row(-2, 1, 3)
    expected = model(x.clone())  # relu(relu(-x) + x) = [0, 1, 3]
    fw = bp.forward_with_rules(model, x, bp.guided_rules(), ["0"])
    assert torch.equal(fw.output, expected) and fw.output.flatten().tolist() == [0, 1, 3]
    # g = [1, 1, 1] at the output; outer gate on [0, 1, 3] -> [0, 1, 1]; identity path adds [0, 1, 1];
    # inner path: relu gate on -x = [2, -1, -3] passes only the first element, which got 0
    assert fw.backward({"0": row(1, 1, 1)}).flatten().tolist() == [0, 1, 1]


def test_inplace_residual_addition_gates_with_the_support_before_the_addition():
    # the inner ReLU's output is changed by ``+=`` after the call; its gate must still be [-2x > 0]
    model = nn.Sequential(Residual(scale=-2.0))
    x = row(-1, 1, 3)  # inner relu(-2x) = [2, 0, 0]; out = relu([2, 0, 0] + x) = [1, 1, 3]
    for rule_map in (bp.guided_rules(), rules.RuleMap(types={nn.ReLU: rules.GradientReLU()})):
        fw = bp.forward_with_rules(model, x, rule_map, ["0"])
        assert fw.output.flatten().tolist() == [1, 1, 3]
        # identity path [1, 1, 1]; inner path: gate [1, 0, 0], times the conv weight -2
        assert fw.backward({"0": row(1, 1, 1)}).flatten().tolist() == [-1, 1, 1]


class _ChangedAfterRelu(nn.Module):
    """relu(-x), then the ReLU's output changed in place by ``how`` before the next layer reads it."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.conv, self.relu, self.how = scaled_conv(-1.0), nn.ReLU(inplace=True), how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.conv(x))
        if self.how == "view":
            out[..., :2] += 5.0  # through a view: the ReLU output's memory changes
        elif self.how == "dropout":
            out = F.dropout(out, 0.5, False, True)  # eval dropout, in place, inplace passed by position
        elif self.how == "setitem":
            out[..., 2] = 7.0
        return out


@pytest.mark.parametrize(("how", "expected"), [
    # x = [-2, 1, 3]: relu(-x) = [2, 0, 0]; the gate [2 > 0, 0, 0] must hold whatever happens to the output
    ("view", [-1, 0, 0]), ("dropout", [-1, 0, 0]), ("setitem", [-1, 0, 0]), ("none", [-1, 0, 0])])
def test_rectifier_support_is_copied_only_when_its_output_changes_in_place(how, expected, monkeypatch):
    copies = []
    support = rules._support
    monkeypatch.setattr(rules, "_support", lambda *a: copies.append(1) or support(*a))
    model = nn.Sequential(_ChangedAfterRelu(how))
    fw = bp.forward_with_rules(model, row(-2, 1, 3), bp.guided_rules(), ["0"])
    with torch.no_grad():
        assert torch.equal(fw.output, model(row(-2, 1, 3)))
    assert fw.backward({"0": row(1, 1, 1)}).flatten().tolist() == expected
    # a copy of the support only where the output changed in place (eval dropout need not change it, but may)
    assert len(copies) == (0 if how == "none" else 1)


def test_rectifier_output_changed_after_the_forward_pass_is_a_clear_error():
    model = nn.Sequential(scaled_conv(1.0), nn.ReLU(), nn.Identity())
    kept = {}
    handle = model[1].register_forward_hook(lambda _m, _i, out: kept.update(relu=out))
    try:
        fw = bp.forward_with_rules(model, row(-2, 1, 3), bp.guided_rules(), ["2"])
    finally:
        handle.remove()
    kept["relu"].add_(1.0)  # outside the forward pass: nothing watched it
    with pytest.raises(VebiError, match="changed in place after the forward pass"):
        fw.backward({"2": row(1, 1, 1)})


# ------------------------------------------------------------------------------ stride fix

def test_stride_fix_on_a_one_dimensional_strided_conv_hand_computed():
    conv = nn.Conv2d(1, 1, (1, 2), stride=(1, 2), bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 2.0]).view(1, 1, 1, 2))
    model = nn.Sequential(conv)
    x, g = row(*range(6)), row(1, 2, 3)
    # plain transposed conv writes g_j * [1, 2] at positions 2j, 2j + 1
    assert backward_row(model, x, bp.gradient_rules(), "0", g) == [1, 2, 2, 4, 3, 6]
    # nearest fix: g upsampled to the stride-1 length 5 -> [1, 1, 2, 2, 3], transposed conv with stride 1
    nearest = bp.gradient_rules(stride_fix=True, upsample="nearest")
    assert backward_row(model, x, nearest, "0", g) == [1, 3, 4, 6, 7, 6]
    # linear fix (default): cell i at position 2i, in between interpolated -> [1, 1.5, 2, 2.5, 3]
    assert backward_row(model, x, bp.gradient_rules(stride_fix=True), "0", g) == [1, 3.5, 5, 6.5, 8, 6]


def test_stride_fix_when_the_stride_does_not_divide_the_stride_one_length():
    conv = nn.Conv2d(1, 1, (1, 3), stride=(1, 2), padding=(0, 1), bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 1, 3))
    model = nn.Sequential(conv)
    # W = 7 -> 4 outputs; stride-1 length 7; upsampled [1, 1, 2, 2, 3, 3, 4] (the 8th copy is cropped)
    nearest = bp.guided_rules(stride_fix=True, upsample="nearest")
    assert backward_row(model, row(*range(7)), nearest, "0", row(1, 2, 3, 4)) == [3, 7, 9, 13, 15, 19, 17]
    # linear: cells at 0, 2, 4, 6 -> [1, 1.5, 2, 2.5, 3, 3.5, 4]; out[i] = 2 u[i] + 3 u[i - 1] + u[i + 1]
    linear = bp.guided_rules(stride_fix=True)
    assert backward_row(model, row(*range(7)), linear, "0", row(1, 2, 3, 4)) == [3.5, 8, 11, 14, 17, 20, 18.5]


def _fix_by_definition(g, weight, size, stride, padding, dilation, groups, upsample):
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    kh, kw = weight.shape[-2:]
    h1, w1 = size[0] + 2 * ph - dh * (kh - 1), size[1] + 2 * pw - dw * (kw - 1)
    if upsample == "nearest":
        up = g[..., torch.arange(h1) // sh, :][..., torch.arange(w1) // sw]
    else:  # cell i at stride-1 position s i: corner-aligned interpolation, the last cell held up to H1
        ho, wo = g.shape[-2:]
        up = F.interpolate(g, size=(sh * (ho - 1) + 1, sw * (wo - 1) + 1), mode="bilinear", align_corners=True)
        up = F.pad(up, (0, w1 - up.shape[-1], 0, h1 - up.shape[-2]), mode="replicate")
    return F.conv_transpose2d(up, weight, None, 1, (ph, pw), 0, groups, (dh, dw))


@pytest.mark.parametrize("upsample", ["linear", "nearest"])
@pytest.mark.parametrize("route", stride_fix._ROUTES)
def test_stride_fix_equals_its_definition_for_any_stride_padding_dilation_groups(route, upsample, monkeypatch):
    # every way of computing the fix must equal the definition, where it applies (polyphase: no groups;
    # pointwise: 1 x 1 without padding)
    monkeypatch.setattr(stride_fix, "_route", lambda *args: route)
    rng = random.Random(0)
    torch.manual_seed(0)
    checked = 0
    while checked < 120:
        groups = 1 if route == "polyphase" else rng.choice([1, 2, 3])
        kh, kw, dh, dw = rng.randint(1, 5), rng.randint(1, 5), rng.randint(1, 2), rng.randint(1, 2)
        sh, sw, ph, pw = rng.randint(1, 4), rng.randint(2, 4), rng.randint(0, 3), rng.randint(0, 3)
        if route == "pointwise":
            kh = kw = 1
            ph = pw = 0
        h, w = rng.randint(1, 12), rng.randint(1, 12)
        if h + 2 * ph - dh * (kh - 1) < 1 or w + 2 * pw - dw * (kw - 1) < 1:
            continue
        # depthwise (one input channel per group) and grouped convs with several
        conv = nn.Conv2d(rng.choice([1, 2]) * groups, rng.choice([1, 2]) * groups, (kh, kw), (sh, sw), (ph, pw),
                         (dh, dw), groups).double()
        x = torch.randn(2, conv.in_channels, h, w, dtype=torch.float64)
        rules = bp.gradient_rules(stride_fix=True, upsample=upsample)
        fw = bp.forward_with_rules(nn.Sequential(conv), x, rules, ["0"])
        g = torch.randn_like(fw.activations["0"])
        expected = _fix_by_definition(g, conv.weight.detach(), (h, w), (sh, sw), (ph, pw), (dh, dw), groups, upsample)
        torch.testing.assert_close(fw.backward({"0": g}), expected, rtol=1e-10, atol=1e-10)
        checked += 1


def test_stride_fix_routes_by_layer_kind():
    # depthwise -> the definition; 1 x 1 -> mix then upsample; wide border bands -> the definition; few
    # inputs and a kernel shorter than three strides -> polyphase; else transposed
    route = stride_fix._route
    assert route(torch.zeros(96, 1, 3, 3), (2, 2), (1, 1), 96, False) == "direct"
    assert route(torch.zeros(512, 256, 1, 1), (2, 2), (0, 0), 1, True) == "pointwise"
    assert route(torch.zeros(512, 256, 1, 1), (2, 2), (1, 1), 1, False) == "transposed"
    assert route(torch.zeros(512, 512, 3, 3), (2, 2), (1, 1), 1, True) == "direct"
    assert route(torch.zeros(32, 3, 3, 3), (2, 2), (1, 1), 1, False) == "polyphase"
    assert route(torch.zeros(32, 3, 7, 7), (4, 4), (3, 3), 1, False) == "polyphase"
    assert route(torch.zeros(64, 3, 7, 7), (2, 2), (3, 3), 1, False) == "transposed"
    assert route(torch.zeros(64, 3, 7, 3), (2, 2), (3, 1), 1, False) == "polyphase"
    assert route(torch.zeros(128, 128, 3, 3), (2, 2), (1, 1), 1, False) == "transposed"
    assert route(torch.zeros(128, 64, 3, 3), (2, 2), (1, 1), 2, False) == "transposed"


@pytest.mark.parametrize("size, inputs, kernel, stride, padding, expected", [
    (14, 16, 3, 2, 1, "direct"),  # as ResNet-50's layer4.0.conv2 at 224 px: 7 x 7 output, 14 x 14 stride-1 grid
    (28, 16, 3, 2, 1, "transposed"),  # as layer3.0.conv2: 14 x 14 output
    (112, 3, 7, 4, 3, "polyphase"),  # the an8Flower net's first layer: 3 inputs, 28 x 28 output
    (224, 3, 7, 2, 3, "transposed"),  # ResNet's stem: 3 inputs, a kernel of 3.5 strides
])
def test_stride_fix_weighs_the_border_bands_against_the_full_grid(size, inputs, kernel, stride, padding, expected,
                                                                   monkeypatch):
    taken = []
    chosen = stride_fix._route

    def spy(*args):
        taken.append(chosen(*args))
        return taken[-1]

    monkeypatch.setattr(stride_fix, "_route", spy)
    weight = torch.zeros(2, inputs, kernel, kernel)
    out = (size + 2 * padding - kernel) // stride + 1
    stride_fix.stride_fixed_conv_input_grad(torch.zeros(1, 2, out, out), weight, (size, size), stride, padding, 1, 1)
    assert taken == [expected]


def _averaging(model: nn.Module) -> nn.Module:
    """Every conv an average over its window (weights 1 / fan-in, no bias): on a positive input every
    activation is positive, so every rectifier passes the signal and only the geometry of the
    convolutions and of the stride fix shapes the backward signal."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.fill_(1.0 / m.weight[0].numel())
                if m.bias is not None:
                    m.bias.zero_()
    return model.eval()


@pytest.mark.parametrize(("arch", "layers"), [("mobilenet_v2", ("features.7", "features.14")),
                                              ("resnet18", ("layer2", "layer4"))])
def test_stride_fix_keeps_a_centred_impulse_centred_and_within_its_receptive_field(arch, layers):
    # 193 px: every map has odd size and the centre unit's field is centred on the image, so a
    # border cannot pull the signal; the deeper layer lies after every strided layer of the net
    from vebi.interpretation.receptive import receptive_field

    model = _averaging(getattr(torchvision.models, arch)(weights=None))
    size = 193
    x = 1e-3 * (0.5 + torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)))  # ReLU6 stays < 6
    offsets = {}
    for upsample in ("linear", "nearest"):
        fw = bp.forward_with_rules(model, x, bp.gradient_rules(stride_fix=True, upsample=upsample), layers)
        for layer in layers:
            act = fw.activations[layer]
            c = act.shape[-1] // 2
            seed = torch.zeros_like(act)
            seed[0, :, c, c] = 1.0
            signal = fw.backward({layer: seed})[0].abs().sum(0).double()
            field = receptive_field(model, layer)
            top, left, bottom, right = field.box(c, c, (size, size))
            coords = torch.arange(size, dtype=torch.float64)
            total = signal.sum()
            centroid = (float(signal.sum(1) @ coords / total), float(signal.sum(0) @ coords / total))
            offsets[upsample, layer] = max(abs(a - b) for a, b in zip(centroid, field.center(c, c)))
            outside = 1 - float(signal[top:bottom, left:right].sum() / total)
            if upsample == "linear":
                # interpolated positions lie between two units, so their windows reach (s - 1) pixels
                # past either unit's: a thin fringe of the signal leaves the theoretical field
                assert outside < 0.01, (layer, outside)
    print({k: round(v, 3) for k, v in offsets.items()})
    for layer in layers:
        assert offsets["linear", layer] <= 0.5
        assert offsets["nearest", layer] > 2  # (s - 1) / 2 input pixels of each strided layer, down-right


def test_stride_fix_follows_weights_changed_in_place():
    conv = nn.Conv2d(1, 1, (1, 2), stride=(1, 2), bias=False)
    model = nn.Sequential(conv)
    x, g = row(*range(6)), row(1, 2, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 2.0]).view(1, 1, 1, 2))
    assert backward_row(model, x, bp.gradient_rules(stride_fix=True), "0", g) == [1, 3.5, 5, 6.5, 8, 6]
    with torch.no_grad():
        conv.weight.mul_(-1)  # the backward reads the weights as they are now
    assert backward_row(model, x, bp.gradient_rules(stride_fix=True), "0", g) == [-1, -3.5, -5, -6.5, -8, -6]


def test_stride_one_convolutions_keep_the_plain_backward():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 3, padding="same"))
    x = torch.randn(2, 3, 9, 9)
    fixed = bp.forward_with_rules(model, x, bp.gradient_rules(stride_fix=True), ["1"])
    plain = bp.forward_with_rules(model, x, bp.gradient_rules(), ["1"])
    g = torch.randn_like(fixed.activations["1"])
    assert torch.equal(fixed.backward({"1": g}), plain.backward({"1": g}))
    assert not fixed.trace.applied  # nothing to fix


# ------------------------------------------------------------------------------ pooling variant

def test_pooling_variant_overwrites_instead_of_adding():
    model = nn.Sequential(nn.MaxPool2d((1, 3), stride=(1, 2)))
    # both windows [0..2], [2..4] have their max at position 2; signal g = [1, 2]
    x, g = row(0, 1, 5, 2, 0), row(1, 2)
    assert backward_row(model, x, bp.gradient_rules(), "0", g) == [0, 0, 3, 0, 0]
    assert backward_row(model, x, bp.gradient_rules(pool_fix=True), "0", g) == [0, 0, 2, 0, 0]
    # non-overlapping windows: the same as the plain switches
    x2 = row(1, 3, 2, 0)
    model2 = nn.Sequential(nn.MaxPool2d((1, 2)))
    assert backward_row(model2, x2, bp.gradient_rules(pool_fix=True), "0", row(4, 5)) == [0, 4, 5, 0]


def test_pooling_variant_with_return_indices_matches_plain_routing_without_overlap():
    torch.manual_seed(0)
    pool = nn.MaxPool2d(2, return_indices=True)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(pool))
    x = torch.randn(3, 1, 9, 9)
    fixed = bp.forward_with_rules(model, x, bp.gradient_rules(pool_fix=True), ["0"])
    plain = bp.forward_with_rules(model, x, bp.gradient_rules(), ["0"])
    assert torch.equal(fixed.output[0], plain.output[0]) and torch.equal(fixed.output[1], plain.output[1])
    g = torch.randn_like(fixed.output[0])
    got = torch.autograd.grad(fixed.output[0], fixed.inputs, g)[0]
    want = torch.autograd.grad(plain.output[0], plain.inputs, g)[0]
    torch.testing.assert_close(got, want)


# ------------------------------------------------------------------------------ scoping

def _state(model: nn.Module) -> dict:
    return {
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
        "global_hooks": [len(getattr(module_hooks, name)) for name in (
            "_global_forward_hooks", "_global_forward_pre_hooks", "_global_forward_hooks_always_called")],
        "training": [m.training for m in model.modules()],
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "params": {k: v.clone() for k, v in model.state_dict().items()},
    }


def _same(a: dict, b: dict) -> bool:
    return (a["hooks"] == b["hooks"] and a["global_hooks"] == b["global_hooks"] and a["training"] == b["training"] and a["inplace"] == b["inplace"]
            and a["requires_grad"] == b["requires_grad"]
            and all(torch.equal(a["params"][k], b["params"][k]) for k in a["params"]))


class Exploding(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def test_model_and_inputs_unchanged_after_success_and_after_an_exception():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Conv2d(4, 2, 1))
    model.train()
    before = _state(model)
    x = torch.randn(2, 3, 12, 12)
    x_copy = x.clone()
    fw = bp.forward_with_rules(model, x, bp.guided_rules(stride_fix=True, pool_fix=True), ["3"])
    fw.backward({"3": torch.ones_like(fw.activations["3"])})
    assert _same(before, _state(model)) and torch.equal(x, x_copy) and not x.requires_grad and x.grad is None
    assert torch._C._len_torch_function_stack() == 0

    model.append(Exploding())
    before = _state(model)
    with pytest.raises(RuntimeError, match="boom"):
        bp.forward_with_rules(model, x, bp.guided_rules(stride_fix=True), ["1"])
    assert _same(before, _state(model)) and torch.equal(x, x_copy)
    assert torch._C._len_torch_function_stack() == 0
    # outside the context the model runs with plain autograd again
    y = torch.randn(1, 3, 12, 12, requires_grad=True)
    assert model[:4](y).grad_fn.name() == "ConvolutionBackward0"


def test_captures_see_the_models_own_forward_hooks_and_the_rules_still_apply():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 1, 1))
    handle = model[0].register_forward_hook(lambda _m, _i, out: out * 2)  # the model's own hook replaces the output
    try:
        x = torch.randn(1, 1, 6, 6)
        fw = bp.forward_with_rules(model, x, bp.guided_rules(), ["0", "1"])
        with torch.no_grad():
            doubled = model[0](x)
        torch.testing.assert_close(fw.activations["0"], doubled)  # what the rest of the network saw
        assert fw.trace.applied[("1", "relu", "GuidedReLU")] == 1 and fw.trace.calls["0"] == 1
        assert len(model[0]._forward_hooks) == 1  # the model's hook stays, vebi's are gone
    finally:
        handle.remove()


class _ChangesCapturesInPlace(nn.Module):
    """conv (captured) -> its output changed in place by ``how`` -> ReLU -> conv."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.conv, self.relu, self.out, self.how = nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 1, 1), how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.how == "relu_":
            y = self.relu(y.relu_())
        elif self.how == "iadd":
            y += 1.0
        elif self.how == "view":
            y[:, :, :2] *= -1.0
        return self.out(self.relu(y))


@pytest.mark.parametrize("how", ["relu_", "iadd", "view"])
def test_a_captured_output_changed_in_place_later_keeps_its_values_and_its_place_in_the_graph(how):
    torch.manual_seed(0)
    model = _ChangesCapturesInPlace(how)
    x = torch.randn(2, 2, 6, 6)
    with torch.no_grad():
        expected = model.conv(x)
    fw = bp.forward_with_rules(model, x, bp.guided_rules(), ["conv"])
    torch.testing.assert_close(fw.activations["conv"], expected, rtol=0, atol=0)
    seed = torch.randn_like(expected)
    # a seed at the conv's output goes back through the conv alone: its plain transposed conv
    reference = torch.nn.grad.conv2d_input(x.shape, model.conv.weight.detach(), seed, padding=1)
    torch.testing.assert_close(fw.backward({"conv": seed}), reference)
    torch.testing.assert_close(fw.output, model.eval()(x))


def test_bad_layer_names_and_seeds_raise_vebi_errors():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU())
    with pytest.raises(VebiError, match="no layer named 'relu'"):
        bp.forward_with_rules(model, torch.zeros(1, 1, 2, 2), bp.guided_rules(), ["relu"])
    fw = bp.forward_with_rules(model, torch.zeros(1, 1, 2, 2), bp.guided_rules(), ["1"])
    with pytest.raises(VebiError, match="no captured output for layer"):
        fw.backward({"0": torch.zeros(1, 2, 2, 2)})
    with pytest.raises(VebiError, match="channel index out of range"):
        bp.channel_seed(fw.activations["1"], torch.tensor([2]))
    with pytest.raises(VebiError, match=r"seed of 1 has shape \(1, 2, 1, 1\), its output \(1, 2, 2, 2\)"):
        fw.backward({"1": torch.ones(1, 2, 1, 1)})  # would broadcast: refused, not spread over the map
    assert torch.equal(fw.backward({}), torch.zeros(1, 1, 2, 2))


def test_channel_seed_keeps_only_each_images_own_channel():
    a = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    seed = bp.channel_seed(a, torch.tensor([2, 0]))
    expected = torch.zeros_like(a)
    expected[0, 2], expected[1, 0] = a[0, 2], a[1, 0]
    assert torch.equal(seed, expected)


# ------------------------------------------------------------------------------ torchvision models

@pytest.mark.parametrize("name, layer", [("vgg11", "features.9"), ("resnet18", "layer2.0.conv1")])
def test_guided_backprop_without_fix_agrees_with_captum(name, layer):
    from captum.attr import NeuronDeconvolution, NeuronGuidedBackprop

    torch.manual_seed(1)
    model = torchvision_model(name, 3).eval()
    x = torch.randn(2, 3, 48, 48)
    channels = torch.tensor([3, 7])

    def seeded_like_ours(out: torch.Tensor) -> torch.Tensor:
        # d/dA of 0.5 * sum A_c^2 is A_c on channel c and zero elsewhere: the method's seed
        return 0.5 * out[torch.arange(2), channels].square().flatten(1).sum(1)

    module = dict(model.named_modules())[layer]
    for ours, theirs in ((bp.guided_rules(), NeuronGuidedBackprop), (bp.deconvnet_rules(), NeuronDeconvolution)):
        fw = bp.forward_with_rules(model, x, ours, [layer])
        got = fw.backward({layer: bp.channel_seed(fw.activations[layer], channels)})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = theirs(model, module).attribute(x, neuron_selector=seeded_like_ours)
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------ grid artifacts

def _blob_images(n: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey noise with one coloured disc (red: class 0, green: class 1) at a random place."""
    labels = torch.arange(n) % 2
    images = 0.1 * torch.rand(n, 3, size, size, generator=generator)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = torch.randint(8, size - 8, (n, 2), generator=generator)
    for i in range(n):
        disc = ((yy - centres[i, 0]) ** 2 + (xx - centres[i, 1]) ** 2) <= 36
        images[i, int(labels[i]), disc] = 1.0
    return images, labels


def stride_frequency_energy(maps: torch.Tensor, stride: int) -> torch.Tensor:
    """Per map: share of the non-DC spectral energy on the lattice of multiples of 1/stride cycles/pixel."""
    spectrum = torch.fft.fft2(maps - maps.mean(dim=(1, 2), keepdim=True)).abs().square()
    h, w = maps.shape[-2:]
    lattice = torch.zeros(h, w, dtype=torch.bool)
    lattice[:: h // stride, :: w // stride] = True
    lattice[0, 0] = False
    return spectrum[:, lattice].sum(1) / spectrum.flatten(1).sum(1).clamp(min=1e-30)


def test_stride_fix_reduces_grid_artifacts_on_a_trained_cnn():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=4, padding=2), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2))
    images, labels = _blob_images(64, 32, gen)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(60):
        optimiser.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        assert (model(images).argmax(1) == labels).float().mean() > 0.9  # it learned the task

    test_images, _ = _blob_images(16, 32, gen)
    energies = {}
    for fix in (False, True):
        fw = bp.forward_with_rules(model, test_images, bp.guided_rules(stride_fix=fix), ["3"])
        act = fw.activations["3"]
        top = act.detach().square().sum(dim=(2, 3)).argmax(dim=1)  # each image's strongest channel
        maps = postprocess_gradient(fw.backward({"3": bp.channel_seed(act, top)}))
        energies[fix] = float(stride_frequency_energy(maps, 4).mean())
    print(f"\nstride-4 frequency energy share of heatmaps: without fix {energies[False]:.4f}, "
          f"with fix {energies[True]:.4f}")
    assert energies[True] < 0.5 * energies[False]


def test_stride_frequency_energy_measure_hand_checked():
    grid = torch.zeros(1, 8, 8)
    grid[:, ::4, ::4] = 1.0  # a pure period-4 lattice: all its energy is at the stride frequency
    assert float(stride_frequency_energy(grid, 4)) == pytest.approx(1.0)
    # a periodic ramp 0..7 along x: power at frequency u is 1 / sin^2(pi u / 8) (u = 1..7), i.e.
    # 2(2 + sqrt2), 2, 2(2 - sqrt2), 1, ... summing to 21; the lattice u in {2, 4, 6} holds 2 + 1 + 2
    ramp = torch.arange(8.0, dtype=torch.float64).view(1, 1, 8).expand(1, 8, 8)
    assert float(stride_frequency_energy(ramp, 4)) == pytest.approx(5 / 21)


def test_forward_with_rules_leaves_batch_norm_statistics_of_a_training_model_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU()).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bp.forward_with_rules(model, torch.randn(2, 1, 5, 5), bp.guided_rules(), ["2"])
    with pytest.raises(VebiError):
        bp.forward_with_rules(model, torch.randn(2, 1, 5, 5), bp.guided_rules(), ["nope"])
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running stats, counter
