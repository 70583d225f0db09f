"""Every common CNN family through the pipeline with its default layers: collect -> fit -> explain.

Per model (torchvision, ``weights=None``, ``num_classes`` = the number of classes, eval mode),
in a fresh subprocess: ``vebi.collect`` over N random images (S x S px, labels i mod C) ->
``vebi.fit_relevance(mu)`` -> ``vebi.Explainer`` on 2 images. Printed per model: the number of
default layers and features m, the size of G = X^T X (float64), seconds per stage, the child's
peak resident memory (ru_maxrss) and the outcome; a stage that refuses prints
``refused: <its one-line message>``.

Memory: each child gets an address-space limit (RLIMIT_AS = what it has mapped after the imports
+ ``--memory``), and collect gets the same figure as its ``memory_budget``, so a model whose
statistics cannot fit is refused by vebi's guard, and an allocation beyond the limit is a
MemoryError reported as a refusal, never a kill of the machine. The fit of the current mu-LASSO
holds several m x m matrices: ``--fit-seconds`` bounds it (SIGALRM; 0 skips fit and explain).
The largest models run last.

    python benchmarks/bench_families.py                          # the whole table
    python benchmarks/bench_families.py --models resnet50 googlenet --fit-seconds 0
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import subprocess
import sys
import time

MODELS = [
    "alexnet", "vgg11_bn", "vgg16", "shufflenet_v2_x1_0", "squeezenet1_1", "mobilenet_v2", "mobilenet_v3_small",
    "mnasnet1_0", "regnet_x_400mf", "regnet_y_400mf", "regnet_y_1_6gf", "convnext_tiny", "convnext_small",
    "efficientnet_b0", "efficientnet_b3", "googlenet", "inception_v3", "resnet50", "resnext50_32x4d",
    "wide_resnet50_2", "vit_b_16", "densenet121", "densenet169", "efficientnet_v2_s", "resnet101",
]
MIN_SIZE = {"inception_v3": 75, "vit_b_16": 224}  # smallest input each accepts (ViT: its fixed size)


class _FitTimeout(Exception):
    pass


def _vm_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024


def _child(a: argparse.Namespace) -> dict:
    import torch
    import torchvision

    import vebi
    from vebi.layers import default_layers

    torch.set_num_threads(a.threads)
    limit = _vm_bytes() + int(a.memory * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    row: dict = {"model": a.child}
    stage = "build"
    try:
        kwargs = {"aux_logits": False, "init_weights": True} if a.child in ("googlenet", "inception_v3") else {}
        torch.manual_seed(0)
        model = getattr(torchvision.models, a.child)(weights=None, num_classes=a.classes, **kwargs).eval()
        size = max(a.size, MIN_SIZE.get(a.child, 0))
        g = torch.Generator().manual_seed(0)
        images = torch.rand(a.images, 3, size, size, generator=g)
        labels = torch.arange(a.images) % a.classes
        batches = [(images[i:i + 4], labels[i:i + 4]) for i in range(0, a.images, 4)]
        stage = "layers"
        names = default_layers(model)
        row["layers"] = len(names)
        stage = "collect"
        t = time.perf_counter()
        stats = vebi.collect(model, batches, class_names=[f"c{j}" for j in range(a.classes)], progress=False,
                             memory_budget=int(a.memory * 2**30))
        row["collect_s"] = time.perf_counter() - t
        row["m"] = stats.space.size
        if a.fit_seconds > 0:
            stage = "fit"

            def alarm(*_: object) -> None:
                raise _FitTimeout

            signal.signal(signal.SIGALRM, alarm)
            signal.alarm(int(a.fit_seconds))
            t = time.perf_counter()
            try:
                relevance = vebi.fit_relevance(stats, mu=a.mu)
            finally:
                signal.alarm(0)
            row["fit_s"] = time.perf_counter() - t
            row["relevant"] = sum(len(relevance.relevant(c)) for c in relevance.class_names)
            stage = "explain"
            t = time.perf_counter()
            explanations = vebi.Explainer(model, relevance)(images[:2])
            row["explain_s"] = time.perf_counter() - t
            row["explained_features"] = sum(len(e.features) for e in explanations)
        row["status"] = "ok"
    except vebi.VebiError as exc:
        row["status"] = f"refused ({stage}): {exc}"
    except _FitTimeout:
        row["status"] = f"fit stopped after {a.fit_seconds:g} s (--fit-seconds)"
    except MemoryError:
        row["status"] = f"refused ({stage}): out of the {a.memory:g} GiB limit (MemoryError)"
    except RuntimeError as exc:
        if "alloc" not in str(exc).lower():
            raise
        row["status"] = f"refused ({stage}): out of the {a.memory:g} GiB limit ({str(exc).splitlines()[0][:80]})"
    row["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return row


def _fmt(row: dict, key: str, spec: str) -> str:
    return format(row[key], spec) if key in row else "-".rjust(int(spec.lstrip(">").split(".")[0]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--images", type=int, default=12)
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--mu", type=float, default=10.0)
    p.add_argument("--memory", type=float, default=6.0, help="GiB each child may map beyond its imports")
    p.add_argument("--fit-seconds", type=float, default=300.0, help="bound on the fit; 0 skips fit and explain")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per model, a hard stop")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(_child(a)))
        return
    print(f"# {a.images} random images of {a.size} px, {a.classes} classes, mu = {a.mu:g}, default layers, "
          f"limit {a.memory:g} GiB per model, fit bounded at {a.fit_seconds:g} s")
    print(f"{'model':<20} {'layers':>6} {'m':>7} {'G GiB':>6} {'collect s':>9} {'fit s':>7} {'explain s':>9} "
          f"{'peak GiB':>8}  result")
    for name in a.models:
        cmd = [sys.executable, __file__, "--child", name, *(f"--{k.replace('_', '-')}={v}" for k, v in (
            ("size", a.size), ("images", a.images), ("classes", a.classes), ("mu", a.mu), ("memory", a.memory),
            ("fit_seconds", a.fit_seconds), ("threads", a.threads)))]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, check=False)
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
            row = json.loads(lines[-1]) if lines else {
                "status": f"child failed (exit {done.returncode}): {(done.stderr.strip().splitlines() or [''])[-1]}"}
        except subprocess.TimeoutExpired:
            row = {"status": f"stopped after {a.timeout:g} s (--timeout)"}
        gram = f"{8 * row['m'] ** 2 / 2**30:.2f}" if "m" in row else "-"
        print(f"{name:<20} {_fmt(row, 'layers', '>6')} {_fmt(row, 'm', '>7')} {gram:>6} {_fmt(row, 'collect_s', '>9.1f')} "
              f"{_fmt(row, 'fit_s', '>7.1f')} {_fmt(row, 'explain_s', '>9.1f')} {_fmt(row, 'peak_gib', '>8.2f')}  "
              f"{row['status']}", flush=True)


if __name__ == "__main__":
    main()
