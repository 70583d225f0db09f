"""Ablation cost: one forward pass per feature set (before) against many sets per pass (now).

An8Flower's small net (``vebi.an8flower.net.an8net``, random weights, eval mode) at 112 px, 6
classes, N random images; a seeded random relevance with ``--features`` relevant features per
class (60 % positive) over the default layers relu1..relu5. Rows, all in one run:

- *old protocol, one set per pass*: what ``vebi evaluate`` did before: per class the first k
  relevant features for k = 0..n, k random features of the whole pool (3 seeds, nested) and the k
  of highest mean response, plus the union and 3 random sets of its size; every distinct set
  evaluated by its own forward pass over the images (``class_accuracies(batched=False)``);
- *new protocol*: ``ablation_study`` (positive / negative sets whole, 5 layer-matched control seeds
  each, the reference set, its classifier-evidence pass) + ``union_ablation``, one set per pass and
  many sets per pass (the default), and the curves option (k = 0..n) many sets per pass.

"forward calls" counts calls of the model; "image rows" the rows of the classifier's input (one
row per image and set). Same numbers: the batched and one-set-per-pass accuracies of the new
protocol are compared.

    python benchmarks/bench_ablation.py [--images 192] [--features 8] [--batch-size 64] [--max-batch N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch

from vebi.an8flower.net import an8net
from vebi.core.features import FeatureSpace
from vebi.core.relevance import Relevance
from vebi.evaluate.ablation import _Plan, ablation_study, class_accuracies, union_ablation

LAYERS = ("features.relu1", "features.relu2", "features.relu3", "features.relu4", "features.relu5")
CHANNELS = (32, 32, 64, 64, 128)
CLASSES = 6


def _relevance(features: int, seed: int = 0) -> Relevance:
    space = FeatureSpace(LAYERS, CHANNELS)
    g = torch.Generator().manual_seed(seed)
    weights = torch.zeros(space.size, CLASSES, dtype=torch.float64)
    for j in range(CLASSES):
        chosen = torch.randperm(space.size, generator=g)[:features]
        signs = torch.tensor([1.0 if i < round(0.6 * features) else -1.0 for i in range(features)],
                             dtype=torch.float64)
        weights[chosen, j] = signs * (0.1 + torch.rand(features, generator=g, dtype=torch.float64))
    return Relevance(weights, space, tuple(f"class{j}" for j in range(CLASSES)), 10.0)


def _old_protocol_sets(relevance: Relevance, seeds: int = 3) -> list[list[tuple[str, int]]]:
    """The distinct sets the previous default evaluated (curves k = 0..n, whole-pool random, top-mean, union)."""
    pool = [(f.layer, f.channel) for f in relevance.space]
    g = torch.Generator().manual_seed(1)
    top_mean = [pool[i] for i in torch.rand(len(pool), generator=g).argsort(descending=True).tolist()]
    plan = _Plan()
    plan.add([])
    for j in range(relevance.num_classes):
        ranked = [(f.layer, f.channel) for f in relevance.relevant(j)]
        draws = [[pool[i] for i in torch.randperm(len(pool), generator=g)[:len(ranked)].tolist()]
                 for _ in range(seeds)]
        for k in range(len(ranked) + 1):
            plan.add(ranked[:k])
            plan.add(top_mean[:k])
            for draw in draws:
                plan.add(draw[:k])
    union = [(f.layer, f.channel) for f in (relevance.space.feature(i) for i in relevance.union())]
    plan.add(union)
    for _ in range(seeds):
        plan.add([pool[i] for i in torch.randperm(len(pool), generator=g)[:len(union)].tolist()])
    return plan.sets


class _Counter:
    """Forward calls of the model and rows reaching its classifier."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls = self.rows = 0
        model.register_forward_hook(self._call)
        model.classifier.register_forward_pre_hook(self._rows)

    def _call(self, *_: Any) -> None:
        self.calls += 1

    def _rows(self, _m: Any, inputs: Any) -> None:
        self.rows += inputs[0].shape[0]


def _timed(counter: _Counter, work: Callable[[], Any]) -> tuple[Any, float, int, int]:
    counter.calls = counter.rows = 0
    began = time.perf_counter()
    out = work()
    return out, time.perf_counter() - began, counter.calls, counter.rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--features", type=int, default=8, help="relevant features per class")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=None, help="images per stacked forward pass")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = an8net(num_classes=CLASSES).eval()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.images, 3, 112, 112, generator=g)
    labels = torch.arange(args.images) % CLASSES
    data = [(images[i:i + args.batch_size], labels[i:i + args.batch_size])
            for i in range(0, args.images, args.batch_size)]
    relevance = _relevance(args.features)
    counter = _Counter(model)
    with torch.no_grad():
        model(images[:8])  # warm-up

    old_sets = _old_protocol_sets(relevance)
    rows = []
    _, seconds, calls, image_rows = _timed(counter, lambda: class_accuracies(model, data, old_sets, CLASSES,
                                                                             batched=False, progress=False))
    rows.append(("old protocol (k = 0..n, 3 seeds), one set per pass", len(old_sets), calls, image_rows, seconds))

    def new_protocol(batched: bool, curves: bool) -> tuple[Any, int]:
        """Both experiments, with ``class_accuracies`` wrapped to count the sets (and to force one per pass)."""
        import vebi.evaluate.ablation as ablation

        original, sets = ablation.class_accuracies, [0]

        def counted(model: Any, data: Any, feature_sets: Any, *a: Any, **k: Any) -> Any:
            sets[0] += len(feature_sets)
            return original(model, data, feature_sets, *a, **(k if batched else {**k, "batched": False}))

        ablation.class_accuracies = counted
        try:
            study = ablation_study(model, data, relevance, curves=curves, max_batch=args.max_batch, progress=False)
            union = union_ablation(model, data, relevance, max_batch=args.max_batch, progress=False)
        finally:
            ablation.class_accuracies = original
        return (study, union), sets[0]

    results = {}
    for label, batched, curves in (("new protocol (k = n, 5 seeds), one set per pass", False, False),
                                   ("new protocol (k = n, 5 seeds), many sets per pass", True, False),
                                   ("new protocol, curves k = 0..n, many sets per pass", True, True)):
        (out, sets), seconds, calls, image_rows = _timed(counter, lambda b=batched, c=curves: new_protocol(b, c))
        results[(batched, curves)] = out
        rows.append((label, sets, calls, image_rows, seconds))
    same = results[(False, False)] == results[(True, False)]

    print(f"an8net (random weights), 112 px, {CLASSES} classes, {args.images} images, batch {args.batch_size}, "
          f"{args.features} relevant features per class, torch threads {torch.get_num_threads()}")
    print(f"{'':<52} {'sets':>6} {'fwd calls':>10} {'image rows':>11} {'seconds':>8} {'old / this':>10}")
    for label, sets, calls, image_rows, seconds in rows:
        print(f"{label:<52} {sets:>6} {calls:>10} {image_rows:>11} {seconds:>8.2f} "
              f"{rows[0][4] / seconds:>9.1f}x")
    print(f"new protocol, many sets per pass == one set per pass (every accuracy): {same}")


if __name__ == "__main__":
    main()
