import pytest
import torch
from torch import nn

from conftest import tiny_cnn, torchvision_model
from vebi.core.collect import collect
from vebi.errors import VebiError


def _state(model):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
            {k: v.clone() for k, v in model.state_dict().items()})


def _same(a, b):
    assert a[0] == b[0] and a[1] == b[1] and a[2] == b[2]
    assert all(torch.equal(a[3][k], b[3][k]) for k in a[3])


def test_model_and_inputs_unchanged_after_collection():
    model = tiny_cnn()
    model.train()
    model[0].weight.requires_grad_(False)
    before = _state(model)
    images = torch.rand(6, 3, 10, 10)
    copy = images.clone()
    collect(model, [(images, torch.tensor([0, 1, 2, 0, 1, 2]))], top_k=2, progress=False)
    _same(before, _state(model))
    assert torch.equal(images, copy)
    assert model.training


def test_model_unchanged_after_exception_inside_the_pass():
    model = tiny_cnn()
    model.train()
    before = _state(model)

    def data():
        yield torch.rand(2, 3, 10, 10), torch.tensor([0, 1])
        raise RuntimeError("disk went away")

    with pytest.raises(RuntimeError, match="disk went away"):
        collect(model, data(), top_k=2, progress=False)
    _same(before, _state(model))
    # a label outside the classes raises inside the hooked region too
    with pytest.raises(VebiError):
        collect(model, [(torch.rand(2, 3, 10, 10), torch.tensor([0, 9]))], top_k=2, progress=False)
    _same(before, _state(model))


@pytest.mark.parametrize("name", ["vgg11", "resnet18", "mobilenet_v2"])
def test_default_layers_on_torchvision_models(name):
    torch.manual_seed(0)
    model = torchvision_model(name, 4)
    images = torch.rand(2, 3, 32, 32)
    stats = collect(model, [(images, torch.tensor([0, 3]))], top_k=2, progress=False)
    assert stats.count == 2 and stats.space.size > 0
    assert torch.isfinite(stats.gram).all()
    # energies of post-activation maps are non-negative, rows of X are unit vectors
    assert stats.gram.trace().item() == pytest.approx(2.0)


def test_predicted_labels_and_class_count_check():
    model = tiny_cnn(num_classes=3)
    images = torch.rand(5, 3, 10, 10)
    stats = collect(model, [(images, torch.zeros(5, dtype=torch.long))], labels="predicted", top_k=2, progress=False)
    with torch.no_grad():
        model.eval()
        pred = model(images).argmax(1)
    assert stats.class_counts.tolist() == torch.bincount(pred, minlength=3).tolist()
    with pytest.raises(VebiError, match="outputs"):
        collect(model, [(images, torch.zeros(5, dtype=torch.long))], labels="predicted", top_k=2,
                class_names=["a", "b"], progress=False)


def test_reused_module_is_reported():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(3, 2, 3), relu, nn.Conv2d(2, 2, 3), relu, nn.Flatten(), nn.LazyLinear(2))
    model(torch.rand(1, 3, 8, 8))
    with pytest.raises(VebiError, match="ran twice"):
        collect(model, [(torch.rand(1, 3, 8, 8), torch.tensor([0]))], layers="1", progress=False)


def test_one_channel_model():
    model = tiny_cnn(in_channels=1)
    stats = collect(model, [(torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 2]))], top_k=2, progress=False)
    assert stats.space.channels == (4, 6)
