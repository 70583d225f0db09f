"""Small VGG-style CNNs for the an8Flower benchmark, built by a factory usable as a model spec.

``vebi.an8flower.net:an8net`` with ``--model-arg num_classes=6 --model-arg first_stride=4`` (the values in
a trained model's ``model.json``) rebuilds the network whose state dict ``vebi train`` saved.
Inputs are RGB tensors in [0, 1] (``torchvision.transforms.ToTensor``), no normalisation.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from vebi.errors import VebiError


class An8Net(nn.Module):
    """conv1 (stride ``first_stride``) - conv2 - pool - conv3 - conv4 - pool - conv5 - global max - linear.

    Every conv is followed by batch norm (``batch_norm``) and a ReLU. Layer names
    (``features.conv1`` ... ``features.conv5``, ``features.relu1`` ..., ``classifier``) are stable so
    layers can be chosen by name. With a 112 x 112 input and ``first_stride=4`` the conv maps are
    28, 28, 14, 14 and 7 pixels wide. The global max pool lets a small, localised part decide.
    """

    def __init__(
        self,
        num_classes: int = 6,
        width: int = 32,
        first_stride: int = 4,
        first_kernel: int = 7,
        batch_norm: bool = True,
    ):
        super().__init__()
        if num_classes < 2 or width < 1 or first_stride < 1 or first_kernel < 1:
            raise VebiError(
                "An8Net needs num_classes >= 2, width, first_stride and first_kernel >= 1; got "
                f"{num_classes}, {width}, {first_stride}, {first_kernel}"
            )
        w = width
        convs = [
            ("conv1", nn.Conv2d(3, w, first_kernel, stride=first_stride, padding=first_kernel // 2)),
            ("conv2", nn.Conv2d(w, w, 3, padding=1)),
            ("conv3", nn.Conv2d(w, 2 * w, 3, padding=1)),
            ("conv4", nn.Conv2d(2 * w, 2 * w, 3, padding=1)),
            ("conv5", nn.Conv2d(2 * w, 4 * w, 3, padding=1)),
        ]
        layers: list[tuple[str, nn.Module]] = []
        for i, (name, conv) in enumerate(convs, start=1):
            layers.append((name, conv))
            if batch_norm:
                layers.append((f"bn{i}", nn.BatchNorm2d(conv.out_channels)))
            layers.append((f"relu{i}", nn.ReLU()))
            if i in (2, 4):
                layers.append((f"pool{i}", nn.MaxPool2d(2)))
        self.features = nn.Sequential(OrderedDict(layers))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def an8net(
    num_classes: int = 6, width: int = 32, first_stride: int = 4, first_kernel: int = 7, batch_norm: bool = True
) -> An8Net:
    """Factory for model specs (``vebi.an8flower.net:an8net``); untrained, weights come from ``model.pt``."""
    return An8Net(num_classes, width, first_stride, first_kernel, batch_norm)
