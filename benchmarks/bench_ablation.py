"""Ablation cost: one forward pass per feature set (before) against many sets per pass (now).

An8Flower's small net (``vebi.an8flower.net.an8net``, random weights, eval mode) at 112 px, 6
classes, N random images; a seeded random relevance with ``--features`` relevant features per
class (60 % positive) over the default layers relu1..relu5 (``--model resnet18`` or another
torchvision name: that network, weights=None, over its default layers). Rows, all in one run:

- *old protocol, one set per pass*: what ``vebi evaluate`` did before: per class the first k
  relevant features for k = 0..n, k random features of the whole pool (3 seeds, nested) and the k
  of highest mean response, plus the union and 3 random sets of its size; every distinct set
  evaluated by its own forward pass over the images (``class_accuracies(batched=False)``);
- *new protocol*: ``ablation_study`` (positive / negative sets whole, 5 layer-matched control seeds
  each, the reference set, its classifier-evidence pass) + ``union_ablation``, one set per pass and
  many sets per pass (the default), and the curves option (k = 0..n) many sets per pass.

"forward calls" counts calls of the model; "image rows" the rows of the classifier's input (one
row per image and set); "conv rows" the rows entering every convolution, summed: the work, which
a pass that expands its rows at an early layer for a set that starts late inflates. Same numbers:
the batched and one-set-per-pass accuracies of the new protocol are compared.

    python benchmarks/bench_ablation.py [--model an8net] [--images 192] [--features 8] [--batch-size 64]
        [--max-batch N]

``--before SRC`` (the ``src`` folder of an earlier checkout) times only the default (many sets per
pass, k = n) in both trees instead, each in its own process, ``--repeats`` times alternately:

    python benchmarks/bench_ablation.py --model resnet18 --before /tmp/vebi-before/src --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vebi.an8flower.net import an8net
from vebi.core.features import FeatureSpace
from vebi.core.relevance import Relevance
from vebi.evaluate.ablation import _Plan, ablation_study, class_accuracies, union_ablation

LAYERS = ("features.relu1", "features.relu2", "features.relu3", "features.relu4", "features.relu5")
CHANNELS = (32, 32, 64, 64, 128)
CLASSES = 6


def _model(name: str, size: int) -> tuple[torch.nn.Module, FeatureSpace]:
    """The network (random weights, eval mode) and its feature space."""
    torch.manual_seed(0)
    if name == "an8net":
        return an8net(num_classes=CLASSES).eval(), FeatureSpace(LAYERS, CHANNELS)
    import torchvision

    from vebi.layers import capture_outputs, default_layers

    model = getattr(torchvision.models, name)(weights=None, num_classes=CLASSES).eval()
    layers = default_layers(model)
    with torch.no_grad(), capture_outputs(model, layers) as maps:
        model(torch.zeros(1, 3, size, size))
    return model, FeatureSpace(tuple(layers), tuple(int(maps[name].shape[1]) for name in layers))


def _relevance(space: FeatureSpace, features: int, seed: int = 0) -> Relevance:
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
    """Forward calls of the model, rows reaching its classifier (the last Linear) and rows entering
    each convolution, summed."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls = self.rows = self.conv_rows = 0
        model.register_forward_hook(self._call)
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        head.register_forward_pre_hook(self._rows)
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.register_forward_pre_hook(self._conv)

    def _call(self, *_: Any) -> None:
        self.calls += 1

    def _rows(self, _m: Any, inputs: Any) -> None:
        self.rows += inputs[0].shape[0]

    def _conv(self, _m: Any, inputs: Any) -> None:
        self.conv_rows += inputs[0].shape[0]


def _timed(counter: _Counter, work: Callable[[], Any]) -> tuple[Any, float, int, int, int]:
    counter.calls = counter.rows = counter.conv_rows = 0
    began = time.perf_counter()
    out = work()
    return out, time.perf_counter() - began, counter.calls, counter.rows, counter.conv_rows


def _compare(args: argparse.Namespace) -> None:
    """The default protocol in this tree and in ``--before``, alternately, each run in its own process."""
    trees = {"before": args.before, "now": Path(__file__).resolve().parents[1] / "src"}
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    argv = [sys.executable, __file__, "--worker", "--model", args.model, "--images", str(args.images),
            "--features", str(args.features), "--batch-size", str(args.batch_size), "--size", str(args.size)]
    if args.max_batch:
        argv += ["--max-batch", str(args.max_batch)]
    for _ in range(args.repeats):
        for name, src in trees.items():
            env = {**os.environ, "PYTHONPATH": str(src)}
            out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{args.model}, {args.size} px, {CLASSES} classes, {args.images} images, batch {args.batch_size}, "
          f"{args.features} relevant features per class; ablation_study + union_ablation (k = n, 5 seeds, many "
          f"sets per pass); median of {args.repeats}")
    print(f"{'':<8} {'fwd calls':>10} {'conv rows':>10} {'seconds':>8} {'before / this':>13}")
    base = statistics.median(r["seconds"] for r in runs["before"])
    for name, results in runs.items():
        r, seconds = results[0], statistics.median(x["seconds"] for x in results)
        print(f"{name:<8} {r['calls']:>10} {r['conv_rows']:>10} {seconds:>8.2f} {base / seconds:>12.2f}x")
    print(f"same accuracies in both trees: {all(r['result'] == runs['before'][0]['result'] for r in runs['now'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--features", type=int, default=8, help="relevant features per class")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=None, help="images per stacked forward pass")
    parser.add_argument("--model", default="an8net", help="an8net or a torchvision model name")
    parser.add_argument("--size", type=int, default=112, help="image side")
    parser.add_argument("--before", type=Path, help="the src folder of an earlier checkout: time the default in both")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.before:
        _compare(args)
        return

    model, space = _model(args.model, args.size)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.images, 3, args.size, args.size, generator=g)
    labels = torch.arange(args.images) % CLASSES
    data = [(images[i:i + args.batch_size], labels[i:i + args.batch_size])
            for i in range(0, args.images, args.batch_size)]
    relevance = _relevance(space, args.features)
    counter = _Counter(model)
    with torch.no_grad():
        model(images[:8])  # warm-up
    if args.worker:
        (study, union), seconds, calls, _, conv_rows = _timed(counter, lambda: (
            ablation_study(model, data, relevance, max_batch=args.max_batch, progress=False),
            union_ablation(model, data, relevance, max_batch=args.max_batch, progress=False)))
        print(json.dumps({"seconds": seconds, "calls": calls, "conv_rows": conv_rows,
                          "result": repr((study.rows(), union.rows()))}))
        return

    old_sets = _old_protocol_sets(relevance)
    rows = []
    _, seconds, calls, image_rows, conv_rows = _timed(
        counter, lambda: class_accuracies(model, data, old_sets, CLASSES, batched=False, progress=False))
    rows.append(("old protocol (k = 0..n, 3 seeds), one set per pass", len(old_sets), calls, image_rows, conv_rows,
                 seconds))

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
        (out, sets), seconds, calls, image_rows, conv_rows = _timed(
            counter, lambda b=batched, c=curves: new_protocol(b, c))
        results[(batched, curves)] = out
        rows.append((label, sets, calls, image_rows, conv_rows, seconds))
    same = results[(False, False)] == results[(True, False)]

    print(f"{args.model} (random weights), {args.size} px, {CLASSES} classes, {args.images} images, batch "
          f"{args.batch_size}, {args.features} relevant features per class, torch threads {torch.get_num_threads()}")
    print(f"{'':<52} {'sets':>6} {'fwd calls':>10} {'image rows':>11} {'conv rows':>10} {'seconds':>8} "
          f"{'old / this':>10}")
    for label, sets, calls, image_rows, conv_rows, seconds in rows:
        print(f"{label:<52} {sets:>6} {calls:>10} {image_rows:>11} {conv_rows:>10} {seconds:>8.2f} "
              f"{rows[0][-1] / seconds:>9.1f}x")
    print(f"new protocol, many sets per pass == one set per pass (every accuracy): {same}")


if __name__ == "__main__":
    main()
