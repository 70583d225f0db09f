import pytest
import torch
import torchvision
from torch import nn

from conftest import tiny_cnn
from vebi.errors import VebiError
from vebi.layers import default_layers, list_layers, resolve_layers


def test_defaults_sequential_and_vgg():
    assert default_layers(tiny_cnn()) == ["1", "4"]
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
