"""Receptive fields against hand-computed boxes and against the gradient of one unit."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from vebi.errors import VebiError
from vebi.interpretation.receptive import ReceptiveField, receptive_field, receptive_fields


def _field(model: nn.Module, layer: str, **kw) -> tuple:
    rf = receptive_field(model, layer, **kw)
    return rf.size, rf.stride, rf.start


# --------------------------------------------------------------------------- hand-computed nets


def test_single_padded_conv_and_border_boxes():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    rf = receptive_field(net, "0")
    assert (rf.size, rf.stride, rf.start) == ((3, 3), (1, 1), (-1, -1))
    assert rf.unclipped_box(0, 0) == (-1, -1, 2, 2)
    assert rf.box(0, 0, (5, 6)) == (0, 0, 2, 2)
    assert rf.box(4, 5, (5, 6)) == (3, 4, 5, 6)  # bottom-right unit: half-open, clipped
    assert rf.box(2, 3, (5, 6)) == (1, 2, 4, 5)  # interior unit: not clipped
    assert rf.center(0, 0) == (0.0, 0.0)


def test_strided_depthwise_then_valid_conv():
    # depthwise 3x3 stride 2 pad 1: size 3, stride 2, start -1; then 3x3 valid: size 3 + 2*2 = 7
    net = nn.Sequential(
        nn.Conv2d(3, 3, 3, stride=2, padding=1, groups=3), nn.BatchNorm2d(3), nn.ReLU6(), nn.Conv2d(3, 8, 3)
    )
    assert _field(net, "0") == ((3, 3), (2, 2), (-1, -1))
    assert _field(net, "2") == ((3, 3), (2, 2), (-1, -1))
    rf = receptive_field(net, "3")
    assert (rf.size, rf.stride, rf.start) == ((7, 7), (2, 2), (-1, -1))
    assert rf.unclipped_box(2, 1) == (3, 1, 10, 8)
    assert rf.box(0, 0, (9, 9)) == (0, 0, 6, 6)


def test_dilated_conv():
    # 3x3 dilation 2 pad 2: effective kernel 5, start -2; then 3x3 stride 2: 5 + 2 = 7, stride 2
    net = nn.Sequential(nn.Conv2d(1, 2, 3, dilation=2, padding=2), nn.Conv2d(2, 2, 3, stride=2))
    assert _field(net, "0") == ((5, 5), (1, 1), (-2, -2))
    assert _field(net, "1") == ((7, 7), (2, 2), (-2, -2))


def test_anisotropic_kernel_stride_and_padding():
    net = nn.Sequential(nn.Conv2d(1, 1, (1, 5), stride=(1, 2), padding=(0, 1)), nn.MaxPool2d((3, 2)))
    # conv: H (1, 1, 0), W (5, 2, -1); pool 3x2 stride 3x2: H (3, 3, 0), W (5 + 1*2, 4, -1)
    assert _field(net, "1") == ((3, 7), (3, 4), (0, -1))


def test_odd_padding_same_even_kernel_and_zero_pad():
    # padding="same" with a 4-wide kernel pads 1 before and 2 after
    same = nn.Sequential(nn.Conv2d(1, 1, 4, padding="same"))
    assert _field(same, "0") == ((4, 4), (1, 1), (-1, -1))
    # TF-style SAME for stride 2: pad (left 0, right 1, top 1, bottom 0), then a valid 3x3 stride 2
    tf_same = nn.Sequential(nn.ZeroPad2d((0, 1, 1, 0)), nn.Conv2d(1, 1, 3, stride=2))
    rf = receptive_field(tf_same, "1")
    assert (rf.size, rf.stride, rf.start) == ((3, 3), (2, 2), (-1, 0))
    assert rf.box(0, 0, (6, 6)) == (0, 0, 2, 3)
    assert rf.box(2, 2, (6, 6)) == (3, 4, 6, 6)


def test_pooling_ceil_mode_clips_last_box():
    # 7 pixels, 2x2 pool stride 2 with ceil_mode: 4 outputs, the last window [6, 8) is half outside
    net = nn.Sequential(nn.MaxPool2d(2, ceil_mode=True), nn.AvgPool2d(3, stride=1, padding=1))
    assert net(torch.zeros(1, 1, 7, 7)).shape[-1] == 4
    rf0 = receptive_field(net, "0")
    assert rf0.box(3, 3, (7, 7)) == (6, 6, 7, 7)
    assert rf0.unclipped_box(3, 3) == (6, 6, 8, 8)
    # avg pool 3 pad 1 after stride 2: size 2 + 2*2 = 6, start -2
    assert _field(net, "1") == ((6, 6), (2, 2), (-2, -2))


class _Residual(nn.Module):
    """main: pad (0 before, 2 after) then valid 3x3 -> [i, i+3); shortcut: 3x3 pad 1 -> [i-1, i+2)."""

    def __init__(self) -> None:
        super().__init__()
        self.pad = nn.ZeroPad2d((0, 2, 0, 2))
        self.main = nn.Conv2d(2, 2, 3)
        self.shortcut = nn.Conv2d(2, 2, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.main(self.pad(x)) + self.shortcut(x))


class _ResidualNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 3, stride=2, padding=1)  # (3, 2, -1)
        self.block = _Residual()
        self.head = nn.Linear(2, 3)

    def forward(self, x):
        x = self.block(self.stem(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_residual_block_union_of_branches():
    net = _ResidualNet()
    # union of [i, i+3) and [i-1, i+2) in stem units -> [i-1, i+3): 4 stem units
    # in pixels: size 3 + (4 - 1) * 2 = 9, stride 2, start -1 - 1 * 2 = -3
    rf = receptive_field(net, "block")
    assert (rf.size, rf.stride, rf.start) == ((9, 9), (2, 2), (-3, -3))
    assert receptive_field(net, net.block.relu) == rf.__class__("block.relu", rf.size, rf.stride, rf.start)
    assert _field(net, "block.main") == ((7, 7), (2, 2), (-1, -1))
    assert _field(net, "block.shortcut") == ((7, 7), (2, 2), (-3, -3))


class _Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 2, 5, padding=2)
        self.b = nn.Sequential(nn.ZeroPad2d((3, 1, 0, 0)), nn.Conv2d(1, 2, (1, 5)))
        self.mix = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.mix(torch.cat([self.a(x), self.b(x)], dim=1))


def test_concatenation_union():
    # a: [i-2, i+3) both axes; b: H [i, i+1), W [i-3, i+2) -> union H [i-2, i+3), W [i-3, i+3)
    net = _Concat()
    assert net(torch.zeros(1, 1, 6, 7)).shape == (1, 4, 6, 7)
    assert _field(net, "b") == ((1, 5), (1, 1), (0, -3))
    assert _field(net, "mix") == ((5, 6), (1, 1), (-2, -3))


def test_global_pooling_needs_input_size():
    net = _ResidualNet()
    with pytest.raises(VebiError, match="no spatial map"):
        receptive_field(net, "head")  # flattened
    pooled = nn.Sequential(nn.Conv2d(1, 1, 3), nn.AdaptiveAvgPool2d(1), nn.Conv2d(1, 1, 1))
    with pytest.raises(VebiError, match="input_size"):
        receptive_field(pooled, "2")
    rf = receptive_field(pooled, "2", input_size=(10, 12))
    assert (rf.size, rf.stride, rf.start) == ((10, 12), (0, 0), (0, 0))
    assert rf.box(0, 0, (10, 12)) == (0, 0, 10, 12)


class _Functional(nn.Module):
    """Functional ops between named markers (identity modules) that expose their outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(4, 1, 3, 5))
        self.a, self.b, self.c = nn.Identity(), nn.Identity(), nn.Identity()

    def forward(self, x):
        x = F.conv2d(x, self.weight, stride=(1, 2), padding=(1, 0))  # H (3, 1, -1), W (5, 2, 0)
        x = F.relu(F.pad(x, (1, 0, 0, 2)))  # one column before: W start -2
        x = self.a(F.max_pool2d(x, 2))  # H (4, 2, -1), W (7, 4, -2)
        x = self.b(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))  # H (8, 2, -3), W (15, 4, -6)
        return self.c(x.mean((2, 3), keepdim=True) + x)


def test_functional_ops():
    net = _Functional()
    assert net(torch.zeros(1, 1, 12, 20)).shape == (1, 4, 7, 4)
    assert _field(net, "a") == ((4, 7), (2, 4), (-1, -2))
    assert _field(net, "b") == ((8, 15), (2, 4), (-3, -6))
    assert _field(net, "c", input_size=(12, 20)) == ((12, 20), (0, 0), (0, 0))
    assert _field(net, "c", ignore_global=True) == ((8, 15), (2, 4), (-3, -6))


class _SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 4, 1), nn.Sigmoid())
        self.out = nn.Conv2d(4, 4, 3, stride=2)

    def forward(self, x):
        a = self.conv(x)
        return self.out(a * self.gate(a))


def test_squeeze_excite_gate_sees_whole_input_unless_ignored():
    net = _SqueezeExcite()
    rf = receptive_field(net, "out", input_size=(20, 30))
    assert (rf.size, rf.stride, rf.start) == ((20, 30), (0, 0), (0, 0))
    # the local path only: conv (3, 1, -1), then 3x3 stride 2 -> (5, 2, -1)
    local = receptive_field(net, "out", ignore_global=True)
    assert (local.size, local.stride, local.start) == ((5, 5), (2, 2), (-1, -1))


def test_errors_name_the_problem():
    with pytest.raises(VebiError, match="close matches: block.main"):
        receptive_field(_ResidualNet(), "block.mian")
    net = nn.Sequential(nn.Conv2d(1, 1, 3), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(VebiError, match="no spatial map"):
        receptive_field(net, "2")
    upsample = nn.Sequential(nn.Conv2d(1, 1, 3), nn.Upsample(scale_factor=2))
    with pytest.raises(VebiError, match="Upsample"):
        receptive_field(upsample, "1")
    # an unsupported op downstream of the layer does not matter
    assert _field(upsample, "0") == ((3, 3), (1, 1), (0, 0))


def test_channels_last_maps_follow_only_per_location_layers():
    class Block(nn.Module):
        def __init__(self, mix: str) -> None:
            super().__init__()
            self.conv, self.norm, self.linear, self.mix = nn.Conv2d(3, 4, 3), nn.LayerNorm(4), nn.Linear(4, 4), mix

        def forward(self, x):
            x = self.conv(x).permute(0, 2, 3, 1)
            x = self.linear(self.norm(x)) if self.mix == "channels" else x.permute(0, 1, 3, 2)
            return torch.permute(x, (0, 3, 1, 2))

    assert _field(nn.Sequential(Block("channels")), "0") == ((3, 3), (1, 1), (0, 0))
    with pytest.raises(VebiError, match="rearranges a channels-last map"):
        receptive_field(nn.Sequential(Block("spatial")), "0")
    over_width = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm(6))  # normalises along the width
    with pytest.raises(VebiError, match="LayerNorm at '1' mixes a spatial axis"):
        receptive_field(over_width, "1")


def test_caller_model_untouched():
    class WithConstant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)

        def forward(self, x):
            return self.conv(x) * torch.tensor(2.0)  # fx stores such constants on the traced root

    net = WithConstant().train()
    before = (dict(net.__dict__), [k for k in net.state_dict()], net.training)
    receptive_field(net, "conv")
    assert (dict(net.__dict__), [k for k in net.state_dict()], net.training) == before
    assert not net._forward_hooks and not net.conv._forward_hooks


# --------------------------------------------------------------------------- torchvision models


def test_vgg16_known_values():
    with torch.device("meta"):  # tracing needs no parameter values: skip initialising 138 M weights
        vgg = torchvision.models.vgg16(weights=None)
    fields = receptive_fields(vgg, ["features.29", "features.30"])
    assert (fields["features.29"].size, fields["features.29"].stride) == ((196, 196), (16, 16))
    assert (fields["features.30"].size, fields["features.30"].stride) == ((212, 212), (32, 32))
    assert fields["features.29"].start == (-90, -90)  # 13 pad-1 convs: -(1+1+2+2+4+4+4+8+8+8+16+16+16)


def _linearised(model: nn.Module) -> nn.Module:
    """Copy in which every unit is a positive average of its window: its input gradient is > 0 exactly on its field."""
    lin = copy.deepcopy(model).eval()
    for name, module in list(lin.named_modules()):
        parent = lin.get_submodule(name.rpartition(".")[0]) if "." in name else lin
        child = name.rpartition(".")[2]
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            with torch.no_grad():
                module.weight.fill_(1.0 / module.weight[0].numel())
                if module.bias is not None:
                    module.bias.zero_()
        elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm, nn.ReLU, nn.ReLU6, nn.GELU, nn.Dropout)):
            setattr(parent, child, nn.Identity())
        elif isinstance(module, nn.MaxPool2d):
            setattr(parent, child, nn.AvgPool2d(module.kernel_size, module.stride, module.padding, module.ceil_mode))
    return lin


def _gradient_box(model: nn.Module, layer: str, y: int, x: int, size: int) -> tuple[int, int, int, int]:
    lin = _linearised(model)
    image = torch.ones(1, 3, size, size, requires_grad=True)
    captured = {}
    hook = lin.get_submodule(layer).register_forward_hook(lambda m, i, o: captured.__setitem__("out", o))  # last call
    try:
        lin(image)
    finally:
        hook.remove()
    captured["out"][0, 0, y, x].backward()
    rows, cols = torch.nonzero(image.grad[0].sum(0) > 0, as_tuple=True)
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


@pytest.mark.parametrize(
    "arch, layer, size, units",
    [
        ("resnet18", "layer2", 96, [(0, 0), (5, 7), (11, 11)]),
        ("resnet18", "layer3.1.relu", 128, [(4, 4), (7, 0)]),
        ("mobilenet_v2", "features.6", 64, [(0, 0), (3, 4), (7, 7)]),
        ("densenet121", "features.transition1.pool", 64, [(0, 0), (3, 4), (7, 7)]),
        # channels moved last inside each block: layer norm and linear layers per location
        ("convnext_tiny", "features.3", 64, [(0, 0), (3, 4), (7, 7)]),
    ],
)
def test_torchvision_boxes_match_gradient_of_one_unit(arch, layer, size, units):
    model = getattr(torchvision.models, arch)(weights=None)
    rf = receptive_field(model, layer)
    for y, x in units:
        assert rf.box(y, x, (size, size)) == _gradient_box(model, layer, y, x, size), (arch, layer, y, x)


def test_resnet50_known_size():
    # torchvision ResNet-50 (stride in the 3x3 convs): layer4 427 px, stride 32
    with torch.device("meta"):
        r50 = receptive_field(torchvision.models.resnet50(weights=None), "layer4")
    assert (r50.size, r50.stride) == ((427, 427), (32, 32))
    assert isinstance(r50, ReceptiveField)
