"""Can the k backward passes of one batch-1 explanation share their work? Ways to run them, timed.

An explanation of one image is one forward pass under the guided rules (stride fix on) and k = 3
backward passes to the input, one per feature: seed = that feature's activation map. The guided rule
clamps each signal, so the passes cannot be summed into one; they can only be run side by side.
On one torchvision model (random weights, 10 classes) and one random 224 px image, with the three
features vebi's explanation picks (the relevance of ``bench_explain.py``), this times:

* ``rules fwd``: the forward pass under the rules;
* ``fix in turn``: the k seeded passes one after another, as vebi runs them (stride fix on);
* without the stride fix (its backward writes with ``out=``, which vmap cannot batch):
  ``in turn``, the same k passes one after another; ``vmap``, the k passes as one
  ``torch.autograd.grad(..., is_grads_batched=True)`` call (PyTorch vmaps the backward over the
  seeds); ``k threads``, the k passes in k Python threads, one intra-op thread each (the autograd
  engine runs a CPU backward on its calling thread; with ``--threads`` below the number of cores
  this uses more cores than the other columns);
* ``GBP``: one Captum ``GuidedBackprop`` call (forward and backward);
* ``plain b1 x k`` / ``plain bk``: the plain gradient (no rules) of k seeds from the same layer: k
  backward passes at batch 1 against one backward pass of a batch of k copies of the image (its
  forward not timed). The second is what a backward engine that batched the k signals natively could
  at best do; the ratio of the two is the most batching could save.

Each row checks that the three ways of running the passes without the fix give the same maps (float32
accumulation order: equal to 1e-5 of the largest value). Interleaved repeats, medians.

    python benchmarks/bench_backward_batching.py --model mobilenet_v2 resnet50 [--repeats 7] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_explain import _relevance  # noqa: E402

from vebi.explanation.backward import channel_seed, forward_with_rules, guided_rules  # noqa: E402
from vebi.explanation.explainer import Explainer  # noqa: E402

K = 3


def setup(arch: str, size: int) -> dict:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=10).eval()
    relevance = _relevance(model, size, torch.device("cpu"), last_only=False)
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    (explanation,) = Explainer(model, relevance, num_features=K)(image)
    features = [(f.layer, f.channel) for f in explanation.features]
    return {"model": model, "image": image, "features": features}


def seeded_runs(s: dict, stride_fix: bool) -> dict:
    """The ways of running the k seeded passes on one forward pass under the guided rules."""
    model, image, features = s["model"], s["image"], s["features"]
    layers = sorted({layer for layer, _ in features})
    rules = guided_rules(stride_fix=stride_fix)

    def forward():
        return forward_with_rules(model, image, rules, layers)

    def seeds(fw) -> list[dict]:
        return [{layer: channel_seed(fw.activations[layer], torch.tensor([c]))} for layer, c in features]

    def in_turn(fw):
        return torch.cat([fw.backward(seed) for seed in seeds(fw)])

    def vmapped(fw):
        per_pass = seeds(fw)
        outs = [fw.activations[layer] for layer in layers]
        grads = [torch.stack([p.get(layer, torch.zeros_like(fw.activations[layer]))[0] for p in per_pass])[:, None]
                 for layer in layers]
        with torch.enable_grad():
            (g,) = torch.autograd.grad(outs, [fw.inputs], grads, retain_graph=True, is_grads_batched=True)
        return g[:, 0]

    def threaded(fw):
        threads = torch.get_num_threads()

        def one(seed):
            torch.set_num_threads(1)
            return fw.backward(seed)
        try:
            with ThreadPoolExecutor(len(features)) as pool:
                return torch.cat(list(pool.map(one, seeds(fw))))
        finally:
            torch.set_num_threads(threads)

    return {"forward": forward, "in_turn": in_turn, "vmap": vmapped, "threads": threaded}


def plain_runs(s: dict) -> dict:
    """The plain gradient of k seeds from the explanation's deepest layer: k passes at batch 1, one at batch k."""
    model, image, features = s["model"], s["image"], s["features"]
    layer = max((layer for layer, _ in features), key=lambda n: list(dict(model.named_modules())).index(n))
    module = model.get_submodule(layer)
    out: dict = {}
    handle = module.register_forward_hook(lambda _m, _i, o: out.__setitem__("a", o))

    def graph(batch: int):
        x = image.expand(batch, -1, -1, -1).clone().requires_grad_(True)
        model(x)
        a = out["a"]
        seed = torch.zeros_like(a)
        for b in range(batch):
            seed[b, b % a.shape[1]] = a[b, b % a.shape[1]].detach()
        return x, a, seed

    def timed_backward(batch: int, passes: int) -> float:
        x, a, seed = graph(batch)
        t0 = time.perf_counter()
        for _ in range(passes):
            torch.autograd.grad(a, x, seed, retain_graph=True)
        return time.perf_counter() - t0

    return {"plain_b1": lambda: timed_backward(1, K), "plain_bk": lambda: timed_backward(K, 1), "handle": handle}


def measure(arch: str, size: int, repeats: int) -> dict[str, float]:
    from captum.attr import GuidedBackprop

    s = setup(arch, size)
    fixed, runs, plain = seeded_runs(s, True), seeded_runs(s, False), plain_runs(s)
    guided = GuidedBackprop(s["model"])
    target = int(s["model"](s["image"]).argmax())
    fw = runs["forward"]()
    maps = {name: runs[name](fw) for name in ("in_turn", "vmap", "threads")}
    scale = float(maps["in_turn"].abs().max())
    for name in ("vmap", "threads"):
        torch.testing.assert_close(maps[name], maps["in_turn"], rtol=0, atol=1e-5 * scale)
    times: dict[str, list[float]] = {k: [] for k in ("forward", "fix_in_turn", "in_turn", "vmap", "threads", "gbp",
                                                      "plain_b1", "plain_bk")}

    def clock(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    for _ in range(repeats + 1):  # the first round warms up
        fw, fw_fixed = runs["forward"](), fixed["forward"]()
        sample = {"forward": clock(fixed["forward"]), "fix_in_turn": clock(lambda: fixed["in_turn"](fw_fixed))}
        for name in ("in_turn", "vmap", "threads"):
            sample[name] = clock(lambda: runs[name](fw))
        sample["gbp"] = clock(lambda: guided.attribute(s["image"].clone().requires_grad_(True), target=target))
        sample["plain_b1"] = plain["plain_b1"]()
        sample["plain_bk"] = plain["plain_bk"]()
        for name, value in sample.items():
            times[name].append(value)
    plain["handle"].remove()
    return {name: statistics.median(values[1:]) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["mobilenet_v2", "resnet50"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{args.size}x{args.size}, batch 1, k = {K}, cpu, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}; milliseconds")
    header = (f"{'model':<13} {'rules fwd':>9} {'fix in turn':>11} {'in turn':>7} {'vmap':>7} {'k threads':>9} "
              f"{'GBP':>7} {'(fwd+fix)/GBP':>13} {'plain b1 x k':>12} {'plain bk':>8} {'bk / b1 x k':>11}")
    print(header)
    print("-" * len(header))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for arch in args.model:
            t = {k: v * 1e3 for k, v in measure(arch, args.size, args.repeats).items()}
            print(f"{arch:<13} {t['forward']:>9.1f} {t['fix_in_turn']:>11.1f} {t['in_turn']:>7.1f} {t['vmap']:>7.1f} "
                  f"{t['threads']:>9.1f} {t['gbp']:>7.1f} {(t['forward'] + t['fix_in_turn']) / t['gbp']:>13.2f} "
                  f"{t['plain_b1']:>12.1f} "
                  f"{t['plain_bk']:>8.1f} {t['plain_bk'] / t['plain_b1']:>11.2f}")


if __name__ == "__main__":
    main()
