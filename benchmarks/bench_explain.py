"""Cost of one explanation (k = 3 features, stride fix on) relative to one Grad-CAM call and one
guided-backprop call, on the same model and images, at batch 1 and batch 16.

Targets: explanation / Grad-CAM (pytorch-grad-cam) <= 1.6 and explanation / Captum GuidedBackprop <= 1.6
at batch 1 on MobileNetV2 and ResNet-50 at 224 px.

Model: a torchvision model (``--model``, default ResNet-18; weights=None, 10 classes, eval), random
images. The relevance is a seeded random sparse W over the model's default layers, scaled by layer
width so that features of every depth get chosen; the "last only" rows put all relevant features
in the last two default layers (every backward pass runs through the whole network: the worst case).
Grad-CAM targets the layer ``vebi.methods.cam.default_cam_layer`` picks (ResNets: ``layer4``) and
is called as the library is normally used (parameters keep
``requires_grad``, so its ``backward()`` also fills parameter gradients); the "Grad-CAM (frozen)"
column is the same call with parameters frozen, as vebi's own passes run. Interleaved repeats,
medians of per-repeat times; every method is warmed up first. The FLOP columns
(``torch.utils.flop_counter``: convolutions and matrix products, forward and backward) give the
same ratios independently of the machine's load. The last two columns time the explanation's forward
pass under the backward rules alone and a plain graph-recording forward: the rules' bookkeeping.

    python benchmarks/bench_explain.py [--model resnet18] [--size 112] [--batches 1 16] [--repeats 5]
        [--threads N] [--device cpu] [--upsample nearest]
    python benchmarks/bench_explain.py --model mobilenet_v2 resnet50 --size 224 --batches 1 8   # issue 17's targets

``--upsample``: the stride fix's upsampling (default linear; nearest is the authors' demo).
``--before SRC`` (the ``src`` folder of an earlier checkout, e.g. a ``git worktree``) times the
explanation and Captum GBP in both trees instead, each tree in its own process, call by call alternately:

    python benchmarks/bench_explain.py --model mobilenet_v2 resnet50 --size 224 --batches 1 --threads 1 \
        --repeats 15 --before /tmp/vebi-before/src
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from vebi.core.features import FeatureSpace
from vebi.core.relevance import Relevance
from vebi.explanation.backward import forward_with_rules
from vebi.explanation.explainer import Explainer
from vebi.layers import capture_outputs, default_layers
from vebi.methods.cam import default_cam_layer


def _relevance(model: torch.nn.Module, size: int, device: torch.device, last_only: bool) -> Relevance:
    layers = default_layers(model)
    with torch.no_grad(), capture_outputs(model, layers) as acts:
        model(torch.zeros(1, 3, size, size, device=device))
    space = FeatureSpace(tuple(layers), tuple(acts[n].shape[1] for n in layers))
    gen = torch.Generator().manual_seed(0)
    weights = torch.rand(space.size, 10, generator=gen, dtype=torch.float64)
    weights *= torch.rand(space.size, 10, generator=gen) < 0.05
    weights *= torch.tensor([c for c in space.channels for _ in range(c)], dtype=torch.float64)[:, None]
    if last_only:
        weights[: space.layer_slice(layers[-2]).start] = 0
    return Relevance(weights, space, tuple(f"c{i}" for i in range(10)), 10.0)


class _FlopCount(TorchDispatchMode):
    """Sum of ``torch.utils.flop_counter``'s per-op FLOPs (without its module tracker, whose
    backward hooks cannot run inside ``torch.autograd.grad`` on leaf inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def methods(batch: int, size: int, device: torch.device, last_only: bool, upsample: str = "linear",
            arch: str = "resnet18") -> dict[str, Callable[[], None]]:
    """The timed calls on one model and batch: explanation, Grad-CAM (plain and frozen), Captum GBP, forwards."""
    from captum.attr import GuidedBackprop
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=10).eval().to(device)
    relevance = _relevance(model, size, device, last_only)
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    cam_layer = model.get_submodule(default_cam_layer(model, images[:1]))
    with torch.no_grad():
        target = model(images).argmax(dim=1)
    explainer = Explainer(model, relevance, num_features=3, upsample=upsample)
    guided = GuidedBackprop(model)
    cam_targets = [ClassifierOutputTarget(int(t)) for t in target]

    def explain() -> None:
        explainer(images)

    def captum_gbp() -> None:
        guided.attribute(images.clone().requires_grad_(True), target=target)

    def grad_cam(frozen: bool) -> None:
        for p in model.parameters():
            p.requires_grad_(not frozen)
        cam = GradCAM(model=model, target_layers=[cam_layer])
        try:
            # with frozen parameters the input must carry the graph (as in vebi.methods.grad_cam)
            cam(input_tensor=images.clone().requires_grad_(frozen), targets=cam_targets)
        finally:
            cam.activations_and_grads.release()
            for p in model.parameters():
                p.requires_grad_(True)
                p.grad = None

    def rules_forward() -> None:  # the explanation's forward pass alone: hooks, rule dispatch, captures
        forward_with_rules(model, images, explainer.rules, explainer.relevance.space.layers)

    def plain_forward() -> None:  # the same forward without rules, recording a graph to the input
        with torch.enable_grad():
            model(images.clone().requires_grad_(True))

    return {"explain": explain, "gradcam": lambda: grad_cam(False), "gradcam_frozen": lambda: grad_cam(True),
            "captum_gbp": captum_gbp, "rules_forward": rules_forward, "plain_forward": plain_forward}


def measure(batch: int, size: int, repeats: int, device: torch.device, last_only: bool,
            upsample: str = "linear", arch: str = "resnet18") -> dict[str, float]:
    calls = methods(batch, size, device, last_only, upsample, arch)
    times: dict[str, list[float]] = {name: [] for name in calls}
    result: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, fn in calls.items():  # warm-up, and the FLOPs of one call (machine-independent)
            with _FlopCount() as counter:
                fn()
            result[f"{name}_flops"] = float(counter.total)
        for _ in range(repeats):
            for name, fn in calls.items():
                times[name].append(_time(fn, device))
    result.update({name: statistics.median(values) for name, values in times.items()})
    return result


def worker(args: argparse.Namespace) -> None:
    """``--worker``: set up one row's calls, then time the call named on each stdin line (seconds on stdout)."""
    calls = methods(args.batches[0], args.size, torch.device(args.device), args.last_only, args.upsample, args.model[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("explain", "captum_gbp"):
            calls[name]()
        print("ready", flush=True)
        for line in sys.stdin:
            print(_time(calls[line.strip()], torch.device(args.device)), flush=True)


def compare(args: argparse.Namespace) -> None:
    """``--before SRC``: the explanation and Captum GBP in this checkout and an earlier one, each in its own
    worker process, call by call alternately (the machine's drift hits both trees alike)."""
    trees = {"before": args.before.resolve(), "now": Path(__file__).resolve().parents[1] / "src"}
    print(f"{args.size}x{args.size}, {args.device}, {args.threads or 'default'} threads, median of {args.repeats} "
          f"calls alternating between the trees, stride fix upsampling {args.upsample}")
    header = (f"{'model':<13} {'features':<10} {'batch':>5} {'explain before s':>16} {'explain now s':>13} "
              f"{'now / before':>12} {'/GBP before':>11} {'/GBP now':>8}")
    print(header)
    print("-" * len(header))
    for arch in args.model:
        for last_only in (False, True):
            for batch in args.batches:
                procs = {}
                for name, src in trees.items():
                    command = [sys.executable, __file__, "--worker", "--model", arch, "--batches", str(batch),
                               "--size", str(args.size), "--device", args.device, "--upsample", args.upsample,
                               "--threads", str(args.threads), *(["--last-only"] if last_only else [])]
                    procs[name] = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                                   env={**os.environ, "PYTHONPATH": str(src)})
                    if procs[name].stdout.readline().strip() != "ready":
                        raise SystemExit(f"the {name} worker failed")
                times = {(tree, call): [] for tree in trees for call in ("explain", "captum_gbp")}
                for r in range(args.repeats):
                    for tree in (list(trees) if r % 2 == 0 else list(trees)[::-1]):
                        for call in ("explain", "captum_gbp"):
                            procs[tree].stdin.write(call + "\n")
                            procs[tree].stdin.flush()
                            times[(tree, call)].append(float(procs[tree].stdout.readline()))
                for proc in procs.values():
                    proc.stdin.close()
                    proc.wait()
                t = {key: statistics.median(values) for key, values in times.items()}
                b, n = t[("before", "explain")], t[("now", "explain")]
                print(f"{arch:<13} {'last only' if last_only else 'all layers':<10} {batch:>5} {b:>16.4f} {n:>13.4f} "
                      f"{n / b:>12.3f} {b / t[('before', 'captum_gbp')]:>11.2f} {n / t[('now', 'captum_gbp')]:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["resnet18"], help="torchvision model name(s)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--upsample", default="linear", choices=("linear", "nearest"))
    parser.add_argument("--before", type=Path, help="the src folder of an earlier checkout: compare explanation times")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--last-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args)
    if args.before:
        return compare(args)
    device = torch.device(args.device)
    print(f"{args.size}x{args.size}, {device}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} interleaved repeats, stride fix upsampling {args.upsample}")
    header = (f"{'model':<13} {'features':<10} {'batch':>5} {'explain s':>10} {'GradCAM s':>10} {'GC frozen s':>11} "
              f"{'Captum GBP s':>12} {'/GradCAM':>9} {'/GC frozen':>10} {'/GBP':>6} {'FLOPs /GC':>10} "
              f"{'/GC frozen':>10} {'/GBP':>6} {'fwd rules ms':>12} {'fwd plain ms':>12}")
    print(header)
    print("-" * len(header))
    rows = [(arch, last_only, batch) for arch in args.model for last_only in (False, True) for batch in args.batches]
    for arch, last_only, batch in rows:
        t = measure(batch, args.size, args.repeats, device, last_only, args.upsample, arch)
        f = {k: t[f"{k}_flops"] for k in ("explain", "gradcam", "gradcam_frozen", "captum_gbp")}
        print(f"{arch:<13} {'last only' if last_only else 'all layers':<10} {batch:>5} {t['explain']:>10.4f} "
              f"{t['gradcam']:>10.4f} {t['gradcam_frozen']:>11.4f} {t['captum_gbp']:>12.4f} "
              f"{t['explain'] / t['gradcam']:>9.2f} {t['explain'] / t['gradcam_frozen']:>10.2f} "
              f"{t['explain'] / t['captum_gbp']:>6.2f} {f['explain'] / f['gradcam']:>10.2f} "
              f"{f['explain'] / f['gradcam_frozen']:>10.2f} {f['explain'] / f['captum_gbp']:>6.2f} "
              f"{t['rules_forward'] * 1e3:>12.1f} {t['plain_forward'] * 1e3:>12.1f}")
    print("targets (issue 17): explain / GradCAM <= 1.6 and explain / Captum GBP <= 1.6 at batch 1 on MobileNetV2 and "
          "ResNet-50 at 224 px, batch 8+ no worse (time ratios; FLOP ratios for reference)")


if __name__ == "__main__":
    main()
