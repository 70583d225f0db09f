"""The ablation table on real images: scikit-learn's handwritten digits (1,797 scans, 8 x 8, 10 classes).

A small CNN (conv-bn-relu x 3 with two max pools, global average pool, linear) is trained, seeded,
on 60 % of the digits upsampled to 16 x 16; vebi collects the statistics of relu1..relu3 on the
training images, fits the mu-LASSO (ground-truth labels), and ablates each class's positive and
negative relevant sets, their layer-matched random controls and the last-layer reference set on
the other 40 % (``vebi.evaluate.ablation_study``). About a minute of CPU. Needs scikit-learn (the
digits), which the test extra installs (``pip install -e '.[test]'``; ``make setup`` does).

    python scripts/ablation_digits.py [--mu 10] [--epochs 8] [--seeds 5] [--curves]
"""

from __future__ import annotations

import argparse
import time
from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from vebi.core.collect import collect
from vebi.core.relevance import fit_relevance
from vebi.evaluate.ablation import ablation_study, union_ablation
from vebi.evaluate.output import format_ablation

LAYERS = ["relu1", "relu2", "relu3"]


def digits(size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, test images, test labels): a seeded 60 / 40 split, values in [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = int(0.6 * len(labels))
    train, test = order[:cut], order[cut:]
    return images[train], labels[train], images[test], labels[test]


def digit_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 16, 3, padding=1)), ("bn1", nn.BatchNorm2d(16)), ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(16, 32, 3, padding=1)), ("bn2", nn.BatchNorm2d(32)), ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)),
        ("conv3", nn.Conv2d(32, 64, 3, padding=1)), ("bn3", nn.BatchNorm2d(64)), ("relu3", nn.ReLU()),
        ("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("classifier", nn.Linear(64, 10)),
    ]))


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(labels), generator=g).split(64):
            optimiser.zero_grad()
            F.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimiser.step()
    model.eval()


def batches(images: torch.Tensor, labels: torch.Tensor, size: int = 128) -> list[tuple[torch.Tensor, ...]]:
    index = torch.arange(len(labels))
    return [(images[i:i + size], labels[i:i + size], index[i:i + size]) for i in range(0, len(labels), size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mu", type=float, default=10.0)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=5, help="layer-matched control sets per ablated set")
    parser.add_argument("--curves", action="store_true", help="also every k = 0..n (ablation_sets rows)")
    args = parser.parse_args()

    began = time.perf_counter()
    x_train, y_train, x_test, y_test = digits()
    model = digit_cnn()
    train(model, x_train, y_train, args.epochs)
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(1) == y_test).double().mean())
    names = [str(d) for d in range(10)]
    stats = collect(model, batches(x_train, y_train), layers=LAYERS, class_names=names, top_k=1, progress=False)
    relevance = fit_relevance(stats, mu=args.mu)
    test = batches(x_test, y_test)
    seeds = range(args.seeds)
    study = ablation_study(model, test, relevance, seeds=seeds, curves=args.curves, progress=False)
    union = union_ablation(model, test, relevance, seeds=seeds, progress=False)

    print(f"sklearn digits 16 px: {len(y_train)} training / {len(y_test)} test images, test accuracy {accuracy:.4f}; "
          f"layers {', '.join(LAYERS)} ({relevance.space.size} features), mu = {args.mu:g}")
    signs = [(sum(f.weight > 0 for f in relevance.relevant(j)), sum(f.weight < 0 for f in relevance.relevant(j)))
             for j in range(10)]
    print("relevant features per class (+/-): " + ", ".join(f"{p}/{n}" for p, n in signs))
    print("\n".join(format_ablation(study, union)))
    rows = study.summary_rows()[:-1]
    holds = [r["class_name"] for r in rows
             if r["baseline_class_accuracy"] - r["positive_class_accuracy"] >= 0.5
             and r["positive_control_class_accuracy"] is not None
             and r["baseline_class_accuracy"] - r["positive_control_class_accuracy"] < 0.05]
    print(f"classes whose positive set drops their accuracy by >= 50 points while the controls drop it by < 5 "
          f"(mean over seeds): {len(holds)} of {len(rows)} ({', '.join(holds) or 'none'})")
    print(f"{time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
