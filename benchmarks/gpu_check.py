"""The GPU checks of the performance work in one run: collection, the mu-LASSO and explanations on
CUDA, each compared with the CPU (results and time) side by side.

1. collection: ``vebi.collect`` over the same batches (VGG-11, weights=None) on the CPU and on CUDA;
   time per image and the largest relative difference of G and B (float64 accumulation of float32
   responses: differences of ~1e-6 relative come from the devices' own float32 kernels);
2. mu-LASSO: the synthetic VGG-16-like problem of ``bench_lasso.py`` solved by SPAMS (CPU) and by
   vebi's torch solver on CUDA: time and the largest relative objective difference;
3. explanation: ``bench_explain.measure`` (ResNet-18; explanation vs Grad-CAM and Captum guided
   backprop) on CUDA at batch 1 and 16, and the largest difference of the CPU and CUDA maps.

    .venv/bin/python benchmarks/gpu_check.py              # on a machine with CUDA (a few minutes)
    .venv/bin/python benchmarks/gpu_check.py --small      # sizes for a dry run; --device cpu to try it here
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_explain import _relevance, measure  # noqa: E402
from bench_lasso import synthetic_statistics  # noqa: E402

from vebi.core.collect import collect  # noqa: E402
from vebi.core.lasso import solve_mu_lasso  # noqa: E402
from vebi.explanation.explainer import Explainer  # noqa: E402

VGG16 = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device):
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def check_collection(device: torch.device, batches: int, size: int) -> None:
    torch.manual_seed(0)
    model = torchvision.models.vgg11(weights=None, num_classes=10).eval()
    gen = torch.Generator().manual_seed(1)
    data = [(torch.rand(32, 3, size, size, generator=gen), torch.randint(0, 10, (32,), generator=gen))
            for _ in range(batches)]
    names = tuple(str(i) for i in range(10))
    results = {}
    for dev in (torch.device("cpu"), device):
        net = model.to(dev)
        collect(net, data[:1], class_names=names, progress=False)  # warm-up
        stats, seconds = _timed(lambda: collect(net, data, class_names=names, progress=False), dev)
        results[dev.type] = (stats.to("cpu"), seconds)
    (cpu, t_cpu), (gpu, t_gpu) = results["cpu"], results[device.type]
    rel = lambda a, b: float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))  # noqa: E731
    print(f"collection ({batches} x 32 images, {size} px, m = {cpu.space.size})")
    print(f"  cpu {1e3 * t_cpu / (32 * batches):.2f} ms/image, {device.type} {1e3 * t_gpu / (32 * batches):.2f} "
          f"ms/image ({t_cpu / t_gpu:.1f}x); max rel. diff G {rel(gpu.gram, cpu.gram):.1e}, "
          f"B {rel(gpu.cross, cpu.cross):.1e}")


def check_lasso(device: torch.device, channels: tuple[int, ...], classes: int, images: int, mu: float) -> None:
    G, B = synthetic_statistics(channels, classes, images, seed=0)
    objective = lambda W: (W * (G @ W)).sum(0) - 2 * (W * B).sum(0)  # noqa: E731
    W_spams, t_spams = _timed(lambda: solve_mu_lasso(G, B, mu, solver="spams"), torch.device("cpu"))
    W_gpu, t_gpu = _timed(lambda: solve_mu_lasso(G, B, mu, solver="torch", device=device).cpu(), device)
    f_ref, f_gpu = objective(W_spams), objective(W_gpu)
    worst = float(((f_gpu - f_ref) / f_ref.abs()).abs().max())
    print(f"mu-LASSO (m = {G.shape[0]}, C = {classes}, mu = {mu:g})")
    print(f"  SPAMS (cpu) {t_spams:.1f} s, torch ({device.type}) {t_gpu:.1f} s ({t_spams / t_gpu:.2f}x); "
          f"max rel. objective diff {worst:.1e}")


def check_explanation(device: torch.device, size: int, repeats: int) -> None:
    print(f"explanation (ResNet-18, {size} px, k = 3, stride fix) on {device.type}: time ratios")
    for batch in (1, 16):
        r = measure(batch, size, repeats, device, last_only=False)
        print(f"  batch {batch:>2}: explain {1e3 * r['explain']:.1f} ms, / Grad-CAM {r['explain'] / r['gradcam']:.2f}, "
              f"/ Captum GBP {r['explain'] / r['captum_gbp']:.2f}")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    relevance = _relevance(model, size, torch.device("cpu"), False)
    images = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    cpu_maps = Explainer(model, relevance).maps(images)
    gpu_maps = Explainer(model.to(device), relevance).maps(images.to(device)).cpu()
    print(f"  maps cpu vs {device.type}: max abs diff {float((cpu_maps - gpu_maps).abs().max()):.1e} "
          "(maps in [0, 1]; guided gates can flip on activations within float32 rounding of 0)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="small sizes, for a dry run")
    a = parser.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device here; pass --device cpu for a dry run")
        print(f"GPU: {torch.cuda.get_device_name(device)}")
    small = a.small
    check_collection(device, batches=2 if small else 20, size=32 if small else 64)
    check_lasso(device, (32, 32, 64) if small else VGG16, 20 if small else 1000, 500 if small else 20000, 10.0)
    check_explanation(device, size=64 if small else 224, repeats=1 if small else 5)


if __name__ == "__main__":
    main()
