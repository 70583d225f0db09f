import pytest
import torch
import torchvision
from torch import nn

from conftest import tiny_cnn
from vebi.errors import VebiError
from vebi.layers import capture_outputs, default_layers, list_layers, resolve_layers


def test_defaults_sequential_and_vgg():
    assert default_layers(tiny_cnn()) == ["1", "4"]
    with torch.device("meta"):  # the module structure alone: skip initialising 138 M weights
        vgg = torchvision.models.vgg16(weights=None)
    names = default_layers(vgg)
    assert len(names) == 13 and names[-1] == "features.29"
    # VGG-16's 13 conv layers give the m = 4224 features of the method's paper
    assert sum(vgg.get_submodule(n.replace(n.split(".")[-1], str(int(n.split(".")[-1]) - 1))).out_channels
               for n in names) == 4224


def test_defaults_resnet_and_mobilenet():
    assert default_layers(torchvision.models.resnet18(weights=None))[:2] == ["layer1.0", "layer1.1"]
    mb = torchvision.models.mobilenet_v2(weights=None)
    assert default_layers(mb) == [f"features.{i}" for i in range(19)]


def test_resolver_names_patterns_modules_and_errors():
    with torch.device("meta"):
        model = torchvision.models.vgg11(weights=None)
    assert resolve_layers(model, "features.1") == ["features.1"]
    assert resolve_layers(model, ["features.4", model.features[1]]) == ["features.1", "features.4"]
    assert resolve_layers(model, "classifier.*") == [f"classifier.{i}" for i in range(7)]
    with pytest.raises(VebiError, match="close matches: features.1"):
        resolve_layers(model, "feature.1")
    with pytest.raises(VebiError, match="matches no layer"):
        resolve_layers(model, "head.*")
    with pytest.raises(VebiError, match="not part of"):
        resolve_layers(model, nn.ReLU())


def test_list_layers_shapes():
    infos = {i.name: i for i in list_layers(tiny_cnn(), torch.zeros(1, 3, 8, 8))}
    assert infos["1"].default and infos["1"].output_shape == (4, 8, 8)
    assert infos["7"].output_shape == (3,) and not infos["7"].default


# the default sets of the CNN families with block structure: (builder, kwargs, test size, layer
# count, first, last, m = sum of the default layers' channels at torchvision's widths)
FAMILIES = [
    # stem 16, blocks 16, 24, 24, 40 x 3, 48 x 2, 96 x 3, final conv 576
    ("mobilenet_v3_small", {}, 64, 13, "features.0", "features.12", 16 + 16 + 24 * 2 + 40 * 3 + 48 * 2 + 96 * 3 + 576),
    # stem 32, blocks 16, 24 x 2, 40 x 2, 80 x 3, 112 x 3, 192 x 4, 320, final conv 1280
    ("efficientnet_b0", {}, 64, 18, "features.0", "features.8",
     32 + 16 + 24 * 2 + 40 * 2 + 80 * 3 + 112 * 3 + 192 * 4 + 320 + 1280),
    # width 0.5, rounded to multiples of 8: stem 16 and 8, blocks 16 x 3, 24 x 3, 40 x 3, 48 x 2, 96 x 4, 160,
    # final conv 1280
    ("mnasnet0_5", {}, 64, 19, "layers.2", "layers.16", 16 + 8 + 16 * 3 + 24 * 3 + 40 * 3 + 48 * 2 + 96 * 4 + 160 + 1280),
    # blocks of widths 48, 104 x 3, 208 x 6, 440 x 6 (depths 1, 3, 6, 6)
    ("regnet_y_400mf", {}, 64, 16, "trunk_output.block1.block1-0", "trunk_output.block4.block4-5",
     48 + 104 * 3 + 208 * 6 + 440 * 6),
    ("convnext_tiny", {}, 64, 4, "features.1", "features.7", 96 + 192 + 384 + 768),
    # dense blocks 64 + 32 x (6, 12, 24, 16) after halving transitions: 256, 128, 512, 256, 1024, 512, 1024
    ("densenet121", {}, 64, 7, "features.denseblock1", "features.denseblock4", 256 + 128 + 512 + 256 + 1024 + 512 + 1024),
    ("googlenet", {"aux_logits": True, "init_weights": True}, 64, 9, "inception3a", "inception5b",
     256 + 480 + 512 * 3 + 528 + 832 * 2 + 1024),
    ("inception_v3", {"aux_logits": True, "init_weights": True}, 139, 11, "Mixed_5b", "Mixed_7c",
     256 + 288 * 2 + 768 * 5 + 1280 + 2048 * 2),
]


@pytest.mark.parametrize(("arch", "kwargs", "size", "count", "first", "last", "m"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_family_defaults_are_block_outputs_that_run_and_have_spatial_maps(arch, kwargs, size, count, first, last, m):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, **kwargs).eval()
    names = default_layers(model)
    assert (len(names), names[0], names[-1]) == (count, first, last)
    assert not any("aux" in n.lower() or ".se" in n or "scale_activation" in n for n in names)
    with torch.no_grad(), capture_outputs(model, names) as out:
        model(torch.randn(1, 3, size, size))
    assert set(out) == set(names)  # every default ran in the forward pass
    assert all(out[n].dim() == 4 and out[n].shape[2] * out[n].shape[3] > 1 for n in names)
    assert sum(out[n].shape[1] for n in names) == m


def test_family_default_names_of_one_stage_and_block():
    densenet = torchvision.models.densenet121(weights=None)
    assert default_layers(densenet) == [f"features.{kind}{i}" for i in range(1, 5)
                                        for kind in ("denseblock", "transition") if (kind, i) != ("transition", 4)]
    effnet = torchvision.models.efficientnet_b0(weights=None)
    assert default_layers(effnet)[:4] == ["features.0", "features.1.0", "features.2.0", "features.2.1"]
    assert default_layers(torchvision.models.convnext_tiny(weights=None)) == [f"features.{i}" for i in (1, 3, 5, 7)]
    inception = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    assert "AuxLogits" not in default_layers(inception) and "Mixed_6e" in default_layers(inception)


def test_transformers_are_refused_by_name_and_reason():
    from torchvision.models import MaxVit, SwinTransformer, VisionTransformer

    vit = VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=1, hidden_dim=8, mlp_dim=8)
    with pytest.raises(VebiError, match="VisionTransformer has no convolutional feature maps"):
        default_layers(vit)
    swin = SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=[2, 2])
    with pytest.raises(VebiError, match="SwinTransformer has no convolutional feature maps: .*channels-last"):
        resolve_layers(swin)
    maxvit = MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[8], block_layers=[1],
                    head_dim=4, stochastic_depth_prob=0.0)
    with pytest.raises(VebiError, match="MaxVit is a transformer hybrid: .*attention has no backward rule"):
        default_layers(maxvit)
    assert not any(info.default for info in list_layers(vit))  # listing still works
